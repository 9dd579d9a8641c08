"""An OAuth 2.0 token introspection endpoint (RFC 7662) on loopback, for
tests: what an identity provider (Keycloak, Authentik, ...) answers about a
bearer token.

``Introspection`` serves ``POST /introspect`` (form ``token=...``) on a free
port over plain HTTP (``http_url``: Dovecot's oauth2 passdb in the lab) and,
given a ``tls.Leaf``, on another over HTTPS (``https_url``: Isthmus only
talks https). Tokens are registered with
``issue()``; unknown ones are ``{"active": false}``. Every request is
recorded (its token, its Authorization header) so tests can count how often
the endpoint was asked and check what the caller sent. ``delay`` makes
answers slow; ``status`` makes them fail.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional


class Introspection:
    def __init__(self, *, tls: Any = None, client_id: str = "", client_secret: str = ""):
        self.tokens: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.delay = 0.0
        self.status = 200
        self.client_id = client_id
        self.client_secret = client_secret
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace")
                form = urllib.parse.parse_qs(body)
                token = (form.get("token") or [""])[0]
                auth = self.headers.get("Authorization", "")
                with owner._lock:
                    owner.requests.append({"path": self.path, "token": token,
                                           "authorization": auth})
                    answer = dict(owner.tokens.get(token, {"active": False}))
                    delay, status = owner.delay, owner.status
                if delay:
                    time.sleep(delay)
                if owner.client_id and auth != owner._basic():
                    status, answer = 401, {"error": "invalid_client"}
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        # Plain HTTP always (Dovecot's oauth2 passdb); HTTPS as well with a
        # certificate (Isthmus only talks https). Both share the tokens.
        self.servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler)]
        if tls is not None:
            secure = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls.cert_path, tls.key_path)
            secure.socket = ctx.wrap_socket(secure.socket, server_side=True)
            self.servers.append(secure)
        for server in self.servers:
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        self.http_url = f"http://127.0.0.1:{self.servers[0].server_address[1]}/introspect"
        self.https_url = (f"https://127.0.0.1:{self.servers[1].server_address[1]}/introspect"
                          if tls is not None else None)

    def _basic(self) -> str:
        import base64
        pair = f"{self.client_id}:{self.client_secret}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def issue(self, username: str, *, active: bool = True, expires_in: Optional[int] = 3600,
              claims: Optional[dict] = None) -> str:
        """A new token for USERNAME, with the answer the endpoint gives for it."""
        token = secrets.token_urlsafe(32)
        answer: dict = {"active": active, "username": username, "token_type": "Bearer",
                        "scope": "mail"}
        if expires_in is not None:
            answer["exp"] = int(time.time()) + expires_in
        answer.update(claims or {})
        with self._lock:
            self.tokens[token] = answer
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self.tokens[token] = {"active": False}

    def asked(self, token: Optional[str] = None) -> int:
        """How many requests came (for TOKEN, if given)."""
        with self._lock:
            return sum(1 for r in self.requests if token is None or r["token"] == token)

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()

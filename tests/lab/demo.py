#!/usr/bin/python3
"""The Isthmus demo: four real nodes (Dovecot, or Cyrus with --nodes cyrus) in
two islands, isthmus in front.

    /usr/bin/python3 tests/lab/demo.py --binary build/release/isthmus/isthmus

Starts (on fixed loopback ports, checked to be free first)

    island a: a-left  imap 21143  pop3 21110  lmtp 21024  sieve 24190   shared store "a"
              a-right imap 22143  pop3 22110  lmtp 22024  sieve 25190
    island b: b-left  imap 23143  pop3 23110  lmtp 23024  sieve 26190   shared store "b"
              b-right imap 24143  pop3 24110  lmtp 24024  sieve 27190
    isthmus:  imap 127.0.0.1:1143 (STARTTLS), pop3 1110 (STLS),
              imaps 1993 and pop3s 1995 (implicit TLS, a certificate from a
              CA the demo makes), lmtp 1024 (for MTAs; loopback is trusted),
              managesieve 14190 (STARTTLS)

puts a welcome message naming the island into each user's INBOX on the
user's home island, prints what to try, and runs until Ctrl-C or SIGTERM,
which stop everything it started and remove its temp dir (exit status 0).

--directory ldap starts a real slapd on 127.0.0.1:1389 (the island is each
entry's mailIsland attribute), --directory sql a real MariaDB on
127.0.0.1:13306 (the CalMail-style schema), both seeded with the demo users
and a few more (eve: disabled, mallory: moving); --auth directory makes
Isthmus check passwords itself and log in to the nodes as their master user.
The default is the static user map. --nodes cyrus runs Cyrus IMAP 3.6 nodes
(tests/lab/cyrus.py; docs/nodes-cyrus.md) instead of Dovecot ones.
deploy/demo.sh builds isthmus and runs this.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

if __package__ in (None, ""):
    # Run as a script: make the `lab` package (tests/lab) importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from lab import procs  # noqa: E402
    from lab.cluster import (DEMO_ISTHMUS_PORTS, DEMO_NODE_PORTS, HOME_ISLAND, ISLANDS,  # noqa: E402
                             PASSWORD, Lab)
    from lab.dovecot import MASTER_PASSWORD, MASTER_USER, make_message  # noqa: E402
    from lab import cyrus  # noqa: E402
    from lab import directory_data as dd  # noqa: E402
    from lab.isthmusctl import isthmusctl_path  # noqa: E402
else:
    from . import procs
    from .isthmusctl import isthmusctl_path
    from .cluster import (DEMO_ISTHMUS_PORTS, DEMO_NODE_PORTS, HOME_ISLAND, ISLANDS,
                          PASSWORD, Lab)
    from .dovecot import MASTER_PASSWORD, MASTER_USER, make_message
    from . import cyrus
    from . import directory_data as dd


# Isthmus' own listeners: name -> (protocol, port, TLS mode).
ISTHMUS_LISTENERS = {
    "imap": ("imap", 1143, "starttls"),
    "pop3": ("pop3", 1110, "starttls"),
    "imaps": ("imap", 1993, "implicit"),
    "pop3s": ("pop3", 1995, "implicit"),
    "lmtp": ("lmtp", 1024, "none"),
    "sieve": ("managesieve", 14190, "starttls"),
}


DIRECTORY_PORTS = {"ldap": 1389, "sql": 13306}


def _lab_module(name: str):
    """A lab module imported only when asked for (slapd, mariadb)."""
    import importlib
    return importlib.import_module(f"{__package__}.{name}" if __package__ else f"lab.{name}")


def start_directory(kind: str, root: str):
    """slapd or MariaDB on its demo port, seeded; returns (server, /directory)."""
    if kind == "ldap":
        server = _lab_module("slapd").Slapd(os.path.join(root, "slapd"), DIRECTORY_PORTS["ldap"])
        server.start()
        return server, {"type": "ldap", "file": None, "ldap": {
            "uris": [server.url], "bind_dn": dd.SERVICE_DN,
            "bind_password_file": server.service_pw_path, "base": dd.PEOPLE_DN}}
    server = _lab_module("mariadb").MariaDB(os.path.join(root, "mariadb"), DIRECTORY_PORTS["sql"])
    server.start()
    return server, {"type": "sql", "file": None, "sql": {
        "servers": [f"127.0.0.1:{server.port}"], "database": dd.SQL_DATABASE,
        "user": dd.SQL_USER, "password_file": server.password_path}}


class Stop(Exception):
    """Raised by the SIGINT/SIGTERM handler to unwind to the cleanup."""


def on_signal(signum, _frame):
    # Ignore further signals while we clean up, then unwind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


def taken_ports(isthmus_port: int, with_isthmus: bool, directory: str = "static") -> list[str]:
    """Human-readable descriptions of the demo ports that are not free."""
    wanted = [(f"{node} {proto}", port)
              for node, ports in DEMO_NODE_PORTS.items() for proto, port in ports.items()]
    if with_isthmus:
        for name, (_, port, _) in ISTHMUS_LISTENERS.items():
            wanted.append((f"isthmus {name}", isthmus_port if name == "imap" else port))
    if directory in DIRECTORY_PORTS:
        wanted.append((f"{directory} directory", DIRECTORY_PORTS[directory]))
    problems = []
    for what, port in wanted:
        # SO_REUSEADDR like the servers: connections of a previous demo
        # still in TIME_WAIT do not block the port.
        if not procs.port_is_free(port, reuse_addr=True):
            holder = procs.port_holder(port)
            problems.append(f"  port {port} (for {what}) is taken"
                            + (f": {holder}" if holder else ""))
    return problems


KIND_NAMES = {"dovecot": "Dovecot", "cyrus": "Cyrus"}


def welcome(user: str, island: str, kind: str = "dovecot") -> bytes:
    nodes = " + ".join(ISLANDS[island])
    return make_message(
        f"Welcome {user} - this message lives on island {island}",
        f"Hello {user},\n\n"
        f"this message was put straight into the mail store of island {island},\n"
        f"which is shared by the {KIND_NAMES[kind]} nodes {nodes}. It exists on no other\n"
        f"island: if you are reading it through isthmus, isthmus routed you to\n"
        f"island {island}.\n",
        to=user, sender="demo@isthmus.example.org")


def print_instructions(lab: Lab, isthmus_port: int, with_isthmus: bool) -> None:
    p = print
    p("")
    p("Isthmus demo is running.")
    p("")
    for island, names in ISLANDS.items():
        users = ", ".join(u for u, i in HOME_ISLAND.items() if i == island)
        p(f"  island {island} (store {lab.store(island)})  users: {users}")
        for name in names:
            ports = lab.node(name).ports
            p(f"    {name:8} imap {ports['imap']}  pop3 {ports['pop3']}  lmtp {ports['lmtp']}"
              f"   log {lab.node(name).log_path}")
    if with_isthmus:
        sieve = "  managesieve 14190 (STARTTLS)" if lab.kind == "dovecot" else ""
        p(f"  isthmus   imap 127.0.0.1:{isthmus_port} (STARTTLS)  pop3 1110 (STLS)  "
          f"imaps 1993  pop3s 1995  lmtp 1024{sieve}")
        p(f"            log {lab.isthmus.log_path}")
        p(f"            config {lab.isthmus.config_path}")
        p(f"            TLS certificate from the demo's CA {lab.ca_path}")
    p("")
    p(f'Every user\'s password is "{PASSWORD}". Each INBOX holds one welcome message naming')
    p("the island it is stored on. Try:")
    p("")
    port = isthmus_port if with_isthmus else DEMO_NODE_PORTS["a-left"]["imap"]
    if not with_isthmus:
        p("  (isthmus not started: these go straight to a-left / b-left)")
    p(f"  curl -u alice@example.org:{PASSWORD} 'imap://127.0.0.1:{port}/INBOX;UID=1'")
    bob_port = port if with_isthmus else DEMO_NODE_PORTS["b-left"]["imap"]
    p(f"  curl -u bob@example.org:{PASSWORD} 'imap://127.0.0.1:{bob_port}/INBOX;UID=1'")
    p(f"  curl -u carol@example.org:{PASSWORD} 'imap://127.0.0.1:{port}/' -X 'STATUS INBOX (MESSAGES)'")
    if with_isthmus:
        p(f"  curl -u dave@example.org:{PASSWORD} 'pop3://127.0.0.1:1110/1'")
        p(f"  curl --cacert {lab.ca_path} -u alice@example.org:{PASSWORD} "
          f"'imaps://127.0.0.1:1993/INBOX;UID=1'")
        p(f"  curl --cacert {lab.ca_path} -u bob@example.org:{PASSWORD} 'pop3s://127.0.0.1:1995/1'")
        p(f"  openssl s_client -quiet -starttls imap -CAfile {lab.ca_path} "
          f"-connect 127.0.0.1:{port}")
        p("  swaks --protocol LMTP --server 127.0.0.1:1024 --to alice@example.org "
          "--to bob@example.org")
        p("    (then fetch it again with curl: alice's copy is on island a, bob's on b)")
        if lab.kind == "dovecot":
            p(f"  sieve-connect --server 127.0.0.1 --port 14190 --tlscafile {lab.ca_path} "
              f"--tlshostname isthmus.lab.test --user alice@example.org --list")
    p("")
    p(f"""  /usr/bin/python3 -c "import imaplib; c = imaplib.IMAP4('127.0.0.1', {bob_port}); """
      f"""c.login('bob@example.org', '{PASSWORD}'); c.select('INBOX'); """
      f"""print(c.fetch('1', '(BODY[HEADER.FIELDS (SUBJECT)])')[1][0][1].decode())" """)
    p("")
    p("Press Ctrl-C to stop (or send SIGTERM); everything started here is stopped and")
    p(f"{lab.root} is removed.")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="the isthmus executable")
    ap.add_argument("--no-isthmus", action="store_true",
                    help="start only the four nodes")
    ap.add_argument("--nodes", choices=("dovecot", "cyrus"), default="dovecot",
                    help="the kind of mail node (default %(default)s)")
    ap.add_argument("--port", type=int, default=DEMO_ISTHMUS_PORTS["imap"],
                    help="isthmus IMAP port (default %(default)s)")
    ap.add_argument("--directory", choices=("static", "ldap", "sql"), default="static",
                    help="where isthmus finds each user's island (default %(default)s)")
    ap.add_argument("--auth", choices=("backend", "directory"), default="backend",
                    help="who checks passwords: the nodes, or isthmus against the "
                         "directory, logging in to nodes as their master user")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp dir (logs, configs, stores) at exit")
    args = ap.parse_args()
    with_isthmus = not args.no_isthmus
    if with_isthmus:
        if not args.binary:
            ap.error("--binary PATH is required (or --no-isthmus)")
        if not os.access(args.binary, os.X_OK):
            print(f"demo: isthmus binary not found or not executable: {args.binary}",
                  file=sys.stderr)
            return 1
    if args.keep:
        os.environ["ISTHMUS_KEEP_LAB"] = "1"
    if args.auth == "directory" and args.directory == "static":
        ap.error("--auth directory needs --directory ldap or sql")

    problems = taken_ports(args.port, with_isthmus, args.directory)
    if problems:
        print("demo: cannot start, these ports are in use:", file=sys.stderr)
        print("\n".join(problems), file=sys.stderr)
        print("Stop whatever holds them (an earlier demo?) and try again.", file=sys.stderr)
        return 1

    # Our own handlers (installed before the lab, so procs leaves them be).
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    lab = None
    directory_server = None
    try:
        kind = KIND_NAMES[args.nodes]
        print(f"demo: starting {kind} nodes a-left, a-right, b-left, b-right ...", flush=True)
        lab = Lab(DEMO_NODE_PORTS, isthmus_ports={"imap": args.port}, tls=True, kind=args.nodes,
                  sieve=args.nodes == "dovecot")
        lab.start()
        for user, island in HOME_ISLAND.items():
            lab.put_message(user, welcome(user, island, args.nodes))
        if with_isthmus:
            print(f"demo: starting isthmus ({args.binary}) on 127.0.0.1:{args.port} ...",
                  flush=True)
            cert = lab.isthmus_cert
            listeners = [{"name": name, "protocol": proto, "address": "127.0.0.1",
                          "port": args.port if name == "imap" else port, "tls": tls}
                         for name, (proto, port, tls) in ISTHMUS_LISTENERS.items()
                         # ManageSieve: Dovecot's Pigeonhole nodes only, for now
                         if proto != "managesieve" or args.nodes == "dovecot"]
            # The lab turns active health checks off for tests; the demo
            # shows the real thing (docs/health.md).
            overrides = {"health": {"active": True},
                         "admin": {"socket": os.path.join(lab.root, "admin.sock")}}
            if args.directory != "static":
                print(f"demo: starting the {args.directory} directory on 127.0.0.1:"
                      f"{DIRECTORY_PORTS[args.directory]} ...", flush=True)
                directory_server, overrides["directory"] = start_directory(args.directory,
                                                                           lab.root)
            if args.auth == "directory":
                master_pw = os.path.join(lab.root, "master.pw")
                # Dovecot's master passdb, or Cyrus' proxyservers (SASL
                # PLAIN with an authzid): docs/nodes-*.md.
                master_user, master_password = (
                    (cyrus.MASTER_USER, cyrus.MASTER_PASSWORD) if args.nodes == "cyrus"
                    else (MASTER_USER, MASTER_PASSWORD))
                with open(master_pw, "w") as f:
                    f.write(master_password + "\n")
                overrides["auth"] = {"mode": "directory", "master_user": master_user,
                                     "master_password_file": master_pw,
                                     "master_style": lab.master_style}
            lab.start_isthmus(args.binary, listeners=listeners,
                              tls={"certificate": cert.cert_path, "key": cert.key_path},
                              **overrides)
        print_instructions(lab, args.port, with_isthmus)
        if with_isthmus:
            admin_socket = os.path.join(lab.root, "admin.sock")
            # isthmusctl is built beside the daemon (target isthmusctl).
            beside = os.path.join(os.path.dirname(os.path.abspath(args.binary)), "isthmusctl")
            ctl = beside if os.path.exists(beside) else (isthmusctl_path() or "isthmusctl")
            print(f"Admin API: curl --unix-socket {admin_socket} http://isthmus/v1/nodes\n"
                  f"           {ctl} --instance "
                  f"{admin_socket} nodes   (docs/operations.md)", flush=True)
        if directory_server is not None:
            print(f"Directory: {args.directory} on 127.0.0.1:{DIRECTORY_PORTS[args.directory]}"
                  f" (log {getattr(directory_server, 'log_path', '-')}); also seeded: "
                  "eve@example.org (disabled), mallory@example.org (moving).")
            if args.auth == "directory":
                print(f"Passwords are checked by isthmus; nodes see the master user "
                      f"{MASTER_USER!r}.")
            sys.stdout.flush()

        # Wait for a signal, watching that what we started keeps running.
        while True:
            time.sleep(0.5)
            if with_isthmus and not lab.isthmus.running():
                print(f"\ndemo: isthmus exited with status {lab.isthmus.returncode()}; "
                      f"last lines of {lab.isthmus.log_path}:", file=sys.stderr)
                print(procs.tail(lab.isthmus.log_path, 20), file=sys.stderr)
                return 1
            down = [n.name for n in lab.nodes.values() if not n.running()]
            if down:
                print(f"\ndemo: {kind} node(s) {', '.join(down)} exited; see their logs",
                      file=sys.stderr)
                return 1
    except Stop as e:
        print(f"\ndemo: {e}, stopping ...", flush=True)
        return 0
    except RuntimeError as e:  # a node or isthmus did not start
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if directory_server is not None:
            directory_server.stop()
        if lab is not None:
            lab.close()
            print("demo: stopped; temp dir " +
                  ("kept: " + lab.root if os.environ.get("ISTHMUS_KEEP_LAB") == "1"
                   else "removed"), flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""A throw-away test PKI made with the ``openssl`` command line (OpenSSL 3).

    ca = make_ca(dir)                                  # key + self-signed cert
    leaf = ca.issue("a-left", dns=["a-left.lab.test"], ips=["127.0.0.1"])
    leaf.cert_path, leaf.key_path                      # PEM files in dir
    ca.context()                                       # client SSLContext trusting ca

For the negative tests:

    make_ca(dir, "Other CA").issue(...)     a cert from a CA nobody trusts
    ca.issue("x", dns=["wrong.lab.test"])   a cert for the wrong name
    ca.issue("x", ..., expired=True)        valid from 30 to 1 days ago

Keys are EC P-256 (generated in a few ms). A leaf is one ``openssl req -x509
-CA`` run (~10 ms here, mostly fork+exec); an expired leaf takes two runs
(``openssl req`` + ``openssl ca -startdate/-enddate``: OpenSSL 3.0's ``x509``
and ``req`` have no option for a notBefore in the past). Nothing is cached:
every Lab makes its own CA. Leaves carry basicConstraints CA:FALSE, keyUsage
digitalSignature, extendedKeyUsage serverAuth+clientAuth and the SANs given;
the CN is the leaf's name (clients ignore the CN when a SAN is present).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
import subprocess
from dataclasses import dataclass, field
from typing import Iterable, Optional

OPENSSL = "openssl"
CURVE = "prime256v1"  # P-256

_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def _run(argv: list[str], cwd: str) -> None:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr}{r.stdout}")


def _write(path: str, text: str, mode: int = 0o644) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _dn_value(text: str) -> str:
    # openssl config values: keep it to a plain, unquoted string.
    if not re.match(r"^[A-Za-z0-9 ._@-]+$", text):
        raise ValueError(f"unsupported characters in a certificate name: {text!r}")
    return text


@dataclass(frozen=True)
class Leaf:
    """A certificate and its key, as PEM files."""
    name: str
    cert_path: str
    key_path: str
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    ca_cert_path: str = ""
    expired: bool = False

    def pem_path(self) -> str:
        """cert + key in one file (what haproxy's ``crt`` wants); written on
        first use next to the cert."""
        path = self.cert_path[:-len(".crt")] + ".pem" if self.cert_path.endswith(".crt") \
            else self.cert_path + ".pem"
        if not os.path.exists(path):
            with open(self.cert_path) as c, open(self.key_path) as k:
                _write(path, c.read() + k.read(), 0o600)
        return path

    def server_context(self) -> ssl.SSLContext:
        """A server-side SSLContext presenting this certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


@dataclass
class Ca:
    """A test certificate authority in DIR (see make_ca())."""
    dir: str
    name: str
    cert_path: str
    key_path: str
    _leaves: dict = field(default_factory=dict, repr=False)

    @property
    def path(self) -> str:
        """Path of the CA certificate (what a client's ``ca_file`` wants)."""
        return self.cert_path

    def issue(self, name: str, dns: Iterable[str] = (), ips: Iterable[str] = (), *,
              days: int = 30, expired: bool = False) -> Leaf:
        """A leaf certificate for NAME signed by this CA, with
        subjectAltName DNS:... for DNS and IP:... for IPS. Files
        DIR/NAME.crt and DIR/NAME.key (NAME must be a file-name-safe
        token; issuing the same name twice replaces the files).
        EXPIRED: valid from 30 days ago until yesterday."""
        if not _SAFE.match(name):
            raise ValueError(f"leaf name must match {_SAFE.pattern}: {name!r}")
        dns, ips = tuple(dns), tuple(ips)
        for ip in ips:
            ipaddress.ip_address(ip)  # raises on garbage
        san = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
        cert = os.path.join(self.dir, f"{name}.crt")
        key = os.path.join(self.dir, f"{name}.key")
        cnf = os.path.join(self.dir, f"{name}.cnf")
        if cert == self.cert_path:
            raise ValueError(f"leaf name {name!r} would overwrite the CA's files")
        _write(cnf, _leaf_config(name, san))
        if not expired:
            _run([OPENSSL, "req", "-x509", "-config", cnf, "-extensions", "leaf",
                  "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-noenc",
                  "-keyout", key, "-out", cert, "-days", str(days),
                  "-CA", self.cert_path, "-CAkey", self.key_path], self.dir)
        else:
            self._issue_expired(name, cnf, cert, key)
        os.chmod(key, 0o600)
        os.chmod(cert, 0o644)
        leaf = Leaf(name, cert, key, dns, ips, self.cert_path, expired)
        self._leaves[name] = leaf
        return leaf

    def _issue_expired(self, name: str, cnf: str, cert: str, key: str) -> None:
        """``openssl ca`` is the one OpenSSL 3.0 tool that takes a notBefore."""
        db = os.path.join(self.dir, "ca-db")
        os.makedirs(db, exist_ok=True)
        index = os.path.join(db, "index.txt")
        if not os.path.exists(index):
            open(index, "w").close()
            _write(os.path.join(db, "serial"), "1000\n")
        csr = os.path.join(self.dir, f"{name}.csr")
        _run([OPENSSL, "req", "-new", "-config", cnf, "-newkey", "ec",
              "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-noenc",
              "-keyout", key, "-out", csr], self.dir)
        now = datetime.datetime.now(datetime.timezone.utc)
        fmt = "%Y%m%d%H%M%SZ"
        start = (now - datetime.timedelta(days=30)).strftime(fmt)
        end = (now - datetime.timedelta(days=1)).strftime(fmt)
        _run([OPENSSL, "ca", "-config", cnf, "-name", "lab_ca", "-batch", "-notext",
              "-extensions", "leaf", "-startdate", start, "-enddate", end,
              "-cert", self.cert_path, "-keyfile", self.key_path,
              "-outdir", db, "-in", csr, "-out", cert], self.dir)

    def context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        """A client SSLContext trusting only this CA (hostname checked
        unless CHECK_HOSTNAME=False)."""
        return client_context(self.cert_path, check_hostname=check_hostname)

    def leaf(self, name: str) -> Leaf:
        return self._leaves[name]


def _leaf_config(name: str, san: str) -> str:
    ext = [
        "basicConstraints = critical, CA:FALSE",
        "keyUsage = critical, digitalSignature, keyEncipherment",
        "extendedKeyUsage = serverAuth, clientAuth",
        "subjectKeyIdentifier = hash",
        "authorityKeyIdentifier = keyid",
    ]
    if san:
        ext.append(f"subjectAltName = {san}")
    ext_text = "\n".join(ext)
    return f"""\
# written by tests/lab/tls.py
[ req ]
prompt = no
distinguished_name = dn
[ dn ]
CN = {_dn_value(name)}
O = Isthmus lab
[ leaf ]
{ext_text}
# for `openssl ca` (expired leaves only)
[ lab_ca ]
database = ca-db/index.txt
serial = ca-db/serial
new_certs_dir = ca-db
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no
[ policy_any ]
commonName = supplied
organizationName = optional
"""


def make_ca(dir: str, name: str = "Isthmus Lab CA", *, days: int = 30) -> Ca:
    """A new CA in DIR (created if missing): a P-256 key and a self-signed
    certificate, files ``<slug>.key`` / ``<slug>.crt`` where slug is NAME
    lower-cased with spaces as dashes ("isthmus-lab-ca"; two CAs of
    different names can share DIR)."""
    dir = os.path.abspath(dir)
    os.makedirs(dir, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "ca"
    cert = os.path.join(dir, f"{slug}.crt")
    key = os.path.join(dir, f"{slug}.key")
    cnf = os.path.join(dir, f"{slug}.cnf")
    _write(cnf, f"""\
# written by tests/lab/tls.py
[ req ]
prompt = no
distinguished_name = dn
[ dn ]
CN = {_dn_value(name)}
O = Isthmus lab
[ ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
""")
    _run([OPENSSL, "req", "-x509", "-config", cnf, "-extensions", "ca",
          "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{CURVE}", "-noenc",
          "-keyout", key, "-out", cert, "-days", str(days)], dir)
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return Ca(dir, name, cert, key)


def client_context(ca_path: Optional[str] = None, *, check_hostname: bool = True,
                   cert: Optional[Leaf] = None) -> ssl.SSLContext:
    """A client SSLContext: trusts CA_PATH (or nothing -- and verifies
    nothing -- if None), TLS 1.2+, optional client certificate CERT."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_path is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(ca_path)
        ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(cert.cert_path, cert.key_path)
    return ctx


def cert_info(cert_path: str) -> dict:
    """subject, issuer, notBefore, notAfter and SANs of a PEM certificate
    (parsed by openssl; for assertions and error messages)."""
    r = subprocess.run([OPENSSL, "x509", "-in", cert_path, "-noout", "-subject", "-issuer",
                        "-dates", "-ext", "subjectAltName", "-nameopt", "RFC2253"],
                       capture_output=True, text=True, check=True)
    info: dict = {"san": []}
    lines = r.stdout.splitlines()
    for i, line in enumerate(lines):
        if "=" in line and line.split("=", 1)[0] in ("subject", "issuer", "notBefore", "notAfter"):
            k, v = line.split("=", 1)
            info[k] = v.strip()
        elif "Subject Alternative Name" in line and i + 1 < len(lines):
            info["san"] = [s.strip() for s in lines[i + 1].split(",")]
    return info


__all__ = ["Ca", "Leaf", "make_ca", "client_context", "cert_info"]

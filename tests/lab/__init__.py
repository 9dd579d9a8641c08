"""Isthmus test lab: real Dovecot nodes (and the isthmus binary) on loopback.

Modules:
  procs     process and port helpers; everything started is cleaned up at exit
  dovecot   DovecotNode (one Dovecot instance; optional TLS: STARTTLS,
            imaps/pop3s, require_tls), node.logins() (the client address
            each login was credited to), put_message()
  tls       a throw-away test PKI via the openssl CLI: make_ca(dir) -> Ca,
            ca.issue(name, dns=, ips=, expired=) -> Leaf(cert_path, key_path)
  haproxy   Haproxy: haproxy in TCP mode, optionally sending PROXY v1/v2
  isthmus   Isthmus (the proxy under test, run from its binary)
  cluster   Lab: islands a (a-left + a-right) and b (b-left + b-right), each
            pair sharing one store, users alice/carol on a and bob/dave on b;
            Lab(tls=True, require_tls=[...]) adds a CA and node certificates
  gate      a fault-injecting TCP gate between two endpoints (hang, drop,
            close mid-stream)
  postfix   a real Postfix delivering over LMTP to Isthmus
  directory_data  the users the directories are seeded with (one table,
            LDIF and SQL renderings; crypt(3) hashes; ABSENT_LOOKUPS)
  slapd     a real slapd (dc=example,dc=org, the isthmus schema; optional
            StartTLS/ldaps), stop/pause/resume for outage tests
  mariadb   a real MariaDB with the CalMail-style schema, seeded; a template
            datadir makes restarts fast; stop/pause/resume
  demo      the demo behind deploy/demo.sh
  selfcheck checks the Dovecot, TLS and haproxy side of the lab for real and
            prints timings: /usr/bin/python3 tests/lab/selfcheck.py

Import as ``lab`` with tests/ on sys.path (or as ``tests.lab`` from the repo
root); the modules import each other relatively. Use /usr/bin/python3: stdlib
only, and the pyenv shim costs ~0.3 s per start (shared/real-servers.md).
"""

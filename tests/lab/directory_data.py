"""The users the lab's directories (slapd.py, mariadb.py) are seeded with.

One table, two renderings: ``ldif()`` for slapd, ``sql_seed()`` for MariaDB.
Every user's password is "demo" (``PASSWORD``), stored as a crypt(3) hash in
one of the schemes Isthmus must verify in "directory" authentication mode:

    scheme          stored as (SQL ``account.password``)   Dovecot writes
    SHA512-CRYPT    $6$<salt>$...                           {SHA512-CRYPT}$6$...
    BLF-CRYPT       $2b$05$... (libxcrypt) / $2y$05$...     {BLF-CRYPT}$2y$05$...
    yescrypt        $y$j9T$<salt>$...                       {CRYPT}$y$... (2.3 has
                                                            no YESCRYPT name)

The hashes are fixed literals (made once with libxcrypt's crypt_gensalt() +
crypt() on Debian 12), so the data is identical run after run and tests
may compare them. ``hash_password()`` makes new ones, ``verify()`` checks
one -- both through the system's crypt(3) (libxcrypt) with ctypes, which
does not depend on Python's deprecated ``crypt`` module (gone in 3.13).

In LDAP, ``userPassword`` holds ``{CRYPT}<the same crypt string>`` (slapd
hands {CRYPT} to crypt(3), so $6$, $2b$, $2y$ and $y$ all work) or, for
dave, ``{SSHA}`` -- slapd verifies it, Isthmus only binds.

``ABSENT_LOOKUPS`` are login names that must *not* resolve: injection
attempts against an LDAP filter or an SQL string, wildcards, and names that
differ from a stored one only in a way a lax collation would ignore.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Iterable, Optional

PASSWORD = "demo"

# -- LDAP layout --------------------------------------------------------------
SUFFIX = "dc=example,dc=org"
PEOPLE_DN = f"ou=people,{SUFFIX}"
SERVICES_DN = f"ou=services,{SUFFIX}"
SERVICE_DN = f"cn=isthmus,{SERVICES_DN}"     # what Isthmus binds as
SERVICE_PASSWORD = "isthmus-lab-ldap-secret"
ADMIN_DN = f"cn=admin,{SUFFIX}"              # slapd's rootdn (tests' modify())
ADMIN_PASSWORD = "lab-admin-secret"

# -- SQL layout ---------------------------------------------------------------
SQL_DATABASE = "mail"
SQL_USER = "isthmus"                         # @'127.0.0.1' and @'localhost'
SQL_PASSWORD = "isthmus-lab-sql-secret"

STATES = ("active", "disabled", "moving")

# -- Hashes of "demo" ---------------------------------------------------------
SHA512_CRYPT = ("$6$VaCnbyo/Q/CFYQno$ie6/lMOO.0pzvvRPEgWqAQ/1eAt4fombFgHytuD9ztRc"
                "CE7vyl5RF0gEpLKCBsGuG/7ZxCAooUYxcGkgkWVe21")
SHA256_CRYPT = "$5$AbVMqSJSP1oZKNal$wj5uCCo2Yjgujj4Eg/Xq/bE6HoxHeMfOzCDHTF.NPf."
BCRYPT_2B = "$2b$05$HCTTTuhLYWjL7XVlMgjOm.P7kIxJTRijogIo3B4cpN.LfPdmi9J5."
BCRYPT_2Y = "$2y$05$6Q62wVxNNqFWquWxnioGk.rB6BkhtyDezGvd3bNGJLXdlK176li0u"
# yescrypt at libxcrypt's default cost (j9T): ~90 ms of CPU per check here.
YESCRYPT = "$y$j9T$fmuDjZ.VqH4hu76gXpfoV0$Tiu/u6nJpc3DYdsdQVch8BFbHtzscX2WMSxYvcOrlk2"

# Every form of "demo" a directory may hold, by a name tests can use.
HASHES = {
    "SHA512-CRYPT": SHA512_CRYPT,
    "SHA256-CRYPT": SHA256_CRYPT,
    "BLF-CRYPT-2b": BCRYPT_2B,
    "BLF-CRYPT-2y": BCRYPT_2Y,
    "YESCRYPT": YESCRYPT,
    # As Dovecot's doveadm pw writes them:
    "{SHA512-CRYPT}": "{SHA512-CRYPT}" + SHA512_CRYPT,
    "{SHA256-CRYPT}": "{SHA256-CRYPT}" + SHA256_CRYPT,
    "{BLF-CRYPT}": "{BLF-CRYPT}" + BCRYPT_2Y,
    "{CRYPT}": "{CRYPT}" + YESCRYPT,
}

# Dovecot scheme prefixes whose payload is a crypt(3) string.
CRYPT_PREFIXES = ("{CRYPT}", "{SHA512-CRYPT}", "{SHA256-CRYPT}", "{BLF-CRYPT}",
                  "{MD5-CRYPT}", "{DES-CRYPT}")


@dataclass(frozen=True)
class User:
    login: str                     # the full address, as looked up
    island: str
    password_hash: str             # SQL account.password (maybe {SCHEME}-prefixed)
    state: str = "active"
    node_login: Optional[str] = None   # NULL/absent: log in to the node as `login`
    ldap_scheme: str = "CRYPT"     # userPassword: {CRYPT}<crypt string> or {SSHA}

    @property
    def localpart(self) -> str:
        return self.login.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.login.rpartition("@")[2]

    @property
    def uid(self) -> str:
        """The LDAP uid (and RDN value): the full address, unique across
        domains (zoe@other.test and a zoe@example.org could both exist)."""
        return self.login

    @property
    def dn(self) -> str:
        return f"uid={ldap_dn_escape(self.uid)},{PEOPLE_DN}"

    @property
    def effective_node_login(self) -> str:
        return self.node_login or self.login

    @property
    def crypt_string(self) -> str:
        """The hash without a Dovecot {SCHEME} prefix (what crypt(3) takes)."""
        return strip_scheme(self.password_hash)

    @property
    def ldap_password(self) -> str:
        if self.ldap_scheme == "SSHA":
            return ssha(PASSWORD, salt=self.login.encode()[:8])
        return "{CRYPT}" + self.crypt_string


LONG_USER = "jürgen.müller-lüdenscheidt.ñandú.straße.postfach@example.org"  # 54-octet localpart

USERS: tuple[User, ...] = (
    # The lab's four (cluster.py HOME_ISLAND), each in another scheme.
    User("alice@example.org", "a", HASHES["{SHA512-CRYPT}"]),
    User("carol@example.org", "a", BCRYPT_2B),
    User("bob@example.org", "b", HASHES["{BLF-CRYPT}"]),
    User("dave@example.org", "b", SHA512_CRYPT, ldap_scheme="SSHA"),
    # States other than active.
    User("eve@example.org", "a", SHA512_CRYPT, state="disabled"),
    User("mallory@example.org", "a", SHA512_CRYPT, state="moving"),
    # Another domain; yescrypt (bare in SQL, {CRYPT} in LDAP).
    User("zoe@other.test", "b", YESCRYPT),
    # A long, non-ASCII (UTF-8, RFC 6531) local part.
    User(LONG_USER, "b", HASHES["{CRYPT}"]),
    # Logs in to its nodes under another name (a legacy login); the lab's
    # Dovecot nodes do not know that name unless a test adds it.
    User("ivan@example.org", "a", HASHES["{SHA256-CRYPT}"],
         node_login="ivan.legacy@example.org"),
)

BY_LOGIN = {u.login: u for u in USERS}

# Lookups that must find nothing (none of these is stored).
ABSENT_LOOKUPS: tuple[str, ...] = (
    "nobody@example.org",
    "alice@other.test",                       # right local part, wrong domain
    "*@example.org",                          # LDAP wildcard
    "*",
    "alice*@example.org",
    "alice@example.org)(uid=*",               # LDAP filter injection
    "*)(|(mailIsland=*",
    "alice)(&)@example.org",
    "\\2a@example.org",                       # an RFC 4515 escape, literally
    "alice' OR '1'='1@example.org",           # SQL injection
    "alice'-- @example.org",
    "x'; DROP TABLE account; --@example.org",
    "%@example.org",                          # SQL LIKE wildcards
    "_lice@example.org",
    "alice\x00@example.org",                  # NUL
    "jurgen.muller-ludenscheidt.nandu.strasse.postfach@example.org",  # accents folded
    "alice @example.org",                     # PAD SPACE collations would match
)


# -- LDAP helpers -------------------------------------------------------------

def ldap_dn_escape(value: str) -> str:
    """Escape an attribute value for a DN (RFC 4514 section 2.4)."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        elif ch == "\x00":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def ldap_filter_escape(value: str) -> str:
    """Escape an assertion value for a search filter (RFC 4515 section 3)."""
    return "".join(f"\\{ord(ch):02x}" if ch in "*()\\\x00" else ch for ch in value)


def ssha(password: str, salt: bytes = b"labsalt!") -> str:
    """An RFC 2307-style {SSHA} value (SHA-1 of password+salt, then salt)."""
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


_LDIF_SAFE = re.compile(r"^[\x01-\x09\x0b-\x0c\x0e-\x1f\x21-\x39\x3b\x3d-\x7f][\x01-\x09\x0b-\x0c\x0e-\x7f]*$")


def ldif_line(attr: str, value: str) -> str:
    """``attr: value``, or ``attr:: base64`` when RFC 2849 requires it
    (non-ASCII, a leading space/colon/'<', a trailing space)."""
    if value == "" or (_LDIF_SAFE.match(value) and not value.endswith(" ")):
        return f"{attr}: {value}"
    return f"{attr}:: {base64.b64encode(value.encode()).decode()}"


def _entry(dn: str, attrs: Iterable[tuple[str, str]]) -> str:
    return "\n".join([ldif_line("dn", dn)] + [ldif_line(a, v) for a, v in attrs]) + "\n"


def user_entry(u: User) -> str:
    attrs = [("objectClass", "inetOrgPerson"), ("objectClass", "mailIslandUser"),
             ("uid", u.uid), ("cn", u.localpart), ("sn", u.localpart)]
    if u.login.isascii():
        # mail is an IA5String (RFC 4524): an equality filter with a
        # non-ASCII value never matches (slapadd stores one anyway). The
        # lookup key is therefore uid (a UTF-8 Directory String).
        attrs.append(("mail", u.login))
    attrs += [("userPassword", u.ldap_password),
              ("mailIsland", u.island), ("mailAccountState", u.state)]
    if u.node_login:
        attrs.append(("mailNodeLogin", u.node_login))
    return _entry(u.dn, attrs)


def ldif(users: Iterable[User] = USERS) -> str:
    """The whole directory tree for slapadd: suffix, ou=people, ou=services,
    the service entry (SERVICE_DN) and one entry per user."""
    entries = [
        _entry(SUFFIX, [("objectClass", "dcObject"), ("objectClass", "organization"),
                        ("dc", "example"), ("o", "Isthmus lab")]),
        _entry(PEOPLE_DN, [("objectClass", "organizationalUnit"), ("ou", "people")]),
        _entry(SERVICES_DN, [("objectClass", "organizationalUnit"), ("ou", "services")]),
        _entry(SERVICE_DN, [("objectClass", "applicationProcess"),
                            ("objectClass", "simpleSecurityObject"),
                            ("cn", "isthmus"),
                            ("userPassword", ssha(SERVICE_PASSWORD))]),
    ]
    entries += [user_entry(u) for u in users]
    return "\n".join(entries)


# -- SQL helpers --------------------------------------------------------------

def sql_quote(value: Optional[str]) -> str:
    """A MariaDB string literal (or NULL); for seeding from trusted data
    only -- Isthmus itself uses prepared statements."""
    if value is None:
        return "NULL"
    return "'" + value.replace("\\", "\\\\").replace("'", "''").replace("\x00", "\\0") + "'"


def sql_seed(users: Iterable[User] = USERS) -> str:
    """INSERTs for the domain and account tables (deploy/sql/calmail-schema.sql)."""
    users = list(users)
    domains = sorted({u.domain for u in users})
    lines = ["INSERT INTO domain (name) VALUES "
             + ", ".join(f"({sql_quote(d)})" for d in domains) + ";"]
    for u in users:
        lines.append(
            "INSERT INTO account (localpart, domain_id, state, island, password, node_login) "
            f"SELECT {sql_quote(u.localpart)}, d.id, {sql_quote(u.state)}, {sql_quote(u.island)}, "
            f"{sql_quote(u.password_hash)}, {sql_quote(u.node_login)} "
            f"FROM domain d WHERE d.name = {sql_quote(u.domain)};")
    return "\n".join(lines) + "\n"


# -- crypt(3) -----------------------------------------------------------------

_libcrypt = None
_crypt_lock = threading.Lock()  # crypt() and crypt_gensalt() use static buffers


def _lib():
    global _libcrypt
    if _libcrypt is None:
        lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
        lib.crypt.restype = ctypes.c_char_p
        lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.crypt_gensalt.restype = ctypes.c_char_p
        lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                      ctypes.c_int]
        _libcrypt = lib
    return _libcrypt


def crypt(password: str, setting: str) -> Optional[str]:
    """crypt(3) of PASSWORD with SETTING (a salt or a whole hash); None if
    the scheme is unsupported (libxcrypt returns NULL or a '*' string)."""
    with _crypt_lock:
        out = _lib().crypt(password.encode(), setting.encode())
    if not out or out.startswith(b"*"):
        return None
    return out.decode()


def hash_password(password: str, prefix: str = "$6$", cost: int = 0) -> str:
    """A new crypt(3) hash: PREFIX "$6$", "$5$", "$2b$", "$2y$", "$y$"...;
    COST 0 = libxcrypt's default for the scheme."""
    with _crypt_lock:
        setting = _lib().crypt_gensalt(prefix.encode(), cost, None, 0)
    if not setting:
        raise ValueError(f"libxcrypt cannot make a {prefix} salt")
    out = crypt(password, setting.decode())
    if out is None:
        raise ValueError(f"crypt(3) does not support {prefix}")
    return out


def strip_scheme(stored: str) -> str:
    """The crypt string inside a Dovecot-style ``{SCHEME}`` value."""
    for p in CRYPT_PREFIXES:
        if stored.upper().startswith(p):
            return stored[len(p):]
    return stored


def verify(password: str, stored: str) -> bool:
    """True if STORED (a crypt string, maybe {SCHEME}-prefixed) is a hash of
    PASSWORD. Only the crypt(3) family; raises on other {SCHEME}s."""
    if stored.startswith("{") and not stored.upper().startswith(CRYPT_PREFIXES):
        raise ValueError(f"not a crypt scheme: {stored.split('}')[0]}}}")
    bare = strip_scheme(stored)
    out = crypt(password, bare)
    return out is not None and out == bare


__all__ = [
    "PASSWORD", "SUFFIX", "PEOPLE_DN", "SERVICES_DN", "SERVICE_DN", "SERVICE_PASSWORD",
    "ADMIN_DN", "ADMIN_PASSWORD", "SQL_DATABASE", "SQL_USER", "SQL_PASSWORD", "STATES",
    "HASHES", "User", "USERS", "BY_LOGIN", "LONG_USER", "ABSENT_LOOKUPS",
    "ldap_dn_escape", "ldap_filter_escape", "ssha", "ldif", "user_entry", "sql_quote",
    "sql_seed", "crypt", "hash_password", "strip_scheme", "verify",
]

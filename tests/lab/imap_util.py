"""IMAP helpers for the tests: imaplib's answers regrouped and parsed
(responses, FETCH items), quoting, UID sets, dates and Message-IDs. The
mover is C++ (isthmus-move); these were its Python predecessor's and stay
for the tests' own IMAP clients (imaplib)."""

from __future__ import annotations

import datetime
import re


class ImapError(Exception):
    pass


class Lit(bytes):
    """A literal in a parsed IMAP response."""


_LITERAL_MARK = re.compile(rb"\{(\d+)\+?\}\s*$")
_SECTION_ATOMS = {b"BODY", b"BODY.PEEK", b"BINARY", b"BINARY.PEEK", b"BINARY.SIZE"}
_DATE = re.compile(r" ?[0-9]{1,2}-[A-Za-z]{3}-[0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} [+-][0-9]{4}\Z")


def valid_flag(flag: str) -> bool:
    """An RFC 3501 flag: atom or "\\" atom; ATOM-CHAR is a 7-bit printable
    character other than ( ) { % * " \\ ] and space."""
    body = flag[1:] if flag.startswith("\\") else flag
    return bool(body) and all(0x21 <= ord(c) <= 0x7E and c not in '(){%*"\\]' for c in body)


def imap_responses(data) -> list[list]:
    """imaplib's untagged DATA regrouped into responses: each a list of text
    pieces and Lit()s. imaplib gives one (text, literal) tuple per literal,
    then the rest of the line as bytes."""
    out, cur = [], []
    for item in data or []:
        if item is None:
            continue
        if isinstance(item, tuple):
            cur.append(item[0])
            cur.append(Lit(item[1]))
        else:
            cur.append(item)
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def imap_parse(parts: list) -> list:
    """One response's pieces -> nested lists of bytes (atoms, strings,
    literals) and None (NIL)."""
    stack: list[list] = [[]]
    for k, part in enumerate(parts):
        if isinstance(part, Lit):
            stack[-1].append(bytes(part))
            continue
        text = bytes(part)
        if k + 1 < len(parts) and isinstance(parts[k + 1], Lit):
            m = _LITERAL_MARK.search(text)
            if m:
                text = text[:m.start()]
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c in b" \t\r\n":
                i += 1
            elif c == 0x28:  # (
                stack.append([])
                i += 1
            elif c == 0x29:  # )
                if len(stack) > 1:
                    done = stack.pop()
                    stack[-1].append(done)
                i += 1
            elif c == 0x22:  # "
                j, buf = i + 1, bytearray()
                while j < n and text[j] != 0x22:
                    if text[j] == 0x5C and j + 1 < n:
                        j += 1
                    buf.append(text[j])
                    j += 1
                stack[-1].append(bytes(buf))
                i = j + 1
            else:
                # "[" opens a section only right after BODY, BODY.PEEK or
                # BINARY[.PEEK|.SIZE] (BODY[HEADER.FIELDS (MESSAGE-ID)]):
                # elsewhere (a keyword such as foo[bar) it is an atom char.
                j, depth = i, 0
                while j < n:
                    ch = text[j]
                    if depth == 0 and ch == 0x5B and text[i:j].upper() in _SECTION_ATOMS:
                        depth = 1
                    elif depth > 0 and ch == 0x5B:
                        depth += 1
                    elif depth > 0 and ch == 0x5D:
                        depth -= 1
                    elif depth <= 0 and ch in b" ()":
                        break
                    j += 1
                atom = text[i:j]
                stack[-1].append(None if atom.upper() == b"NIL" else atom)
                i = j
    while len(stack) > 1:
        done = stack.pop()
        stack[-1].append(done)
    return stack[0]


def imap_quote(name: str) -> str:
    """NAME as an IMAP quoted string. A name holding CR, LF or NUL cannot be
    quoted (and is refused, naming it, rather than sent as a broken or
    injected command)."""
    if any(c in name for c in "\r\n\0"):
        raise ImapError(f"folder {name!r} holds a CR, LF or NUL character: it cannot be "
                        f"named in an IMAP command safely; rename it on the source and "
                        f"run again")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uid_set(uids: list[int]) -> str:
    """[1,2,3,5] -> '1:3,5'."""
    out, start, prev = [], None, None
    for u in sorted(uids):
        if start is None:
            start = prev = u
        elif u == prev + 1:
            prev = u
        else:
            out.append(f"{start}:{prev}" if prev != start else str(start))
            start = prev = u
    if start is not None:
        out.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(out)


def internaldate_epoch(text: str) -> int | None:
    try:
        return int(datetime.datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z").timestamp())
    except ValueError:
        return None


def message_id_of(header: bytes | None) -> str | None:
    if not header:
        return None
    text = re.sub(r"\r?\n[ \t]+", " ", header.decode("latin-1"))
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "message-id":
            value = value.strip()
            return value or None
    return None


def fetch_items(resp: list) -> dict:
    parsed = imap_parse(resp)
    items = {}
    lst = next((p for p in parsed if isinstance(p, list)), None)
    if lst is None:
        return items
    for k in range(0, len(lst) - 1, 2):
        key = lst[k]
        if isinstance(key, bytes):
            items[key.decode("utf-8", "replace").upper()] = lst[k + 1]
    return items


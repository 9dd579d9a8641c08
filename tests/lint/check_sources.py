#!/usr/bin/env python3
"""Source rules the compiler does not enforce, checked on every test run.

1. No co_await in the condition of an `if` or `switch`. GCC 12.2 (Debian 12's
   compiler) miscompiles it: the coroutine later resumes at an invalid point
   and the process dies with SIGILL or corrupts its frame. Write
   `bool ok = co_await f(); if (!ok) ...` instead. (Found the hard way: the
   first IMAP login through Isthmus crashed; a 10-line reproducer without
   Boost shows the same wrong result.)
2. No co_await inside `?:`, `&&` or `||`: GCC has had bugs there too, and a
   statement of its own reads better anyway.
3. No lambda in the same expression as a co_await: GCC 12 double-frees a
   capturing lambda's captures there (reported by other projects); create
   the lambda in a statement of its own.

usage: check_sources.py [ROOT]   (exit 1 and one line per problem if any)
"""
import os
import re
import sys

FOLDERS = ("common", "config", "backends", "director", "proxy", "app", "ldap", "sql", "admin",
           "ctl", "bench", "tests/unit")


def strip_comments_and_strings(text):
    """Blank out comments and string/char literals, keeping line breaks."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == 'R' and text.startswith('R"', i):
            m = re.match(r'R"([^(]*)\(', text[i:])
            if not m:
                out.append(c)
                i += 1
                continue
            end = text.find(")" + m.group(1) + '"', i)
            end = n if end < 0 else end + len(m.group(1)) + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:end]))
            i = end
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + " " * (j - i - 1) + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def balanced(text, open_at):
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:j]
    return text[open_at + 1:]


def expression_start(text, pos):
    """Where the expression holding text[pos] starts: after the last `;`,
    `{` or `}`, or after the condition of an if/while/for/switch that the
    expression is the body of, or after an unmatched `(` it sits inside."""
    i = pos - 1
    while i >= 0:
        ch = text[i]
        if ch in ";{}":
            return i + 1
        if ch == "(":
            return i + 1  # unmatched: we are inside these parentheses
        if ch == ")":
            depth, j = 0, i
            while j >= 0:
                if text[j] == ")":
                    depth += 1
                elif text[j] == "(":
                    depth -= 1
                    if depth == 0:
                        break
                j -= 1
            before = text[:j].rstrip()
            if re.search(r"\b(if|while|for|switch)$", before):
                return i + 1
            i = j - 1
            continue
        i -= 1
    return 0


def check_file(path, shown):
    text = strip_comments_and_strings(open(path, encoding="utf-8").read())
    problems = []
    for m in re.finditer(r"\b(if|switch)\s*(constexpr\s*)?\(", text):
        cond = balanced(text, m.end() - 1)
        # An init-statement (`if (bool ok = co_await f(); ok)`) is fine.
        if ";" in cond:
            cond = cond.split(";", 1)[1]
        if "co_await" in cond:
            line = text.count("\n", 0, m.start()) + 1
            problems.append(f"{shown}:{line}: co_await in the condition of `{m.group(1)}` "
                            "(GCC 12 miscompiles it; await into a variable first)")
    for m in re.finditer(r"co_await", text):
        # the rest of the statement after co_await
        end = m.end()
        depth = 0
        while end < len(text):
            ch = text[end]
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                if depth == 0:
                    break
                depth -= 1
            elif ch == ";" and depth == 0:
                break
            end += 1
        start = expression_start(text, m.start())
        statement = text[start:end]
        # Awaitable operators (`a || b` inside co_await (...)) are fine.
        outside = re.sub(r"co_await\s*\((?:[^()]|\([^()]*\))*\)", "co_await(...)", statement)
        if re.search(r"\?|&&|\|\|", outside.replace("co_await(...)", "")):
            line = text.count("\n", 0, m.start()) + 1
            problems.append(f"{shown}:{line}: co_await in an expression with ?:, && or || "
                            "(await into a variable first)")
        if re.search(r"[(,=]\s*\[[^\]]*\]\s*(\([^)]*\)\s*)?(mutable\s*)?(->[^{]*)?\{", statement):
            line = text.count("\n", 0, m.start()) + 1
            problems.append(f"{shown}:{line}: a lambda in the same expression as co_await "
                            "(GCC 12 bug: make the lambda a statement of its own)")
    return problems


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    root = os.path.abspath(root)
    problems = []
    for folder in FOLDERS:
        base = os.path.join(root, folder)
        for dirpath, _, files in os.walk(base):
            for name in sorted(files):
                if name.endswith((".cpp", ".hpp")):
                    path = os.path.join(dirpath, name)
                    problems += check_file(path, os.path.relpath(path, root))
    for p in sorted(set(problems)):
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

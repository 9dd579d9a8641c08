#!/usr/bin/env python3
"""mkman.py: a man page (roff) from one of our Markdown documents.

    mkman.py --name isthmus.json --section 5 --summary "..." SOURCE.md OUT

Handles the Markdown our docs use: headings (the first "# " becomes the
title, "## " a section, "### " a subsection), paragraphs, "- " lists
(nested by indentation), fenced code blocks, GitHub tables (one .TP entry
per row: the first cell, then "header: cell" for the others), `code`,
**bold**, *emphasis* and [links](target) (the link text is kept; a link to
another document is followed by its target in parentheses when that is not
a .md file of ours). Standard library only; run with /usr/bin/python3 at
build time (CMake target `man`) and by the Debian package build.
"""
import argparse
import datetime
import os
import re
import sys


def escape(text: str) -> str:
    """Roff-safe text: backslashes doubled, '-' as a minus (options and
    code are typed with it), a leading '.' or "'" guarded."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return text


def inline(text: str) -> str:
    """Markdown inline markup to roff fonts."""
    out = []
    pos = 0
    pattern = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"
                         r"|\[([^\]]+)\]\(([^)]+)\)")
    for m in pattern.finditer(text):
        out.append(escape(m.string[pos:m.start()]))
        if m.group(1) is not None:
            out.append("\\fB" + escape(m.group(1)) + "\\fR")
        elif m.group(2) is not None:
            out.append("\\fB" + inline(m.group(2)) + "\\fR")
        elif m.group(3) is not None:
            out.append("\\fI" + inline(m.group(3)) + "\\fR")
        else:
            label, target = m.group(4), m.group(5)
            out.append(inline(label))
            if target.startswith(("http://", "https://")):
                out.append(" (" + escape(target) + ")")
        pos = m.end()
    out.append(escape(text[pos:]))
    line = "".join(out)
    return line


def guard(line: str) -> str:
    """A roff text line must not start with a control character."""
    if line.startswith((".", "'")):
        return "\\&" + line
    return line


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|") if False else line.strip()[1:-1])
    return [c.strip().replace("\\|", "|") for c in cells]


def convert(source: str, name: str, section: str, summary: str, date: str, version: str) -> str:
    lines = source.splitlines()
    out = [f'.TH "{name.upper()}" "{section}" "{date}" "isthmus {version}" "Isthmus"',
           ".SH NAME", f"{escape(name)} \\- {escape(summary)}"]
    i = 0
    paragraph: list[str] = []
    list_depth = 0

    def flush():
        nonlocal paragraph
        if paragraph:
            out.append(guard(inline(" ".join(p.strip() for p in paragraph))))
            paragraph = []

    def end_lists():
        nonlocal list_depth
        while list_depth > 1:
            out.append(".RE")
            list_depth -= 1
        list_depth = 0

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            end_lists()
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            i += 1
            out += [".PP", ".RS 4", ".nf"]
            out += [guard(escape(b)) for b in block]
            out += [".fi", ".RE"]
            continue
        if stripped.startswith("#"):
            flush()
            end_lists()
            level = len(stripped) - len(stripped.lstrip("#"))
            title = stripped[level:].strip()
            if level == 1:
                out.append(".SH DESCRIPTION")
            elif level == 2:
                out.append('.SH "' + inline(title).upper().replace('"', "") + '"')
            else:
                out.append('.SS "' + inline(title).replace('"', "") + '"')
            i += 1
            continue
        if stripped.startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1]):
            flush()
            end_lists()
            headers = split_row(line)
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                cells = split_row(lines[i])
                out.append(".TP")
                out.append(guard(inline(cells[0])))
                rest = []
                for header, cell in zip(headers[1:], cells[1:]):
                    if cell:
                        rest.append(guard(inline(f"{header}: {cell}" if len(headers) > 2 else cell)))
                out.append("\n.br\n".join(rest) if rest else "")
                i += 1
            continue
        m = re.match(r"^(\s*)[-*] (.*)$", line)
        if m:
            flush()
            depth = len(m.group(1)) // 2 + 1
            if list_depth == 0:
                out.append(".PP")
                list_depth = 1
            while list_depth < depth:
                out.append(".RS 2")
                list_depth += 1
            while list_depth > depth:
                out.append(".RE")
                list_depth -= 1
            item = [m.group(2)]
            i += 1
            while i < len(lines) and lines[i].strip() and not re.match(r"^\s*[-*] ", lines[i]) \
                    and not lines[i].strip().startswith(("```", "#", "|")):
                item.append(lines[i].strip())
                i += 1
            out.append(".IP \\(bu 2")
            out.append(guard(inline(" ".join(item))))
            continue
        if not stripped:
            flush()
            if list_depth and not (i + 1 < len(lines) and re.match(r"^\s*[-*] ", lines[i + 1])):
                end_lists()
            i += 1
            continue
        if not paragraph:
            end_lists()
            out.append(".PP")
        paragraph.append(line)
        i += 1
    flush()
    end_lists()
    return "\n".join(l for l in out if l != "") + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--section", required=True)
    ap.add_argument("--summary", required=True, help="the NAME line after the dash")
    ap.add_argument("--version", default="")
    ap.add_argument("source")
    ap.add_argument("output")
    args = ap.parse_args()
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch
            else datetime.datetime.fromtimestamp(os.stat(args.source).st_mtime, datetime.timezone.utc))
    with open(args.source, encoding="utf-8") as f:
        text = f.read()
    page = convert(text, args.name, args.section, args.summary, when.strftime("%Y-%m-%d"),
                   args.version)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The man pages (built from the docs by tools/mkman.py, CMake target `man`)
against the programs' --help: every option of `isthmus --help`, with its
help sentence, is in isthmus(8)'s OPTIONS and nothing else is; every
command and option of `isthmusctl --help` (and of each command's --help) is
in isthmusctl(8) and every command documented there exists. The pages
render without a groff warning.

Environment: ISTHMUS_BIN (the daemon), ISTHMUSCTL_BIN (isthmusctl, else
found as tests/lab/isthmusctl.py says), ISTHMUS_MAN_DIR (the built pages).
"""
import os
import pathlib
import re
import subprocess
import sys
import unittest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from lab.isthmusctl import isthmusctl_path  # noqa: E402

ISTHMUSCTL = isthmusctl_path()


def run(argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def words(text):
    return " ".join(text.split())


def rendered(page):
    """The page as man shows it, and groff's warnings."""
    r = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True, text=True,
                       env=dict(os.environ, MANWIDTH="200", LC_ALL="C.UTF-8", MAN_KEEP_FORMATTING=""),
                       timeout=30)
    return r.stdout, r.stderr


def plain(text):
    """man's output without overstrike/bold sequences and hyphenation."""
    text = re.sub(r".\x08", "", text)
    return text.replace("\u2010", "-").replace("\u2212", "-")


class ManPages(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.man_dir = pathlib.Path(os.environ["ISTHMUS_MAN_DIR"])
        cls.binary = os.environ["ISTHMUS_BIN"]

    def page(self, name):
        path = self.man_dir / name
        self.assertTrue(path.exists(), f"{path} was not built (target man)")
        text, warnings = rendered(path)
        self.assertEqual(warnings.strip(), "", f"groff warnings for {name}")
        return words(plain(text))

    def test_pages_render_cleanly(self):
        for name in ("isthmus.8", "isthmus.json.5", "isthmusctl.8"):
            text = self.page(name)
            self.assertIn("NAME", text)
            self.assertGreater(len(text), 1000, name)

    def test_isthmus_help_is_the_man_page_options(self):
        help_text = run([self.binary, "--help"])
        # "  -c,--config FILE   Run with ..." -> options and the sentence.
        entries = re.findall(r"^  (-\S+?)(?: (\S+))?\s{2,}(\S.*)$", help_text, re.M)
        self.assertGreaterEqual(len(entries), 4, help_text)
        page = self.page("isthmus.8")
        options_section = page.split(" OPTIONS ", 1)[1].split(" SIGNALS ", 1)[0]
        documented = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", options_section))
        offered = set()
        for names, _arg, sentence in entries:
            for option in names.split(","):
                offered.add(option)
                self.assertIn(option, documented, f"isthmus(8) OPTIONS lacks {option}")
            self.assertIn(words(sentence), options_section,
                          f"isthmus(8) does not say what --help says for {names}")
        self.assertEqual(documented, offered, "isthmus(8) OPTIONS names options --help does not have")
        # The footer's pointers are real pages.
        for ref in re.findall(r"(\w[\w.]*)\((\d)\)", help_text):
            self.assertTrue((self.man_dir / f"{ref[0]}.{ref[1]}").exists(), ref)

    def test_isthmusctl_help_matches_its_man_page(self):
        self.assertIsNotNone(ISTHMUSCTL, "isthmusctl is not built (or set ISTHMUSCTL_BIN)")
        help_text = run([ISTHMUSCTL, "--help"])
        commands = re.findall(r"^    ([a-z][a-z-]+)\s", help_text, re.M)
        self.assertIn("reload", commands)
        page = self.page("isthmusctl.8")
        source = (REPO / "docs" / "isthmusctl.md").read_text()
        headed = set()
        for heading in re.findall(r"^### (.*)$", source, re.M):
            headed |= set(re.findall(r"`([a-z][a-z-]+)", heading))
        for command in commands:
            self.assertIn(command, headed, f"isthmusctl(8) has no section for `{command}`")
            sub_help = run([ISTHMUSCTL, command, "--help"])
            for option in set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", sub_help)) - {"--help"}:
                self.assertTrue(option in page, f"isthmusctl(8) does not mention {command} {option}")
        documented_commands = {c for c in headed if not c.startswith("-")} - {"instance"}
        self.assertEqual(documented_commands - set(commands), set(),
                         "isthmusctl(8) documents commands that --help does not list")
        for option in set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", help_text)):
            self.assertTrue(option in page, f"isthmusctl(8) does not mention {option}")


if __name__ == "__main__":
    unittest.main()

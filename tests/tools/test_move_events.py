"""The machine-readable events of `isthmus_move.py move --events`
(tools/isthmus_move.py, encode_event and Mover's output): one JSON object
per line, bounded, text mode unchanged. No network: a Mover with a fake
journal. The events of a real move: tests/system/test_move.py."""
import io
import json
import pathlib
import sys
import unittest

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))
import isthmus_move as m  # noqa: E402


class FakeJournal:
    def __init__(self):
        self.data = {"user": "alice@example.org", "from": "a", "to": "b", "mover": "imap",
                     "steps": {}}
        self.path = "/nonexistent/alice.json"
        self.saves = 0

    def save(self):
        self.saves += 1


def lines(buffer):
    raw = buffer.getvalue()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


class EncodeEvent(unittest.TestCase):
    def test_one_line_utf8(self):
        out = m.encode_event({"event": "say", "text": "caf\u00e9\nzwei"})
        self.assertTrue(out.endswith(b"\n"))
        self.assertEqual(out.count(b"\n"), 1)
        self.assertEqual(json.loads(out), {"event": "say", "text": "caf\u00e9\nzwei"})
        self.assertIn("caf\u00e9".encode(), out)

    def test_long_text_cut(self):
        out = m.encode_event({"event": "say", "text": "x" * 200000})
        self.assertLess(len(out), m.EVENT_LINE_MAX)
        self.assertTrue(json.loads(out)["text"].endswith("..."))

    def test_big_journal_sheds_progress_detail_first(self):
        folders = {f"folder {i}": {"copied": i, "bytes": i} for i in range(5000)}
        data = {"user": "u", "steps": {"preflight": {"status": "done"}},
                "copy": {"messages": 1, "bytes": 2, "folders": folders}}
        out = m.encode_event({"event": "journal", "data": data})
        self.assertLess(len(out), m.EVENT_LINE_MAX)
        event = json.loads(out)
        self.assertEqual(event["shed"], ["copy.folders"])
        self.assertEqual(event["data"]["steps"], data["steps"])
        self.assertEqual(event["data"]["copy"], {"messages": 1, "bytes": 2})
        self.assertIn("folders", data["copy"])  # the journal itself untouched

    def test_journal_too_big_anyway(self):
        data = {"created_folders": [f"folder {i}" for i in range(20000)]}
        event = json.loads(m.encode_event({"event": "journal", "data": data}))
        self.assertIsNone(event["data"])
        self.assertGreater(event["too_large"], m.EVENT_LINE_MAX)


class MoverOutput(unittest.TestCase):
    def mover(self, events):
        mover = m.Mover(config=None, out=io.StringIO(), err=io.StringIO(), events=events)
        mover.user = "alice@example.org"
        mover.journal = FakeJournal()
        return mover

    def test_text_mode_unchanged(self):
        mover = self.mover(None)
        mover.say("hello")
        mover.step_start("precopy")
        mover.step_end("precopy", "2 passes")
        mover.progress(1, 0, 3, 0, 0, 0, last=True)
        self.assertRegex(mover.out.getvalue(), r"^hello\n\[1/7\] precopy: 2 passes \(\S+\)\n$")

    def test_events(self):
        buffer = io.BytesIO()
        mover = self.mover(m.Events(buffer))
        mover.announce(False)
        mover.say("moving")
        mover.step_start("precopy")
        mover.progress(1, 0, 3, 0, 0, 0)
        mover.progress(1, 1, 3, 5, 500, 1000)  # within PROGRESS_INTERVAL: dropped
        mover.progress(1, 3, 3, 10, 1000, 1000, last=True)
        mover.step_end("precopy", "2 passes")
        mover.complain("isthmus-move: step copy failed: boom\nisthmus-move: resume it")
        got = lines(buffer)
        self.assertEqual(mover.out.getvalue(), "")
        self.assertEqual(got[0], {"event": "started", "user": "alice@example.org", "from": "a",
                                  "to": "b", "mover": "imap", "resume": False})
        self.assertEqual(got[1], {"event": "say", "text": "moving"})
        self.assertEqual(got[2], {"event": "step", "number": 1, "name": "precopy",
                                  "status": "started", "text": "[1/7] precopy", "seconds": 0.0})
        progress = [e for e in got if e["event"] == "progress"]
        self.assertEqual([p["bytes"] for p in progress], [0, 1000])
        self.assertEqual(progress[-1], {"event": "progress", "step": "precopy", "pass": 1,
                                        "folders_done": 3, "folders": 3, "messages": 10,
                                        "bytes": 1000, "bytes_total": 1000})
        done = got[5]
        self.assertEqual((done["event"], done["status"]), ("step", "done"))
        self.assertTrue(done["text"].startswith("[1/7] precopy: 2 passes ("))
        self.assertEqual(got[6], {"event": "say", "text": "isthmus-move: step copy failed: boom",
                                  "stream": "stderr"})
        self.assertEqual(mover.summary, "step copy failed: boom")
        # Not on stderr as well: the daemon reads stderr too (it would show twice).
        self.assertEqual(mover.err.getvalue(), "")

    def test_finished_once(self):
        buffer = io.BytesIO()
        events = m.Events(buffer)
        events.finish(3, "step copy failed", None)
        events.finish(0, "again", None)
        self.assertEqual(lines(buffer), [{"event": "finished", "exit": 3,
                                          "text": "step copy failed",
                                          "interruption_seconds": None}])


if __name__ == "__main__":
    unittest.main()

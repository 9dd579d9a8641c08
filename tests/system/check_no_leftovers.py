#!/usr/bin/env python3
"""Runs after every system test (a ctest fixture cleanup): the suite must
leave no process behind — no Dovecot node, no isthmus, no fake node — and
no network namespace of the islands test (isthmus-islands-*)."""
import os
import sys

MARKERS = ("isthmus-lab-", "isthmus-test-", "isthmus-check-", "/bin/isthmus --config",
           "/sbin/isthmus --config")


def leftovers():
    found = []
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        if any(m in cmdline for m in MARKERS):
            found.append(f"{pid}: {cmdline}")
    return found


def leftover_namespaces():
    """Network namespaces test_islands.py made and did not remove."""
    try:
        names = os.listdir("/run/netns")
    except OSError:
        return []
    return [f"network namespace {n}" for n in sorted(names) if n.startswith("isthmus-islands-")]


if __name__ == "__main__":
    left = leftovers() + leftover_namespaces()
    for line in left:
        print("left behind:", line)
    sys.exit(1 if left else 0)

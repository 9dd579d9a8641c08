"""Where the isthmusctl under test is (the C++ program, target isthmusctl):
$ISTHMUSCTL_BIN, else bin/isthmusctl of the first build folder found
(build/ci, build/dev, build/release), as support.binary() finds the daemon
with $ISTHMUS_BIN. ctest sets ISTHMUSCTL_BIN (tests/CMakeLists.txt)."""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def isthmusctl_path() -> str | None:
    """The program's absolute path, or None when it was not built."""
    path = os.environ.get("ISTHMUSCTL_BIN")
    if not path:
        for candidate in ("build/ci", "build/dev", "build/release"):
            full = os.path.join(HERE, "..", "..", candidate, "bin", "isthmusctl")
            if os.path.exists(full):
                path = full
                break
    if not path or not os.path.exists(path):
        return None
    return os.path.abspath(path)

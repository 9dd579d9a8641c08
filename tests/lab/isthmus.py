"""The isthmus binary under test, run as a real process.

``Isthmus`` writes ``isthmus.json`` (the config dict, as JSON) and
``users.map`` into its run dir, starts ``BINARY --config RUN/isthmus.json``
with stdout and stderr going to ``RUN/isthmus.log``, and waits until every
listener in the config accepts connections.

The process runs with its cwd in the run dir, so a relative
``"directory": {"file": "users.map"}`` resolves the same whether the binary
takes it relative to its cwd or to the config file.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any, Mapping, Optional

from . import procs


class Isthmus:
    """One isthmus process.

    binary          path to the isthmus executable
    run_dir         directory for isthmus.json, users.map and isthmus.log
    config          the config dict (see cluster.Lab.config for its shape)
    users_map_text  contents of users.map
    extra_args      more command-line arguments after ``--config FILE``
    """

    def __init__(self, binary: str, run_dir: str, config: Mapping[str, Any],
                 users_map_text: str, *, extra_args: tuple[str, ...] = ()):
        self.binary = os.path.abspath(binary)
        self.run_dir = os.path.abspath(run_dir)
        self.config = dict(config)
        self.users_map_text = users_map_text
        self.extra_args = tuple(extra_args)
        self.config_path = os.path.join(self.run_dir, "isthmus.json")
        self.users_map_path = os.path.join(self.run_dir, "users.map")
        self.log_path = os.path.join(self.run_dir, "isthmus.log")
        self.proc: Optional[procs.Proc] = None
        self._stopped = False

    def __repr__(self):
        return f"<Isthmus {self.binary} {self.listeners()}>"

    # -- files

    def write_files(self) -> None:
        """(Re)write isthmus.json and users.map from self.config and
        self.users_map_text: change them, call this, then reload()."""
        os.makedirs(self.run_dir, exist_ok=True)
        _write_atomic(self.config_path, json.dumps(self.config, indent=2) + "\n")
        _write_atomic(self.users_map_path, self.users_map_text)

    def listeners(self) -> list[tuple[str, str, int]]:
        """(name, address, port) of every listener in the config."""
        return [(l.get("name", l.get("protocol", "?")), l["address"], int(l["port"]))
                for l in self.config.get("listeners", [])]

    def port(self, name: str = "imap") -> int:
        """Port of the listener named NAME (or, failing that, of the first
        listener speaking protocol NAME)."""
        for l in self.config.get("listeners", []):
            if l.get("name") == name:
                return int(l["port"])
        for l in self.config.get("listeners", []):
            if l.get("protocol") == name:
                return int(l["port"])
        raise KeyError(f"no listener {name!r} in the config")

    # -- lifecycle

    def start(self, timeout: float = 15.0) -> None:
        """Write the files, start the binary, wait for its listeners."""
        if self.proc is not None and self.proc.alive():
            raise RuntimeError("isthmus is already running")
        if not os.access(self.binary, os.X_OK):
            raise FileNotFoundError(f"isthmus binary not found or not executable: {self.binary}")
        self.write_files()
        self._stopped = False
        self.proc = procs.Proc([self.binary, "--config", self.config_path, *self.extra_args],
                               name="isthmus", log_path=self.log_path, cwd=self.run_dir)
        try:
            for name, address, port in self.listeners():
                procs.wait_port(address, port, timeout, proc=self.proc)
        except (TimeoutError, RuntimeError) as e:
            self.proc.kill()
            raise RuntimeError(f"isthmus did not start: {e}\n--- {self.log_path} (tail)\n"
                               f"{procs.tail(self.log_path)}") from None

    def stop(self, timeout: Optional[float] = None, *, check: bool = True) -> Optional[int]:
        """SIGTERM to the process, wait for it to exit (TIMEOUT defaults to
        the config's shutdown_grace plus 5 s), SIGKILL after that. Returns
        the exit status: 0 for a clean shutdown, negative N if killed by
        signal N (-9 means it did not stop in time).

        With CHECK (the default), raises AssertionError if the process had
        crashed, did not exit 0, or its log holds a sanitizer report: every
        test that stops isthmus also proves it neither crashed nor hung."""
        if self.proc is None:
            return None
        if self._stopped:
            return self.proc.returncode()
        self._stopped = True
        crashed_before = self.proc.returncode()
        if timeout is None:
            timeout = _seconds(self.config.get("timeouts", {}).get("shutdown_grace", "10s")) + 5
        code = self.proc.stop(timeout, group=False)
        if check:
            report = self.sanitizer_report()
            if report:
                raise AssertionError(f"isthmus ({self.run_dir}) logged a sanitizer report:\n"
                                     f"{report}")
            if crashed_before is not None and crashed_before != 0:
                raise AssertionError(f"isthmus ({self.run_dir}) had exited with status "
                                     f"{crashed_before} before it was stopped\n"
                                     f"{procs.tail(self.log_path)}")
            if code != 0:
                raise AssertionError(f"isthmus ({self.run_dir}) exited with status {code} "
                                     f"on SIGTERM (-9: it did not stop in time)\n"
                                     f"{procs.tail(self.log_path)}")
        return code

    def sanitizer_report(self) -> str:
        """The first AddressSanitizer/UBSan/LeakSanitizer report in the log, or ''."""
        text = self.log_text()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            at = text.find(marker)
            if at >= 0:
                return text[max(0, at - 200):at + 4000]
        return ""

    def kill(self) -> Optional[int]:
        if self.proc is None:
            return None
        return self.proc.kill()

    def reload(self) -> None:
        """SIGHUP: ask isthmus to re-read its config and users.map."""
        if self.proc is None or not self.proc.alive() or not self.proc.signal(signal.SIGHUP):
            raise RuntimeError("isthmus is not running")

    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def returncode(self) -> Optional[int]:
        return None if self.proc is None else self.proc.returncode()

    def log_text(self) -> str:
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


def _write_atomic(path: str, text: str) -> None:
    """Write via a temp file and rename, so a reload never reads half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _seconds(value: Any) -> float:
    """'10s' / '500ms' / '2m' / '1h' / a number -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    v = str(value).strip()
    for suffix, factor in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if v.endswith(suffix):
            return float(v[: -len(suffix)]) * factor
    return float(v)


__all__ = ["Isthmus"]

"""Every line the user code wrote, tagged with the datum it belongs to, kept per job:
`DATA/.pfsmount/<pipeline>/logs/<job-id>.jsonl`, one JSON object per line. `pfsmount logs`
reads them after the fact, using the ledger to know which datums failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

from pfsmount.workspace import Workspace

log = logging.getLogger(__name__)


def logs_dir(data_dir: str, pipeline: str) -> str:
    return Workspace.of(data_dir, pipeline).logs_dir


@dataclass
class LogLine:
    """One line of user output as it was recorded."""

    time: float
    datum: str  # datum id, "" when no datum was current
    attempt: int
    source: str  # "user" or "err_cmd"
    stream: str  # "stdout" or "stderr"
    text: str


class JobLog:
    """Appends the user code's output lines of one job, tagged with their datum.

    The log is a convenience, never a reason to stop a job: when it cannot be written (a full
    disk, say) pfsmount warns once and goes on without it; the terminal still gets every line.
    """

    def __init__(self, data_dir: str, pipeline: str, job_id: str,
                 directory: str | None = None) -> None:
        # `directory`: a shard's own logs directory (`Workspace.logs_dir`).
        directory = directory or logs_dir(data_dir, pipeline)
        self.lines_path = os.path.join(directory, f"{job_id}.jsonl")
        self._file: TextIO | None = None
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            # Owner only: user code may print secrets.
            fd = os.open(self.lines_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600)
            os.fchmod(fd, 0o600)
            self._file = open(fd, "a", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            self._give_up(exc)

    def line(self, datum: str, attempt: int, source: str, stream: str, text: bytes) -> None:
        if self._file is None:
            return
        record = {"t": round(time.time(), 3), "datum": datum, "attempt": attempt,
                  "source": source, "stream": stream,
                  "text": text.decode(errors="replace")}
        try:
            self._file.write(json.dumps(record) + "\n")
        except OSError as exc:
            self._give_up(exc)

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        # Writing on after a failed write would leave holes in the middle of the log.
        log.warning("cannot write the job log %s (%s); the job goes on, but from here its "
                    "output is only on this terminal", self.lines_path, exc.strerror or exc)
        file, self._file = self._file, None
        if file is not None:
            # The buffered lines that failed to be written fail again: they are dropped.
            with contextlib.suppress(OSError):
                file.close()


def read_lines(data_dir: str, pipeline: str, job_id: str,
               on_damaged: Callable[[int], None] = lambda number: None) -> Iterator[LogLine]:
    """The recorded lines of a job; a line that cannot be read is skipped, and its number
    passed to `on_damaged` (the last line is cut off when pfsmount was killed mid-write)."""
    return read_lines_at(os.path.join(logs_dir(data_dir, pipeline), f"{job_id}.jsonl"),
                         on_damaged)


def read_lines_at(path: str, on_damaged: Callable[[int], None] = lambda number: None
                  ) -> Iterator[LogLine]:
    """`read_lines` of the log file `path` (one shard's, say)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, raw in enumerate(f, 1):
            try:
                r = json.loads(raw)
                yield LogLine(float(r["t"]), str(r["datum"]), int(r["attempt"]),
                              str(r["source"]), str(r["stream"]), str(r["text"]))
            except (ValueError, TypeError, KeyError):
                on_damaged(number)

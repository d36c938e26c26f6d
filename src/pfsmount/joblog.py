"""Every line the user code wrote, tagged with the datum it belongs to, kept per job:
`DATA/.pfsmount/<pipeline>/logs/<job-id>.jsonl`, one JSON object per line. `pfsmount logs`
reads them after the fact, using the ledger to know which datums failed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from pfsmount.output import WORK_DIR


def logs_dir(data_dir: str, pipeline: str) -> str:
    return os.path.join(data_dir, WORK_DIR, pipeline, "logs")


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
    """Appends the user code's output lines of one job, tagged with their datum."""

    def __init__(self, data_dir: str, pipeline: str, job_id: str) -> None:
        directory = logs_dir(data_dir, pipeline)
        os.makedirs(directory, exist_ok=True)
        self.lines_path = os.path.join(directory, f"{job_id}.jsonl")
        self._file: TextIO = open(self.lines_path, "a", encoding="utf-8")  # noqa: SIM115

    def line(self, datum: str, attempt: int, source: str, stream: str, text: bytes) -> None:
        record = {"t": round(time.time(), 3), "datum": datum, "attempt": attempt,
                  "source": source, "stream": stream,
                  "text": text.decode(errors="replace")}
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


def read_lines(data_dir: str, pipeline: str, job_id: str) -> Iterator[LogLine]:
    path = os.path.join(logs_dir(data_dir, pipeline), f"{job_id}.jsonl")
    with open(path, encoding="utf-8") as f:
        for raw in f:
            r = json.loads(raw)
            yield LogLine(r["t"], r["datum"], r["attempt"], r["source"], r["stream"], r["text"])

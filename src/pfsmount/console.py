"""The one place pfsmount talks to the person running it.

Messages, the user program's own output and the progress display all go through a
`Console`, so that on a terminal the progress line is cleared before anything else is
printed and redrawn after; when output is not a terminal, progress is a plain line every
few seconds instead.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from pfsmount.names import message

PLAIN_PROGRESS_EVERY = 5.0  # seconds between progress lines when not on a terminal
TTY_REDRAW_EVERY = 0.1  # seconds between redraws of the progress line on a terminal


def plural(n: int, word: str, words: str = "") -> str:
    """`1 datum`, `2 datums`; `words` when the plural is not `word` + "s"."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Console:
    """Writes messages, user output and progress without mixing them up."""

    def __init__(
        self, err: TextIO | None = None, out: TextIO | None = None, tty: bool | None = None
    ) -> None:
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        self.tty = self.err.isatty() if tty is None else tty
        self._bar = ""
        self._total = 0
        self._listing = False
        self._workers = 1
        self._start = 0.0
        self._last_plain = 0.0
        self._last_draw = 0.0

    # ----- messages -------------------------------------------------------------------

    # A message may quote a path or value that is not UTF-8: its bytes are shown as \\xff.

    def info(self, msg: str) -> None:
        self._write(self.err, f"pfsmount: {message(msg)}\n")

    def warn(self, msg: str) -> None:
        self._write(self.err, f"pfsmount: warning: {message(msg)}\n")

    def error(self, msg: str) -> None:
        self._write(self.err, f"pfsmount: error: {message(msg)}\n")

    def user_line(self, stream: str, line: bytes) -> None:
        """One line the user program wrote, passed through to our stdout or stderr."""
        target = self.out if stream == "stdout" else self.err
        self._write(target, line.decode(errors="replace") + "\n")

    def _write(self, target: TextIO, text: str) -> None:
        if self._bar:
            self.err.write("\r\x1b[2K")
        target.write(text)
        target.flush()
        if self._bar:
            self.err.write(self._bar)
            self.err.flush()

    # ----- progress -------------------------------------------------------------------

    def start_progress(self, total: int | None, workers: int = 1) -> None:
        """`total`: the job's datums, or None while they are still being listed."""
        self._total = total or 0
        self._listing = total is None
        self._workers = workers
        self._start = time.monotonic()
        self._last_plain = self._start
        self.progress(0, 0)

    def progress(self, done: int, failed: int, busy: int = 0, *, total: int | None = None,
                 listing: bool | None = None) -> None:
        """`done` of the total ended, `failed` of them failed; `busy` workers hold a datum.

        `total` and `listing` update what is known of the total: while the repos are still
        listed it is a lower bound ("≥ N datums, listing…").
        """
        if total is not None:
            self._total = total
        if listing is not None:
            self._listing = listing
        elapsed = time.monotonic() - self._start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self._total - done) / rate if rate > 0 and not self._listing else None
        count = (f"{done}/≥{self._total} datums, listing…" if self._listing
                 else f"{done}/{self._total} datums")
        text = (
            count
            + (f", {failed} failed" if failed else "")
            + f"  {rate:.1f}/s"
            + (f"  ETA {_fmt_duration(eta)}" if eta is not None and done < self._total else "")
            + (f"  {busy}/{self._workers} workers busy" if self._workers > 1 else "")
        )
        final = done == self._total and not self._listing
        if self.tty:
            now = time.monotonic()
            # A redraw per datum would cost a terminal write on every NextDatum.
            if now - self._last_draw < TTY_REDRAW_EVERY and done != 0 and not final:
                return
            self._last_draw = now
            width = 24
            filled = (int(width * done / self._total) if self._total and not self._listing
                      else 0 if self._listing else width)
            self._bar = f"[{'#' * filled}{'.' * (width - filled)}] {text}"
            self.err.write("\r\x1b[2K" + self._bar)
            self.err.flush()
            return
        now = time.monotonic()
        if now - self._last_plain >= PLAIN_PROGRESS_EVERY or final:
            self._last_plain = now
            self.info(text)

    def end_progress(self) -> None:
        if self._bar:
            self.err.write("\r\x1b[2K")
            self.err.flush()
            self._bar = ""


class ConsoleLogHandler(logging.Handler):
    """Routes log records through the console so they never tear the progress line."""

    def __init__(self, console: Console, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            if record.levelno >= logging.ERROR:
                self.console.error(msg)
            elif record.levelno >= logging.WARNING:
                self.console.warn(msg)
            else:
                self.console.info(msg)
        except Exception:
            self.handleError(record)

"""What the benchmark's modules share: where things are, how big they are, the run's context."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchlib.procs import Janitor

ROOT = Path(__file__).resolve().parent.parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
USERCODE_DIR = Path(__file__).resolve().parent / "usercode"
USERCODE = str(USERCODE_DIR / "usercode.py")
PACHCTL_LOOP = str(USERCODE_DIR / "pachctl_loop.sh")
MIB = 1024 * 1024
MB = 1_000_000
SECTIONS = ("per_datum", "large_read", "small_files", "swap", "scale", "parallel", "shards",
            "io", "s3")
# Run only when asked for (--only s3): it starts its own S3 server and uploads ~1 GiB.
OPT_IN = ("s3",)
DEFAULT_SECTIONS = tuple(s for s in SECTIONS if s not in OPT_IN)


class BenchError(Exception):
    """A measurement could not be taken; the message says which and where its log is."""


def say(message: str) -> None:
    """Progress goes to stderr; stdout holds only the table."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; the full sizes are the issue's."""

    datums: int
    datum_bytes: int
    big_bytes: int
    small_files: int
    small_bytes: int
    swap_files: int
    swap_datums: int
    scale_files: int
    # Issue 18: repos of empty files in directories of 1,000 (`--scale-trees` overrides).
    scale_trees: tuple[int, ...] = ()


FULL = Sizes(datums=2000, datum_bytes=1024, big_bytes=1024 * MIB, small_files=10_000,
             small_bytes=4096, swap_files=10_000, swap_datums=4, scale_files=100_000,
             scale_trees=(1_000_000, 10_000_000))
QUICK = Sizes(datums=50, datum_bytes=1024, big_bytes=8 * MIB, small_files=200,
              small_bytes=4096, swap_files=200, swap_datums=3, scale_files=1000,
              scale_trees=(2000,))


@dataclass
class Context:
    """What every section needs: sizes, repetitions, where things live, and the janitor."""

    sizes: Sizes
    repeat: int
    repeat_slow: int  # for the measurements that take minutes a pass
    quick: bool
    work: Path
    janitor: Janitor
    install: bool
    timeout: float
    scale_window: float  # longest the whole 100k-datum job may run before it is stopped

    @property
    def data(self) -> Path:
        return self.work / "data"

    def path(self, *parts: str) -> Path:
        """A path under the work directory whose parent exists."""
        p = self.work.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

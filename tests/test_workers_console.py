"""The console with several workers: how many are busy, and only then."""

from __future__ import annotations

import io

from pfsmount.console import Console


def test_progress_shows_busy_workers_only_with_several() -> None:
    err = io.StringIO()
    console = Console(err=err, out=io.StringIO(), tty=False)
    console.start_progress(3, workers=4)
    console.progress(3, 0, busy=2)
    assert err.getvalue().splitlines()[-1].endswith("2/4 workers busy")
    one = io.StringIO()
    console = Console(err=one, out=io.StringIO(), tty=False)
    console.start_progress(3)
    console.progress(3, 0, busy=1)
    assert "workers busy" not in one.getvalue()

"""The console: progress on a terminal and off it, user output never torn."""

from __future__ import annotations

import io

from pfsmount.console import Console


def test_terminal_progress_is_redrawn_at_most_ten_times_a_second() -> None:
    err = io.StringIO()
    console = Console(err=err, out=io.StringIO(), tty=True)
    console.start_progress(1000)
    for done in range(1, 1001):
        console.progress(done, 0)
    drawn = err.getvalue().count("datums")
    assert 2 <= drawn <= 5  # the first, the last, and what 100 ms allow in between
    assert "1000/1000 datums" in err.getvalue()


def test_user_lines_clear_and_redraw_the_progress_line() -> None:
    err, out = io.StringIO(), io.StringIO()
    console = Console(err=err, out=out, tty=True)
    console.start_progress(10)
    console.user_line("stdout", b"hello")
    console.user_line("stderr", b"oops")
    assert out.getvalue() == "hello\n"
    assert err.getvalue().endswith("\r\x1b[2Koops\n[........................] 0/10 datums  0.0/s")


def test_plain_progress_when_not_a_terminal() -> None:
    err = io.StringIO()
    console = Console(err=err, out=io.StringIO(), tty=False)
    console.start_progress(3)
    for done in (1, 2, 3):
        console.progress(done, 1 if done == 3 else 0)
    lines = err.getvalue().splitlines()
    assert lines[-1].startswith("pfsmount: 3/3 datums, 1 failed")
    assert "\x1b" not in err.getvalue()

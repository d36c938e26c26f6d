"""The kernel notifier: ordered, off the trio thread, and silent once closed."""

from __future__ import annotations

import threading

import pytest

from pfsmount import notify
from pfsmount.notify import KernelNotifier


def test_close_discards_what_is_queued_and_stops_the_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, object]] = []
    first_sent = threading.Event()
    release = threading.Event()

    def invalidate_entry(inode: int, name: bytes) -> None:
        sent.append((inode, name))
        first_sent.set()
        release.wait(5)  # a notification the kernel is slow to take

    monkeypatch.setattr(notify.pyfuse3, "invalidate_entry", invalidate_entry)
    monkeypatch.setattr(notify.pyfuse3, "invalidate_inode",
                        lambda inode, attr_only: sent.append((inode, "attrs")))
    n = KernelNotifier()
    n.drop_name(1, b"a")
    assert first_sent.wait(5)
    n.drop_name(1, b"b")
    n.drop_attributes(1)
    closer = threading.Thread(target=n.close)
    closer.start()
    release.set()
    closer.join(5)
    assert not closer.is_alive()
    # Only the one already in flight went out: after close the mount is going away, and a
    # late notification would only make the kernel answer EINVAL.
    assert sent == [(1, b"a")]
    n.drop_name(1, b"c")
    n.drop_attributes(1)
    assert sent == [(1, b"a")]


def test_notifications_go_out_in_order_and_errors_are_not_fatal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, object]] = []
    done = threading.Event()

    def invalidate_entry(inode: int, name: bytes) -> None:
        sent.append((inode, name))
        if name == b"gone":
            raise FileNotFoundError(2, "no such entry")
        if name == b"bad":
            raise OSError(22, "Invalid argument")
        if name == b"last":
            done.set()

    monkeypatch.setattr(notify.pyfuse3, "invalidate_entry", invalidate_entry)
    monkeypatch.setattr(notify.pyfuse3, "invalidate_inode",
                        lambda inode, attr_only: sent.append((inode, "attrs")))
    n = KernelNotifier()
    for name in (b"gone", b"bad", b"x"):
        n.drop_name(1, name)
    n.drop_attributes(1)
    n.drop_name(1, b"last")
    assert done.wait(5)
    n.close()
    assert sent == [(1, b"gone"), (1, b"bad"), (1, b"x"), (1, "attrs"), (1, b"last")]

"""The kernel notifier: ordered, off the trio thread, silent once closed, and never a name drop."""

from __future__ import annotations

import threading

import pytest

from pfsmount import notify
from pfsmount.notify import KernelNotifier


def test_close_discards_what_is_queued_and_stops_the_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[int] = []
    first_sent = threading.Event()
    release = threading.Event()

    def invalidate_inode(inode: int, attr_only: bool) -> None:
        assert attr_only
        sent.append(inode)
        first_sent.set()
        release.wait(5)  # a notification the kernel is slow to take

    monkeypatch.setattr(notify.pyfuse3, "invalidate_inode", invalidate_inode)
    n = KernelNotifier()
    n.drop_attributes(1)
    assert first_sent.wait(5)
    n.drop_attributes(2)
    closer = threading.Thread(target=n.close)
    closer.start()
    release.set()
    closer.join(5)
    assert not closer.is_alive()
    # Only the one already in flight went out: after close the mount is going away, and a
    # late notification would only make the kernel answer EINVAL.
    assert sent == [1]
    n.drop_attributes(3)
    assert sent == [1]


def test_notifications_go_out_in_order_and_errors_are_not_fatal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[int] = []
    done = threading.Event()

    def invalidate_inode(inode: int, attr_only: bool) -> None:
        sent.append(inode)
        if inode == 2:
            raise FileNotFoundError(2, "no such inode")
        if inode == 3:
            raise OSError(22, "Invalid argument")
        if inode == 5:
            done.set()

    def invalidate_entry(inode: int, name: bytes) -> None:
        raise AssertionError("a name drop can deadlock a dying pfsmount (fs.py, show)")

    monkeypatch.setattr(notify.pyfuse3, "invalidate_inode", invalidate_inode)
    monkeypatch.setattr(notify.pyfuse3, "invalidate_entry", invalidate_entry)
    n = KernelNotifier()
    for inode in (1, 2, 3, 4, 5):
        n.drop_attributes(inode)
    assert done.wait(5)
    n.close()
    assert sent == [1, 2, 3, 4, 5]

"""Tells the kernel to drop the attributes it cached of /pfs's roots, from a thread of its own.

A notification is a write to /dev/fuse that the kernel handles on the spot, and may wait for
an inode lock held by a request that only the trio thread can answer: sent from the trio
thread, it could deadlock the mount. pyfuse3's own asynchronous variant cannot be stopped, so
its queue could still be draining after the session closed (the kernel then answers EINVAL
and pyfuse3 logs a traceback). This one is closed before the mount goes away.

Notifications are advisory here: a lost one only leaves a root's mtime stale until its
attribute timeout. Names are never dropped: that takes the directory's lock, uninterruptibly,
and a dying pfsmount could then never exit (fs.py, `show`).
"""

from __future__ import annotations

import logging
import queue
import threading

import pyfuse3

log = logging.getLogger(__name__)


class KernelNotifier:
    """An ordered queue of cache invalidations, sent by one daemon thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pfsmount-notify", daemon=True)
        self._thread.start()

    def drop_attributes(self, inode: int) -> None:
        """Forget `inode`'s cached attributes; its page cache is left alone."""
        if not self._closed:
            self._queue.put(inode)

    def close(self) -> None:
        """Discard what is still queued and wait for the thread (blocking: call from a
        thread while the file system is still served, since a notification in flight may
        wait for a request to be answered)."""
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (inode := self._queue.get()) is not None:
            if self._closed:
                continue  # the mount is going away: nothing left to keep coherent
            try:
                # Attribute-only: touches no page cache and takes no inode lock.
                pyfuse3.invalidate_inode(inode, attr_only=True)
            except FileNotFoundError:
                pass  # the kernel held nothing for it
            except OSError as exc:
                log.debug("could not invalidate inode %d: %s", inode, exc)

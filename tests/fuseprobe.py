"""Serving a PfsOperations mount in this process while a thread uses it.

For probes that run in a child process (pyfuse3 holds one session per process): they mount
the file system themselves, count what reaches the handlers, and drive swaps on the trio
thread from the thread that walks, as the worker does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyfuse3
import trio


def serve_while(fs: pyfuse3.Operations, mnt: str, fsname: str,
                use: Callable[[trio.lowlevel.TrioToken], Any],
                mounted: Callable[[], None] | None = None) -> None:
    """Mount `fs` on `mnt`, call `mounted()`, run `use(token)` on a thread, then unmount."""

    async def main() -> None:
        pyfuse3.init(fs, mnt, [f"fsname={fsname}", "default_permissions"])
        if mounted is not None:
            mounted()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pyfuse3.main)
                await trio.to_thread.run_sync(use, trio.lowlevel.current_trio_token())
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)

    trio.run(main)

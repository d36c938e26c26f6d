"""What is mounted where, read from /proc/self/mountinfo as bytes.

Mount points are arbitrary bytes; the kernel escapes only space, tab, newline and backslash (as
octal). Reading the file as UTF-8 would crash on any non-UTF-8 mount point anywhere on the
machine, so it is parsed as bytes and compared with the path's own bytes.
"""

from __future__ import annotations

import os
import re

_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> bytes:
    return _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field)


def fstype(path: str | bytes, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The filesystem type mounted exactly at `path` (the last mount there), or None."""
    target = os.fsencode(os.path.abspath(path))
    found: str | None = None
    with open(mountinfo, "rb") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) != target:
                continue
            sep = fields.index(b"-")
            found = os.fsdecode(fields[sep + 1])
    return found

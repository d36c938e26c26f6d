"""The kernel's name-cache epoch (FUSE_NOTIFY_INC_EPOCH, Linux ≥ 6.16): one write per swap.

The kernel stamps every name it looks up on a FUSE mount with the connection's epoch as it
was *before* the LOOKUP was sent, and treats a name from an older epoch as unknown. So after
one increment no name learnt earlier is used again — including a name whose LOOKUP was
answered by the old datum while the swap was happening. That is what lets /pfs's root names be
cached within a datum (one LOOKUP per name per datum instead of one per path walk) and still
never resolve into an old datum after NextDatum returns.

The notification takes no lock in the kernel, so unlike entry invalidations it can be written
from the trio thread, in line with the swap. libfuse 3.14 has no function for it; pfsmount's
patched pyfuse3 hands over the session's /dev/fuse descriptor (`pfsmount_session_fd`).
"""

from __future__ import annotations

import errno
import logging
import os
import struct

import pyfuse3

log = logging.getLogger(__name__)

NOTIFY_INC_EPOCH = 8  # enum fuse_notify_code, protocol 7.44
# struct fuse_out_header: len, error (the notify code when unique is 0), unique.
_MESSAGE = struct.pack("<IiQ", 16, NOTIFY_INC_EPOCH, 0)
DISABLE_ENV = "PFSMOUNT_NO_EPOCH"  # "1": keep root names uncached (how older kernels run)


class Epoch:
    """Bumps the mounted session's epoch; built only where the kernel accepts it."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def probe(cls) -> Epoch | None:
        """An Epoch for the mounted session, or None when this pyfuse3 cannot name its fd,
        the kernel predates the notification (EINVAL), or PFSMOUNT_NO_EPOCH=1 asks so."""
        if os.environ.get(DISABLE_ENV) == "1":
            return None
        session_fd = getattr(pyfuse3, "pfsmount_session_fd", None)
        fd = session_fd() if session_fd is not None else -1
        if fd < 0:
            return None
        epoch = cls(fd)
        try:
            epoch.bump()  # nothing is cached yet: a harmless first increment tells us it works
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                log.warning("the kernel refused a FUSE epoch notification (%s); root names "
                            "of /pfs stay uncached", exc)
            return None
        return epoch

    def bump(self) -> None:
        """Make every name the kernel learnt so far unknown to it (raises OSError)."""
        os.write(self._fd, _MESSAGE)

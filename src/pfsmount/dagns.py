"""A mount namespace of this process's own, for a DAG step that runs beside others.

Each step mounts its /pfs at the same path; in a namespace whose mounts do not propagate
back, the steps never see each other's mount, and user code (whose own namespace is a slave
of this one) sees its step's. The namespace, and the mount in it, end with the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS = 0x00020000
MS_REC = 16384
MS_SLAVE = 1 << 19


class NamespaceError(Exception):
    """The mount namespace could not be made; the message says why."""


def private_mounts() -> None:
    """Move this process into a new mount namespace that is a recursive slave of the old one
    (mounts made outside still reach in; ours stay here). Only with one thread."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_void_p]
    if libc.unshare(CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(f"cannot make a mount namespace for this step: {os.strerror(err)} "
                             "(run as root, or pass --jobs 1)")
    if libc.mount(None, b"/", None, MS_REC | MS_SLAVE, None) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(f"cannot make / a slave mount in this step's namespace: "
                             f"{os.strerror(err)} (pass --jobs 1)")

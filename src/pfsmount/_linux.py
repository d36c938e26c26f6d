"""Linux system calls the standard library does not wrap."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

AT_FDCWD = -100
RENAME_EXCHANGE = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def renameat2(src: str, dst: str, flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE; raises OSError like os.rename."""
    rc = _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src, None, dst)



def syncfs(path: str) -> None:
    """syncfs(2) on the file system holding `path`, with the GIL released.

    pyfuse3.syncfs holds the GIL for the whole call (1-8 ms here), which froze the trio
    thread, and with it every FUSE request and NextDatum call, at each group commit.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


# openat2(2): x86_64 and aarch64 share the generic syscall number.
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_HOW_SIZE = ctypes.sizeof(_OpenHow)
_HOWS: dict[int, _OpenHow] = {}  # open flags -> their open_how, built once (open is hot)
_has_openat2 = True


def open_beneath(dir_fd: int, path: str, flags: int) -> int:
    """Open `path` relative to `dir_fd` without following any symlink and without leaving it.

    A symlink anywhere in `path` (or a `..` above `dir_fd`) fails with ELOOP or EXDEV. Uses
    openat2(2); where the kernel lacks it, walks the path one component at a time with
    O_NOFOLLOW, which refuses the same links.
    """
    global _has_openat2
    if _has_openat2:
        how = _HOWS.get(flags)
        if how is None:
            how = _HOWS[flags] = _OpenHow(flags | os.O_NOFOLLOW, 0, _RESOLVE)
        fd = _syscall(_SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), _HOW_SIZE)
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter forbids it
            raise OSError(err, os.strerror(err), path)
        _has_openat2 = False
    return _open_beneath_by_parts(dir_fd, path, flags)


def _open_beneath_by_parts(dir_fd: int, path: str, flags: int) -> int:
    *parents, leaf = path.split("/")
    if ".." in parents or leaf in ("", ".", ".."):
        raise OSError(errno.EXDEV, "path leaves its directory", path)
    fd = dir_fd
    try:
        for part in parents:
            step = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                           dir_fd=fd)
            if fd != dir_fd:
                os.close(fd)
            fd = step
        return os.open(leaf, flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        if fd != dir_fd:
            os.close(fd)

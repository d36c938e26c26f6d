"""The pyfuse3 Operations behind /pfs: the root, the current view, /pfs/out and /pfs/.env.

Swapping datums is one assignment on the trio thread (`show`). Only the root's entries
change meaning. Where the kernel has name epochs (Linux ≥ 6.16, `epoch.py`) the swap bumps the
epoch before NextDatum returns, which unknows every name learnt before it, so root names may be
cached within a datum; elsewhere they are answered with an entry timeout of zero, so the kernel
asks again on every path walk. Either way the kernel can never keep a name that points into an
old datum. Everything below the root belongs to an immutable view with inode numbers of its
own, so it is cached for long, listings included (`opendir`). A path resolution therefore
meets exactly one datum: the root hands out one view's inode, and every further step stays
inside that view, even if a swap happens in between. Views stay alive until the kernel
forgets their inodes and closes their handles.

With N workers one session serves N such roots, one per worker (`/<w>` below the mount's
own root, which never changes): each is bind-mounted on /pfs in its worker's mount namespace
and follows the same rules as the single root (`_Slot`).

With `no_open` (pfsmount's patched pyfuse3, see vendor/pyfuse3/README.md) the first OPEN is
answered ENOSYS: the kernel then opens every file of the connection itself, sends no more
OPEN, FLUSH or RELEASE, keeps each file's page cache across opens, and sends READ, WRITE and
FSYNC with fh 0 and the inode. Those are served from files kept open by inode (`inodeio`).
Files made by CREATE still get a handle (the kernel sends CREATE and RELEASE regardless).

With `splice` (patched pyfuse3 ≥ 3) bytes that are in a local file never become Python
objects: a READ is answered with the file and offset (`pyfuse3.ReadFd`) and libfuse splices
them from its page cache to /dev/fuse; a WRITE names its staging fd (`write_fd`) and libfuse
moves the payload there from the pipe it received the request in.

With `fast_path` (patched pyfuse3 ≥ 4, `fastpath.py`) a C thread receives the requests and
answers the ones whose answers are registered ahead: GETATTR of view inodes and the first READ
of their local files (`_node_attr` registers each as it is handed out, `_reap_view` drops
them), READ/WRITE without a handle of inodes whose fds `inodeio` keeps, GETATTR of /pfs/out
directories and LOOKUPs of names missing from them (`_fast_out_dir`, refreshed by every
handler that changes one). Everything else still reaches the handlers below.
"""

from __future__ import annotations

import bisect
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyfuse3
import trio

from pfsmount import _linux
from pfsmount.epoch import Epoch
from pfsmount.fastpath import FastPath
from pfsmount.inodeio import OpenByInode
from pfsmount.notify import KernelNotifier
from pfsmount.outdir import OutTree
from pfsmount.store.base import Reader
from pfsmount.store.local import LocalReader
from pfsmount.view import DIR_MODE, InodeAllocator, Node, View, empty_view

log = logging.getLogger(__name__)

ROOT = pyfuse3.ROOT_INODE
OUT = b"out"
VIEW_TIMEOUT = 3600.0  # a view never changes, so the kernel may keep what it learns
OUT_TIMEOUT = 1.0  # /pfs/out changes only through us; a short timeout keeps it cheap
PRIME_MAX = 128 * 1024  # files up to this size reach the page cache with their OPEN
READ_ONLY = errno.EROFS
STALE = errno.ESTALE  # an /pfs/out handle whose datum has already ended
NO_HANDLE = 0  # the fh of READ/WRITE/FSYNC under no_open; our own handles start at 1
NO_OPEN_ENV = "PFSMOUNT_NO_OPEN"  # "0": serve OPEN with handles even where no_open is possible
SPLICE_ENV = "PFSMOUNT_SPLICE"  # "0": READ/WRITE bytes through Python even where splice works
SPLICE_MIN_WRITE = 128 * 1024  # below this, more round trips would cost what splice saves
# pfsmount's patched pyfuse3 ≥ 2 lets opendir ask the kernel to cache a listing.
CACHED_LISTINGS = getattr(pyfuse3, "PFSMOUNT_PATCH", 0) >= 2

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def no_open_possible() -> bool:
    """Whether this pyfuse3 passes the inode to read/write/fsync (pfsmount's patch), so the
    mount can answer OPEN with ENOSYS; `PFSMOUNT_NO_OPEN=0` turns it off (tests run the
    suite both ways)."""
    return bool(getattr(pyfuse3, "PFSMOUNT_PATCH", 0)) and os.environ.get(NO_OPEN_ENV) != "0"


def splice_possible() -> bool:
    """Whether this pyfuse3 answers READs from an fd and hands WRITEs to one (pfsmount's patch
    ≥ 3), so local bytes skip Python; `PFSMOUNT_SPLICE=0` turns it off (tests run both)."""
    return getattr(pyfuse3, "PFSMOUNT_PATCH", 0) >= 3 and os.environ.get(SPLICE_ENV) != "0"


def splice_max_write() -> int:
    """The largest READ/WRITE (a power of two, ≤ 1 MiB) whose request or reply fits one pipe.

    libfuse splices a message only if all of it fits its pipe, which an unprivileged (no
    CAP_SYS_RESOURCE) process can grow to `fs.pipe-max-size` (1 MiB by default): a 1 MiB READ
    reply plus its header never fits, and every one was copied through memory instead. 0 (keep
    libfuse's 1 MiB) where the pipe can grow past 1 MiB, or where it is so small that smaller
    requests would cost more than the copies they save."""
    if _has_cap_sys_resource():
        return 0
    room = _pipe_max_size() - 16 * 1024  # the header and libfuse's per-buffer slack
    size = 1 << 20
    while size > room:
        size //= 2
    return size if size >= SPLICE_MIN_WRITE else 0


def _pipe_max_size() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20  # the kernel's default


def _has_cap_sys_resource() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 24 & 1)  # CAP_SYS_RESOURCE
    except (OSError, ValueError):
        pass
    return False


def nonblocking_fuse_read() -> bool:
    """Whether pyfuse3 reads /dev/fuse without blocking (pfsmount's patch), so a request the
    kernel withdraws cannot stall the trio thread and `fusewake` is not needed."""
    return bool(getattr(pyfuse3, "PFSMOUNT_PATCH", 0))


def guarded(fn: F) -> F:
    """Turn every failure of a handler into a FUSEError.

    pyfuse3 leaves the kernel request unanswered if a handler raises anything else, and
    the mount hangs; an unexpected bug must cost one EIO, never the whole mount.
    """

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in FUSE handler %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper  # type: ignore[return-value]


@dataclass(slots=True)
class Handle:
    """An open file or directory."""

    fd: int = -1
    data: bytes | None = None
    reader: Reader | None = None  # a repo file of a view, from its store
    view: View | None = None
    out: OutTree | None = None
    inode: int = 0  # an /pfs/out file's inode: its fd answers GETATTR once the name is gone
    listing: list[tuple[bytes, int]] | None = None  # directory snapshot: (name, inode)
    workers: bool = False  # a listing of the worker roots (the mount's root, N > 1)


@dataclass
class Stats:
    """Counters the tests and the benchmark read to prove laziness."""

    content_opens: int = 0
    bytes_read: int = 0
    # Backing files opened at least once: a file opened in many datums (or many times) is
    # one input file read, which is what the end-of-job summary reports.
    files_opened: set[str] = field(default_factory=set)


@dataclass
class _Live:
    """Views and output trees the kernel may still reference."""

    views: list[View] = field(default_factory=list)  # sorted by base
    bases: list[int] = field(default_factory=list)
    outs: list[OutTree] = field(default_factory=list)


@dataclass
class _Slot:
    """One worker's /pfs root: the datum it shows. With one worker, the mount's root."""

    inode: int
    view: View
    out: OutTree | None = None
    mtime_ns: int = field(default_factory=time.time_ns)


class PfsOperations(pyfuse3.Operations):
    """Serves /pfs. Only `show` changes what a worker's root presents.

    With `workers` > 1 the mount's root holds one directory per worker, `0` .. `N-1`, each a
    root as the single worker's /pfs is (bind-mounted on /pfs in that worker's namespace).
    """

    enable_writeback_cache = False

    def __init__(
        self, workers: int = 1, no_open: bool = False, splice: bool = False,
        fast_path: bool = False,
    ) -> None:
        super().__init__()
        self.no_open = no_open
        # Read by the patched pyfuse3's `main`: start the receive thread (`fastpath.py`).
        self.enable_fast_path = fast_path
        self.fast = FastPath() if fast_path else None
        # Read by the patched pyfuse3 at INIT (splice capabilities); `read` then returns a
        # ReadFd for bytes in a local file, and `write_fd` names WRITEs' staging fds.
        self.enable_splice = splice
        # Also read at INIT: requests and replies small enough for one splice pipe.
        self.max_write = splice_max_write() if splice else 0
        # Read by the patched pyfuse3 at INIT: under no_open an O_TRUNC open must reach us as
        # SETATTR (the kernel sends no OPEN to carry it), or an output would keep its old bytes.
        self.enable_atomic_o_trunc = not no_open
        # no_open: what READ/WRITE/FSYNC with fh 0 need open, by inode (see module doc).
        withdraw = self.fast.withdraw if self.fast is not None else None
        self._readers: OpenByInode[Reader] = OpenByInode(_close_reader, withdraw=withdraw)
        self._out_fds: OpenByInode[tuple[int, bool]] = OpenByInode(_close_out_fd,
                                                                  withdraw=withdraw)
        self.inodes = InodeAllocator()
        self.stats = Stats()
        self._live = _Live()
        first = ROOT if workers == 1 else self.inodes.take(workers)
        self._workers = [_Slot(first + w, empty_view(self.inodes)) for w in range(workers)]
        self._slots = {slot.inode: slot for slot in self._workers}
        self._names = {str(w).encode(): slot for w, slot in enumerate(self._workers)}
        self._top_mtime = time.time_ns()
        self._handles: dict[int, Handle] = {}
        # /pfs/out directories whose GETATTR and missing-name LOOKUPs the C thread answers.
        self._fast_dirs: dict[int, OutTree] = {}
        self._next_fh = 1
        self._uid = os.getuid()
        self._gid = os.getgid()
        self.notifier: KernelNotifier | None = None  # set once pyfuse3.init() has mounted us
        self.epoch: Epoch | None = None  # likewise, where the kernel has name epochs
        for slot in self._workers:
            self._add_view(slot.view)

    # ----- swapping -------------------------------------------------------------------

    def show(self, view: View, out: OutTree | None, worker: int = 0) -> None:
        """Make worker `worker`'s /pfs present `view` and `out` from the next request on."""
        slot = self._workers[worker]
        old = slot.view
        self._add_view(view)
        if out is not None:
            self._live.outs.append(out)
        slot.view, slot.out = view, out
        if self.fast is not None:
            # Exactly what `_lookup_root` finds: any other name is the thread's ENOENT. Until
            # this lands a LOOKUP may still be answered by the old datum's names, as any
            # request racing NextDatum may.
            self.fast.names(slot.inode, [*view.top, *([OUT] if out is not None else [])])
        slot.mtime_ns = time.time_ns()
        old.retired = True
        if self.epoch is not None:
            # Before NextDatum returns: from here on no root name cached in an earlier datum
            # is used again (see epoch.py for why a racing LOOKUP cannot survive it either).
            try:
                self.epoch.bump()
            except OSError as exc:
                # Only a dying connection refuses it; stop caching root names regardless.
                log.error("could not bump the FUSE name epoch (%s); root names of /pfs are "
                          "no longer cached", exc)
                self.epoch = None
        self._reap_view(old)
        self._reap_outs()
        if self.notifier is not None:
            # No name drops: root names are cached only within an epoch, or not at all, so
            # the next LOOKUP of a name drops its old dentry (and the old view's inode). A
            # drop would save one LOOKUP per name and datum without epochs, but can deadlock
            # a dying pfsmount: the kernel takes the root's lock for it, uninterruptibly,
            # behind a LOOKUP no thread is left to answer, so the process never exits (seen
            # under kill -9). The root's attributes are cached and its mtime changes here;
            # until this drop lands, a stat may show the old mtime.
            self.notifier.drop_attributes(slot.inode)

    def seal(self, tree: OutTree) -> None:
        """`tree`'s datum ends (committed or dropped): from now on a write to it is STALE.

        Its kept fds go at once, not at the next swap: WRITEs the C thread answers with them
        would otherwise still land in files being committed."""
        tree.closed = True
        if len(self._out_fds):
            self._out_fds.drop_owned_by(tree)
        for inode in [i for i, t in self._fast_dirs.items() if t is tree]:
            self._drop_fast_dir(inode)

    def detach_fast_path(self) -> None:
        """Before `pyfuse3.close`: the receive thread and its table go with the session, so
        what it opened and read joins the job's counts now."""
        if self.fast is None:
            return
        for view in self._live.views:
            self._count_fast_opens(view)
        self.stats.bytes_read += self.fast.stats()["bytes_read"]
        self.fast = None

    @property
    def input_files(self) -> int:
        """Distinct input files the user code read, whoever opened them."""
        if self.fast is not None:
            for view in self._live.views:
                self._count_fast_opens(view)
        return len(self.stats.files_opened)

    @property
    def input_bytes(self) -> int:
        """Bytes the user code read from /pfs (and from /pfs/out), whoever answered."""
        extra = self.fast.stats()["bytes_read"] if self.fast is not None else 0
        return self.stats.bytes_read + extra

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def live_views(self) -> int:
        return len(self._live.views)

    def _add_view(self, view: View) -> None:
        if not view.nodes:
            # An empty view holds no inode, and shares its base with the next view built:
            # two equal bases would make `_view_of` find the wrong one.
            return
        # Not an append: with N workers, views prepared ahead are shown in the order workers
        # take them, not the order their inodes were allocated, and `_view_of` bisects.
        i = bisect.bisect_left(self._live.bases, view.base)
        self._live.views.insert(i, view)
        self._live.bases.insert(i, view.base)

    def _reap_view(self, view: View) -> None:
        if not view.idle:
            return
        i = bisect.bisect_left(self._live.bases, view.base)
        if i < len(self._live.views) and self._live.views[i] is view:
            del self._live.views[i]
            del self._live.bases[i]
        if len(self._readers):
            self._readers.drop_owned_by(view)
        if self.fast is not None:
            self._count_fast_opens(view)
            self.fast.drop(view.base, view.end)

    def _count_fast_opens(self, view: View) -> None:
        """Files of `view` the receive thread opened itself, into the job's input counts."""
        assert self.fast is not None
        for inode in self.fast.take_opened(view.base, view.end):
            origin = view.node(inode).origin
            if origin is not None:
                self.stats.content_opens += 1
                self.stats.files_opened.add(origin[0].source(origin[1].path))
                origin[0].read_elsewhere(origin[1])

    def _reap_outs(self) -> None:
        if len(self._out_fds):
            # An ended datum's output can no longer change (STALE): its files need no fd.
            for tree in self._live.outs:
                if tree.closed:
                    self._out_fds.drop_owned_by(tree)
        self._live.outs = [
            t for t in self._live.outs
            if any(t is s.out for s in self._workers) or t.lookup_count() > 0
            or self._has_handles(t)
        ]

    def _has_handles(self, tree: OutTree) -> bool:
        return any(h.out is tree for h in self._handles.values())

    # ----- finding inodes -------------------------------------------------------------

    def _view_of(self, inode: int) -> View | None:
        i = bisect.bisect_right(self._live.bases, inode) - 1
        if i >= 0:
            view = self._live.views[i]
            if inode in view:
                return view
        return None

    def _out_of(self, inode: int) -> OutTree | None:
        for tree in reversed(self._live.outs):
            if inode in tree:
                return tree
        return None

    def _writable(self, inode: int) -> OutTree:
        """The output tree `inode` belongs to, or the error a write there deserves."""
        tree = self._out_of(inode)
        if tree is None:
            raise pyfuse3.FUSEError(READ_ONLY)
        if tree.closed:
            raise pyfuse3.FUSEError(STALE)
        return tree

    # ----- attributes -----------------------------------------------------------------

    def _top_attr(self) -> pyfuse3.EntryAttributes:
        """The mount's own root when it holds one root per worker: it never changes."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = ROOT
        a.st_mode = DIR_MODE
        a.st_nlink = 1
        a.st_uid, a.st_gid = self._uid, self._gid
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._top_mtime
        a.attr_timeout = a.entry_timeout = VIEW_TIMEOUT
        return a

    def _root_attr(self, slot: _Slot) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = slot.inode
        a.st_mode = DIR_MODE | 0o200 if slot.out else DIR_MODE
        # 1 = "not counted" (as btrfs does): the count changes at swaps while the kernel
        # may briefly hold the old attributes, and a stale count would mislead find's
        # leaf optimisation into skipping a directory.
        a.st_nlink = 1
        a.st_uid, a.st_gid = self._uid, self._gid
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = slot.mtime_ns
        # Cached, and dropped at each swap (`show`): default_permissions
        # would otherwise GETATTR the root on every path walk. The root's attributes say
        # nothing about which datum is shown (its link count is constant, see above), so
        # staleness after a swap costs nothing but an old mtime.
        a.attr_timeout = VIEW_TIMEOUT
        # A worker's root is named once (`/<w>`, when it is bind-mounted) and keeps its name.
        a.entry_timeout = 0 if slot.inode == ROOT else VIEW_TIMEOUT
        return a

    def _node_attr(self, inode: int, node: Node, *, at_root: bool) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = node.mode
        a.st_nlink = node.nlink
        a.st_size = node.size
        a.st_blocks = (node.size + 511) // 512
        a.st_blksize = 128 * 1024
        # Input files and directories keep their real owner (with their real mode, the
        # kernel's default_permissions check then applies to them as on the disk).
        a.st_uid = node.uid if node.uid >= 0 else self._uid
        a.st_gid = node.gid if node.gid >= 0 else self._gid
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        a.attr_timeout = VIEW_TIMEOUT
        # A root entry's name moves to another datum at the next swap.
        a.entry_timeout = 0 if at_root else VIEW_TIMEOUT
        if self.fast is not None:
            # Handed to the kernel now, so it may GETATTR the inode from now on: a view's
            # inode never changes, the C thread may answer for us (and open a local file).
            self.fast.attr(inode, a, node.origin if node.data is None else None)
        return a

    def _stat_attr(
        self, inode: int, st: os.stat_result, *, at_root: bool
    ) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.st_mode = st.st_mode
        a.st_nlink = st.st_nlink
        a.st_size = st.st_size
        a.st_blocks = st.st_blocks
        a.st_blksize = st.st_blksize
        a.st_uid, a.st_gid = st.st_uid, st.st_gid
        a.st_rdev = st.st_rdev
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        # /pfs/out itself is a new inode in every datum, so only its name must not be cached
        # past a swap; its attributes may be, like those of everything below it. (A zero
        # attr_timeout cost two GETATTRs per file created: default_permissions checks.)
        a.attr_timeout = OUT_TIMEOUT
        a.entry_timeout = 0 if at_root else OUT_TIMEOUT
        return a

    def _out_root_attr(self, tree: OutTree) -> pyfuse3.EntryAttributes:
        try:
            st = os.lstat(tree.staging)
        except FileNotFoundError:
            # A listing taken just before a swap may outlive the datum's staging area.
            st = tree.root_stat
            return self._stat_attr(tree.root_inode, st, at_root=True)
        attr = self._stat_attr(tree.root_inode, st, at_root=True)
        self._fast_out_dir(tree, tree.root_inode, attr)
        return attr

    def _remember_out(self, tree: OutTree, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        st = os.lstat(tree.child_path(parent, name))
        inode = tree.remember(parent, name, st)
        attr = self._stat_attr(inode, st, at_root=False)
        self._fast_out_dir(tree, inode, attr)
        return attr

    def _fast_out_dir(self, tree: OutTree, inode: int, attr: pyfuse3.EntryAttributes) -> None:
        """An /pfs/out directory handed to the kernel: the C thread answers its GETATTR, and
        LOOKUPs of names missing from it, until it changes (`_out_dirs_changed`, called by
        every handler that changes it before that handler answers) or its datum ends."""
        if self.fast is None or tree.closed or not stat.S_ISDIR(attr.st_mode):
            return
        if inode not in self._fast_dirs:
            try:
                fd = os.open(tree.path(inode),
                             os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:  # gone or replaced meanwhile: Python answers for it
                log.debug("output directory %d stays with Python: %s", inode, exc)
                return
            try:
                self.fast.directory(inode, fd)
            finally:
                os.close(fd)
            self._fast_dirs[inode] = tree
        self.fast.attr(inode, attr)

    def _out_dirs_changed(self, tree: OutTree, *inodes: int | None) -> None:
        """Entries were made or removed in these directories: new attributes for the C
        thread, or none if a directory is gone."""
        for inode in inodes:
            if inode is None or inode not in self._fast_dirs:
                continue
            try:
                st = os.lstat(tree.path(inode))
            except OSError:
                st = None
            if st is None or not stat.S_ISDIR(st.st_mode):
                self._drop_fast_dir(inode)
            elif self.fast is not None:
                self.fast.attr(inode, self._stat_attr(inode, st,
                                                      at_root=inode == tree.root_inode))

    def _drop_fast_dir(self, inode: int | None) -> None:
        """The C thread no longer answers for directory `inode` (gone, or its datum ended)."""
        if inode is None or self._fast_dirs.pop(inode, None) is None:
            return
        if self.fast is not None:
            self.fast.drop(inode, inode + 1)

    # ----- lookups and metadata -------------------------------------------------------

    @guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        slot = self._slots.get(parent_inode)
        if slot is not None:
            return self._lookup_root(slot, name)
        if parent_inode == ROOT:
            return self._lookup_worker(name)
        view = self._view_of(parent_inode)
        if view is not None:
            node = view.node(parent_inode)
            if node.children is None:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            child = node.children.get(name)
            if child is None:
                # A view never changes, so the kernel may remember the name is absent (a
                # negative entry: user code probing for optional files asks once per datum).
                absent = pyfuse3.EntryAttributes()
                absent.st_ino = 0
                absent.entry_timeout = VIEW_TIMEOUT
                return absent
            view.lookups += 1
            return self._node_attr(child, view.node(child), at_root=False)
        tree = self._out_of(parent_inode)
        if tree is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._remember_out(tree, parent_inode, name)

    def _lookup_root(self, slot: _Slot, name: bytes) -> pyfuse3.EntryAttributes:
        if name == OUT and slot.out is not None:
            tree = slot.out
            tree.remember_root()
            attr = self._out_root_attr(tree)
        else:
            child = slot.view.top.get(name)
            if child is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            slot.view.lookups += 1
            attr = self._node_attr(child, slot.view.node(child), at_root=True)
        if self.epoch is not None:
            # Only a LOOKUP's answer: the kernel stamps it with the epoch read before the
            # request was sent. Root entries of a READDIRPLUS keep timeout zero, since nothing
            # promises that their stamp predates the swap.
            attr.entry_timeout = VIEW_TIMEOUT
        return attr

    def _lookup_worker(self, name: bytes) -> pyfuse3.EntryAttributes:
        """`/<w>` below the mount's root (N > 1): worker w's root."""
        slot = self._names.get(name) if len(self._workers) > 1 else None
        if slot is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._root_attr(slot)

    @guarded
    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for inode, nlookup in inode_list:
            # FORGET means the kernel dropped the inode: no read or write of it can follow.
            self._readers.drop(inode)
            self._out_fds.drop(inode)
            view = self._view_of(inode)
            if view is not None:
                view.lookups -= nlookup
                self._reap_view(view)
                continue
            tree = self._out_of(inode)
            if tree is not None:
                tree.forget(inode, nlookup)
        if inode_list:
            self._reap_outs()

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        slot = self._slots.get(inode)
        if slot is not None:
            return self._root_attr(slot)
        if inode == ROOT:
            return self._top_attr()
        view = self._view_of(inode)
        if view is not None:
            return self._node_attr(inode, view.node(inode), at_root=inode in view.top.values())
        tree = self._out_of(inode)
        if tree is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._stat_attr(inode, self._out_stat(tree, inode),
                               at_root=inode == tree.root_inode)

    def _out_stat(self, tree: OutTree, inode: int) -> os.stat_result:
        """An output's stat; through an fd still open on it once its last name is gone (open,
        unlink, read on: the kernel asks GETATTR before such a read)."""
        try:
            return os.lstat(tree.path(inode))
        except FileNotFoundError:
            cached = self._out_fds.get(inode)
            fd = cached[0] if cached is not None else next(
                (h.fd for h in self._handles.values() if h.inode == inode and h.fd >= 0), -1)
            if fd < 0:
                raise
            return os.fstat(fd)

    @guarded
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        tree = self._writable(inode)
        path = tree.path(inode)
        handle = self._handles.get(fh) if fh is not None else None
        if fields.update_size:
            if handle is not None and handle.fd >= 0:
                os.ftruncate(handle.fd, attr.st_size)
            else:
                os.truncate(path, attr.st_size)
        if fields.update_mode and not stat.S_ISLNK(os.lstat(path).st_mode):
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            os.lchown(path, uid, gid)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            atime = attr.st_atime_ns if fields.update_atime else st.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns
            os.utime(path, ns=(atime, mtime), follow_symlinks=False)
        self._out_dirs_changed(tree, inode)
        return self._stat_attr(inode, os.lstat(path), at_root=inode == tree.root_inode)

    @guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        view = self._view_of(inode)
        if view is not None:
            node = view.node(inode)
            if node.data is None or not stat.S_ISLNK(node.mode):
                raise pyfuse3.FUSEError(errno.EINVAL)
            return node.data
        tree = self._out_of(inode)
        if tree is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return os.fsencode(os.readlink(tree.path(inode)))

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        out = self._workers[0].out
        target = out.staging if out is not None else "/"
        st = os.statvfs(target)
        s.f_bsize, s.f_frsize = st.f_bsize, st.f_frsize
        s.f_blocks, s.f_bfree, s.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
        s.f_files, s.f_ffree, s.f_favail = st.f_files, st.f_ffree, st.f_favail
        s.f_namemax = 255
        return s

    # ----- directories ----------------------------------------------------------------

    def _new_handle(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        if handle.view is not None:
            handle.view.handles += 1
        return fh

    def _drop_handle(self, fh: int) -> Handle | None:
        handle = self._handles.pop(fh, None)
        if handle is None:
            return None
        if handle.fd >= 0:
            os.close(handle.fd)
        if handle.reader is not None:
            handle.reader.close()
        if handle.view is not None:
            handle.view.handles -= 1
            self._reap_view(handle.view)
        if handle.out is not None:
            self._reap_outs()
        return handle

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int | pyfuse3.FileInfo:
        slot = self._slots.get(inode)
        if slot is not None:
            # One snapshot per open: a listing never mixes two datums.
            listing = list(slot.view.top.items())
            if slot.out is not None:
                listing.append((OUT, slot.out.root_inode))
            listing.sort()
            return self._new_handle(Handle(view=slot.view, listing=listing, out=slot.out))
        if inode == ROOT:
            return self._new_handle(Handle(workers=True, listing=[
                (str(w).encode(), s.inode) for w, s in enumerate(self._workers)]))
        view = self._view_of(inode)
        if view is not None:
            node = view.node(inode)
            if node.children is None:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            fh = self._new_handle(Handle(view=view, listing=list(node.children.items())))
            # A view's directory never changes: the kernel may keep its listing and answer
            # later walks without READDIR. (Never the roots, nor /pfs/out.)
            return pyfuse3.FileInfo(fh=fh, keep_cache=True) if CACHED_LISTINGS else fh
        tree = self._out_of(inode)
        if tree is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        names = sorted(os.fsencode(n) for n in os.listdir(tree.path(inode)))
        return self._new_handle(Handle(out=tree, listing=[(n, inode) for n in names]))

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._handles[fh]
        listing = handle.listing or []
        for i in range(start_id, len(listing)):
            name, inode = listing[i]
            attr = self._readdir_attr(handle, name, inode)
            if attr is None:
                continue
            if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                self._unremember(handle, attr.st_ino)
                return

    def _readdir_attr(
        self, handle: Handle, name: bytes, inode: int
    ) -> pyfuse3.EntryAttributes | None:
        """Attributes of one listed entry, counted as a kernel lookup."""
        if handle.workers:
            return self._root_attr(self._slots[inode])
        view = handle.view
        if view is not None and inode in view:
            view.lookups += 1
            at_root = inode in view.top.values() and view.top.get(name) == inode
            return self._node_attr(inode, view.node(inode), at_root=at_root)
        tree = handle.out
        if tree is None:
            return None
        if inode == tree.root_inode and name == OUT:
            tree.remember_root()
            return self._out_root_attr(tree)
        try:
            return self._remember_out(tree, inode, name)
        except FileNotFoundError:
            return None  # removed since opendir

    def _unremember(self, handle: Handle, inode: int) -> None:
        view = handle.view
        if view is not None and inode in view:
            view.lookups -= 1
        elif handle.out is not None:
            handle.out.forget(inode, 1)

    @guarded
    async def releasedir(self, fh: int) -> None:
        self._drop_handle(fh)

    @guarded
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # ----- files ----------------------------------------------------------------------

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self.no_open:
            # Answered once: from then on the kernel opens files without asking (no OPEN,
            # FLUSH or RELEASE round trips) and keeps their page cache (FOPEN_KEEP_CACHE).
            # Writes to an input are refused at WRITE (EROFS) instead of at open.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        view = self._view_of(inode)
        if view is not None:
            if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
                raise pyfuse3.FUSEError(READ_ONLY)
            node = view.node(inode)
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if node.data is not None:
                handle = Handle(data=node.data, view=view)
            else:
                assert node.origin is not None
                repo, entry = node.origin
                # Local stores open the file now; remote ones fetch nothing until a read.
                reader = repo.open_reader(entry)
                self.stats.content_opens += 1
                self.stats.files_opened.add(repo.source(entry.path))
                handle = Handle(reader=reader, view=view)
            fh = self._new_handle(handle)
            if inode not in view.opened:
                view.opened.add(inode)
                self._prime(inode, node, handle)
            # Immutable inode: the kernel's cached pages stay valid for the view's life.
            return pyfuse3.FileInfo(fh=fh, keep_cache=True)
        tree = self._writable(inode)
        fd = os.open(tree.path(inode), _passthrough_flags(flags))
        return pyfuse3.FileInfo(fh=self._new_handle(Handle(fd=fd, out=tree, inode=inode)),
                                keep_cache=False)

    def _prime(self, inode: int, node: Node, handle: Handle) -> None:
        """Put a small file's bytes in the kernel's page cache before its first open returns.

        Saves the READ round trip that would follow (most datum files are read whole right
        after opening). Safe from the trio thread only here: before the first OPEN of an
        inode is answered no READ of it can be in flight, so no page the store needs is
        locked waiting for us. Advisory: on any error the kernel simply asks with READ.
        """
        if self.notifier is None or node.size > PRIME_MAX or node.size == 0:
            return  # not mounted (handlers awaited directly), too big, or nothing to send
        reader = handle.reader
        if reader is not None and not reader.inline:
            return  # its bytes are remote: OPEN must not wait on the network
        try:
            data = handle.data if reader is None else reader.read(0, node.size)
            if len(data) != node.size:
                return  # changed since it was listed: let READ serve what is there
            pyfuse3.notify_store(inode, 0, data)
        except OSError as exc:
            log.debug("could not prime inode %d: %s", inode, exc)
            return
        if handle.data is None:
            self.stats.bytes_read += len(data)

    @guarded
    async def read(self, fh: int, off: int, size: int, inode: int = 0) -> bytes | pyfuse3.ReadFd:
        if fh == NO_HANDLE:
            return await self._read_inode(inode, off, size)
        handle = self._handles[fh]
        if handle.data is not None:
            return handle.data[off:off + size]
        reader = handle.reader
        if self.enable_splice:
            fd = handle.fd if reader is None else _local_fd(reader)
            if fd >= 0:
                return self._read_fd(fd, off, size)
        if reader is None:  # a file of /pfs/out
            data = os.pread(handle.fd, size, off)
        elif reader.inline:
            data = reader.read(off, size)
        else:
            # A remote read waits on the network: never on the thread that serves every request.
            data = await trio.to_thread.run_sync(reader.read, off, size)
        self.stats.bytes_read += len(data)
        return data

    async def _read_inode(self, inode: int, off: int, size: int) -> bytes | pyfuse3.ReadFd:
        """READ under no_open: by inode, from a reader kept open across reads."""
        view = self._view_of(inode)
        if view is None:
            fd = self._out_fd(inode, write=False)
            if self.enable_splice:
                return self._read_fd(fd, off, size)
            data = os.pread(fd, size, off)
            self.stats.bytes_read += len(data)
            return data
        node = view.node(inode)
        if node.data is not None:
            return node.data[off:off + size]
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        reader = self._readers.get(inode)
        if reader is None:
            assert node.origin is not None
            repo, entry = node.origin
            reader = repo.open_reader(entry)
            self.stats.content_opens += 1
            self.stats.files_opened.add(repo.source(entry.path))
            self._readers.put(inode, reader, view)
            if self.fast is not None and _local_fd(reader) >= 0:
                self.fast.fds(inode, _local_fd(reader), -1)
        if self.enable_splice:
            fd = _local_fd(reader)
            if fd >= 0:
                return self._read_fd(fd, off, size, node.size)
        if reader.inline:
            data = reader.read(off, size)
        else:
            # A remote read waits on the network: never on the thread that serves every
            # request. `using` keeps the reader open until it is back, whatever is dropped.
            with self._readers.using(inode) as remote:
                data = await trio.to_thread.run_sync(remote.read, off, size)
        self.stats.bytes_read += len(data)
        return data

    def _read_fd(self, fd: int, off: int, size: int, known_size: int = -1) -> pyfuse3.ReadFd:
        """The answer to a READ of a local file: pyfuse3 sends its bytes from `fd` before it
        handles another request, so `fd` cannot be closed in between (all closing happens on
        this thread)."""
        if known_size < 0:  # not listed (an /pfs/out file, or a handle's): what is on disk now
            known_size = os.fstat(fd).st_size
        self.stats.bytes_read += max(0, min(size, known_size - off))
        return pyfuse3.ReadFd(fd, off)

    def _out_fd(self, inode: int, write: bool) -> int:
        """A staging fd of an /pfs/out file (no_open), opened once per inode."""
        tree = self._writable(inode) if write else self._out_of(inode)
        if tree is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        cached = self._out_fds.get(inode)
        if cached is not None and (cached[1] or not write):
            return cached[0]
        path = tree.path(inode)
        try:
            # Read-write, so one fd serves both: the kernel has checked the caller's access.
            fd, writable = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW), True
        except PermissionError:
            if write:
                raise
            fd, writable = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW), False
        self._out_fds.put(inode, (fd, writable), tree)
        if self.fast is not None:
            self.fast.fds(inode, fd, fd if writable else -1)
        return fd

    @guarded
    async def write(self, fh: int, off: int, buf: bytes, inode: int = 0) -> int:
        return os.pwrite(self._write_target(fh, inode), buf, off)

    def write_fd(self, fh: int, inode: int) -> int:
        """The staging fd a WRITE's bytes go to (patched pyfuse3 with `enable_splice`, which
        calls this synchronously and copies the payload itself). Raises only FUSEError."""
        try:
            return self._write_target(fh, inode)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("internal error in FUSE handler write_fd")
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _write_target(self, fh: int, inode: int) -> int:
        """The fd a WRITE of (fh, inode) goes to, or the FUSEError that answers it."""
        if fh == NO_HANDLE:
            if self._view_of(inode) is not None:
                raise pyfuse3.FUSEError(READ_ONLY)
            return self._out_fd(inode, write=True)
        handle = self._handles[fh]
        if handle.out is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if handle.out.closed:
            raise pyfuse3.FUSEError(STALE)
        return handle.fd

    async def flush(self, fh: int) -> None:
        # Nothing is buffered here, so there is nothing to flush. ENOSYS, answered once, makes
        # the kernel stop sending FLUSH at every close() (its no_flush flag): one FUSE round
        # trip less per file opened. Not guarded: FUSEError is the only thing it raises.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @guarded
    async def fsync(self, fh: int, datasync: bool, inode: int = 0) -> None:
        if fh == NO_HANDLE:
            if self._out_of(inode) is None:
                return  # an input: nothing of ours to make durable
            fd = self._out_fd(inode, write=False)
        else:
            handle = self._handles[fh]
            if handle.out is None or handle.fd < 0:
                return
            fd = handle.fd
        # A copy of the fd: the sync takes as long as the disk needs, on a worker thread,
        # and the original may be closed (RELEASE, FORGET, eviction) meanwhile.
        dup = os.dup(fd)
        try:
            await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, dup)
        finally:
            os.close(dup)

    @guarded
    async def release(self, fh: int) -> None:
        self._drop_handle(fh)

    # ----- changing /pfs/out ----------------------------------------------------------

    @guarded
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        tree = self._writable(parent_inode)
        path = tree.child_path(parent_inode, name)
        if self.no_open:
            # Read-write and without O_APPEND: this fd joins the ones kept by inode, which
            # serve every READ and WRITE (the kernel has placed appends already).
            flags = (flags & os.O_TRUNC) | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
        else:
            flags = _passthrough_flags(flags)
        fd = os.open(path, flags | os.O_CREAT, stat.S_IMODE(mode))
        try:
            self._give_to_caller(path, ctx, fd=fd)
            attr = self._remember_out(tree, parent_inode, name)
        except BaseException:
            os.close(fd)
            raise
        self._out_dirs_changed(tree, parent_inode)
        if self.no_open:
            # No handle: on a no_open connection the kernel sends no RELEASE even for files
            # made by CREATE (seen on 6.18), so a handle, and its fd, would outlive the datum
            # — one per output file, and every swap scanned them all. READ/WRITE/FSYNC of
            # this file then come with fh 0, like every other file's.
            self._out_fds.put(attr.st_ino, (fd, True), tree)
            if self.fast is not None:
                self.fast.fds(attr.st_ino, fd, fd)
            return pyfuse3.FileInfo(fh=NO_HANDLE, keep_cache=False), attr
        fi = pyfuse3.FileInfo(fh=self._new_handle(Handle(fd=fd, out=tree, inode=attr.st_ino)),
                              keep_cache=False)
        return fi, attr

    @guarded
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        tree = self._writable(parent_inode)
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise pyfuse3.FUSEError(errno.EPERM)
        path = tree.child_path(parent_inode, name)
        os.mknod(path, mode)
        self._give_to_caller(path, ctx)
        self._out_dirs_changed(tree, parent_inode)
        return self._remember_out(tree, parent_inode, name)

    @guarded
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        tree = self._writable(parent_inode)
        path = tree.child_path(parent_inode, name)
        os.mkdir(path, stat.S_IMODE(mode))
        self._give_to_caller(path, ctx)
        self._out_dirs_changed(tree, parent_inode)
        return self._remember_out(tree, parent_inode, name)

    @guarded
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        tree = self._writable(parent_inode)
        path = tree.child_path(parent_inode, name)
        os.symlink(target, path)
        self._give_to_caller(path, ctx)
        self._out_dirs_changed(tree, parent_inode)
        return self._remember_out(tree, parent_inode, name)

    @guarded
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        tree = self._writable(new_parent_inode)
        if self._out_of(inode) is not tree:
            raise pyfuse3.FUSEError(errno.EXDEV)
        os.link(tree.path(inode), tree.child_path(new_parent_inode, new_name),
                follow_symlinks=False)
        self._out_dirs_changed(tree, new_parent_inode)
        return self._remember_out(tree, new_parent_inode, new_name)

    @guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        tree = self._writable(parent_inode)
        path = tree.child_path(parent_inode, name)
        st = self._keep_open(tree, path)
        os.unlink(path)
        if st is not None:
            tree.lost_name(st)
        self._out_dirs_changed(tree, parent_inode)

    def _keep_open(self, tree: OutTree, path: str) -> os.stat_result | None:
        """Before a file loses a name: its stat, and under no_open an fd kept open on it.

        The kernel may still have it open (open, unlink, write on is a POSIX idiom) and
        nothing told us: its next WRITE or READ comes by inode, with no path to open.
        """
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        inode = tree.known(st.st_ino)
        if self.no_open and inode is not None and stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
            try:
                self._out_fd(inode, write=False)
            except OSError as exc:  # the removal goes on; only a later write by inode fails
                log.debug("cannot keep %s open before it loses its name: %s", path, exc)
        return st

    @guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        tree = self._writable(parent_inode)
        path = tree.child_path(parent_inode, name)
        gone = tree.known(os.lstat(path).st_ino) if self._fast_dirs else None
        os.rmdir(path)
        self._out_dirs_changed(tree, parent_inode)
        self._drop_fast_dir(gone)

    @guarded
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        src_tree = self._out_of(parent_inode_old)
        dst_tree = self._out_of(parent_inode_new)
        if src_tree is None and dst_tree is None:
            raise pyfuse3.FUSEError(READ_ONLY)
        if src_tree is not dst_tree:
            # `mv` from an input into /pfs/out falls back to copying on EXDEV.
            raise pyfuse3.FUSEError(errno.EXDEV)
        tree = self._writable(parent_inode_old)
        src = tree.child_path(parent_inode_old, name_old)
        dst = tree.child_path(parent_inode_new, name_new)
        replaced = None
        if not flags & _linux.RENAME_EXCHANGE:
            replaced = self._keep_open(tree, dst)  # a file renamed over loses its name
            if replaced is not None and os.path.samestat(replaced, os.lstat(src)):
                replaced = None  # two links of one file: rename(2) changes nothing
        gone = None  # a directory renamed over: gone
        if replaced is not None and stat.S_ISDIR(replaced.st_mode):
            gone = tree.known(replaced.st_ino)
        if flags:
            _linux.renameat2(src, dst, flags)
        else:
            os.rename(src, dst)
        if replaced is not None:
            tree.lost_name(replaced)
        if flags & _linux.RENAME_EXCHANGE:
            tree.exchanged(parent_inode_old, name_old, parent_inode_new, name_new)
        else:
            tree.moved(parent_inode_old, name_old, parent_inode_new, name_new)
        if self._fast_dirs:
            # Both parents changed; a directory moved has a new ctime (and `..`).
            self._drop_fast_dir(gone)
            moved = [tree.known(os.lstat(p).st_ino) for p in (src, dst) if os.path.lexists(p)]
            self._out_dirs_changed(tree, parent_inode_old, parent_inode_new, *moved)

    def _give_to_caller(self, path: str, ctx: pyfuse3.RequestContext, fd: int = -1) -> None:
        """Make a new output entry owned by the process that created it, as a disk would."""
        if os.geteuid() != 0 or (ctx.uid == self._uid and ctx.gid == self._gid):
            return
        if fd >= 0:
            os.fchown(fd, ctx.uid, ctx.gid)
        else:
            os.lchown(path, ctx.uid, ctx.gid)


def _close_reader(reader: Reader) -> None:
    try:
        reader.close()
    except OSError as exc:
        log.debug("closing a reader: %s", exc)


def _local_fd(reader: Reader) -> int:
    """The open file behind a local reader, -1 for any other (its bytes may be remote)."""
    return reader.fd if isinstance(reader, LocalReader) else -1


def _close_out_fd(fd_writable: tuple[int, bool]) -> None:
    os.close(fd_writable[0])


def _passthrough_flags(flags: int) -> int:
    """Open flags safe to hand to the staging file system."""
    drop = os.O_CREAT | os.O_EXCL | os.O_NOCTTY
    return (flags & ~drop) | os.O_CLOEXEC | os.O_NOFOLLOW

"""One datum's immutable tree: the names, sizes and modes user code sees under /pfs.

A view is built from the repo listings alone, so building it reads no file content
(laziness) and `stat` is true before the first byte is read. Every view owns a private,
contiguous range of inode numbers that is never reused, which is what lets the kernel
cache a view's entries and pages for as long as it likes: an inode number can only ever
mean one file of one datum.
"""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pfsmount.datums import Datum
from pfsmount.names import FS_ENCODING, FS_ERRORS, fsencode
from pfsmount.store.base import Entry, RepoListing, RepoSource

DIR_MODE = stat.S_IFDIR | 0o555
# The datum's environment can hold secrets (`transform.env`): readable by its owner only.
ENV_MODE = stat.S_IFREG | 0o400


class InodeAllocator:
    """Hands out inode numbers that are never reused during a mount.

    Views are built in worker threads while FUSE handlers on the trio thread number new
    /pfs/out entries, so taking a range is guarded by a lock.
    """

    def __init__(self, first: int = 2) -> None:
        self._next = first
        self._lock = threading.Lock()

    def take(self, n: int = 1) -> int:
        """Reserve `n` consecutive inode numbers and return the first."""
        with self._lock:
            base = self._next
            self._next += n
        return base


@dataclass(slots=True)
class Node:
    """One file, directory or symlink of a view."""

    mode: int
    size: int
    mtime_ns: int
    origin: tuple[RepoSource, Entry] | None = None  # a repo file: read through repo.open_reader
    data: bytes | None = None  # content held in memory (/pfs/.env; a symlink's target)
    children: dict[bytes, int] | None = None  # directories only: name -> inode
    nlink: int = 1
    uid: int = -1  # the owner shown; -1: pfsmount's own
    gid: int = -1

    @property
    def is_dir(self) -> bool:
        return self.children is not None


@dataclass
class View:
    """An immutable tree of nodes numbered base, base+1, ...; `top` holds /pfs's entries."""

    base: int
    nodes: list[Node]
    top: dict[bytes, int]
    datum: Datum | None = None
    lookups: int = 0  # kernel references to this view's inodes (lookup counts)
    handles: int = 0  # open file and directory handles into this view
    retired: bool = False
    opened: set[int] = field(default_factory=set)  # inodes opened at least once

    def __contains__(self, inode: int) -> bool:
        return self.base <= inode < self.base + len(self.nodes)

    def node(self, inode: int) -> Node:
        return self.nodes[inode - self.base]

    @property
    def end(self) -> int:
        return self.base + len(self.nodes)

    @property
    def idle(self) -> bool:
        """True once the kernel holds nothing of a view that is no longer shown."""
        return self.retired and self.lookups <= 0 and self.handles <= 0


@dataclass
class _Builder:
    """Accumulates nodes with provisional numbers 0..n-1; `finish` relocates them."""

    nodes: list[Node] = field(default_factory=list)
    top: dict[bytes, int] = field(default_factory=dict)

    def add(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def child_dir(self, parent: int, name: bytes, entry: Entry | None, fallback_mtime: int) -> int:
        """The directory `name` under `parent`, created (from `entry`'s metadata) if new."""
        children = self.nodes[parent].children
        assert children is not None
        existing = children.get(name)
        if existing is not None and self.nodes[existing].is_dir:
            return existing
        mode = stat.S_IFDIR | (stat.S_IMODE(entry.mode) if entry else 0o555)
        mtime = entry.mtime_ns if entry else fallback_mtime
        idx = self.add(Node(mode=mode, size=0, mtime_ns=mtime, children={}, nlink=2,
                            uid=entry.uid if entry else -1, gid=entry.gid if entry else -1))
        children[name] = idx
        self.nodes[parent].nlink += 1
        return idx

    def finish(self, base: int, datum: Datum | None) -> View:
        for node in self.nodes:
            if node.children is not None:
                node.children = {name: base + idx for name, idx in node.children.items()}
        top = {name: base + idx for name, idx in self.top.items()}
        return View(base=base, nodes=self.nodes, top=top, datum=datum)


def build_view(
    datum: Datum,
    repos: Mapping[str, RepoSource],
    env_text: bytes,
    inodes: InodeAllocator,
) -> View:
    """Build the tree user code sees for `datum`: /pfs/<name>/<full path>, plus /pfs/.env."""
    b = _Builder()
    for inp in datum.inputs:
        repo = repos[inp.repo_key]
        if inp.subtree:
            _add_input(b, inp.name, inp.path, repo, _Carried(inp.parents, inp.subtree),
                       empty_files=inp.empty_files)
        else:
            assert isinstance(repo, RepoListing), "a hand-made input needs a listed repo"
            _add_input(b, inp.name, inp.path, repo, repo, empty_files=inp.empty_files)
    env_node = Node(mode=ENV_MODE, size=len(env_text), mtime_ns=0, data=env_text)
    b.top[b".env"] = b.add(env_node)
    return b.finish(inodes.take(len(b.nodes)), datum)


def set_env_file(view: View, env_text: bytes) -> None:
    """Replace the content of `view`'s /pfs/.env: only before the view is first shown."""
    node = view.node(view.top[b".env"])
    node.data, node.size = env_text, len(env_text)


def empty_view(inodes: InodeAllocator) -> View:
    """The view shown before the first datum and after the last: nothing at all."""
    return _Builder().finish(inodes.take(0), None)


class _Entries(Protocol):
    def get(self, path: str) -> Entry | None: ...
    def subtree(self, path: str) -> Sequence[Entry]: ...


class _Carried:
    """The entries a streamed input carries, answering as a listing would for its path."""

    def __init__(self, parents: tuple[Entry, ...], subtree: tuple[Entry, ...]) -> None:
        self._by_path = {e.path: e for e in parents}
        self._by_path[subtree[0].path] = subtree[0]
        self._subtree = subtree

    def get(self, path: str) -> Entry | None:
        return self._by_path.get(path)

    def subtree(self, path: str) -> Sequence[Entry]:
        return self._subtree


def _add_input(b: _Builder, name: str, path: str, repo: RepoSource, listing: _Entries, *,
               empty_files: bool) -> None:
    root_entry = listing.get("/")
    root_mtime = root_entry.mtime_ns if root_entry else 0
    key = fsencode(name)
    top = b.top.get(key)
    if top is None:
        mode = stat.S_IFDIR | (stat.S_IMODE(root_entry.mode) if root_entry else 0o555)
        top = b.add(Node(mode=mode, size=0, mtime_ns=root_mtime, children={}, nlink=2,
                         uid=root_entry.uid if root_entry else -1,
                         gid=root_entry.gid if root_entry else -1))
        b.top[key] = top

    # Intermediate directories of the matched path keep their real metadata.
    parent = top
    parts = [p for p in path.split("/") if p]
    prefix = ""
    for part in parts[:-1]:
        prefix += "/" + part
        parent = b.child_dir(parent, fsencode(part), listing.get(prefix), root_mtime)

    subtree = listing.subtree(path)
    _add_subtree(b, top, parts, subtree, repo, empty_files=empty_files)


def _add_subtree(
    b: _Builder,
    top: int,
    match_parts: list[str],
    entries: Iterable[Entry],
    repo: RepoSource,
    *,
    empty_files: bool,
) -> None:
    """Add a matched entry and its descendants; parents always precede children in `entries`."""
    dirs: dict[str, int] = {"/": top}
    if match_parts:
        # The matched entry's parent directory was created by the caller.
        parent_path = "/" + "/".join(match_parts[:-1]) if len(match_parts) > 1 else "/"
        dirs[parent_path] = _walk_to(b, top, match_parts[:-1])
    for entry in entries:
        if entry.path == "/":
            continue  # glob "/": /pfs/<name> itself is the repo root
        parent_path, _, leaf = entry.path.rpartition("/")
        parent = dirs.get(parent_path or "/")
        if parent is None:
            continue  # cannot happen with a sorted listing; skip rather than misplace
        leaf_b = leaf.encode(FS_ENCODING, FS_ERRORS)
        if entry.is_dir:
            dirs[entry.path] = b.child_dir(parent, leaf_b, entry, entry.mtime_ns)
            continue
        children = b.nodes[parent].children
        assert children is not None
        if leaf_b in children:
            continue  # the same path matched twice (group inputs): keep the first
        if entry.is_symlink:
            # Answered from the listing: pfsmount never reads or follows the link itself.
            node = Node(mode=entry.mode, size=entry.size, mtime_ns=entry.mtime_ns,
                        data=fsencode(entry.link), uid=entry.uid, gid=entry.gid)
        elif empty_files:
            node = Node(mode=entry.mode, size=0, mtime_ns=entry.mtime_ns, data=b"",
                        uid=entry.uid, gid=entry.gid)
        else:
            node = Node(mode=entry.mode, size=entry.size, mtime_ns=entry.mtime_ns,
                        origin=(repo, entry), uid=entry.uid, gid=entry.gid)
        children[leaf_b] = b.add(node)


def _walk_to(b: _Builder, top: int, parts: list[str]) -> int:
    idx = top
    for part in parts:
        children = b.nodes[idx].children
        assert children is not None
        idx = children[fsencode(part)]
    return idx

"""The writable /pfs/out of one datum attempt: a private staging directory shown through FUSE.

Each attempt gets a fresh staging directory and fresh inode numbers, so nothing the kernel
cached about one datum's output can leak into the next. Inodes are keyed by the staging
file's own st_ino, which survives renames; the path of an inode is updated when it (or a
directory above it) is renamed through the mount, the only way the staging area changes.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from pfsmount.view import InodeAllocator


@dataclass
class OutTree:
    """Maps FUSE inodes to paths inside one staging directory."""

    staging: str
    inodes: InodeAllocator
    root_inode: int = 0
    closed: bool = False  # set once the datum is committed or dropped
    _paths: dict[int, str] = field(default_factory=dict)  # inode -> path relative to staging
    _by_ino: dict[int, int] = field(default_factory=dict)  # staging st_ino -> inode
    _ino_of: dict[int, int] = field(default_factory=dict)  # inode -> staging st_ino
    _lookups: dict[int, int] = field(default_factory=dict)
    # Files whose last name went (unlink, renamed over) while the kernel still knows them:
    # their old path may already name another file.
    _nameless: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.root_inode = self.inodes.take()
        self._paths[self.root_inode] = ""
        self.root_stat = os.lstat(self.staging)
        st_ino = self.root_stat.st_ino
        self._by_ino[st_ino] = self.root_inode
        self._ino_of[self.root_inode] = st_ino

    def __contains__(self, inode: int) -> bool:
        return inode in self._paths

    def path(self, inode: int) -> str:
        """Absolute staging path of `inode`; FileNotFoundError once it has no name."""
        if inode in self._nameless:
            raise FileNotFoundError(errno.ENOENT, "an output that no longer has a name")
        rel = self._paths[inode]
        return os.path.join(self.staging, rel) if rel else self.staging

    def child_path(self, parent: int, name: bytes) -> str:
        return os.path.join(self.path(parent), os.fsdecode(name))

    def remember(self, parent: int, name: bytes, st: os.stat_result) -> int:
        """The inode for the entry `name` under `parent`, counted as one kernel lookup."""
        rel_parent = self._paths[parent]
        rel = f"{rel_parent}/{os.fsdecode(name)}" if rel_parent else os.fsdecode(name)
        inode = self._by_ino.get(st.st_ino)
        if inode is None:
            inode = self.inodes.take()
            self._by_ino[st.st_ino] = inode
            self._ino_of[inode] = st.st_ino
        self._paths[inode] = rel
        self._lookups[inode] = self._lookups.get(inode, 0) + 1
        return inode

    def known(self, st_ino: int) -> int | None:
        """The inode the kernel was given for the staging file `st_ino`, if any."""
        return self._by_ino.get(st_ino)

    def lost_name(self, st: os.stat_result) -> None:
        """The staging file `st` (stat'ed before) lost its last name: its inode has no path."""
        inode = self._by_ino.pop(st.st_ino, None)
        if inode is not None and st.st_nlink <= 1:
            self._nameless.add(inode)
        elif inode is not None:
            self._by_ino[st.st_ino] = inode

    def forget(self, inode: int, n: int) -> None:
        left = self._lookups.get(inode, 0) - n
        if left > 0 or inode == self.root_inode:
            self._lookups[inode] = max(left, 0)
            return
        self._lookups.pop(inode, None)
        self._paths.pop(inode, None)
        self._nameless.discard(inode)
        st_ino = self._ino_of.pop(inode, None)
        if st_ino is not None and self._by_ino.get(st_ino) == inode:
            del self._by_ino[st_ino]

    def remember_root(self) -> None:
        """Count a kernel lookup of /pfs/out itself."""
        self._lookups[self.root_inode] = self._lookups.get(self.root_inode, 0) + 1

    def moved(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes) -> None:
        """Follow a rename: the entry and everything below it now live at the new path."""
        old, new = self._rel(old_parent, old_name), self._rel(new_parent, new_name)
        self._repath({old: new})

    def exchanged(self, parent_a: int, name_a: bytes, parent_b: int, name_b: bytes) -> None:
        """Follow a RENAME_EXCHANGE: the two entries traded places."""
        a, b = self._rel(parent_a, name_a), self._rel(parent_b, name_b)
        self._repath({a: b, b: a})

    def _rel(self, parent: int, name: bytes) -> str:
        base = self._paths[parent]
        return f"{base}/{os.fsdecode(name)}" if base else os.fsdecode(name)

    def _repath(self, moves: dict[str, str]) -> None:
        for inode, path in self._paths.items():
            for old, new in moves.items():
                if path == old or path.startswith(old + "/"):
                    self._paths[inode] = new + path[len(old):]
                    break

    def lookup_count(self) -> int:
        return sum(self._lookups.values())

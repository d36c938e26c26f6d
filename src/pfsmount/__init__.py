"""pfsmount: Pachyderm-style datum batching over a lazy, atomically swapping FUSE /pfs."""

from __future__ import annotations

__version__ = "0.1.0"

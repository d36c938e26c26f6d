"""A streamed S3 prefix lists in exactly a local directory's order (issue 18).

ListObjectsV2 is in byte order, where "a b" and "a.txt" sort before "a/x"; pfsmount lists
each S3 directory with a delimiter and sorts its names, so the order (and so datum order and
ids) is the one of a local directory holding the same paths, each subtree contiguous.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pfsmount.store import s3
from pfsmount.store.base import Entry
from pfsmount.store.local import open_stream
from s3server import S3Server
from support import write_tree

FILES = {
    "r/a b": b"1",
    "r/a/x": b"22",
    "r/a/y/z": b"333",
    "r/a.txt": b"4",
    "r/a-/q": b"5",
    "r/b!": b"6",
    "r/c/d/": b"",  # a marker: an empty directory
    "r/c/e": b"7",
    "r/\u00e9t\u00e9/f": b"8",
    "r/Z": b"9",
}


def test_s3_walk_order_equals_the_local_walk(tmp_path: Path, s3server: S3Server,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url = s3server.bucket("order", {f"pre/{k}": v for k, v in FILES.items()})
    write_tree(tmp_path / "data", FILES)
    local = [_shape(e) for e in open_stream(str(tmp_path / "data"), "r").walk()]
    for key, value in s3server.env().items():
        monkeypatch.setitem(os.environ, key, value)
    stream = s3.bucket_for(f"{url}/pre").open_stream("r")
    remote = [_shape(e) for e in stream.walk()]
    assert remote == local
    assert [p for p, _, _ in remote][:6] == ["/", "/Z", "/a", "/a/x", "/a/y", "/a/y/z"]
    # Walked again, the same (a fresh listing each time).
    assert [_shape(e) for e in stream.walk()] == local


def _shape(entry: Entry) -> tuple[str, bool, int]:
    # A local directory has a size of its own (4096); an S3 one is 0.
    return entry.path, entry.is_dir, 0 if entry.is_dir else entry.size

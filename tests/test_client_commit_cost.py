"""Issue 13: the group commit's cheaper pieces still do the whole job.

`output._remove_tree` tries one rmdir before rmtree, and `_linux.syncfs` replaces
pyfuse3.syncfs (which held the GIL). Nothing may be left behind, and a failing syncfs must
still raise (the ledger must not promise bytes that are not on disk).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pfsmount import _linux
from pfsmount.ledger import Ledger
from pfsmount.output import OutputRepo


def _repo(tmp_path: Path) -> OutputRepo:
    data = tmp_path / "data"
    work = data / ".pfsmount" / "p"
    work.mkdir(parents=True)
    repo = OutputRepo(str(data), "p", Ledger(str(work / "ledger.sqlite")))
    repo.clear_staging()
    repo.load_index()
    return repo


def _staged(repo: OutputRepo, files: dict[str, bytes]) -> str:
    staging = repo.new_staging()
    for rel, content in files.items():
        path = os.path.join(staging, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_bytes(content)
    return staging


def test_committed_staging_directories_are_gone_flat_or_nested(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    flat = _staged(repo, {"a.txt": b"a"})
    nested = _staged(repo, {"d/e/b.txt": b"b", "c.txt": b"c"})
    repo.stage_success("A", flat, attempts=1, seconds=0.0)
    repo.stage_success("B", nested, attempts=1, seconds=0.0)
    assert repo.flush() == []
    assert not os.path.exists(flat) and not os.path.exists(nested)
    out = tmp_path / "data" / "p"
    assert (out / "a.txt").read_bytes() == b"a"
    assert (out / "d" / "e" / "b.txt").read_bytes() == b"b"


def test_discard_removes_an_attempt_with_files_and_an_empty_one(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    full = _staged(repo, {"x/y.txt": b"y", "z.txt": b"z"})
    empty = _staged(repo, {})
    repo.discard(full)
    repo.discard(empty)
    assert not os.path.exists(full) and not os.path.exists(empty)


def test_syncfs_raises_for_a_missing_path() -> None:
    with pytest.raises(FileNotFoundError):
        _linux.syncfs("/nonexistent/pfsmount-syncfs")


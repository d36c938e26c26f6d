"""Local repo listings: order, lookups, subtrees, fingerprints and user-facing errors."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfsmount.store.local import Entry, RepoIndex, StoreError, open_repo


def make_repo(data: Path, repo: str, files: dict[str, str]) -> Path:
    root = data / repo
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        target = root / rel
        if rel.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return root


@pytest.fixture
def repo(tmp_path: Path) -> RepoIndex:
    make_repo(tmp_path, "r", {"a b": "22", "a/x": "333", "a/y/z": "4", "a.txt": "1", "b.txt": ""})
    return open_repo(str(tmp_path), "r")


def test_entries_sorted_with_contiguous_subtrees(repo: RepoIndex) -> None:
    # "/a b" and "/a.txt" sort below "/a/" byte-wise; they must still come after all of /a.
    paths = [e.path for e in repo.entries]
    assert paths == ["/", "/a", "/a/x", "/a/y", "/a/y/z", "/a b", "/a.txt", "/b.txt"]


def test_entry_metadata_comes_from_lstat(repo: RepoIndex, tmp_path: Path) -> None:
    entry = repo.get("/a/x")
    assert entry is not None
    st = os.lstat(tmp_path / "r" / "a" / "x")
    assert (entry.mode, entry.size, entry.mtime_ns) == (st.st_mode, 3, st.st_mtime_ns)
    assert entry.is_file and not entry.is_dir and not entry.is_symlink
    root = repo.get("/")
    assert root is not None and root.is_dir


def test_get_missing_is_none(repo: RepoIndex) -> None:
    assert repo.get("/nope") is None
    assert repo.get("/a/") is None


def test_subtree(repo: RepoIndex) -> None:
    assert [e.path for e in repo.subtree("/a")] == ["/a", "/a/x", "/a/y", "/a/y/z"]
    assert [e.path for e in repo.subtree("/a/y")] == ["/a/y", "/a/y/z"]
    assert [e.path for e in repo.subtree("/a b")] == ["/a b"]
    assert [e.path for e in repo.subtree("/b.txt")] == ["/b.txt"]
    assert list(repo.subtree("/")) == list(repo.entries)
    assert list(repo.subtree("/missing")) == []
    assert list(repo.subtree("/a/x/deeper")) == []


def test_source_paths(repo: RepoIndex, tmp_path: Path) -> None:
    root = str(tmp_path / "r")
    assert repo.root == root
    assert repo.source("/") == root
    assert repo.source("/a/y/z") == os.path.join(root, "a", "y", "z")
    with open(repo.source("/a/x")) as f:
        assert f.read() == "333"


def test_commit_is_deterministic_and_tracks_changes(tmp_path: Path) -> None:
    make_repo(tmp_path, "r", {"f": "1", "d/g": "2"})
    first = open_repo(str(tmp_path), "r")
    again = open_repo(str(tmp_path), "r")
    assert len(first.commit) == 32
    int(first.commit, 16)
    assert first.commit == again.commit
    os.utime(tmp_path / "r" / "f", ns=(1, 1))
    assert open_repo(str(tmp_path), "r").commit != first.commit


def test_content_fingerprint_is_per_subtree(tmp_path: Path) -> None:
    make_repo(tmp_path, "r", {"a/1": "x", "b/1": "y"})
    before = open_repo(str(tmp_path), "r")
    (tmp_path / "r" / "b" / "1").write_text("longer")
    after = open_repo(str(tmp_path), "r")
    assert before.content_fingerprint("/a") == after.content_fingerprint("/a")
    assert before.content_fingerprint("/b") != after.content_fingerprint("/b")
    assert before.content_fingerprint("/") != after.content_fingerprint("/")
    assert before.content_fingerprint("/a") != before.content_fingerprint("/b")


def test_symlinks_are_listed_not_followed(tmp_path: Path) -> None:
    root = make_repo(tmp_path, "r", {"real/f": "data"})
    (root / "link").symlink_to(root / "real")
    (root / "dangling").symlink_to(root / "missing")
    index = open_repo(str(tmp_path), "r")
    link = index.get("/link")
    assert link is not None and link.is_symlink and not link.is_dir
    assert index.get("/link/f") is None
    dangling = index.get("/dangling")
    assert dangling is not None and dangling.is_symlink


def test_repo_directory_may_itself_be_a_symlink(tmp_path: Path) -> None:
    make_repo(tmp_path / "elsewhere", "real", {"f": "1"})
    data = tmp_path / "data"
    data.mkdir()
    (data / "r").symlink_to(tmp_path / "elsewhere" / "real")
    index = open_repo(str(data), "r")
    assert [e.path for e in index.entries] == ["/", "/f"]


def test_special_files_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_repo(tmp_path, "r", {"f": "1"})
    os.mkfifo(root / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        short = Path(os.path.relpath(root / "sock"))
        try:
            sock.bind(str(short))
        except OSError:
            pytest.skip("cannot bind a unix socket here")
        with caplog.at_level(logging.WARNING, logger="pfsmount.store.local"):
            index = open_repo(str(tmp_path), "r")
    assert [e.path for e in index.entries] == ["/", "/f"]
    assert "fifo" in caplog.text and "sock" in caplog.text


def test_missing_repo_message(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        open_repo(str(tmp_path), "images")
    message = str(info.value)
    assert message == (
        f"repo 'images' not found: {tmp_path}/images does not exist (create it, or pass "
        "--data DIR pointing at the directory that holds your repos)"
    )


def test_repo_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "images").write_text("x")
    with pytest.raises(StoreError, match=r"repo 'images' is not a directory: .*images"):
        open_repo(str(tmp_path), "images")


@pytest.mark.parametrize("files", [{}, {"empty/": "", "nested/deeper/": ""}])
def test_empty_repo_is_an_error(tmp_path: Path, files: dict[str, str]) -> None:
    make_repo(tmp_path, "images", files)
    with pytest.raises(StoreError) as info:
        open_repo(str(tmp_path), "images")
    message = str(info.value)
    assert "repo 'images' is empty" in message
    assert str(tmp_path / "images") in message
    assert "add the input files" in message


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "."])
def test_invalid_repo_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreError, match="use only letters, digits"):
        open_repo(str(tmp_path), name)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can list any directory")
def test_unreadable_directory_is_an_error(tmp_path: Path) -> None:
    root = make_repo(tmp_path, "r", {"f": "1", "locked/g": "2"})
    (root / "locked").chmod(0)
    try:
        with pytest.raises(StoreError, match=r"cannot list .*locked.*fix its permissions"):
            open_repo(str(tmp_path), "r")
    finally:
        (root / "locked").chmod(0o755)


def test_non_utf8_names_survive(tmp_path: Path) -> None:
    root = make_repo(tmp_path, "r", {"ok": "1"})
    raw = os.fsencode(str(root)) + b"/caf\xe9"
    with open(raw, "wb") as f:
        f.write(b"x")
    index = open_repo(str(tmp_path), "r")
    odd = [e.path for e in index.entries if e.path.startswith("/caf")]
    assert len(odd) == 1
    assert os.path.exists(index.source(odd[0]))
    assert index.content_fingerprint(odd[0])


def test_entry_properties() -> None:
    assert Entry("/d", stat.S_IFDIR | 0o755, 0, 0).is_dir
    assert Entry("/l", stat.S_IFLNK | 0o777, 0, 0).is_symlink
    assert Entry("/f", stat.S_IFREG | 0o644, 0, 0).is_file


@pytest.fixture
def fast_dir() -> Iterator[Path]:
    """A scratch directory on tmpfs: creating 100k files on a slow disk takes a minute."""
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("needs a writable tmpfs at /dev/shm to create 100k files quickly")
    path = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="pfsmount-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_hundred_thousand_files_list_quickly(fast_dir: Path) -> None:
    for d in range(100):
        sub = fast_dir / "big" / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(1000):
            os.close(os.open(sub / f"f{f:04}", os.O_CREAT | os.O_WRONLY, 0o644))
    start = time.perf_counter()
    index = open_repo(str(fast_dir), "big")
    elapsed = time.perf_counter() - start
    assert len(index.entries) == 1 + 100 + 100_000
    assert len(index.subtree("/d050")) == 1001
    # A sanity bound, not the speed target (that lives in scripts/bench's scale section):
    # ~1 s alone, over 2 s on a loaded 2-core machine; a quadratic walk would take minutes.
    assert elapsed < 10, f"listing 100k files took {elapsed:.2f}s"

"""The output repo's commit path without a mount: one group commit at a time, intents
cleared by their own commit only, nothing followed through a symlink in the output repo,
and names that are not UTF-8 kept byte for byte in the ledger."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pfsmount import nofollow
from pfsmount.ledger import Intent, Ledger
from pfsmount.output import OutputRepo


def _repo(tmp_path: Path) -> OutputRepo:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    work = data / ".pfsmount" / "p"
    work.mkdir(parents=True, exist_ok=True)
    repo = OutputRepo(str(data), "p", Ledger(str(work / "ledger.sqlite")))
    repo.clear_staging()
    repo.load_index()
    return repo


def _stage(repo: OutputRepo, datum: str, files: dict[str, bytes]) -> None:
    staging = repo.new_staging()
    for rel, content in files.items():
        path = os.path.join(os.fsencode(staging), os.fsencode(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    repo.stage_success(datum, staging, attempts=1, seconds=0.0)


def test_group_commits_run_one_at_a_time_and_clear_only_their_own_intents(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = _repo(tmp_path)
    in_apply, release = threading.Event(), threading.Event()
    real_move_in = nofollow.move_in

    def slow_move_in(*args: object) -> bool:
        if not in_apply.is_set():
            in_apply.set()
            assert release.wait(10)
        return real_move_in(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(nofollow, "move_in", slow_move_in)
    _stage(repo, "A", {"a.txt": b"a"})
    first = threading.Thread(target=repo.flush)
    first.start()
    assert in_apply.wait(10)  # A is in the ledger, its file not yet in place
    _stage(repo, "B", {"b.txt": b"b"})
    second = threading.Thread(target=repo.flush)
    second.start()
    try:
        second.join(0.5)
        # Had B's commit run now, it would have cleared A's unapplied intent: a crash here
        # would leave a.txt listed in the ledger and missing from the output repo.
        assert [it.path for _, it in repo.ledger.pending_intents()] == ["a.txt"]
        assert "b.txt" not in repo.ledger.all_outputs()  # B waits for A to be in place
    finally:
        release.set()
    first.join(10)
    second.join(10)
    assert repo.ledger.pending_intents() == []
    assert sorted(os.listdir(repo.repo_dir)) == ["a.txt", "b.txt"]
    assert repo.ledger.all_outputs() == {"a.txt": "A", "b.txt": "B"}


def test_a_commit_clears_its_intents_by_number(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    other = repo.ledger.forget_datums([], [Intent("del", "someone-elses.txt")])
    mine = repo.ledger.forget_datums([], [Intent("del", "mine.txt")])
    repo._settle([Intent("del", "mine.txt")], mine)
    assert [seq for seq, _ in repo.ledger.pending_intents()] == other


def test_committing_never_writes_through_a_symlink_in_the_output_repo(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink(victim, os.path.join(repo.repo_dir, "u"))
    _stage(repo, "bad", {"u/pwned.txt": b"x"})
    _stage(repo, "good", {"ok/fine.txt": b"y"})
    failures = repo.flush()
    assert list(victim.iterdir()) == []
    assert [d for d, _ in failures] == ["bad"]
    assert f"{repo.repo_dir}/u is a symlink that no datum wrote" in failures[0][1]
    assert (Path(repo.repo_dir) / "ok" / "fine.txt").read_bytes() == b"y"
    assert repo.ledger.all_outputs() == {"ok/fine.txt": "good"}
    # The failure is in the ledger, not only reported.
    states = dict(repo.ledger._query("SELECT datum_id, state FROM datums"))
    assert states == {"bad": "failed", "good": "success"}


def test_recovery_and_deletions_do_not_follow_a_symlink_put_there_later(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _stage(repo, "d", {"sub/x.txt": b"mine"})
    repo.flush()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x.txt").write_bytes(b"not yours")
    sub = Path(repo.repo_dir) / "sub"
    (sub / "x.txt").unlink()
    sub.rmdir()
    sub.symlink_to(victim)
    # Removing the datum's outputs must not delete /tmp/victim/x.txt through the link.
    repo.stage_failure("d", "failed", attempts=1, seconds=0.0, error="boom")
    repo.flush()
    assert (victim / "x.txt").read_bytes() == b"not yours"
    # A redo of an interrupted commit (crash after the ledger) must not write through it.
    staged = Path(repo.new_staging()) / "y.txt"
    staged.write_bytes(b"redo")
    repo.ledger.forget_datums([], [Intent("add", "sub/y.txt", str(staged))])
    assert repo.recover() == 1
    assert sorted(p.name for p in victim.iterdir()) == ["x.txt"]
    assert sub.is_symlink()


def test_a_name_that_is_not_utf8_is_kept_byte_for_byte(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    name = os.fsdecode(b"\xff\xfe.txt")
    _stage(repo, "d", {name: b"bytes", os.fsdecode(b"dir\xff/x"): b"deep"})
    assert repo.flush() == []
    assert sorted(os.listdir(os.fsencode(repo.repo_dir))) == [b"dir\xff", b"\xff\xfe.txt"]
    reopened = Ledger(repo.ledger.path)
    assert reopened.all_outputs() == {name: "d", os.fsdecode(b"dir\xff/x"): "d"}
    assert reopened.outputs_of("d") == sorted([name, os.fsdecode(b"dir\xff/x")])
    # Valid UTF-8 paths stay TEXT, as every ledger has them; only others are BLOBs.
    kinds = dict(reopened._query("SELECT path, typeof(path) FROM outputs"))
    assert kinds == {b"\xff\xfe.txt": "blob", b"dir\xff/x": "blob"}


def test_a_file_over_a_directory_no_datum_wrote_fails_that_datum(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    foreign = Path(repo.repo_dir) / "x"
    foreign.mkdir()
    (foreign / "keep.txt").write_bytes(b"someone's")
    _stage(repo, "d", {"x": b"file"})
    failures = repo.flush()
    assert [d for d, _ in failures] == ["d"]
    assert "is a directory holding files no datum wrote" in failures[0][1]
    assert (foreign / "keep.txt").read_bytes() == b"someone's"
    assert repo.ledger.all_outputs() == {}


def test_an_interrupted_commit_of_a_name_that_is_not_utf8_is_redone(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    name = os.fsdecode(b"sub/\xff.bin")
    staged = os.path.join(repo.new_staging(), name)
    os.makedirs(os.path.dirname(staged))
    Path(staged).write_bytes(b"redo")
    # As a crash right after the ledger transaction leaves it: logged, not applied.
    repo.ledger.forget_datums([], [Intent("add", name, staged)])
    assert Ledger(repo.ledger.path).pending_intents()[0][1] == Intent("add", name, staged)
    assert repo.recover() == 1
    assert (Path(repo.repo_dir) / name).read_bytes() == b"redo"
    assert repo.ledger.pending_intents() == []

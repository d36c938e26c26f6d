"""Shard assignment, job ids and the sharded workspace, without mounts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pfsmount.jobview import JobRecords
from pfsmount.ledger import DatumEnding, Intent, Ledger
from pfsmount.shardjob import (
    LayoutError,
    check_layout,
    choose_job,
    conflicts,
    export_outputs,
    read_outputs,
)
from pfsmount.shards import (
    Shard,
    ShardError,
    derived_job_id,
    job_for,
    parse_shard,
    select,
    shard_of,
)
from pfsmount.workspace import Workspace, WorkspaceBusy


def test_assignment_is_a_fixed_function_of_the_id() -> None:
    # Pinned: a change here moves datums between shards, so a resumed sharded job would
    # redo or skip the wrong ones. Never change it without a migration.
    assert [shard_of("a" * 64, n) for n in (1, 2, 3, 7, 100)] == [0, 1, 1, 2, 97]
    assert shard_of("6420ed0ce644", 3) == 2


def test_every_datum_has_exactly_one_shard_and_shares_are_even() -> None:
    ids = [hashlib.blake2b(str(i).encode(), digest_size=32).hexdigest() for i in range(30000)]
    shares = [sum(1 for d in ids if Shard(i, 3).owns(d)) for i in range(3)]
    assert sum(shares) == len(ids)
    assert all(abs(s - 10000) < 400 for s in shares), shares

    class D:
        def __init__(self, id_: str) -> None:
            self.id = id_

    datums = [D(d) for d in ids[:100]]
    picked = [[d.id for d in select(datums, Shard(i, 4))] for i in range(4)]  # type: ignore[arg-type]
    assert sorted(d for share in picked for d in share) == sorted(ids[:100])
    assert picked[0] == [d.id for d in datums if shard_of(d.id, 4) == 0]  # order kept
    assert [d.id for d in select(datums, None)] == ids[:100]  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("0/3", {}, Shard(0, 3)),
    ("2/3", {}, Shard(2, 3)),
    ("auto/3", {"JOB_COMPLETION_INDEX": "1"}, Shard(1, 3)),
    (None, {"PFSMOUNT_SHARDS": "4", "JOB_COMPLETION_INDEX": "3"}, Shard(3, 4)),
    (None, {}, None),
])
def test_shard_values(text: str | None, env: dict, expected: Shard | None) -> None:
    assert parse_shard(text, env) == expected


@pytest.mark.parametrize(("text", "env", "message"), [
    ("3/3", {}, "shard index 3 is not below the number of shards 3"),
    ("auto/3", {}, "JOB_COMPLETION_INDEX is not set"),
    ("auto/3", {"JOB_COMPLETION_INDEX": "5"}, "shard index 5 is not below"),
    ("x/3", {}, "shard index must be a whole number"),
    ("1/0", {}, "from 1 to 100000"),
    ("-1/3", {}, "shard index must be a whole number"),
    (None, {"PFSMOUNT_SHARDS": "three"}, "PFSMOUNT_SHARDS=three: the number of shards"),
    (None, {"PFSMOUNT_SHARDS": "3"}, "JOB_COMPLETION_INDEX is not set"),
])
def test_bad_shard_values_name_the_problem(text: str | None, env: dict, message: str) -> None:
    with pytest.raises(ShardError, match=message.replace("$", r"\$")):
        parse_shard(text, env)


def test_the_job_id_all_shards_agree_on() -> None:
    a = derived_job_id("edges", "digest1", Shard(0, 3))
    assert a == derived_job_id("edges", "digest1", Shard(2, 3))  # the same for every index
    assert a != derived_job_id("edges", "digest2", Shard(0, 3))  # another spec
    assert a != derived_job_id("edges", "digest1", Shard(0, 4))  # another shard count
    assert job_for("edges", "digest1", Shard(1, 3), None, {}) == a
    assert job_for("edges", "digest1", Shard(1, 3), "edges-x7k2p", {}) == "edges-x7k2p"
    assert job_for("edges", "d", Shard(1, 3), None, {"PFSMOUNT_JOB": "from-k8s"}) == "from-k8s"
    assert job_for("edges", "d", None, None, {}) is None  # unsharded: a new id per job
    with pytest.raises(ShardError, match="a job name is 1-100"):
        job_for("edges", "d", None, "../escape", {})


def test_a_named_job_is_resumed_while_running_and_entered_again_once_ended(
        tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    assert choose_job(ledger, "j1") == ("j1", False)
    ledger.start_job("j1", "p", "h", "", 2)
    ledger.record_datums("j1", [("d1", "", "[]", "pending"), ("d2", "", "[]", "pending")])
    assert choose_job(ledger, "j1") == ("j1", True)  # a retried pod continues
    ledger.end_job("j1", "success")
    assert choose_job(ledger, "j1") == ("j1", False)  # a new round under the same name
    assert ledger.job_datums("j1") == [] and ledger.jobs() == []
    new_id, resuming = choose_job(ledger, None)
    assert not resuming and len(new_id) == 32
    ledger.close()


def test_each_shard_writes_only_below_its_own_directory(tmp_path: Path) -> None:
    whole = Workspace.of(str(tmp_path), "p")
    shards = [Workspace.of(str(tmp_path), "p", Shard(i, 2)) for i in range(2)]
    names = [(w.lock_path, w.ledger_path, w.staging_root, w.logs_dir, w.run.root)
             for w in shards]
    for ws, own in zip(shards, names, strict=True):
        assert all(n.startswith(ws.own + os.sep) for n in own)
        assert ws.own == os.path.join(whole.root, ws.shard.key)  # type: ignore[union-attr]
    assert not set(names[0]) & set(names[1])
    assert Workspace.of(str(tmp_path), "p", Shard(0, 1)) == whole  # one shard: as today


def test_locks_shards_side_by_side_never_one_index_twice_nor_beside_a_whole_run(
        tmp_path: Path) -> None:
    s0, s1 = (Workspace.of(str(tmp_path), "p", Shard(i, 2)) for i in range(2))
    held = [s0.lock_shared(), s0.lock(), s1.lock_shared(), s1.lock()]
    with pytest.raises(WorkspaceBusy, match="shard 0/2 of pipeline 'p' is already running"):
        s0.lock()
    with pytest.raises(WorkspaceBusy, match="already running on this data directory "
                                            r"\(as shards\)"):
        Workspace.of(str(tmp_path), "p").lock()
    for fd in held:
        os.close(fd)
    whole = Workspace.of(str(tmp_path), "p").lock()
    with pytest.raises(WorkspaceBusy, match="running unsharded"):
        s0.lock_shared()
    os.close(whole)


def test_records_of_another_shard_count_are_refused(tmp_path: Path) -> None:
    s3 = Workspace.of(str(tmp_path), "p", Shard(0, 3))
    s3.create()
    Ledger(s3.ledger_path).close()
    check_layout(s3)
    with pytest.raises(LayoutError, match=r"was run with --shard I/3.*moving"):
        check_layout(Workspace.of(str(tmp_path), "p", Shard(0, 2)))
    with pytest.raises(LayoutError, match="was run with --shard I/3"):
        check_layout(Workspace.of(str(tmp_path), "p"))


def test_published_outputs_round_trip_any_bytes(tmp_path: Path) -> None:
    ws = Workspace.of(str(tmp_path), "p", Shard(1, 2))
    ws.create()
    odd = os.fsdecode(b"dir/tab\there\nnl\xff")
    export_outputs(ws, {odd: "d1", "a.txt": "d2"})
    assert read_outputs(ws.own) == {odd: "d1", "a.txt": "d2"}
    assert read_outputs(str(tmp_path / "nothing")) == {}


def test_conflicts_between_shards_are_worded_as_on_one_machine() -> None:
    a, b = Shard(0, 2), Shard(1, 2)
    assert conflicts({a: {"x": "d1"}, b: {"y": "d2"}}) == []
    (same,) = conflicts({a: {"x": "d1"}, b: {"x": "d2"}})
    assert same.startswith("output path /x was written by datum d1 (shard 0/2) and datum d2 "
                           "(shard 1/2); each output path may come from one datum only")
    (nested,) = conflicts({a: {"x": "d1"}, b: {"x/y": "d2"}})
    assert "a file or symlink in one is a directory in the other" in nested


def test_merged_records_show_one_job_with_every_shard(tmp_path: Path) -> None:
    for i, state in ((0, "success"), (1, "failed")):
        ws = Workspace.of(str(tmp_path), "p", Shard(i, 3))
        ws.create()
        ledger = Ledger(ws.ledger_path)
        ledger.start_job("j", "p", "h", "", 1)
        ledger.record_datums("j", [(f"d{i}", "", "[]", "pending")])
        ledger.end_job("j", state, "a datum failed" if state == "failed" else "")
        ledger.close()
    records = JobRecords(str(tmp_path), "p")
    try:
        (job,) = records.jobs()
        assert job["job_id"] == "j" and job["total"] == 2
        assert job["state"] == "partial"  # shard 2 never recorded it
        assert "shard 2 of 3 not started" in job["message"]
        assert "shard 1/3: a datum failed" in job["message"]
        assert job["ended"] is None
        assert [d["shard"] for d in records.job_datums("j")] == ["0/3", "1/3"]
        assert records.job("j")["job_id"] == "j"  # type: ignore[index]
    finally:
        records.close()


def test_inspect_finds_a_path_two_shards_committed_at_the_same_instant(tmp_path: Path) -> None:
    """Both passed the pre-commit check: their ledgers both claim the path."""
    for i in range(2):
        ws = Workspace.of(str(tmp_path), "p", Shard(i, 2))
        ws.create()
        ledger = Ledger(ws.ledger_path)
        ledger.start_job("j", "p", "h", "", 1)
        ledger.record_datums("j", [(f"d{i}", "", "[]", "pending")])
        ledger.finish_datums("j", [DatumEnding(f"d{i}", "h", "success", 1, 0.1, "",
                                               [Intent("add", "same.txt", "/nowhere")])])
        ledger.end_job("j", "success")
        ledger.close()
    records = JobRecords(str(tmp_path), "p")
    try:
        assert records.jobs()[0]["state"] == "success"  # listing jobs reads no outputs
        job = records.job("j")
        assert job is not None and job["state"] == "failed"
        assert job["conflicts"] == [
            "output path /same.txt was written by datum d0 (shard 0/2) and datum d1 (shard "
            "1/2); each output path may come from one datum only (write datum-specific names, "
            "e.g. include the input file name)"]
    finally:
        records.close()

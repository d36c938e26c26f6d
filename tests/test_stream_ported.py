"""Streamed datums with what main added beside them (the merge of `stream` with shards and S3
outputs): a shard's sweep of vanished datums over S3 outputs forgets only its own, every
commit record keeps its datum's inputs, whichever planned batch the datum came in, and the
merged records of a sharded job answer the per-job questions the commands ask."""

from __future__ import annotations

import json
from pathlib import Path

from pfsmount.jobview import JobRecords
from pfsmount.ledger import DatumEnding, Ledger
from pfsmount.shards import Shard, shard_of
from pfsmount.workspace import Workspace
from s3server import S3Server
from support import batching_spec, finish, needs_fuse, start_pfsmount, write_script, write_spec

USER = """
    import os, sys
    from pfsmount import iter_datums
    mnt = sys.argv[1]
    for d in iter_datums():
        name = os.listdir(os.path.join(mnt, "in"))[0]
        open(os.path.join(mnt, "out", name + ".out"), "w").write(name)
"""


def _run_shard(tmp_path: Path, s3server: S3Server, url: str, script: Path, i: int) -> None:
    mnt = tmp_path / f"mnt{i}"
    spec = write_spec(tmp_path / f"p{i}.yaml", batching_spec(
        "sw", {"pfs": {"repo": "in", "glob": "/*"}}, ["python3", str(script), str(mnt)]))
    proc = start_pfsmount(spec, url, mnt, env=s3server.env(), extra=[  # type: ignore[arg-type]
        "--shard", f"{i}/2", "--state-dir", str(tmp_path / f"state{i}")])
    result = finish(proc, mnt, timeout=120)
    assert result.returncode == 0, result


def _keys(s3server: S3Server, bucket: str, prefix: str) -> list[str]:
    c = s3server.client
    return [obj["Key"] for page in c.get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
            Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", ())]


@needs_fuse
def test_stream_shard_sweep_on_s3_forgets_only_its_own_datums(tmp_path: Path,
                                                              s3server: S3Server) -> None:
    names = [f"f{i:02d}" for i in range(8)]
    url = s3server.bucket("stream-sweep", {f"in/{n}": n.encode() for n in names})
    script = write_script(tmp_path / "user.py", USER)
    for i in range(2):
        _run_shard(tmp_path, s3server, url, script, i)
    outputs = {k.removeprefix("sw/") for k in _keys(s3server, "stream-sweep", "sw/")}
    assert outputs == {n + ".out" for n in names}

    # Every record names its datum's inputs: the first datum is planned in a batch of its
    # own, the rest in later ones, and each batch's inputs must reach the records.
    c = s3server.client
    records = [json.loads(c.get_object(Bucket="stream-sweep", Key=k)["Body"].read())  # type: ignore[attr-defined]
               for k in _keys(s3server, "stream-sweep", ".pfsmount/sw/commits/")]
    assert len(records) == len(names)
    assert all(json.loads(r["inputs"]) for r in records), records

    # One vanished input per shard; only shard 0 runs again.
    by_shard: dict[int, str] = {}
    for r in records:
        path = json.loads(r["inputs"])[0]["path"].lstrip("/")
        by_shard.setdefault(shard_of(r["datum"], 2), path)
    for path in by_shard.values():
        c.delete_object(Bucket="stream-sweep", Key=f"in/{path}")  # type: ignore[attr-defined]
    _run_shard(tmp_path, s3server, url, script, 0)
    outputs = {k.removeprefix("sw/") for k in _keys(s3server, "stream-sweep", "sw/")}
    assert by_shard[0] + ".out" not in outputs  # its own vanished datum: swept
    assert by_shard[1] + ".out" in outputs  # shard 1's: left for shard 1's next run
    assert len(outputs) == len(names) - 1


def test_stream_merged_shard_records_answer_per_job_questions(tmp_path: Path) -> None:
    """inspect-job, logs and list-datums --job ask per-job questions (never the whole job's
    rows); over a sharded job they are every shard's answers merged."""
    seconds = {0: [0.1, 0.5, 0.9], 1: [0.2, 0.3]}
    for i, times in seconds.items():
        ws = Workspace.of(str(tmp_path), "p", Shard(i, 2))
        ws.create()
        ledger = Ledger(ws.ledger_path)
        ledger.start_job("j", "p", "h", "", len(times))
        ids = [f"s{i}d{k}" for k in range(len(times))]
        ledger.record_datums("j", [(d, "", "[]", "pending") for d in ids])
        ledger.finish_datums("j", [
            DatumEnding(d, "h", "failed" if (i, k) == (1, 0) else "success", 1, t,
                        "boom" if (i, k) == (1, 0) else "", [])
            for k, (d, t) in enumerate(zip(ids, times, strict=True))])
        ledger.end_job("j", "success")
        ledger.close()
    records = JobRecords(str(tmp_path), "p")
    try:
        assert records.state_counts("j") == {"success": 4, "failed": 1}
        n, median, longest, total = records.attempt_seconds("j")
        assert (n, median, longest) == (5, 0.3, 0.9) and abs(total - 2.0) < 1e-9
        (bad,) = records.troubled_datums("j")
        assert (bad["datum_id"], bad["shard"], bad["error"]) == ("s1d0", "1/2", "boom")
        assert sorted(records.datum_ids_in_job("j", "s")) == [
            "s0d0", "s0d1", "s0d2", "s1d0", "s1d1"]
        states = records.job_datum_states_of("j", ["s0d1", "s1d0", "nope"])
        assert states == {"s0d1": ("success", 1, ""), "s1d0": ("failed", 1, "boom")}
    finally:
        records.close()

"""S3 outputs survive kill -9 at any instant (issue 15): a resumed job, from a fresh state
directory as another machine would, leaves the output prefix exactly as an uninterrupted run,
and never runs again a datum whose commit record made it to the bucket."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from s3server import S3Server
from support import batching_spec, finish, needs_fuse, start_pfsmount, write_script, write_spec
from test_s3out_run import s3out_tree

N = 12
# Two outputs per datum, one of them 9 MiB (a multipart upload); every datum run is logged
# to a local file, so the test knows which datums each run did.
WRITER = """
    import os, sys, time
    from pfsmount import iter_datums
    mnt, ran = sys.argv[1], sys.argv[2]
    for d in iter_datums():
        name = os.listdir(os.path.join(mnt, "in"))[0]
        data = open(os.path.join(mnt, "in", name), "rb").read()
        os.makedirs(os.path.join(mnt, "out", name), exist_ok=True)
        with open(os.path.join(mnt, "out", name, "copy"), "wb") as f:
            f.write(data)
        if name == "f03":
            with open(os.path.join(mnt, "out", name, "big"), "wb") as f:
                f.write(data * ((9 << 20) // len(data) + 1))
        with open(ran, "a") as f:
            f.write(name + "\\n")
        time.sleep(0.15)
"""
BUCKET = "s3out-crash"


def _inputs(prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/in/f{i:02d}": f"content {i}\n".encode() for i in range(N)}


def _committed(s3: S3Server, prefix: str) -> set[str]:
    """Input names of the datums whose newest record says success."""
    meta = s3out_tree(s3, BUCKET, f"{prefix}/.pfsmount/crashp/commits/")
    newest: dict[str, tuple[int, dict]] = {}
    for key, body in meta.items():
        record = json.loads(body)
        datum = key.split("/")[0]
        if datum not in newest or record["seq"] > newest[datum][0]:
            newest[datum] = (record["seq"], record)
    return {json.loads(r["inputs"])[0]["path"].strip("/") for _, r in newest.values()
            if r["state"] == "success"}


def _ran(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@needs_fuse
def test_s3out_kill9_then_resume_from_fresh_state(tmp_path: Path, s3server: S3Server) -> None:
    cases = ["ref", "s3-uploaded", "s3-recorded", "s3-copied", "outside"]
    files = {k: v for case in cases for k, v in _inputs(case).items()}
    s3server.bucket(BUCKET, files)
    script = write_script(tmp_path / "user.py", WRITER)
    env = s3server.env()

    def start(case: str, run: int, crash: str = ""):
        mnt = tmp_path / f"mnt-{case}-{run}"
        spec = write_spec(tmp_path / f"{case}.yaml", batching_spec(
            "crashp", {"pfs": {"repo": "in", "glob": "/*"}},
            ["python3", str(script), str(mnt), str(tmp_path / f"ran-{case}-{run}")]))
        extra = ["--state-dir", str(tmp_path / f"state-{case}-{run}")]
        run_env = {**env, "PFSMOUNT_CRASH_AT": crash} if crash else env
        return start_pfsmount(spec, f"s3://{BUCKET}/{case}", mnt, extra=extra,
                              env=run_env), mnt

    first = {case: start(case, 1, "" if case in ("ref", "outside") else case)
             for case in cases}
    # kill -9 from outside once some datums are committed and others are not.
    proc, _ = first["outside"]
    deadline = time.monotonic() + 60
    while len(_committed(s3server, "outside")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    results = {case: finish(p, m, timeout=120) for case, (p, m) in first.items()}
    assert results["ref"].returncode == 0, results["ref"]
    for case in cases[1:]:
        assert results[case].returncode == -signal.SIGKILL, (case, results[case])
    reference = s3out_tree(s3server, BUCKET, "ref/crashp/")
    assert len(reference) == N + 1 and len(reference["f03/big"]) > 9 << 20, reference.keys()
    committed = {case: _committed(s3server, case) for case in cases[1:]}
    assert not committed["s3-uploaded"], committed
    assert committed["s3-recorded"] and committed["s3-copied"], committed
    assert 3 <= len(committed["outside"]) < N, committed

    # Resume each from a fresh state directory (another machine): no crash this time.
    second = {case: start(case, 2) for case in cases[1:]}
    for case, (p, m) in second.items():
        result = finish(p, m, timeout=120)
        assert result.returncode == 0, (case, result)
        if committed[case]:
            assert "resuming interrupted job" in result.stderr, (case, result.stderr)
        assert s3out_tree(s3server, BUCKET, f"{case}/crashp/") == reference, case
        meta = s3out_tree(s3server, BUCKET, f"{case}/.pfsmount/crashp/")
        assert not [k for k in meta if k.startswith("blobs/")], (case, sorted(meta))
        assert len([k for k in meta if k.startswith("commits/")]) == N, (case, sorted(meta))
        redone = set(_ran(tmp_path / f"ran-{case}-2"))
        assert not redone & committed[case], (case, redone & committed[case])
        assert redone | committed[case] == {f"f{i:02d}" for i in range(N)}, case


@needs_fuse
def test_s3out_deleted_datum_crash_at_tombstone(tmp_path: Path, s3server: S3Server,
                                                 mnt: Path) -> None:
    s3server.bucket("s3out-tomb", _inputs("t"))
    script = write_script(tmp_path / "user.py", WRITER)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "crashp", {"pfs": {"repo": "in", "glob": "/*"}},
        ["python3", str(script), str(mnt), str(tmp_path / "ran")]))
    env = s3server.env()

    def run(state: str, crash: str = ""):
        return finish(start_pfsmount(
            spec, "s3://s3out-tomb/t", mnt, extra=["--state-dir", str(tmp_path / state)],
            env={**env, "PFSMOUNT_CRASH_AT": crash} if crash else env), mnt)

    assert run("a").returncode == 0
    s3server.client.delete_object(Bucket="s3out-tomb", Key="t/in/f03")  # type: ignore[attr-defined]
    assert run("b", crash="s3-tombstoned").returncode == -signal.SIGKILL
    after = run("c")
    assert after.returncode == 0, after
    tree = s3out_tree(s3server, "s3out-tomb", "t/crashp/")
    assert sorted(tree) == sorted(f"f{i:02d}/copy" for i in range(N) if i != 3), sorted(tree)
    meta = s3out_tree(s3server, "s3out-tomb", "t/.pfsmount/crashp/commits/")
    assert len(meta) == N - 1, sorted(meta)

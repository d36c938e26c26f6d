"""One job as N shards, simulated as Kubernetes runs an Indexed Job: N `pfsmount run --shard
auto/N` processes at once, each in its own mount namespace with JOB_COMPLETION_INDEX set, on
one shared data directory."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from pfsmount.shards import Shard, shard_of
from support import (
    PY,
    Finished,
    batching_spec,
    finish,
    needs_fuse,
    pachyderm_datum_id,
    read_tree,
    run_pfsmount,
    start_pfsmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse

# Each datum: read its file, wait a little (so the shards overlap), write one output, and
# note in $SEEN/<name> that it ran (a line per run: a redone datum shows two).
USER = """
    import os, sys, time
    from pfsmount import iter_datums, report_error
    pause = float(sys.argv[1])
    for d in iter_datums():
        path = dict(d.env)["in"]
        name = os.path.basename(path)
        with open(os.path.join(os.environ["SEEN"], name), "a") as f:
            f.write("ran\\n")
        print(f"processing {name}", flush=True)
        time.sleep(pause)
        if name.startswith("bad"):
            report_error(RuntimeError(f"{name} is bad"))
            continue
        target = os.environ.get("TARGET", "{name}.out").format(name=name)
        out = os.path.join(os.path.dirname(os.path.dirname(path)), "out")
        with open(os.path.join(out, target), "w") as f:
            f.write(open(path).read().upper())
"""


def _spec(tmp_path: Path, pause: float, **extra: object) -> Path:
    script = write_script(tmp_path / "user.py", USER)
    return write_spec(tmp_path / "p.yaml", {
        **batching_spec("up", {"pfs": {"repo": "in", "glob": "/*"}},
                        ["python3", str(script), str(pause)]),
        "datum_tries": 1, **extra})


def _names(n: int, prefix: str = "f") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def _start_shard(spec: Path, data: Path, tmp_path: Path, index: int, n: int,
                 seen: Path, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    # The same mountpoint path for every shard: each has its own mount namespace, as pods do.
    mnt = tmp_path / "pfs"
    return start_pfsmount(spec, data, mnt, namespace=True,
                          extra=("--shard", f"auto/{n}", *extra),
                          env={"JOB_COMPLETION_INDEX": str(index), "SEEN": str(seen)})


def _finish_all(procs: list[subprocess.Popen[str]], tmp_path: Path) -> list[Finished]:
    return [finish(p, tmp_path / "pfs", timeout=180) for p in procs]


def _cli(*args: str, data: Path) -> Finished:
    proc = subprocess.run([PY, "-m", "pfsmount", *args, "--data", str(data)],
                          capture_output=True, text=True, timeout=60)
    return Finished(proc.returncode, proc.stdout, proc.stderr)


def _shard_of_name(name: str, n: int) -> int:
    return shard_of(pachyderm_datum_id([("in", "in", "master", f"/{name}")]), n)


def _derived(spec: Path) -> str:
    from pfsmount.shards import derived_job_id
    from pfsmount.spec import load_specs

    (doc,) = load_specs([spec])
    return derived_job_id("up", doc.digest, Shard(0, 3))


def _done_in_shard(data: Path, shard: Shard) -> int:
    path = data / ".pfsmount" / "up" / shard.key / "ledger.sqlite"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return db.execute("SELECT COUNT(*) FROM job_datums WHERE state = 'success'"
                              ).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def test_three_shards_at_once_make_the_one_process_output(tmp_path: Path) -> None:
    names = _names(24)
    one, shared = tmp_path / "one", tmp_path / "shared"
    for data in (one, shared):
        write_tree(data / "in", {n: f"text of {n}" for n in names})
    seen_one, seen = tmp_path / "seen-one", tmp_path / "seen"
    seen_one.mkdir()
    seen.mkdir()
    spec = _spec(tmp_path, 0.05)
    # Within a shard, workers still apply: two each here.
    procs = [_start_shard(spec, shared, tmp_path, i, 3, seen, ("--parallelism", "2"))
             for i in range(3)]
    alone = run_pfsmount(spec, one, tmp_path / "pfs-one", env={"SEEN": str(seen_one)})
    results = _finish_all(procs, tmp_path)
    assert alone.returncode == 0, alone
    for result in results:
        assert result.returncode == 0, result
    assert read_tree(shared / "up") == read_tree(one / "up")
    assert len(read_tree(shared / "up")) == 24
    # Every datum ran exactly once, in exactly one shard; each shard ran its own share.
    assert sorted(os.listdir(seen)) == names
    assert all((seen / n).read_text() == "ran\n" for n in names)
    for i, result in enumerate(results):
        share = sum(1 for n in names if _shard_of_name(n, 3) == i)
        assert f"{share} datums processed" in result.stderr, result
        assert "2 workers ran" in result.stderr, result
    # The job as a whole: one job, every shard's datums.
    jobs = _cli("list-jobs", "up", data=shared)
    assert jobs.returncode == 0, jobs
    rows = jobs.stdout.splitlines()[1:]
    assert len(rows) == 1 and " success " in rows[0] and " 24 " in rows[0], jobs
    inspect = _cli("inspect-job", "up", data=shared)
    assert "datums    24 success (of 24)" in inspect.stdout, inspect
    assert "shards    3 of 3 recorded" in inspect.stdout, inspect
    listed = _cli("list-datums", str(spec), "--job", "", data=shared)
    assert listed.stdout.count(" success ") == 24, listed
    logs = _cli("logs", "up", data=shared)
    assert logs.returncode == 0, logs
    assert all(f"] processing {n}" in logs.stdout for n in names), logs  # every shard's log
    dag = subprocess.run([PY, "-m", "pfsmount", "dag", str(spec), "--data", str(shared)],
                         capture_output=True, text=True, timeout=60)
    assert "success: 24 processed" in dag.stdout, dag.stdout + dag.stderr


def test_kill_9_of_a_shard_then_its_rerun_resumes_and_leaves_the_others_alone(
        tmp_path: Path) -> None:
    names = _names(18)
    data = tmp_path / "data"
    write_tree(data / "in", {n: f"text of {n}" for n in names})
    seen = tmp_path / "seen"
    seen.mkdir()
    spec = _spec(tmp_path, 0.3)
    victim = Shard(0, 3)  # the largest share: 8 of the 18 datums
    procs = [_start_shard(spec, data, tmp_path, i, 3, seen) for i in range(3)]
    deadline = time.monotonic() + 120
    while _done_in_shard(data, victim) < 2:
        assert time.monotonic() < deadline, "shard 0 committed nothing"
        assert procs[0].poll() is None, "shard 0 ended before it could be killed"
        time.sleep(0.05)
    os.killpg(procs[0].pid, signal.SIGKILL)
    killed = _finish_all([procs[0]], tmp_path)[0]
    assert killed.returncode == -signal.SIGKILL
    others = _finish_all([procs[1], procs[2]], tmp_path)
    assert [r.returncode for r in others] == [0, 0], others
    done_before = _done_in_shard(data, victim)
    ran_before = {n for n in os.listdir(seen) if _shard_of_name(n, 3) == 0}
    theirs = {n for n in names if _shard_of_name(n, 3) != 0}
    stamps = {n: os.stat(data / "up" / f"{n}.out").st_mtime_ns for n in theirs}

    rerun = finish(_start_shard(spec, data, tmp_path, 0, 3, seen), tmp_path / "pfs",
                   timeout=180)
    assert rerun.returncode == 0, rerun
    assert f"resuming interrupted job {_derived(spec)[:12]}: {done_before} datums" in \
        rerun.stderr, rerun
    # Finished datums were not redone: a datum shows two runs only if it was the one in
    # flight when the shard died (at most one per worker).
    redone = [n for n in ran_before if (seen / n).read_text().count("ran") > 1]
    assert len(redone) <= len(ran_before) - done_before, (redone, done_before)
    assert all((seen / n).read_text() == "ran\n" for n in theirs)
    assert {n: os.stat(data / "up" / f"{n}.out").st_mtime_ns for n in theirs} == stamps
    assert read_tree(data / "up") == {f"{n}.out": f"text of {n}".upper().encode() for n in names}
    inspect = _cli("inspect-job", "up", data=data)
    assert "datums    18 success (of 18)" in inspect.stdout, inspect


def test_a_failing_datum_fails_its_shard_only_and_inspect_job_shows_the_whole_job(
        tmp_path: Path) -> None:
    names = _names(8)
    bad = next(f"bad{i}" for i in range(100) if _shard_of_name(f"bad{i}", 3) == 2)
    data = tmp_path / "data"
    write_tree(data / "in", {n: n for n in [*names, bad]})
    seen = tmp_path / "seen"
    seen.mkdir()
    spec = _spec(tmp_path, 0.0)
    results = _finish_all([_start_shard(spec, data, tmp_path, i, 3, seen) for i in range(3)],
                          tmp_path)
    assert [r.returncode for r in results] == [0, 0, 1], results
    inspect = _cli("inspect-job", "up", data=data)
    assert "state     failed" in inspect.stdout, inspect
    assert "datums    1 failed, 8 success (of 9)" in inspect.stdout, inspect
    assert "[shard 2/3]" in inspect.stdout and f"in:/{bad}" in inspect.stdout, inspect
    failed_logs = _cli("logs", "up", "--failed", data=data)
    assert failed_logs.returncode == 0, failed_logs
    assert f"] processing {bad}" in failed_logs.stdout, failed_logs
    assert "processing f00" not in failed_logs.stdout, failed_logs


def test_an_output_path_written_in_two_shards_is_a_conflict(tmp_path: Path) -> None:
    """Two datums of different shards write the same path: reported as on one machine, at
    the latest by inspect-job and the next run."""
    a = next(f"a{i}" for i in range(100) if _shard_of_name(f"a{i}", 2) == 0)
    b = next(f"b{i}" for i in range(100) if _shard_of_name(f"b{i}", 2) == 1)
    data = tmp_path / "data"
    write_tree(data / "in", {a: a, b: b})
    seen = tmp_path / "seen"
    seen.mkdir()
    script = write_script(tmp_path / "user.py", USER)
    spec = write_spec(tmp_path / "p.yaml", {
        **batching_spec("up", {"pfs": {"repo": "in", "glob": "/*"}},
                        ["python3", str(script), "0"], env={"TARGET": "same.txt"}),
        "datum_tries": 1})
    first = finish(_start_shard(spec, data, tmp_path, 0, 2, seen), tmp_path / "pfs")
    assert first.returncode == 0, first
    second = finish(_start_shard(spec, data, tmp_path, 1, 2, seen), tmp_path / "pfs")
    assert second.returncode == 1, second
    ids = {name: pachyderm_datum_id([("in", "in", "master", f"/{name}")]) for name in (a, b)}
    message = (f"output path /same.txt was written by datum {ids[a]} (shard 0/2) and datum "
               f"{ids[b]} (shard 1/2); each output path may come from one datum only")
    assert message in second.stderr, second
    # The earlier shard's output stays; the later datum failed, as on one machine.
    assert (data / "up" / "same.txt").read_text() == a.upper()
    inspect = _cli("inspect-job", "up", data=data)
    assert "state     failed" in inspect.stdout, inspect
    assert "datums    1 failed, 1 success (of 2)" in inspect.stdout, inspect
    assert message in inspect.stdout, inspect


def test_bad_shard_values_are_refused_before_anything_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"x": "x"})
    spec = _spec(tmp_path, 0.0)
    mnt = tmp_path / "pfs"
    cases = [
        (("--shard", "3/3"), {}, "shard index 3 is not below the number of shards 3"),
        (("--shard", "auto/3"), {}, "$JOB_COMPLETION_INDEX is not set"),
        (("--shard", "1"), {}, "write I/N"),
        (("--shard", "0/0"), {}, "number of shards must be a whole number from 1"),
        ((), {"PFSMOUNT_SHARDS": "2", "JOB_COMPLETION_INDEX": "x"}, "not a shard index"),
        (("--shard", "0/2", "--job", "no spaces"), {}, "a job name is 1-100 letters"),
    ]
    env_clean = {k: v for k, v in os.environ.items()
                 if k not in ("JOB_COMPLETION_INDEX", "PFSMOUNT_SHARDS", "PFSMOUNT_JOB")}
    for args, env, message in cases:
        proc = subprocess.run(
            [PY, "-m", "pfsmount", "run", str(spec), "--data", str(data), "--mountpoint",
             str(mnt), *args], capture_output=True, text=True, timeout=60,
            env={**env_clean, **env})
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not (data / ".pfsmount").exists()


def test_a_different_shard_count_is_refused_naming_the_layout(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"x": "x", "y": "y"})
    seen = tmp_path / "seen"
    seen.mkdir()
    spec = _spec(tmp_path, 0.0)
    first = run_pfsmount(spec, data, tmp_path / "pfs", env={"SEEN": str(seen)})
    assert first.returncode == 0, first
    refused = finish(_start_shard(spec, data, tmp_path, 0, 2, seen), tmp_path / "pfs")
    assert refused.returncode == 2, refused
    assert "was run unsharded" in refused.stderr, refused
    shutil.rmtree(data / ".pfsmount")
    shutil.rmtree(data / "up")
    assert finish(_start_shard(spec, data, tmp_path, 0, 2, seen),
                  tmp_path / "pfs").returncode == 0
    again = run_pfsmount(spec, data, tmp_path / "pfs", env={"SEEN": str(seen)})
    assert again.returncode == 2 and "with --shard I/2" in again.stderr, again


def test_sigterm_keeps_finished_datums_and_the_next_pod_resumes(tmp_path: Path) -> None:
    """The kubelet's SIGTERM: exit 143 with what finished committed; the index's next pod,
    with the same job name, continues the job."""
    names = _names(10)
    data = tmp_path / "data"
    write_tree(data / "in", {n: f"text of {n}" for n in names})
    seen = tmp_path / "seen"
    seen.mkdir()
    spec = _spec(tmp_path, 0.3)
    shard = Shard(1, 2)  # the larger share: 8 of the 10 datums
    first = _start_shard(spec, data, tmp_path, 1, 2, seen, ("--job", "edges-x7k2p"))
    deadline = time.monotonic() + 120
    while _done_in_shard(data, shard) < 1:
        assert time.monotonic() < deadline and first.poll() is None, "shard 1 committed nothing"
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    stopped = finish(first, tmp_path / "pfs")
    assert stopped.returncode == 143, stopped
    kept = _done_in_shard(data, shard)
    assert kept >= 1
    again = finish(_start_shard(spec, data, tmp_path, 1, 2, seen, ("--job", "edges-x7k2p")),
                   tmp_path / "pfs")
    assert again.returncode == 0, again
    assert f"resuming interrupted job edges-x7k2p: {kept} datum" in again.stderr, again
    jobs = _cli("list-jobs", "up", data=data)
    assert "edges-x7k2p" in jobs.stdout and "partial" in jobs.stdout, jobs

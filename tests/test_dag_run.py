"""A DAG of pipelines run for real: `pfsmount run DIR` on a 3-step DAG with a fan-out and a
fan-in, real mounts and user processes. The data repo `raw` fans out to `count` and `upper`;
`report` joins their outputs per file (the fan-in)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from support import (
    PY,
    batching_spec,
    finish,
    is_mounted,
    needs_fuse,
    proc_survivors,
    read_tree,
    start_pfsmount,
    unmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse

STEP = """
    import os, sys, time
    from pfsmount import iter_datums, reporting_errors
    mode = sys.argv[1]
    for d in iter_datums():
        with reporting_errors():
            if mode == "report":
                key = os.environ["PACH_DATUM_upper_JOIN_ON"]
                text = open(os.environ["upper"]).read() + open(os.environ["count"]).read()
                name = key + ".txt"
            else:
                path = os.environ["raw"]
                name = os.path.basename(path)
                content = open(path).read()
                if "FAIL" in content and mode == os.environ.get("DAG_FAIL_IN"):
                    raise RuntimeError("asked to fail")
                text = content.upper() if mode == "upper" else f"{len(content.split())}\\n"
                name += ".n" if mode == "count" else ""
            if "SLOW" in (text if mode == "report" else content):
                time.sleep(float(os.environ.get("DAG_SLOW", "0")))
            with open(os.environ["DAG_WORKLOG"], "a") as log:
                log.write(f"{mode} {name}\\n")
            with open(os.path.join(os.environ["MNT"], "out", name), "w") as f:
                f.write(text)
"""


def _dag(tmp: Path, mnt: Path) -> tuple[Path, Path]:
    """The specs (a directory, in the order count, upper, report) and the data directory."""
    data = tmp / "data"
    write_tree(data / "raw", {"a.txt": "one two", "b.txt": "three four five"})
    specs = tmp / "specs"
    specs.mkdir()
    script = write_script(specs / "step.py", STEP)
    env = {"DAG_WORKLOG": str(tmp / "work.log"), "MNT": str(mnt)}

    def pfs(repo: str, glob: str, **extra: object) -> dict:
        return {"pfs": {"repo": repo, "glob": glob, **extra}}

    write_spec(specs / "1-count.yaml", batching_spec(
        "count", pfs("raw", "/*"), ["python3", str(script), "count"], env=env))
    write_spec(specs / "2-upper.yaml", batching_spec(
        "upper", pfs("raw", "/*"), ["python3", str(script), "upper"], env=env))
    write_spec(specs / "3-report.yaml", batching_spec(
        "report", {"join": [pfs("upper", "/(*).txt", join_on="$1"),
                            pfs("count", "/(*).txt.n", join_on="$1")]},
        ["python3", str(script), "report"], env=env))
    return specs, data


def _work(tmp: Path) -> list[str]:
    """What the user code did since the last call (and forget it)."""
    log = tmp / "work.log"
    if not log.exists():
        return []
    lines = sorted(log.read_text().splitlines())
    log.unlink()
    return lines


def _latest_job(data: Path, pipeline: str) -> tuple[str, dict[str, int]]:
    db = sqlite3.connect(data / ".pfsmount" / pipeline / "ledger.sqlite")
    try:
        job, state = db.execute(
            "SELECT job_id, state FROM jobs ORDER BY started DESC LIMIT 1").fetchone()
        counts = dict(db.execute("SELECT state, COUNT(*) FROM job_datums WHERE job_id = ? "
                                 "GROUP BY state", (job,)).fetchall())
    finally:
        db.close()
    return state, counts


def _run(specs: Path, data: Path, mnt: Path, *extra: str, env: dict | None = None):
    # One step at a time unless a test asks: the default depends on the machine's CPUs.
    extra = extra if "--jobs" in extra else (*extra, "--jobs", "1")
    return finish(start_pfsmount(specs, data, mnt, extra=extra, env=env), mnt, timeout=180)


def test_dag_runs_in_order_then_reruns_only_what_changed(tmp_path: Path, mnt: Path) -> None:
    specs, data = _dag(tmp_path, mnt)
    first = _run(specs, data, mnt)
    assert first.returncode == 0, first
    assert read_tree(data / "report") == {"a.txt": b"ONE TWO2\n", "b.txt": b"THREE FOUR FIVE3\n"}
    assert _work(tmp_path) == ["count a.txt.n", "count b.txt.n", "report a.txt",
                               "report b.txt", "upper a.txt", "upper b.txt"]
    assert "DAG: 3 of 3 steps succeeded" in first.stderr, first
    # Upstream steps run before the step that reads them.
    assert first.stderr.index("step 3/3: report") > first.stderr.index("step 2/3: upper")

    again = _run(specs, data, mnt)
    assert again.returncode == 0, again
    assert _work(tmp_path) == []  # no user code did any work...
    for pipeline in ("count", "upper", "report"):  # ...because every datum was skipped
        assert _latest_job(data, pipeline) == ("success", {"skipped": 2}), pipeline

    (data / "raw" / "c.txt").write_text("six")
    third = _run(specs, data, mnt)
    assert third.returncode == 0, third
    # Exactly the new file's datums, all the way down.
    assert _work(tmp_path) == ["count c.txt.n", "report c.txt", "upper c.txt"]
    assert _latest_job(data, "report") == ("success", {"skipped": 2, "success": 1})
    assert read_tree(data / "report")["c.txt"] == b"SIX1\n"


def test_failing_middle_step_stops_only_its_descendants(tmp_path: Path, mnt: Path) -> None:
    specs, data = _dag(tmp_path, mnt)
    (data / "raw" / "b.txt").write_text("FAIL here")
    result = _run(specs, data, mnt, env={"DAG_FAIL_IN": "count"})
    assert result.returncode == 1, result
    assert "step report: not run: upstream count failed" in result.stderr, result
    assert "DAG: 1 of 3 steps succeeded" in result.stderr
    # The other branch carried on after the failure.
    assert read_tree(data / "upper") == {"a.txt": b"ONE TWO", "b.txt": b"FAIL HERE"}
    assert not (data / ".pfsmount" / "report").exists()
    # Fixed data: the next run completes the DAG.
    (data / "raw" / "b.txt").write_text("fine now")
    fixed = _run(specs, data, mnt, env={"DAG_FAIL_IN": "count"})
    assert fixed.returncode == 0, fixed
    assert read_tree(data / "report")["b.txt"] == b"FINE NOW2\n"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_kill_9_mid_dag_then_rerun_completes(tmp_path: Path, mnt: Path, jobs: str) -> None:
    """With --jobs 2 the steps are child processes: killing the DAG's process alone must
    stop them too (they hold its lifeline)."""
    specs, data = _dag(tmp_path, mnt)
    (data / "raw" / "b.txt").write_text("SLOW b")
    proc = start_pfsmount(specs, data, mnt, env={"DAG_SLOW": "60", "DAG_FAIL_IN": "none"},
                          extra=["--jobs", jobs])
    try:
        # count's b.txt and upper's b.txt are slow: kill everything mid-DAG (one at a time,
        # in count; two at a time, in both).
        _wait_for(lambda: (data / "count" / "a.txt.n").exists(), "count's first datum")
        if jobs == "2":
            _wait_for(lambda: (data / "upper" / "a.txt").exists(), "upper's first datum")
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _wait_for(lambda: not proc_survivors(str(data)), "the steps to stop", timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for _ in range(50):  # the auto_unmount helper removes the mount after the kill
            if not is_mounted(mnt):
                break
            time.sleep(0.1)
        unmount(mnt)
    assert not (data / "report").exists()
    assert _latest_job(data, "count")[0] in ("running", "killed")
    _work(tmp_path)
    result = _run(specs, data, mnt)
    assert result.returncode == 0, result
    assert "resuming interrupted job" in result.stderr
    # Each step resumes with only the datums it had not finished.
    upper = ["upper b.txt"] if jobs == "2" else ["upper a.txt", "upper b.txt"]
    assert _work(tmp_path) == ["count b.txt.n", "report a.txt", "report b.txt", *upper]
    assert read_tree(data / "report") == {"a.txt": b"ONE TWO2\n", "b.txt": b"SLOW B2\n"}


def test_independent_steps_run_at_once_with_jobs_2(tmp_path: Path, mnt: Path) -> None:
    specs, data = _dag(tmp_path, mnt)
    (data / "raw" / "b.txt").write_text("SLOW b")
    result = _run(specs, data, mnt, "--jobs", "2", env={"DAG_SLOW": "1.5"})
    assert result.returncode == 0, result
    err = result.stderr
    # upper started while count (slow) was still running, each at the same mountpoint path
    # in a mount namespace of its own; report waited for both.
    assert err.index("step 2/3: upper") < err.index("[count] pfsmount: job ")
    assert err.index("step 3/3: report") > err.index("[upper] pfsmount: job ")
    assert "[upper] pfsmount: mounting" in err
    assert read_tree(data / "report") == {"a.txt": b"ONE TWO2\n", "b.txt": b"SLOW B2\n"}


@pytest.mark.parametrize("how", [(), ("--poll-interval", "0.2")], ids=["inotify", "poll"])
def test_watch_reruns_what_a_new_file_affects(tmp_path: Path, mnt: Path,
                                              how: tuple[str, ...]) -> None:
    specs, data = _dag(tmp_path, mnt)
    proc = start_pfsmount(specs, data, mnt, extra=["--watch", "--jobs", "1", *how])
    try:
        _wait_for(lambda: (data / "report" / "b.txt").exists(), "the first round")
        _wait_for(lambda: "report" in _jobs_state(data), "the first round's end")
        time.sleep(1)  # the watcher is waiting now
        (data / "raw" / "c.txt").write_text("seven eight")
        _wait_for(lambda: (data / "report" / "c.txt").exists(), "the new file's round")
        assert (data / "report" / "c.txt").read_text() == "SEVEN EIGHT2\n"
        _wait_for(lambda: _latest_job(data, "report")[0] == "success", "the round's end")
    finally:
        proc.send_signal(signal.SIGINT)
    result = finish(proc, mnt, timeout=60)
    assert result.returncode == 0, result
    assert "raw changed: running count, upper, report" in result.stderr, result
    assert "stopped watching" in result.stderr
    assert ("polling every 0.2s" if how else "(inotify)") in result.stderr


def _jobs_state(data: Path) -> dict[str, str]:
    states = {}
    for pipeline in ("count", "upper", "report"):
        if (data / ".pfsmount" / pipeline / "ledger.sqlite").exists():
            state, _ = _latest_job(data, pipeline)
            if state == "success":
                states[pipeline] = state
    return states


def _wait_for(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_dag_command_prints_the_graph_with_last_jobs(tmp_path: Path, mnt: Path) -> None:
    specs, data = _dag(tmp_path, mnt)
    before = subprocess.run([PY, "-m", "pfsmount", "dag", str(specs), "--data", str(data)],
                            capture_output=True, text=True, check=False)
    assert before.returncode == 0, before.stderr
    assert before.stdout.splitlines() == [
        "raw  (data repo)",
        "count  <- raw  [never run]",
        "upper  <- raw  [never run]",
        "report  <- upper, count  [never run]",
    ]
    assert _run(specs, data, mnt).returncode == 0
    dot = subprocess.run([PY, "-m", "pfsmount", "dag", str(specs), "--data", str(data), "--dot"],
                         capture_output=True, text=True, check=False)
    assert dot.returncode == 0, dot.stderr
    assert '"upper" -> "report";' in dot.stdout and '"raw" [shape=cylinder];' in dot.stdout
    assert "success: 2 processed, 0 skipped, 0 failed" in dot.stdout
    jobs = subprocess.run([PY, "-m", "pfsmount", "list-jobs", str(specs), "--data", str(data)],
                          capture_output=True, text=True, check=False)
    assert jobs.returncode == 0, jobs.stderr
    assert [line for line in jobs.stdout.splitlines() if line.startswith("==")] == [
        "== count", "== upper", "== report"]
    inspect = subprocess.run([PY, "-m", "pfsmount", "inspect-job", "upper", "report",
                              "--data", str(data)], capture_output=True, text=True, check=False)
    assert inspect.returncode == 0, inspect.stderr
    assert inspect.stdout.count("state     success") == 2


def test_ctrl_c_with_jobs_2_stops_the_steps_then_rerun_completes(tmp_path: Path,
                                                                 mnt: Path) -> None:
    specs, data = _dag(tmp_path, mnt)
    (data / "raw" / "b.txt").write_text("SLOW b")
    proc = start_pfsmount(specs, data, mnt, env={"DAG_SLOW": "60"}, extra=["--jobs", "2"])
    try:
        _wait_for(lambda: (data / "count" / "a.txt.n").exists(), "count's first datum")
        _wait_for(lambda: (data / "upper" / "a.txt").exists(), "upper's first datum")
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        result = finish(proc, mnt, timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert result.returncode == 130, result
    assert "step report: not run: interrupted before it started" in result.stderr, result
    assert "[count] pfsmount: job " in result.stderr  # each step ended its job in order
    assert _latest_job(data, "count")[0] == "killed"
    assert _latest_job(data, "upper")[0] == "killed"
    assert not proc_survivors(str(data))
    _work(tmp_path)
    again = _run(specs, data, mnt)
    assert again.returncode == 0, again
    assert _work(tmp_path) == ["count b.txt.n", "report a.txt", "report b.txt", "upper b.txt"]

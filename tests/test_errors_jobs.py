"""How a job ends and reports: interruptions, resumes, exit codes, a full log disk, messages."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from support import (
    PY,
    batching_spec,
    datum_states,
    finish,
    is_mounted,
    needs_fuse,
    run_pfsmount,
    start_pfsmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse

# f1 always fails; f3 hangs while the HANG file exists, so the job can be interrupted there.
PROGRAM = """
    import os, time
    from pfsmount import batch_datums
    MNT, HANG = os.environ["MNT"], os.environ["HANG"]

    def process():
        name = os.path.basename(os.environ["in"])
        print(f"{name}: " + "x" * int(os.environ.get("CHATTER", "0")), flush=True)
        if name == "f1":
            raise RuntimeError("f1 is bad")
        if name == "f3" and os.path.exists(HANG):
            time.sleep(3600)
        with open(f"{MNT}/out/{name}", "w") as f:
            f.write(name)

    batch_datums(process)()
"""


def _errors_job(root: Path, mnt: Path, files: int = 6, **spec_extra: object) -> tuple[Path, Path]:
    data = root / "data"
    write_tree(data / "in", {f"f{i}": str(i) for i in range(files)})
    hang = root / "hang"
    hang.write_text("")
    script = write_script(root / "prog.py", PROGRAM)
    spec = batching_spec("job", {"pfs": {"repo": "in", "glob": "/*"}}, ["python3", str(script)],
                         env={"MNT": str(mnt), "HANG": str(hang)})
    spec["datum_tries"] = 1
    spec.update(spec_extra)
    return write_spec(root / "pipeline.yaml", spec), data


def _errors_list_jobs(data: Path) -> list[dict[str, str]]:
    out = subprocess.run([PY, "-m", "pfsmount", "list-jobs", "job", "--data", str(data)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    header = out[0].split()
    return [_errors_row(header, line) for line in out[1:]]


def _errors_row(header: list[str], line: str) -> dict[str, str]:
    # STARTED is "date time": two words under one heading.
    words = line.split()
    words[2:4] = [" ".join(words[2:4])]
    return dict(zip(header, words, strict=True))


def _errors_wait(pred, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def _errors_failed_recorded(data: Path) -> bool:
    try:
        return datum_states(data, "job").get("/f1", ("", 0))[0] == "failed"
    except (sqlite3.Error, TypeError):
        return False


def test_a_resumed_job_counts_failures_from_before_the_interruption(tmp_path: Path) -> None:
    """D3 + exit codes: SIGINT 130, SIGTERM 143, kill -9, job_timeout 124; each rerun says
    '1 failed', exits 1, and agrees with list-jobs."""
    ways = ["SIGINT", "SIGTERM", "SIGKILL", "job_timeout"]
    jobs = {}
    for way in ways:
        root = tmp_path / way
        root.mkdir()
        mnt = root / "pfs"
        extra = {"job_timeout": "4s"} if way == "job_timeout" else {}
        spec, data = _errors_job(root, mnt, **extra)
        jobs[way] = (root, mnt, spec, data, start_pfsmount(spec, data, mnt))
    try:
        for way, (_root, _mnt, _spec, data, proc) in jobs.items():
            # f1 failed and is in the ledger; f3 hangs.
            _errors_wait(lambda data=data: _errors_failed_recorded(data))
            if way != "job_timeout":
                os.kill(proc.pid, getattr(signal, way))
        first = {way: finish(proc, mnt) for way, (_, mnt, _, _, proc) in jobs.items()}
    finally:
        for *_, proc in jobs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert first["SIGINT"].returncode == 130, first["SIGINT"]
    assert first["SIGTERM"].returncode == 143, first["SIGTERM"]
    assert first["SIGKILL"].returncode == -signal.SIGKILL, first["SIGKILL"]
    assert first["job_timeout"].returncode == 124, first["job_timeout"]
    assert "job_timeout of 4s expired" in first["job_timeout"].stderr

    reruns = {}
    for way, (root, mnt, spec, data, _) in jobs.items():
        (root / "hang").unlink()
        if way == "SIGKILL":
            # The reaper takes the user code down; wait for its mount to go away too.
            _errors_wait(lambda mnt=mnt: not _errors_is_live_mount(mnt), timeout=15)
        reruns[way] = start_pfsmount(spec, data, mnt)
    for way, proc in reruns.items():
        root, mnt, spec, data, _ = jobs[way]
        again = finish(proc, mnt)
        assert again.returncode == 1, (way, again)
        assert "resuming interrupted job" in again.stderr, again
        assert "1 of them failed" in again.stderr, again
        summary = next(line for line in again.stderr.splitlines() if " FAILED: " in line)
        assert "5 datums processed, 1 failed" in summary, (way, summary)
        assert "datum" in again.stderr and "f1 is bad" in again.stderr
        (job,) = [j for j in _errors_list_jobs(data) if j["STATE"] != "success"]
        assert job["STATE"] == "failed" and job["FAILED"] == "1" and job["DONE"] == "5", job


def _errors_is_live_mount(mnt: Path) -> bool:
    return is_mounted(mnt)


def test_a_full_log_disk_does_not_stop_the_job(tmp_path: Path, mnt: Path) -> None:
    """D9: the job log on a full tmpfs: warned once, the job ends normally, counts agree."""
    spec, data = _errors_job(tmp_path, mnt, files=8)
    (tmp_path / "hang").unlink()
    logs = data / ".pfsmount" / "job" / "logs"
    logs.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(logs)], check=True)
    try:
        # 8 datums x 20 KiB: the log fills its 64 KiB in the middle of the job.
        result = run_pfsmount(spec, data, mnt, env={"CHATTER": str(20 * 1024)})
        logged = subprocess.run([PY, "-m", "pfsmount", "logs", "job", "--data", str(data)],
                                capture_output=True, text=True, check=False)
    finally:
        subprocess.run(["umount", "-l", str(logs)], check=False)
    assert result.returncode == 1, result
    # (The user code's own traceback for f1 is expected; none of pfsmount's.)
    assert "ExceptionGroup" not in result.stderr and "joblog.py" not in result.stderr
    assert result.stderr.count("cannot write the job log") == 1, result.stderr
    # Every line still reached the terminal.
    assert sorted(re.findall(r"^(f\d): x+$", result.stdout, re.M)) == [f"f{i}" for i in range(8)]
    summary = next(line for line in result.stderr.splitlines() if " FAILED: " in line)
    assert "7 datums processed, 1 failed" in summary, summary
    (job,) = _errors_list_jobs(data)
    assert (job["STATE"], job["DONE"], job["FAILED"]) == ("failed", "7", "1"), job
    # What was logged before the disk filled can still be read.
    assert logged.returncode == 0, logged.stderr
    assert "Traceback" not in logged.stderr
    assert "f0: xxx" in logged.stdout


def test_messages_at_the_end_of_a_job(tmp_path: Path, mnt: Path) -> None:
    """D13: a recovered datum is a warning; input files are counted once; plurals."""
    data = tmp_path / "data"
    write_tree(data / "images", {"a": "A", "b": "B", "c": "C"})
    write_tree(data / "labels", {"l.txt": "labels"})
    script = write_script(tmp_path / "prog.py", """
        import os
        from pfsmount import batch_datums
        MNT = os.environ["MNT"]

        def process():
            image = os.path.join(MNT, "images", os.path.basename(os.environ["images"]))
            for _ in range(3):  # opened three times: still one file
                open(image).read()
            open(os.path.join(MNT, "lab", "l.txt")).read()  # the same file in every datum
            if image.endswith("b"):
                raise RuntimeError("b needs err_cmd")
            open(os.path.join(MNT, "out", os.path.basename(image)), "w").write("ok")

        batch_datums(process)()
    """)
    spec = batching_spec(
        "msgs", {"cross": [{"pfs": {"repo": "images", "glob": "/*"}},
                           {"pfs": {"repo": "labels", "glob": "/", "name": "lab"}}]},
        ["python3", str(script)], env={"MNT": str(mnt)}, err_cmd=["true"])
    result = run_pfsmount(write_spec(tmp_path / "p.yaml", spec), data, mnt)
    assert result.returncode == 0, result
    assert "pfsmount: error:" not in result.stderr, result.stderr
    assert re.search(r"warning: datum \w+ \(images:/b, lab:/\) recovered after 1 attempt: ",
                     result.stderr), result.stderr
    assert "succeeded: 2 datums processed, 0 failed, 1 recovered" in result.stderr
    # 3 images + the one label file; the label is opened in each of the 3 datums.
    assert "from 4 input files" in result.stderr, result.stderr


def test_a_symlinked_directory_conflict_names_the_symlink(tmp_path: Path, mnt: Path) -> None:
    """D13: datum a writes a symlink to a directory, datum b a real directory there; the
    message used to say b's file /d/x "was written by" a."""
    data = tmp_path / "data"
    write_tree(data / "in", {"a": "a", "b": "b"})
    script = write_script(tmp_path / "prog.sh", """
        while pachctl next datum; do
            . "$MNT/.env"
            if [ "$(basename "$in")" = a ]; then ln -s /tmp "$MNT/out/d"
            else mkdir "$MNT/out/d" && echo x > "$MNT/out/d/x"; fi
        done
    """)
    spec = batching_spec("links", {"pfs": {"repo": "in", "glob": "/*"}},
                         ["sh", str(script)], env={"MNT": str(mnt)})
    spec["datum_tries"] = 1
    result = run_pfsmount(write_spec(tmp_path / "p.yaml", spec), data, mnt)
    assert result.returncode == 1, result
    assert re.search(r"output path /d/x of datum \w+ collides with datum \w+'s output: a file "
                     r"or symlink \(even a symlink to a directory\) in one is a directory in "
                     r"the other", result.stderr), result.stderr

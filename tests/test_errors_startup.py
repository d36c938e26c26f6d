"""Refused starts: one line, exit 2, nothing mounted, nothing recorded (D10, D11)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest

from pfsmount.datums import open_repos
from pfsmount.preflight import StartError
from pfsmount.run import RunOptions, preflight
from pfsmount.spec import load_spec
from support import (
    PY,
    batching_spec,
    is_mounted,
    needs_fuse,
    run_pfsmount,
    write_spec,
    write_tree,
)


def _errors_pipeline(root: Path, cmd: list[str], **transform: object) -> tuple[Path, Path]:
    data = root / "data"
    write_tree(data / "in", {"a": "1", "b": "2"})
    spec = batching_spec("job", {"pfs": {"repo": "in", "glob": "/*"}}, cmd, **transform)
    return write_spec(root / "pipeline.yaml", spec), data


def _errors_jobs(data: Path) -> list[tuple[str, str]]:
    path = data / ".pfsmount" / "job" / "ledger.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT job_id, state FROM jobs ORDER BY started").fetchall()
    finally:
        db.close()


def _errors_preflight(spec: Path, data: Path, **opts: object) -> None:
    loaded = load_spec(spec)
    repos = open_repos(loaded.input, str(data))
    preflight(loaded, repos, RunOptions(data_dir=str(data), **opts))  # type: ignore[arg-type]


# ----- kernel-free: the checks themselves -------------------------------------------------


def test_cmd_is_resolved_as_the_user_code_would(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "bin").mkdir(parents=True)
    runnable = work / "bin" / "run.sh"
    runnable.write_text("#!/bin/sh\necho hi\n")
    runnable.chmod(0o755)
    (work / "plain.sh").write_text("#!/bin/sh\n")
    broken = work / "broken.sh"
    broken.write_text("#!/no/such/interpreter\n")
    broken.chmod(0o755)
    cases = {
        # cmd -> None (accepted) or words the refusal must contain
        ("bin/run.sh",): None,  # relative to working_dir
        ("./bin/run.sh",): None,
        ("pachctl", "next", "datum"): None,  # pfsmount's own shims are on PATH
        ("pfsmount", "next-datum"): None,
        ("sh", "-c", "true"): None,
        ("no-such-program-anywhere",): "'no-such-program-anywhere' is not found on the user",
        ("./missing.sh",): f"./missing.sh ({work}/missing.sh) does not exist",
        ("./plain.sh",): "is not executable (chmod +x",
        ("./bin",): "is a directory",
        ("./broken.sh",): "names an interpreter that cannot run: #!/no/such/interpreter",
    }
    for cmd, refusal in cases.items():
        spec, data = _errors_pipeline(tmp_path, list(cmd))
        if refusal is None:
            _errors_preflight(spec, data, workdir=str(work))
            continue
        with pytest.raises(StartError, match=r"^transform\.cmd: ") as info:
            _errors_preflight(spec, data, workdir=str(work))
        assert refusal in str(info.value), (cmd, str(info.value))
    spec, data = _errors_pipeline(tmp_path, ["true"], err_cmd=["no-such-err-cmd"])
    with pytest.raises(StartError, match=r"^transform\.err_cmd: 'no-such-err-cmd' is not found"):
        _errors_preflight(spec, data, workdir=str(work))
    # The spec's own PATH is the one searched.
    spec, data = _errors_pipeline(tmp_path, ["run.sh"], env={"PATH": str(work / "bin")})
    _errors_preflight(spec, data, workdir=str(work))


def test_mountpoint_inside_the_data_directory_is_refused(tmp_path: Path) -> None:
    spec, data = _errors_pipeline(tmp_path, ["true"])
    (data / "job").mkdir()
    cases = {
        data / "job" / "pfs": f"inside the output repo {data}/job;",
        data / "in" / "pfs": f"inside the input repo {data}/in;",
        data / ".pfsmount" / "pfs": f"inside pfsmount's workspace {data}/.pfsmount;",
        data / "elsewhere": f"inside the data directory {data};",
        data: "is itself the data directory",
    }
    for mountpoint, words in cases.items():
        with pytest.raises(StartError) as info:
            _errors_preflight(spec, data, mountpoint=str(mountpoint))
        assert str(info.value).startswith(f"mountpoint {mountpoint} "), str(info.value)
        assert words in str(info.value) and "choose another --mountpoint" in str(info.value)
    # A symlink into the data directory is seen through.
    (tmp_path / "link").symlink_to(data / "job")
    with pytest.raises(StartError, match="inside the output repo"):
        _errors_preflight(spec, data, mountpoint=str(tmp_path / "link" / "pfs"))
    _errors_preflight(spec, data, mountpoint=str(tmp_path / "pfs"))


def test_log_lines_that_cannot_be_read_are_skipped(tmp_path: Path) -> None:
    from pfsmount.joblog import JobLog, read_lines

    log = JobLog(str(tmp_path), "job", "j1")
    log.line("d1", 1, "user", "stdout", b"first")
    log.line("d1", 1, "user", "stdout", b"second")
    log.close()
    with open(log.lines_path, "a", encoding="utf-8") as f:
        f.write('{"t": 1.0, "datum": "d1", "attem')  # pfsmount killed mid-write
    damaged: list[int] = []
    lines = list(read_lines(str(tmp_path), "job", "j1", damaged.append))
    assert [line.text for line in lines] == ["first", "second"]
    assert damaged == [3]


# ----- the real command line --------------------------------------------------------------


@needs_fuse
def test_bad_ports_are_one_line_and_record_nothing(tmp_path: Path, mnt: Path) -> None:
    spec, data = _errors_pipeline(tmp_path, ["true"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = run_pfsmount(spec, data, mnt, extra=["--port", str(port)])
    assert in_use.returncode == 2, in_use
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in in_use.stderr
    assert "Address already in use" in in_use.stderr
    for bad in ("99999", "-1", "http"):
        result = run_pfsmount(spec, data, mnt, extra=[f"--port={bad}"])
        assert result.returncode == 2, result
        assert f"'{bad}' is not a TCP port" in result.stderr
        assert "Traceback" not in result.stderr
    assert "Traceback" not in in_use.stderr
    assert _errors_jobs(data) == []
    assert not is_mounted(mnt)


@needs_fuse
def test_refused_starts_leave_no_running_job(tmp_path: Path, mnt: Path) -> None:
    """D11: a refusal records nothing; the run after it is a fresh job, not a 'resume'."""
    spec, data = _errors_pipeline(tmp_path, ["sh", "-c", "while pachctl next datum; do :; done"])
    mnt.mkdir()
    (mnt / "precious.txt").write_text("keep me")
    refused = run_pfsmount(spec, data, mnt)
    assert refused.returncode == 2, refused
    assert "is not empty" in refused.stderr
    inside = run_pfsmount(spec, data, data / "in" / "pfs")
    assert inside.returncode == 2 and "inside the input repo" in inside.stderr, inside
    assert not (data / "in" / "pfs").exists()
    bad_cmd, _ = _errors_pipeline(tmp_path / "other", ["./not-there.sh"])
    missing = run_pfsmount(bad_cmd, data, tmp_path / "mnt2")
    assert missing.returncode == 2 and "does not exist" in missing.stderr, missing
    assert [state for _, state in _errors_jobs(data)] == []

    (mnt / "precious.txt").unlink()
    ok = run_pfsmount(spec, data, mnt)
    assert ok.returncode == 0, ok
    assert "resuming" not in ok.stderr
    assert [state for _, state in _errors_jobs(data)] == ["success"]


@needs_fuse
def test_a_damaged_ledger_or_log_is_one_line(tmp_path: Path, mnt: Path) -> None:
    spec, data = _errors_pipeline(tmp_path, ["sh", "-c", "while pachctl next datum; do "
                                             "echo working on $PACH_DATUM_ID; done"])
    first = run_pfsmount(spec, data, mnt)
    assert first.returncode == 0, first

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "pfsmount", *args, "--data", str(data)],
                              capture_output=True, text=True, check=False)

    # A job log cut off in the middle of a line (pfsmount killed mid-write).
    (log,) = (data / ".pfsmount" / "job" / "logs").iterdir()
    with log.open("a") as f:
        f.write('{"t": 1.0, "datum": "ab')
    logs = cli("logs", "job")
    assert logs.returncode == 0, logs
    assert logs.stdout.count("working on") == 2
    assert "skipped 1 damaged line of the job log (line 3)" in logs.stderr

    ledger = data / ".pfsmount" / "job" / "ledger.sqlite"
    good = ledger.read_bytes()
    for name, damage in {"garbage": b"this is not a database" * 100,
                         "truncated": good[:len(good) // 2],
                         "header only": good[:100]}.items():
        for extra in ledger.parent.glob("ledger.sqlite-*"):
            extra.unlink()
        ledger.write_bytes(damage)
        for args in (("list-jobs", "job"), ("inspect-job", "job"), ("logs", "job")):
            result = cli(*args)
            assert result.returncode == 2, (name, args, result.stderr)
            assert "Traceback" not in result.stderr, (name, args, result.stderr)
            assert f"ledger {ledger}" in result.stderr, (name, args, result.stderr)
        run = run_pfsmount(spec, data, mnt)
        assert run.returncode == 2, (name, run)
        assert "Traceback" not in run.stderr, (name, run.stderr)
        assert f"ledger {ledger}" in run.stderr and "move it away" in run.stderr, run.stderr
        assert not is_mounted(mnt)

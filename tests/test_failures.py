"""Failing datums, in both modes: retries, err_cmd, exits, kills, timeouts, crash loops, logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import (
    PY,
    batching_spec,
    datum_states,
    needs_fuse,
    read_tree,
    run_pfsmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse

# One user program for both modes. Each datum is a file name; ACT_<name> says how its
# attempts misbehave ("raise:1" = raise on attempt 1, "kill:always", ...). Attempts are
# counted in files outside the mount, so they survive restarts of the process.
PROGRAM = """
    import os, signal, sys, time
    STATE, MNT = os.environ["STATE"], os.environ["MNT"]

    def attempt(name):
        path = os.path.join(STATE, name)
        n = int(open(path).read()) + 1 if os.path.exists(path) else 1
        with open(path, "w") as f:
            f.write(str(n))
        return n

    def process(name):
        n = attempt(name)
        kind, _, until = os.environ.get("ACT_" + name, "ok").partition(":")
        if kind != "ok" and (until == "always" or n <= int(until)):
            print(f"{name}: attempt {n} goes wrong: {kind}", flush=True)
            if kind == "raise":
                raise RuntimeError(f"cannot handle {name}")
            if kind == "exit0":
                os._exit(0)
            if kind == "exit1":
                os._exit(1)
            if kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if kind == "hang":
                time.sleep(3600)
        print(f"{name}: attempt {n} ok", flush=True)
        with open(f"{MNT}/out/{name}", "w") as f:
            f.write(f"{name} done on attempt {n}")

    name = lambda: os.path.basename(os.environ["in"])
    if os.environ["MODE"] == "batching":
        from pfsmount import batch_datums
        batch_datums(lambda: process(name()))()
    else:
        process(name())
"""

MODES = ["batching", "classic"]


def _job(tmp_path: Path, mnt: Path, mode: str, *, files: str = "abc",
         acts: dict[str, str] | None = None, **spec_extra: object) -> tuple[Path, Path]:
    data = tmp_path / "data"
    write_tree(data / "in", {f: f for f in files})
    state = tmp_path / "state"
    state.mkdir()
    script = write_script(tmp_path / "prog.py", PROGRAM)
    env = {"STATE": str(state), "MNT": str(mnt), "MODE": mode}
    env.update({f"ACT_{k}": v for k, v in (acts or {}).items()})
    spec = batching_spec("job", {"pfs": {"repo": "in", "glob": "/*"}}, ["python3", str(script)],
                         env=env)
    spec["transform"]["datum_batching"] = mode == "batching"
    for key, value in spec_extra.items():
        if key in ("err_cmd", "err_stdin"):
            spec["transform"][key] = value
        else:
            spec[key] = value
    return write_spec(tmp_path / "pipeline.yaml", spec), data


def _states(data: Path) -> dict[str, tuple[str, int]]:
    return datum_states(data, "job")


@pytest.mark.parametrize("mode", MODES)
def test_an_error_once_then_success(tmp_path: Path, mnt: Path, mode: str) -> None:
    spec, data = _job(tmp_path, mnt, mode, acts={"b": "raise:1"})
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 0, result
    assert _states(data) == {"/a": ("success", 1), "/b": ("success", 2), "/c": ("success", 1)}
    assert read_tree(data / "job") == {"a": b"a done on attempt 1", "b": b"b done on attempt 2",
                                       "c": b"c done on attempt 1"}
    assert "attempt 1 of 3 failed" in result.stderr


@pytest.mark.parametrize("mode", MODES)
def test_a_datum_that_always_fails(tmp_path: Path, mnt: Path, mode: str) -> None:
    spec, data = _job(tmp_path, mnt, mode, acts={"b": "raise:always"}, datum_tries=2)
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 1, result
    assert _states(data) == {"/a": ("success", 1), "/b": ("failed", 2), "/c": ("success", 1)}
    assert read_tree(data / "job") == {"a": b"a done on attempt 1", "c": b"c done on attempt 1"}
    assert "(in:/b) failed after 2 attempts" in result.stderr


@pytest.mark.parametrize("mode", MODES)
def test_err_cmd_recovers_a_datum(tmp_path: Path, mnt: Path, mode: str) -> None:
    seen = tmp_path / "err-cmd-saw"
    spec, data = _job(
        tmp_path, mnt, mode, acts={"b": "raise:always"},
        err_cmd=["bash", "-c", f'read line; echo "$line $in $(cat "$in")" >> {seen}; '
                               'echo recovering "$in"'],
        err_stdin=["err_stdin reached err_cmd"],
    )
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 0, result
    assert _states(data) == {"/a": ("success", 1), "/b": ("recovered", 1), "/c": ("success", 1)}
    # err_cmd ran once, with the datum's env and the failed datum still in /pfs.
    assert seen.read_text() == f"err_stdin reached err_cmd {mnt}/in/b b\n"
    assert read_tree(data / "job") == {"a": b"a done on attempt 1", "c": b"c done on attempt 1"}


@pytest.mark.parametrize("mode", MODES)
def test_err_cmd_that_fails_does_not_recover(tmp_path: Path, mnt: Path, mode: str) -> None:
    spec, data = _job(tmp_path, mnt, mode, acts={"b": "raise:always"}, datum_tries=2,
                      err_cmd=["false"])
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 1, result
    assert _states(data)["/b"] == ("failed", 2)


@pytest.mark.parametrize(("mode", "act"), [
    ("batching", "exit0:1"), ("batching", "exit1:1"), ("batching", "kill:1"),
    ("classic", "exit1:1"), ("classic", "kill:1"),
])
def test_user_code_dying_mid_datum_is_retried(
    tmp_path: Path, mnt: Path, mode: str, act: str
) -> None:
    spec, data = _job(tmp_path, mnt, mode, acts={"b": act})
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 0, result
    assert _states(data) == {"/a": ("success", 1), "/b": ("success", 2), "/c": ("success", 1)}
    assert read_tree(data / "job") == {"a": b"a done on attempt 1", "b": b"b done on attempt 2",
                                       "c": b"c done on attempt 1"}
    if mode == "batching":
        assert "user code restarted 1 time," in result.stderr
    if act.startswith("kill"):
        assert "killed by SIGKILL" in result.stderr


def test_exit_0_in_classic_mode_is_success(tmp_path: Path, mnt: Path) -> None:
    spec, data = _job(tmp_path, mnt, "classic", acts={"b": "exit0:always"})
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 0, result
    assert _states(data)["/b"] == ("success", 1)
    assert read_tree(data / "job") == {"a": b"a done on attempt 1", "c": b"c done on attempt 1"}


@pytest.mark.parametrize("mode", MODES)
def test_a_hang_is_ended_by_datum_timeout(tmp_path: Path, mnt: Path, mode: str) -> None:
    spec, data = _job(tmp_path, mnt, mode, acts={"b": "hang:1"}, datum_timeout="2s")
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 0, result
    assert _states(data) == {"/a": ("success", 1), "/b": ("success", 2), "/c": ("success", 1)}
    assert "datum_timeout of 2s expired" in result.stderr


@pytest.mark.parametrize("mode", MODES)
def test_job_timeout_stops_the_job(tmp_path: Path, mnt: Path, mode: str) -> None:
    spec, data = _job(tmp_path, mnt, mode, files="abcdefghij",
                      acts={"d": "hang:always"}, job_timeout="3s")
    (data / "job").mkdir(parents=True)
    (data / "job" / "old").write_text("previous output")
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode != 0, result
    assert "job_timeout of 3s expired" in result.stderr
    assert "was KILLED" in result.stderr
    # The datums before the hang are committed, the hung one left nothing behind.
    assert read_tree(data / "job") == {"old": b"previous output", "a": b"a done on attempt 1",
                                       "b": b"b done on attempt 1", "c": b"c done on attempt 1"}


def test_a_crash_loop_fails_the_job(tmp_path: Path, mnt: Path) -> None:
    spec, data = _job(tmp_path, mnt, "batching")
    raw = json.loads(json.dumps(__import__("yaml").safe_load(spec.read_text())))
    raw["transform"]["cmd"] = ["bash", "-c", "echo starting; exit 3"]
    write_spec(spec, raw)
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 1, result
    assert "exited with status 3 before asking for a datum, 3 times in a row" in result.stderr
    assert result.stdout.count("starting") == 3


def test_a_missing_program_is_named(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"a": "1"})
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "never", {"pfs": {"repo": "in", "glob": "/*"}}, ["no-such-program-anywhere"]))
    result = run_pfsmount(spec, data, mnt)
    # Refused before anything is mounted or started (it used to crash-loop three times).
    assert result.returncode == 2, result
    assert "transform.cmd: 'no-such-program-anywhere' is not found" in result.stderr
    assert "crash loop" not in result.stderr and "Traceback" not in result.stderr


def test_logs_of_a_failed_datum(tmp_path: Path, mnt: Path) -> None:
    spec, data = _job(tmp_path, mnt, "batching", acts={"b": "raise:always"})
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 1, result
    assert f"pfsmount logs {spec} --failed" in result.stderr

    def logs(*args: str) -> str:
        proc = subprocess.run([PY, "-m", "pfsmount", "logs", str(spec), "--data", str(data),
                               *args], capture_output=True, text=True, check=True)
        return proc.stdout

    failed = logs("--failed")
    assert [line.split("] ", 1)[1] for line in failed.splitlines()
            if "goes wrong" in line] == [f"b: attempt {n} goes wrong: raise" for n in (1, 2, 3)]
    assert "a: attempt 1 ok" not in failed
    assert "RuntimeError: cannot handle b" in failed  # the client's traceback, tagged with b
    everything = logs()
    assert "a: attempt 1 ok" in everything and "c: attempt 1 ok" in everything
    by_pipeline_name = subprocess.run(
        [PY, "-m", "pfsmount", "logs", "job", "--data", str(data), "--datum", "0000"],
        capture_output=True, text=True, check=False)
    assert by_pipeline_name.returncode == 2
    assert "has no datum whose id starts with '0000'" in by_pipeline_name.stderr


def test_pachyderm_clients_get_the_error_when_batching_is_off(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"a": "1"})
    script = write_script(tmp_path / "p.py", """
        import sys
        from pachyderm_sdk import Client
        try:
            Client().worker.next_datum(error="")
        except Exception as exc:
            print("refused:", exc)
            sys.exit(0)
        sys.exit(1)
    """)
    spec = batching_spec("off", {"pfs": {"repo": "in", "glob": "/*"}}, [sys.executable,
                                                                         str(script)])
    spec["transform"]["datum_batching"] = False
    result = run_pfsmount(write_spec(tmp_path / "p.yaml", spec), data, mnt)
    assert result.returncode == 0, result
    assert "datum batching not enabled" in result.stdout

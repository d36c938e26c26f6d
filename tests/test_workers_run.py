"""N workers end to end: real mounts, one mount namespace and one /pfs per worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support import (
    batching_spec,
    datum_states,
    finish,
    is_mounted,
    needs_fuse,
    proc_survivors,
    read_tree,
    run_pfsmount,
    start_pfsmount,
    unmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse


def _pfs(repo: str, glob: str = "/*") -> dict:
    return {"pfs": {"repo": repo, "glob": glob}}


ISOLATION = """
    import os, sys, time
    from pfsmount import iter_datums
    mnt, session, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
    port = os.environ["PPS_WORKER_GRPC_PORT"]

    def check(name):
        assert os.listdir(mnt + "/in") == [name], (name, os.listdir(mnt + "/in"))
        env = open(mnt + "/.env").read()
        assert f"in={mnt}/in/{name}" in env.replace("'", ""), (name, env)
        assert os.listdir(mnt + "/out") == [], (name, os.listdir(mnt + "/out"))

    # The FUSE session's own mountpoint (every worker's root) is hidden in here.
    assert os.listdir(session) == [], os.listdir(session)
    for d in iter_datums():
        name = os.path.basename(dict(d.env)["in"])
        check(name)
        time.sleep(pause)
        check(name)
        with open(f"{mnt}/out/{name}", "w") as f:
            f.write(open(f"{mnt}/in/{name}").read())
        with open(os.path.join(os.environ["SEEN"], name), "w") as f:
            f.write(port)
"""


def test_four_workers_each_see_only_their_own_datum(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    names = [f"f{i:03d}" for i in range(500)]
    write_tree(data / "in", {n: n * 3 for n in names})
    seen = tmp_path / "seen"
    seen.mkdir()
    script = write_script(tmp_path / "iso.py", ISOLATION)
    session = data / ".pfsmount" / "iso" / "run" / "mnt"
    spec = write_spec(tmp_path / "p.yaml", {
        **batching_spec("iso", _pfs("in"), ["python3", str(script), str(mnt), str(session),
                                            "0.003"]),
        "parallelism_spec": {"constant": 4}})
    result = run_pfsmount(spec, data, mnt, timeout=120, env={"SEEN": str(seen)})
    assert result.returncode == 0, result
    assert "500 datums processed" in result.stderr
    assert "4 workers ran: " in result.stderr
    assert read_tree(data / "iso") == {n: (n * 3).encode() for n in names}
    ports = {(seen / n).read_text() for n in names}
    assert len(ports) == 4  # four workers, each with its own endpoint, all took datums
    assert not is_mounted(session) and not is_mounted(mnt)


FLAKY = """
    import os, sys
    from pfsmount import iter_datums
    marks = os.environ["MARKS"]
    for d in iter_datums():
        name = os.path.basename(dict(d.env)["in"])
        mnt = os.path.dirname(os.path.dirname(dict(d.env)["in"]))
        if name.startswith("bad"):
            sys.exit(3)  # every attempt: the process dies
        if name.startswith("flaky") and not os.path.exists(os.path.join(marks, name)):
            open(os.path.join(marks, name), "w").close()
            raise RuntimeError("flaky " + name)
        target = "same.txt" if name.startswith("same") else name
        with open(os.path.join(mnt, "out", target), "w") as f:
            f.write(name)
"""


def test_failures_on_several_workers_at_once(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    names = ["bad1", "bad2", "bad3", "flaky1", "flaky2", "flaky3", "same1", "same2",
             *[f"ok{i}" for i in range(8)]]
    write_tree(data / "in", {n: n for n in names})
    marks = tmp_path / "marks"
    marks.mkdir()
    script = write_script(tmp_path / "flaky.py", FLAKY)
    spec = write_spec(tmp_path / "p.yaml", {
        **batching_spec("fl", _pfs("in"), ["python3", str(script)]),
        "parallelism_spec": {"constant": 4}})
    result = run_pfsmount(spec, data, mnt, timeout=120, env={"MARKS": str(marks)})
    assert result.returncode == 1, result
    states = datum_states(data, "fl")
    for n in ("bad1", "bad2", "bad3"):
        assert states[f"/{n}"] == ("failed", 3), states
    for n in ("flaky1", "flaky2", "flaky3"):
        assert states[f"/{n}"] == ("success", 2), states
    same = sorted(states[f"/{n}"][0] for n in ("same1", "same2"))
    assert same == ["failed", "success"], states
    assert "same.txt" in result.stderr  # the conflict names the path (and both datums)
    out = read_tree(data / "fl")
    assert {k: v for k, v in out.items() if k != "same.txt"} == {
        n: n.encode() for n in names if n.startswith(("flaky", "ok"))}
    assert out["same.txt"] in (b"same1", b"same2")


SLOW = """
    import os, time
    from pfsmount import iter_datums
    for d in iter_datums():
        name = os.path.basename(dict(d.env)["in"])
        mnt = os.path.dirname(os.path.dirname(dict(d.env)["in"]))
        time.sleep(0.02)
        with open(os.path.join(mnt, "out", name), "w") as f:
            f.write(name * 2)
        with open(os.environ["RUNS"], "a") as f:
            f.write(name + "\\n")
"""


def test_kill_9_during_a_four_worker_job_then_resume(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    names = [f"d{i:03d}" for i in range(240)]
    write_tree(data / "in", {n: n for n in names})
    script = write_script(tmp_path / "slow.py", SLOW)
    marker = f"pfsmount-workers-kill-{os.getpid()}"
    spec = write_spec(tmp_path / "p.yaml", {
        **batching_spec("k", _pfs("in"), ["python3", str(script), marker]),
        "parallelism_spec": {"constant": 4}})
    runs = tmp_path / "runs.txt"
    proc = start_pfsmount(spec, data, mnt, env={"RUNS": str(runs)})
    ledger = data / ".pfsmount" / "k" / "ledger.sqlite"
    session = data / ".pfsmount" / "k" / "run" / "mnt"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ledger.exists() and runs.exists() and len(runs.read_text().split()) >= 60:
            try:
                done = sum(1 for s, _ in datum_states(data, "k").values() if s == "success")
            except Exception:  # the ledger may be mid-transaction, or have no job yet
                done = 0
            if done >= 40:
                break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc, mnt)
    committed = {p.lstrip("/") for p, (s, _) in datum_states(data, "k").items()
                 if s == "success"}
    assert 40 <= len(committed) < len(names)
    # auto_unmount acts once every holder of the FUSE fd is gone; under load that took over
    # 10 s once, so allow 30 s, and never leave the session mounted if the test fails.
    deadline = time.monotonic() + 30
    try:
        while (proc_survivors(marker) or is_mounted(session)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc_survivors(marker) == [] and not is_mounted(session)
    finally:
        unmount(session)
    runs.write_text("")
    result = run_pfsmount(spec, data, mnt, timeout=120, env={"RUNS": str(runs)})
    assert result.returncode == 0, result
    assert "resuming interrupted job" in result.stderr
    rerun = set(runs.read_text().split())
    assert not rerun & committed  # no datum that finished was run again
    assert read_tree(data / "k") == {n: (n * 2).encode() for n in names}


CLASSIC = """
    import os, sys, time
    name = os.path.basename(os.environ["in"])
    start = time.monotonic()
    time.sleep(0.3)
    with open(os.path.join(sys.argv[1], "out", name), "w") as f:
        f.write(f"{start} {time.monotonic()}")
"""


def test_classic_mode_runs_three_datum_processes_at_once(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    names = [f"c{i}" for i in range(9)]
    write_tree(data / "in", {n: n for n in names})
    script = write_script(tmp_path / "classic.py", CLASSIC)
    spec = write_spec(tmp_path / "p.yaml", {
        "pipeline": {"name": "cl"}, "input": _pfs("in"),
        "transform": {"cmd": ["python3", str(script), str(mnt)]},
        "parallelism_spec": {"constant": 1}})
    result = run_pfsmount(spec, data, mnt, timeout=120, extra=["--parallelism", "3"])
    assert result.returncode == 0, result
    spans = [tuple(map(float, v.split())) for v in read_tree(data / "cl").values()]
    assert len(spans) == 9
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 3, spans  # never more than N, and N at once at some point


def test_several_workers_without_namespaces_fail_up_front(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"a": "a"})
    spec = write_spec(tmp_path / "p.yaml", {
        **batching_spec("nons", _pfs("in"), ["true"]), "parallelism_spec": {"constant": 2}})
    # Root without CAP_SYS_ADMIN: no mount namespace can be made.
    result = subprocess.run(
        ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin",
         sys.executable, "-m", "pfsmount", "run", str(spec), "--data", str(data),
         "--mountpoint", str(mnt)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result
    assert "2 workers need a mount namespace each" in result.stderr
    assert "--parallelism 1" in result.stderr
    assert not (data / ".pfsmount" / "nons" / "ledger.sqlite").exists()  # nothing recorded


CROSS = """
    import os, subprocess, sys, time
    from pfsmount import iter_datums
    exch = os.environ["EXCH"]
    me = os.environ["PPS_WORKER_GRPC_PORT"]
    with open(os.path.join(exch, me), "w") as f:
        f.write(os.environ["PFSMOUNT_WORKER_SOCKET"])
    for d in iter_datums():
        deadline = time.time() + 30
        while len(os.listdir(exch)) < 2 and time.time() < deadline:
            time.sleep(0.02)
        (other,) = [p for p in os.listdir(exch) if p != me]
        sock = open(os.path.join(exch, other)).read()
        call = [sys.executable, "-c", "from pfsmount import next_datum; next_datum()"]
        base = {k: v for k, v in os.environ.items() if k != "PFSMOUNT_WORKER_SOCKET"}
        grpc = subprocess.run(call, env={**base, "PPS_WORKER_GRPC_PORT": other},
                              capture_output=True, text=True)
        local = subprocess.run(call, env={**os.environ, "PFSMOUNT_WORKER_SOCKET": sock},
                               capture_output=True, text=True)
        name = os.path.basename(dict(d.env)["in"])
        mnt = os.path.dirname(os.path.dirname(dict(d.env)["in"]))
        with open(os.path.join(mnt, "out", name), "w") as f:
            f.write(f"{grpc.returncode} {local.returncode}\\n{grpc.stderr}\\n{local.stderr}")
"""


def test_a_workers_endpoints_refuse_other_workers(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"x": "x", "y": "y"})
    exch = tmp_path / "exch"
    exch.mkdir()
    script = write_script(tmp_path / "cross.py", CROSS)
    spec = write_spec(tmp_path / "p.yaml", {
        **batching_spec("cross", _pfs("in"), ["python3", str(script)]),
        "parallelism_spec": {"constant": 2}})
    result = run_pfsmount(spec, data, mnt, timeout=120, env={"EXCH": str(exch)})
    assert result.returncode == 0, result
    assert "2 datums processed" in result.stderr
    for name, text in read_tree(data / "cross").items():
        codes, rest = text.decode().split("\n", 1)
        assert codes.split() == ["1", "1"], (name, text)  # both refused, neither moved a datum
        assert "PERMISSION_DENIED" in rest and "called NextDatum on the worker socket" in rest


TIMEOUT = """
    import os, time
    from pfsmount import iter_datums
    for d in iter_datums():
        path = dict(d.env)["in"]
        name = os.path.basename(path)
        if name == "slow":
            time.sleep(60)
        with open(os.path.join(os.path.dirname(os.path.dirname(path)), "out", name), "w") as f:
            f.write(name)
"""


def test_a_timeout_on_one_worker_runs_err_cmd_in_its_view(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    names = ["slow", *[f"ok{i}" for i in range(6)]]
    write_tree(data / "in", {n: n for n in names})
    seen = tmp_path / "seen"
    script = write_script(tmp_path / "t.py", TIMEOUT)
    spec = write_spec(tmp_path / "p.yaml", {
        **batching_spec("to", _pfs("in"), ["python3", str(script)],
                        err_cmd=["bash", "-c", f'echo "$(ls {mnt}/in) $in" >> {seen}; exit 1']),
        "parallelism_spec": {"constant": 3}, "datum_timeout": "1s", "datum_tries": 1})
    started = time.monotonic()
    result = run_pfsmount(spec, data, mnt, timeout=120)
    # Failed once in a full run, under load (rc 0 after ~30 s): the whole story if it recurs.
    assert result.returncode == 1, (result.stderr, datum_states(data, "to"))
    assert time.monotonic() - started < 30
    states = datum_states(data, "to")
    assert states["/slow"] == ("failed", 1), states
    assert all(states[f"/{n}"] == ("success", 1) for n in names[1:]), states
    assert "datum_timeout of 1s expired" in result.stderr
    # err_cmd ran once, in the failing worker's namespace: its /pfs showed the slow datum.
    assert seen.read_text() == f"slow {mnt}/in/slow\n"
    assert read_tree(data / "to") == {n: n.encode() for n in names[1:]}

"""N workers keep the single-worker guarantees: job_timeout, the end of Pachyderm clients,
skips. Real mounts, 3-4 workers each with its own /pfs."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from support import (
    batching_spec,
    datum_states,
    finish,
    needs_fuse,
    proc_survivors,
    read_tree,
    run_pfsmount,
    start_pfsmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse


def _pfs(repo: str, glob: str = "/*") -> dict:
    return {"pfs": {"repo": repo, "glob": glob}}


COPY = """
    import os, time
    from pfsmount import iter_datums
    for d in iter_datums():
        path = dict(d.env)["in"]
        name = os.path.basename(path)
        if name == "hang" and os.path.exists(os.environ["HANG"]):
            time.sleep(600)
        time.sleep(0.02)
        with open(os.path.join(os.path.dirname(os.path.dirname(path)), "out", name), "w") as f:
            f.write(open(path).read() + "!")
        with open(os.environ["RUNS"], "a") as f:
            f.write(name + "\\n")
"""


def _copy_job(tmp_path: Path, name: str, files: dict[str, str], workers: int,
              **extra: object) -> tuple[Path, Path, Path, Path]:
    data = tmp_path / "data"
    write_tree(data / "in", files)
    script = write_script(tmp_path / "copier.py", COPY)
    spec = write_spec(tmp_path / "p.yaml", {
        **batching_spec(name, _pfs("in"), ["python3", str(script)]),
        "parallelism_spec": {"constant": workers}, **extra})
    return data, spec, tmp_path / "hang", tmp_path / "runs.txt"


def test_job_timeout_with_three_workers_keeps_finished_datums(tmp_path: Path,
                                                              mnt: Path) -> None:
    names = ["hang", *[f"ok{i:02d}" for i in range(20)]]
    data, spec, hang, runs = _copy_job(tmp_path, "jt", {n: n for n in names}, 3,
                                       job_timeout="3s")
    hang.touch()
    env = {"HANG": str(hang), "RUNS": str(runs)}
    started = time.monotonic()
    first = run_pfsmount(spec, data, mnt, timeout=60, env=env)
    assert first.returncode == 124, str(first)
    assert time.monotonic() - started < 20, first
    assert "job_timeout of 3s expired" in first.stderr
    states = datum_states(data, "jt")
    done = {p.lstrip("/") for p, (s, _) in states.items() if s == "success"}
    assert done == set(names[1:]), states  # the other workers finished everything else
    assert read_tree(data / "jt") == {n: f"{n}!".encode() for n in done}

    hang.unlink()
    runs.write_text("")
    again = run_pfsmount(spec, data, mnt, timeout=60, env=env)
    assert again.returncode == 0, str(again)
    assert "resuming interrupted job" in again.stderr
    assert runs.read_text().split() == ["hang"]  # nothing finished was redone
    assert read_tree(data / "jt") == {n: f"{n}!".encode() for n in names}


SHELL_LOOP = """
    set -u
    [ "$IGNORE_TERM" = 1 ] && trap '' TERM
    sleep 1000 &
    while pachctl next datum; do
      source "$MNT/.env"
      cp "$in" "$MNT/out/$(basename "$in")"
    done
    echo "pachctl next datum returned after the last datum" >&2
"""

SDK = """
    import os, signal, subprocess, sys
    from pachyderm_sdk import batch_all_datums

    if os.environ["IGNORE_TERM"] == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "1000"])

    @batch_all_datums
    def main():
        path = os.environ["in"]
        with open("/pfs/out/" + os.path.basename(path), "w") as f:
            f.write(open(path).read())

    main()
    print("batch_all_datums returned after the last datum", file=sys.stderr)
"""


GRACE = 3.0  # the reaper's SIGTERM-to-SIGKILL grace, shortened for the test


def test_the_end_for_pachyderm_clients_on_four_workers(tmp_path: Path) -> None:
    """After the last datum every worker's process (and its children) is ended, a process
    ignoring SIGTERM by SIGKILL after the grace period; pfsmount exits 0, nothing survives."""
    names = [f"n{i:02d}" for i in range(12)]
    jobs = {}
    for kind in ("shell", "sdk"):
        for ignore in ("0", "1"):
            root = tmp_path / f"{kind}{ignore}"
            data = root / "data"
            write_tree(data / "in", {n: n for n in names})
            marker = f"pfsmount-more-{uuid.uuid4().hex}"
            if kind == "shell":
                script = write_script(root / "loop.sh", SHELL_LOOP)
                cmd, mnt, ns = ["bash", str(script), marker], root / "pfs", False
            else:
                script = write_script(root / "sdk.py", SDK)
                cmd, mnt, ns = ["python3", str(script), marker], Path("/pfs"), True
            spec = write_spec(root / "p.yaml", {
                **batching_spec("end", _pfs("in"), cmd, env={"MNT": str(mnt)}),
                "parallelism_spec": {"constant": 4}})
            env = {"IGNORE_TERM": ignore, "MARKER": marker,
                   "PFSMOUNT_REAPER_GRACE": str(GRACE)}
            proc = start_pfsmount(spec, data, mnt, namespace=ns, env=env)
            jobs[(kind, ignore)] = (proc, data, mnt, marker, time.monotonic())
    ended: dict[tuple[str, str], float] = {}
    deadline = time.monotonic() + 90
    while len(ended) < len(jobs) and time.monotonic() < deadline:
        for key, (proc, *_, started) in jobs.items():
            if key not in ended and proc.poll() is not None:
                ended[key] = time.monotonic() - started
        time.sleep(0.05)
    results = {key: (finish(proc, mnt, timeout=5), ended.get(key, 90.0))
               for key, (proc, _data, mnt, _marker, _started) in jobs.items()}
    for key, (result, took) in results.items():
        proc, data, _mnt, marker, _ = jobs[key]
        assert result.returncode == 0, (key, result)
        assert "12 datums processed" in result.stderr, (key, result)
        assert "4 workers ran: " in result.stderr, (key, result)
        assert read_tree(data / "end") == {n: n.encode() for n in names}, key
        # Pachyderm ends the process; its loop never sees "no more datums".
        assert "returned after the last datum" not in result.stderr, (key, result)
        assert proc_survivors(marker) == [], key
        if key[1] == "1":  # SIGTERM ignored: SIGKILLed, but only after the grace period
            assert took >= GRACE, (key, took)


def test_skips_and_one_changed_file_with_three_workers(tmp_path: Path, mnt: Path) -> None:
    names = [f"s{i:02d}" for i in range(15)]
    data, spec, hang, runs = _copy_job(tmp_path, "sk", {n: n for n in names}, 3)
    env = {"HANG": str(hang), "RUNS": str(runs)}
    first = run_pfsmount(spec, data, mnt, timeout=60, env=env)
    assert first.returncode == 0, str(first)
    assert sorted(runs.read_text().split()) == names

    runs.write_text("")
    second = run_pfsmount(spec, data, mnt, timeout=60, env=env)
    assert second.returncode == 0, str(second)
    assert "0 datums processed" in second.stderr, second
    assert runs.read_text() == ""
    assert set(datum_states(data, "sk").values()) == {("skipped", 0)}

    (data / "in" / "s07").write_text("changed")
    third = run_pfsmount(spec, data, mnt, timeout=60, env=env)
    assert third.returncode == 0, str(third)
    assert "1 datums processed" in third.stderr or "1 datum processed" in third.stderr, third
    assert runs.read_text().split() == ["s07"]
    states = datum_states(data, "sk")
    assert states["/s07"] == ("success", 1), states
    assert {v for k, v in states.items() if k != "/s07"} == {("skipped", 0)}, states
    assert read_tree(data / "sk") == {n: (("changed" if n == "s07" else n) + "!").encode()
                                      for n in names}


async def test_views_shown_out_of_allocation_order_stay_reachable(tmp_path: Path) -> None:
    """Regression: with N workers views are shown in the order workers take them, and an
    empty view (no inode) shares its base with the next view built; the view lookup
    bisected an unsorted list and lost the shown view (EROFS on /pfs/.env, ENOENT on
    /pfs/in: the datum ran with no input)."""
    import pyfuse3

    from pfsmount.datums import expand, open_repos
    from pfsmount.fs import PfsOperations
    from pfsmount.spec import PfsInput
    from pfsmount.view import build_view, empty_view

    ctx = pyfuse3.RequestContext()
    for name in ("a", "b", "c"):
        write_tree(tmp_path / "data" / "in", {f"{name}/f": name})
    spec_input = PfsInput(name="in", repo="in", glob="/*")
    repos = open_repos(spec_input, str(tmp_path / "data"))
    fs = PfsOperations(workers=3)
    datums = list(expand(spec_input, repos))
    fs.show(empty_view(fs.inodes), None, 2)  # worker 2 waits: an empty view at base b...
    a, b, c = (build_view(d, repos, b"K=V\n", fs.inodes) for d in datums)  # ...a at b too
    fs.show(c, None, 0)  # c before a and b: out of allocation order
    fs.show(a, None, 1)
    fs.show(b, None, 2)
    for worker, view in enumerate((c, a, b)):
        root = fs._workers[worker].inode
        env = await fs.lookup(root, b".env", ctx)
        assert env.st_ino in view
        await fs.release((await fs.open(env.st_ino, os.O_RDONLY, ctx)).fh)
        inp = await fs.lookup(root, b"in", ctx)
        listing = await fs.opendir(inp.st_ino, ctx)
        await fs.releasedir(listing.fh if isinstance(listing, pyfuse3.FileInfo) else listing)


PORTS = """
    import os
    import time
    from pfsmount import iter_datums
    for d in iter_datums():
        # Slow enough that one worker cannot take all 30 datums before the others start,
        # even on a loaded machine (it once did, and the test failed).
        time.sleep(0.2)
        reply = dict(d.env)
        name = os.path.basename(reply["in"])
        mnt = os.path.dirname(os.path.dirname(reply["in"]))
        lines = open(os.path.join(mnt, ".env")).read().splitlines()
        file_env = dict(line.split("=", 1) for line in lines)
        keys = [line.split("=", 1)[0] for line in lines]
        with open(os.path.join(mnt, "out", name), "w") as f:
            f.write(" ".join([os.environ["PPS_WORKER_GRPC_PORT"],
                              reply.get("PPS_WORKER_GRPC_PORT", "-"),
                              file_env.get("PPS_WORKER_GRPC_PORT", "-"), *keys[-5:]]))
"""


def test_each_datum_env_names_the_worker_that_took_it(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    names = [f"p{i:02d}" for i in range(30)]
    write_tree(data / "in", {n: n for n in names})
    script = write_script(tmp_path / "ports.py", PORTS)
    spec = write_spec(tmp_path / "p.yaml", {
        **batching_spec("ports", _pfs("in"), ["python3", str(script)]),
        "parallelism_spec": {"constant": 3}})
    result = run_pfsmount(spec, data, mnt, timeout=60)
    assert result.returncode == 0, str(result)
    seen = set()
    for name, text in read_tree(data / "ports").items():
        process, reply, env_file, *keys = text.decode().split()
        # Prepared before it was known which worker takes it, yet the reply and /pfs/.env
        # name the port of the worker that did, and the datum's own variables still end it.
        assert process.isdigit() and reply == process and env_file == process, (name, text)
        assert keys == ["in", "in_COMMIT", "PACH_DATUM_ID", "PACH_JOB_ID",
                        "PACH_OUTPUT_COMMIT_ID"], (name, keys)
        seen.add(process)
    assert len(seen) >= 2  # several workers took datums: the port is not one for all


def test_a_call_from_another_workers_process_is_refused_as_such(tmp_path: Path,
                                                                mnt: Path) -> None:
    from test_workers_run import CROSS  # each worker's process calls the other's endpoints

    data = tmp_path / "data"
    write_tree(data / "in", {"x": "x", "y": "y"})
    exch = tmp_path / "exch"
    exch.mkdir()
    script = write_script(tmp_path / "cross.py", CROSS)
    spec = write_spec(tmp_path / "p.yaml", {
        **batching_spec("cross", _pfs("in"), ["python3", str(script)]),
        "parallelism_spec": {"constant": 2}})
    result = run_pfsmount(spec, data, mnt, timeout=60, env={"EXCH": str(exch)})
    assert result.returncode == 0, str(result)
    for name, text in read_tree(data / "cross").items():
        codes, rest = text.decode().split("\n", 1)
        assert codes.split() == ["1", "1"], (name, text)
        # Both refusals (gRPC, then the local socket) say whose process it is.
        assert rest.count("belongs to another worker's user code") == 2, (name, text)
        assert "no process of this job" not in rest, (name, text)

"""Starting and always stopping what the benchmark runs: pfsmount, baselines, bindfs mounts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchlib.common import USERCODE, VENV_PY, BenchError, Context, say


class Janitor:
    """Every process and mount the benchmark starts, so that all of them go on any exit."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._mounts: list[Path] = []

    def spawn(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
              stdout: IO[bytes] | None = None, stderr: IO[bytes] | None = None
              ) -> subprocess.Popen[bytes]:
        """Start `cmd` in a session of its own, so its whole group can be stopped."""
        proc = subprocess.Popen(list(cmd), env=dict(env) if env else None, stdout=stdout,
                                stderr=stderr, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        self._procs.append(proc)
        return proc

    def done(self, proc: subprocess.Popen[bytes]) -> None:
        """`proc` ended by itself; nothing left to clean up."""
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
        """SIGTERM to the group (pfsmount then unmounts cleanly), SIGKILL after `grace`."""
        if proc.poll() is None:
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.done(proc)

    def run(self, cmd: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
            stdout: IO[bytes] | None = None) -> None:
        """Run `cmd` to completion like subprocess.run(check=True), but stoppable on Ctrl-C."""
        proc = self.spawn(cmd, env=env, stdout=stdout)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise BenchError(f"{' '.join(cmd)} took over {timeout:.0f}s") from None
        self.done(proc)
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}")

    def mount(self, cmd: Sequence[str], mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        self._mounts.append(mountpoint)
        subprocess.run(list(cmd), check=True, capture_output=True)

    def unmount(self, mountpoint: Path) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True,
                       check=False)
        with contextlib.suppress(ValueError):
            self._mounts.remove(mountpoint)

    def close(self) -> None:
        for proc in list(self._procs):
            self.stop(proc, grace=5.0)
        for mountpoint in list(self._mounts):
            self.unmount(mountpoint)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class PeakMemory:
    """Polls a process's VmHWM (its peak resident set) until it exits.

    VmHWM only grows, so the last value read before the process becomes a zombie is its peak,
    give or take what it allocated in its last poll interval (shutdown, which frees).
    """

    INTERVAL = 0.02

    def __init__(self, pid: int) -> None:
        self._path = f"/proc/{pid}/status"
        self._stop = threading.Event()
        self.peak_kb = 0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _vm_hwm_kb(self._path))
            self._stop.wait(self.INTERVAL)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _vm_hwm_kb(status_path: str) -> int:
    try:
        with open(status_path, encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Job:
    """One finished `pfsmount run`."""

    returncode: int
    seconds: float  # wall time of the whole command: start-up, datums, publish, unmount
    started_at: float  # time.time() just before it was started
    peak_rss_kb: int
    log: Path

    def stderr_tail(self, lines: int = 15) -> str:
        text = self.log.with_suffix(".err").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


def run_pfsmount(ctx: Context, name: str, spec: dict[str, Any],
                 stop: Callable[[], bool] | None = None,
                 env: Mapping[str, str] | None = None, *, data: str | None = None,
                 extra: Sequence[str] = ()) -> Job:
    """`pfsmount run` at /pfs in a private mount namespace; waits for it to end.

    `env` is added to the environment pfsmount is launched with (and user code inherits).

    With `stop`, pfsmount is stopped (SIGTERM, as Ctrl-C would) as soon as `stop()` is true,
    for measurements that need only part of a long job.
    """
    spec_path = ctx.path("specs", f"{name}.json")
    spec_path.write_text(json.dumps(spec, indent=1))
    log = ctx.path("logs", f"{name}.log")
    # A private namespace gives the real /pfs (pachyderm-sdk reads /pfs/.env) without touching
    # the host's; the mount dies with the namespace even if pfsmount is killed.
    cmd = ["unshare", "--mount", "--propagation", "private", str(VENV_PY), "-m", "pfsmount",
           "run", str(spec_path), "--data", data or str(ctx.data), "--mountpoint", "/pfs",
           *extra]
    with open(log.with_suffix(".out"), "wb") as out, open(log.with_suffix(".err"), "wb") as err:
        started_at = time.time()
        t0 = time.perf_counter()
        # `python3` in a cmd is the user's: here one with pachyderm-sdk, pfsmount's venv.
        path = os.pathsep.join([str(VENV_PY.parent), os.environ.get("PATH", os.defpath)])
        proc = ctx.janitor.spawn(cmd, env={**os.environ, **(env or {}), "PATH": path},
                                 stdout=out,
                                 stderr=err)
        memory = PeakMemory(proc.pid)
        try:
            _wait(ctx, proc, stop)
        except subprocess.TimeoutExpired:
            ctx.janitor.stop(proc)
            raise BenchError(f"{name}: pfsmount run took over {ctx.timeout:.0f}s "
                             f"(log: {log.with_suffix('.err')})") from None
        finally:
            memory.stop()
        seconds = time.perf_counter() - t0
    ctx.janitor.done(proc)
    return Job(proc.returncode, seconds, started_at, memory.peak_kb, log)


def _wait(ctx: Context, proc: subprocess.Popen[bytes], stop: Callable[[], bool] | None) -> None:
    if stop is None:
        proc.wait(ctx.timeout)
        return
    deadline = time.monotonic() + ctx.timeout
    while proc.poll() is None and not stop():
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, ctx.timeout)
        time.sleep(0.005)
    ctx.janitor.stop(proc)


def expect_exit(job: Job, name: str, code: int = 0) -> None:
    if job.returncode != code:
        raise BenchError(f"{name}: pfsmount run exited {job.returncode}, expected {code}:\n"
                         f"{job.stderr_tail()}")


def batching_spec(name: str, repo: str, glob: str, cmd: Sequence[str],
                  env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "pipeline": {"name": name},
        "input": {"pfs": {"repo": repo, "glob": glob}},
        "transform": {"cmd": list(cmd), "datum_batching": True, "env": dict(env)},
        # Every repetition must process every datum, not skip what the last one did.
        "reprocess_spec": "every_job",
    }


def run_direct(ctx: Context, name: str, args: Sequence[str]) -> dict[str, Any]:
    """A baseline: a user-code mode run directly by .venv's Python, without pfsmount."""
    result = fresh_result(ctx, name)
    env = {**os.environ, "BENCH_RESULT": str(result)}
    ctx.janitor.run([str(VENV_PY), USERCODE, *args], env=env, timeout=ctx.timeout)
    return read_result(result, name)


def fresh_dir(ctx: Context, name: str) -> Path:
    """An empty directory under the work directory (emptied if it exists)."""
    path = ctx.work / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def fresh_result(ctx: Context, name: str) -> Path:
    path = ctx.path("results", f"{name}.json")
    path.unlink(missing_ok=True)
    return path


def read_result(path: Path, name: str, job: Job | None = None) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        tail = f":\n{job.stderr_tail()}" if job else ""
        raise BenchError(f"{name}: the user code left no result{tail}") from None


def ensure_bindfs(ctx: Context) -> str | None:
    """None when bindfs can be used, else why not (installs it with apt-get if allowed)."""
    if shutil.which("bindfs"):
        return None
    if not ctx.install or os.geteuid() != 0:
        return "bindfs is not installed (apt-get install bindfs)"
    say("  installing bindfs with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "bindfs"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(install, env=env, capture_output=True)
    return None if shutil.which("bindfs") else "bindfs could not be installed with apt-get"


@contextlib.contextmanager
def bindfs(ctx: Context, source: Path) -> Iterator[Path]:
    """`source` mounted read-only through Debian's bindfs, with its default options."""
    mountpoint = ctx.work / "mnt" / "bindfs"
    ctx.janitor.mount(["bindfs", "-r", str(source), str(mountpoint)], mountpoint)
    try:
        yield mountpoint
    finally:
        ctx.janitor.unmount(mountpoint)

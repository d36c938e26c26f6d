"""`pfsmount run`: one job from spec to published output.

Wiring only: the mount, the gRPC endpoint, the user program and the datum loop are each
owned by their own module. This module decides the order in which they start and, more
importantly, stop: the user program first (while /pfs still answers, so nothing blocks in
the kernel), then the gRPC server, then the mount.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import pyfuse3
import trio

from pfsmount import mountinfo
from pfsmount.console import Console, plural
from pfsmount.datums import datum_hash
from pfsmount.epoch import Epoch
from pfsmount.fastpath import fast_path_possible
from pfsmount.fs import PfsOperations, no_open_possible, nonblocking_fuse_read, splice_possible
from pfsmount.fusewake import FuseReadWatchdog
from pfsmount.joblog import JobLog
from pfsmount.ledger import Ledger, LedgerError
from pfsmount.local import SocketDirError, private_dir, serve_local
from pfsmount.notify import KernelNotifier
from pfsmount.output import OutputRepo
from pfsmount.peers import JobPeers
from pfsmount.plan import DatumStream, Producer, begin_job
from pfsmount.preflight import StartError, check_mountpoint_outside, check_port, check_program
from pfsmount.protocol import WorkerServer
from pfsmount.sandbox import RunDir, Sandbox, absolute_paths, choose, probe_namespaces
from pfsmount.shardjob import (
    ForeignOutputs,
    LayoutError,
    check_layout,
)
from pfsmount.shards import Shard
from pfsmount.shims import NATIVE_PACHCTL, write_pachctl
from pfsmount.spec import PipelineSpec, SpecError
from pfsmount.store.base import RepoSource, StoreError
from pfsmount.supervisor import Supervisor, fmt_seconds
from pfsmount.usercode import lifeline
from pfsmount.wire import LOCAL_SOCKET_ENV
from pfsmount.worker import FINAL_STATES, Bridge, DatumLoop, DatumRecord, DatumState
from pfsmount.workspace import Workspace, WorkspaceBusy

log = logging.getLogger(__name__)

PORT_ENV = "PPS_WORKER_GRPC_PORT"
# Long enough to batch many fast datums into one sync, short enough that little is redone
# after a crash.
COMMIT_INTERVAL = 0.05
READ_AHEAD_KB = 1024


class RunError(Exception):
    """A job could not start; the message says why and what to do."""


@dataclass
class RunOptions:
    data_dir: str
    workdir: str | None = None  # where user code starts
    mountpoint: str = "/pfs"
    port: int = 0
    stop_grace: float = 10.0  # SIGTERM to SIGKILL when stopping user code
    exit_grace: float = 30.0  # time a pfsmount client gets to exit after "no more datums"
    shared_tmp: bool = False  # user code sees the machine's /tmp, not a private one
    parallelism: int | None = None  # workers; overrides the spec's parallelism_spec
    shard: Shard | None = None  # run only this shard's datums (`shards.py`)
    job_name: str | None = None  # the job id every shard of a job shares
    # s3://BUCKET[/PREFIX]: the output repo is PREFIX/<pipeline>/ there, and data_dir only
    # holds the local state (staging, the ledger's mirror of the bucket's records, logs).
    output_url: str | None = None


@dataclass
class JobReport:
    """How a job ended: counts over every datum of the job, including those a resumed job
    finished before its interruption, so a failure then still fails the job. Records are
    kept only of the troubled datums (FAILED or RECOVERED), for the summary."""

    job_id: str
    records: list[DatumRecord]  # this run's FAILED and RECOVERED datums
    seconds: float
    output_dir: str
    outcome: str  # "success", "failed" or "killed"
    problems: list[str] = field(default_factory=list)
    skipped: int = 0  # unchanged since they were processed
    earlier: list[DatumRecord] = field(default_factory=list)  # troubled, before the interruption
    restarts: int = 0  # times the user code was started again after dying
    input_bytes: int = 0  # read from the repos through /pfs: what laziness saved shows here
    input_files: int = 0  # distinct files opened
    stopped_by: str = ""  # why a killed job stopped: "SIGINT", "SIGTERM" or "job_timeout"
    # Per worker: (attempts it ran, seconds it held a datum).
    workers: list[tuple[int, float]] = field(default_factory=list)
    counts: dict[DatumState, int] = field(default_factory=dict)  # this run, by state
    earlier_counts: dict[DatumState, int] = field(default_factory=dict)
    listed: int = 0  # datums the listing produced (this run's share of the job)

    @property
    def resumed(self) -> int:
        return sum(self.earlier_counts.values())

    @property
    def ran(self) -> int:
        """Datums this run brought to a final state."""
        return sum(self.counts.get(s, 0) for s in FINAL_STATES)

    @property
    def unrun(self) -> int:
        """Datums listed for this run that did not end (a stopped job)."""
        return sum(n for s, n in self.counts.items() if s not in FINAL_STATES)

    def count(self, state: DatumState) -> int:
        return self.earlier_counts.get(state, 0) + self.counts.get(state, 0)

    def all_records(self) -> list[DatumRecord]:
        return self.earlier + self.records


def _other_workers_pids(sup: Supervisor, worker: int) -> list[int]:
    """The live user code of every worker but `worker` (for its peers' refusal message)."""
    own = set(sup.live_pids(worker))
    return [pid for pid in sup.live_pids() if pid not in own]


# ----- the mountpoint -------------------------------------------------------------------

def prepare_mountpoint(path: str) -> None:
    """Create the mountpoint, or explain why it cannot be used."""
    try:
        st = os.stat(path)
        if os.path.ismount(path):
            # A dead FUSE mount still answers stat from the kernel's attribute cache;
            # statfs always asks the file system, so it tells a dead one from a live one.
            os.statvfs(path)
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)
        return
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise RunError(f"mountpoint {path}: {exc.strerror}") from None
        _clear_stale_mount(path)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise RunError(f"mountpoint {path} is not a directory (choose another --mountpoint)")
    if os.path.ismount(path):
        raise RunError(
            f"mountpoint {path} is already a mount point (is another pfsmount running? "
            f"choose another --mountpoint, or unmount it with: fusermount3 -u {path})"
        )
    if os.listdir(path):
        raise RunError(
            f"mountpoint {path} is not empty; pfsmount mounts only over an empty directory so "
            "nothing is hidden (empty it, or choose another --mountpoint)"
        )


def _clear_stale_mount(path: str) -> None:
    kind = mountinfo.fstype(path)
    if kind != "fuse.pfsmount":
        raise RunError(
            f"mountpoint {path} is a dead FUSE mount ({kind or 'unknown type'}); "
            f"unmount it with: fusermount3 -u -z {path}"
        )
    log.warning("%s is left over from a pfsmount that died; unmounting it", path)
    subprocess.run(["fusermount3", "-u", "-z", path], check=False, capture_output=True)
    try:
        os.stat(path)
    except OSError as exc:
        raise RunError(
            f"mountpoint {path} is a dead pfsmount mount that could not be removed "
            f"({exc.strerror}); try: fusermount3 -u -z {path}"
        ) from None


def _clear_stale_session(path: str) -> None:
    """Unmount a worker session a killed run left at `path` (its run directory goes next)."""
    if mountinfo.fstype(path) == "fuse.pfsmount":
        log.warning("%s is left over from a pfsmount that died; unmounting it", path)
        subprocess.run(["fusermount3", "-u", "-z", path], check=False, capture_output=True)


def mount_options() -> set[str]:
    """FUSE options for /pfs: only pfsmount's own uid, which the user code runs as, may enter.

    Without `allow_other` the kernel refuses every other uid at the mount itself, so no other
    user of the machine can list /pfs, read `.env` or read input files. Hook for
    `transform.user` (not honoured yet): user code running as another uid needs
    `allow_other` *and* a root that admits that uid alone (owner = that uid, mode 0700),
    plus that uid in `JobPeers`.
    """
    # auto_unmount: fusermount3 stays behind and unmounts if we die, even by SIGKILL.
    return {"fsname=pfsmount", "subtype=pfsmount", "default_permissions", "auto_unmount"}


# ----- the user program's environment ----------------------------------------------------


def write_shims(bin_dir: str) -> None:
    """`pachctl` and `pfsmount` on the user code's PATH, bound to pfsmount's interpreter."""
    path = os.path.join(bin_dir, "pfsmount")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" -m pfsmount "$@"\n')
    os.chmod(path, 0o755)
    if not write_pachctl(bin_dir):
        log.info("the compiled pachctl shim %s is not built (scripts/setup builds it); shell "
                 "loops over `pachctl next datum` pay a Python start-up per datum",
                 NATIVE_PACHCTL)


def user_env(spec: PipelineSpec, port: int, rundir: RunDir, worker: int = 0) -> dict[str, str]:
    """The process environment of user code: ours, the spec's, the port and the shims.

    Only the shims go in front of PATH: `python3` in a cmd is whichever python3 the user's
    PATH finds, with the user's packages, never pfsmount's interpreter. pfsmount's client
    still imports there: PYTHONPATH gets, last, a directory holding only the `pfsmount`
    package (whose client needs nothing outside the standard library).
    """
    env = dict(os.environ)
    env.update(spec.transform.env)
    env[PORT_ENV] = str(port)
    env["PATH"] = os.pathsep.join([rundir.bin_dir, env.get("PATH", os.defpath)])
    # An empty entry would put the current directory on sys.path.
    env["PYTHONPATH"] = os.pathsep.join(
        [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p] + [rundir.python_dir])
    env[LOCAL_SOCKET_ENV] = rundir.worker_socket(worker)
    return env


# ----- the job ---------------------------------------------------------------------------


def lock_pipeline(workspace: Workspace) -> list[int]:
    """Hold the pipeline's lock for this process's life; two runs would corrupt each other.
    Returns the fds that hold it (a shard's own lock, and the pipeline's shared with the
    other shards)."""
    fds: list[int] = []
    try:
        if workspace.shard is not None:
            fds.append(workspace.lock_shared())
        fds.append(workspace.lock())
        check_layout(workspace)
    except (WorkspaceBusy, LayoutError) as exc:
        for fd in fds:
            os.close(fd)
        raise RunError(str(exc)) from None
    return fds


async def run_job(
    spec: PipelineSpec,
    repos: Mapping[str, RepoSource],
    datums: DatumStream,
    opts: RunOptions,
    console: Console,
    spec_hash: str = "",
) -> JobReport:
    """Mount /pfs, run the user code over every datum that needs it, commit as datums end."""
    workspace = Workspace.of(opts.data_dir, spec.location, opts.shard)
    lock_fds = lock_pipeline(workspace)
    try:
        return await _locked_job(spec, repos, datums, opts, console, spec_hash, workspace)
    finally:
        for fd in lock_fds:
            os.close(fd)


async def _locked_job(
    spec: PipelineSpec,
    repos: Mapping[str, RepoSource],
    datums: DatumStream,
    opts: RunOptions,
    console: Console,
    spec_hash: str,
    workspace: Workspace,
) -> JobReport:
    # Every refusal comes before the job is recorded: a refused run leaves the ledger as it
    # was (no phantom "running" job; an interrupted job stays resumable).
    try:
        preflight(spec, repos, opts)
    except StartError as exc:
        raise RunError(str(exc)) from None
    prepare_mountpoint(opts.mountpoint)
    workers = opts.parallelism or spec.parallelism
    if workers > 1:
        reason = await probe_namespaces()
        if reason is not None:
            raise RunError(
                f"{workers} workers need a mount namespace each, so that every worker sees its "
                f"own datum at {opts.mountpoint}, and this process cannot create one ({reason}); "
                "run pfsmount as root (or with CAP_SYS_ADMIN), or run one worker with "
                "--parallelism 1")
    try:
        ledger = Ledger(workspace.ledger_path)
    except LedgerError as exc:
        raise RunError(str(exc)) from None
    try:
        output = await trio.to_thread.run_sync(open_output, opts, workspace, ledger)
        plan = await trio.to_thread.run_sync(begin_job, spec, output, ledger, spec_hash,
                                             opts.job_name)
    except (LedgerError, SpecError, StoreError) as exc:
        ledger.close()
        raise RunError(str(exc)) from None
    if plan.resuming:
        failed = plan.earlier_counts.get(DatumState.FAILED, 0)
        console.info(f"resuming interrupted job {plan.job_id[:12]}: "
                     f"{plural(plan.resumed, 'datum')} already finished"
                     + (f", {failed} of them failed" if failed else ""))
    # A shard sees the other shards' outputs as files no datum of its own wrote.
    untracked = output.untracked() if workspace.shard is None else []
    if untracked:
        console.warn(f"{plural(len(untracked), 'file')} in {output.repo_dir} "
                     f"{'was' if len(untracked) == 1 else 'were'} not written by any "
                     f"datum (e.g. {untracked[0]}); they are left as they are")
    joblog = JobLog(opts.data_dir, spec.location, plan.job_id, workspace.logs_dir)
    output.publish_log(plan.job_id, joblog.lines_path, final=False)
    problems: list[str] = []
    # Output paths written by datums of two shards: found at the latest when the next run of
    # either starts, reported (and failing the job) as on one machine.
    shard_conflicts: list[str] = []
    if workspace.shard is not None:
        shard_conflicts = await trio.to_thread.run_sync(output.shard_conflicts)
        for conflict in shard_conflicts:
            console.error(conflict)
        problems += shard_conflicts
    rundir = workspace.run
    _clear_stale_session(rundir.fuse_dir)
    await trio.to_thread.run_sync(rundir.create, workers)
    sandbox = await choose(rundir, shared_tmp=opts.shared_tmp, needed=[
        opts.mountpoint, opts.workdir or os.getcwd(), rundir.root, rundir.socket_path,
        *absolute_paths(spec.transform.cmd), *absolute_paths(spec.transform.err_cmd)])
    sandbox = sandbox.with_pfs_alias(opts.mountpoint)
    started = time.monotonic()
    fs = PfsOperations(workers, no_open=no_open_possible(), splice=splice_possible(),
                       fast_path=fast_path_possible())
    # One worker: /pfs itself, as always. Several: one session with a root per worker, each
    # bound on /pfs in its worker's mount namespace (the session's own mountpoint is hidden).
    fuse_at = opts.mountpoint if workers == 1 else rundir.fuse_dir
    loop = DatumLoop(
        (), repos, fs, output, os.path.abspath(opts.mountpoint),
        tries=spec.datum_tries, datum_timeout=spec.datum_timeout,
        batching=spec.transform.datum_batching, workers=workers, listing=True,
        on_progress=lambda lp: console.progress(
            lp.closed_count, lp.count(DatumState.FAILED), sum(not w.idle for w in lp.workers),
            total=len(lp.queue), listing=not lp.queue.complete),
    )
    # The datum being hashed at its commit is still held by the queue: records are
    # released only after the flush that committed them.
    output.hasher = lambda datum_id: datum_hash(loop.queue.record(datum_id).datum, repos,
                                                spec.salt)
    producer = Producer(plan, spec, repos, datums, ledger, output, loop, shard=workspace.shard)
    try:
        pyfuse3.init(fs, fuse_at, mount_options())
        fs.notifier = notifier = KernelNotifier()
        fs.epoch = Epoch.probe()
        log.debug("root names of /pfs %s", "cached per datum (FUSE name epochs)"
                  if fs.epoch is not None else "uncached (no FUSE name epochs here)")
    except RuntimeError as exc:
        rundir.remove()
        _end_job(ledger, output, plan.job_id, "failed", f"cannot mount: {exc}")
        raise RunError(f"cannot mount FUSE at {opts.mountpoint}: {exc} "
                       "(is /dev/fuse present, and are you root?)") from None
    outcome = "failed"
    restarts = 0
    stopped_by = ""
    serving = trio.Event()
    # pfsmount's patched pyfuse3 reads /dev/fuse without blocking: nothing to watch for.
    wake = FuseReadWatchdog(lifeline()) if not nonblocking_fuse_read() else None
    try:
        async with trio.open_nursery() as fs_nursery:
            fs_nursery.start_soon(pyfuse3.main)
            fs_nursery.start_soon(_committer, loop, serving)
            loop.start_prefetching(fs_nursery)
            fs_nursery.start_soon(producer.run)
            fs_nursery.start_soon(_tune_read_ahead, fuse_at)
            try:
                write_shims(rundir.bin_dir)
                outcome, restarts, stopped_by = await _serve(spec, loop, opts, console, rundir,
                                                             sandbox, joblog, problems)
            finally:
                with trio.CancelScope(shield=True):
                    producer.stop()
                    serving.set()
                    # Datums that finished are kept, even when the job was interrupted.
                    await loop.flush()
                    await trio.to_thread.run_sync(notifier.close)
                    pyfuse3.terminate()
    except BaseExceptionGroup as group:
        refused = _only_run_error(group)
        if refused is None:
            raise
        # Found out only by trying (a port taken since the check): the job ends, saying why.
        console.end_progress()
        await trio.to_thread.run_sync(_end_job, ledger, output, plan.job_id, "failed",
                                      str(refused))
        ledger.close()
        joblog.close()
        await trio.to_thread.run_sync(functools.partial(
            output.publish_log, plan.job_id, joblog.lines_path, final=True))
        raise refused from None
    finally:
        if wake is not None:
            wake.close()
        fs.detach_fast_path()
        pyfuse3.close(unmount=True)
        await trio.to_thread.run_sync(rundir.remove)
    console.end_progress()
    if plan.problem:
        problems.append(plan.problem)
        if outcome == "success":
            outcome = "failed"  # the datums after the listing stopped never ran
    if not plan.complete:
        # Stopped before the listing ended: the total is what was listed (a resume lists
        # again and records the real one).
        await trio.to_thread.run_sync(ledger.set_total, plan.job_id, plan.listed)
    report = JobReport(
        job_id=plan.job_id, records=list(loop.queue.troubled),
        seconds=time.monotonic() - started,
        output_dir=output.repo_dir, outcome=outcome, problems=problems,
        input_bytes=fs.input_bytes, input_files=fs.input_files,
        restarts=restarts, skipped=plan.skipped + plan.earlier_skipped, earlier=plan.earlier,
        stopped_by=stopped_by, workers=[(w.attempts, w.busy_seconds) for w in loop.workers],
        counts={s: loop.queue.count(s) for s in DatumState}, earlier_counts=plan.earlier_counts,
        listed=plan.listed,
    )
    if workspace.shard is not None:
        later = await trio.to_thread.run_sync(output.shard_conflicts)
        shard_conflicts += [c for c in later if c not in shard_conflicts]
        report.problems += [c for c in later if c not in report.problems]
    if (report.count(DatumState.FAILED) or shard_conflicts) and report.outcome == "success":
        report.outcome = "failed"
    try:
        await trio.to_thread.run_sync(_end_job, ledger, output, plan.job_id, report.outcome,
                                      "; ".join(problems))
    except LedgerError as exc:
        # The job's row keeps saying "running": the next run resumes it and does again
        # only what the ledger does not record as done.
        report.problems.append(
            f"the ledger could not record the end of this job, so `pfsmount list-jobs` shows "
            f"it as running, with only the datums it could record ({exc}); the next run "
            "resumes it and runs the others again")
    ledger.close()
    joblog.close()
    await trio.to_thread.run_sync(functools.partial(
        output.publish_log, plan.job_id, joblog.lines_path, final=True))
    return report


def open_output(opts: RunOptions, workspace: Workspace, ledger: Ledger) -> OutputRepo:
    """The pipeline's output repo: beside the data, or in the bucket. A shard's commits,
    recovers and forgets only its own datums either way."""
    shard = workspace.shard
    if opts.output_url is None:
        return OutputRepo(opts.data_dir, workspace.pipeline, ledger, shard=shard,
                          foreign=ForeignOutputs(workspace) if shard else None)
    from pfsmount.s3output import S3OutputRepo

    return S3OutputRepo(opts.data_dir, workspace.pipeline, ledger, shard=shard,
                        location=opts.output_url)


def _end_job(ledger: Ledger, output: OutputRepo, job_id: str, state: str,
             message: str = "") -> None:
    ledger.end_job(job_id, state, message)
    job = ledger.job(job_id)
    if job is not None:
        output.publish_job(job)


def _only_run_error(group: BaseExceptionGroup) -> RunError | None:
    """The RunError a nursery wrapped, when that is all it holds."""
    match, rest = group.split(RunError)
    if match is None or rest is not None:
        return None
    while isinstance(match, BaseExceptionGroup):
        match = match.exceptions[0]
    return match if isinstance(match, RunError) else None


def preflight(spec: PipelineSpec, repos: Mapping[str, RepoSource], opts: RunOptions) -> None:
    """Refuse, with StartError, a run that could only fail later (see preflight.py)."""
    check_port(opts.port)
    check_mountpoint_outside(opts.mountpoint, opts.data_dir, spec.location, repos.keys())
    cwd = opts.workdir or os.getcwd()
    # The PATH the user code will get, with real shims in it, so `pachctl` resolves as then.
    with tempfile.TemporaryDirectory(prefix="pfsmount-check-") as scratch:
        shims = RunDir(scratch).bin_dir
        os.mkdir(shims)
        write_shims(shims)
        env = user_env(spec, opts.port, RunDir(scratch))
        check_program("transform.cmd", spec.transform.cmd, env, cwd, shims)
        check_program("transform.err_cmd", spec.transform.err_cmd, env, cwd, shims)


async def _serve(
    spec: PipelineSpec,
    loop: DatumLoop,
    opts: RunOptions,
    console: Console,
    rundir: RunDir,
    sandbox: Sandbox,
    joblog: JobLog,
    problems: list[str],
) -> tuple[str, int, str]:
    """Run the user code against the datum loop; returns the outcome, the restarts and
    what stopped a killed job ("SIGINT", "SIGTERM", "job_timeout"; else "")."""
    token = trio.lowlevel.current_trio_token()
    n = len(loop.workers)
    # Each worker has its own endpoints, and only its own user code may call them. It runs
    # as pfsmount's own uid today; a `transform.user` would pass its uid here (and mount
    # with allow_other, see mount_options).
    peers = [JobPeers(uid=os.getuid()) for _ in range(n)]
    servers: list[WorkerServer] = []
    envs: list[dict[str, str]] = []
    try:
        for w, worker in enumerate(loop.workers):
            server = WorkerServer(Bridge(worker, token), port=opts.port + w if opts.port else 0,
                                  peers=peers[w])
            servers.append(server)
            env = user_env(spec, server.start(), rundir, w)
            private_dir(os.path.dirname(env[LOCAL_SOCKET_ENV]))
            envs.append(env)
    except (OSError, SocketDirError) as exc:
        for server in servers:
            server.stop(grace=0)
        raise RunError(str(exc) if isinstance(exc, SocketDirError)
                       else exc.strerror or str(exc)) from None
    # What the workers share (a datum's env must not name worker 0's endpoints for all).
    env = envs[0] if n == 1 else {k: v for k, v in envs[0].items()
                                  if k not in (PORT_ENV, LOCAL_SOCKET_ENV)}
    if n > 1:
        for worker, worker_env in zip(loop.workers, envs, strict=True):
            worker.own_env = ((PORT_ENV, worker_env[PORT_ENV]),)
    mountpoint = os.path.abspath(opts.mountpoint) if n > 1 else None
    sup = Supervisor(loop, spec, console, joblog, env, workdir=opts.workdir,
                     stop_grace=opts.stop_grace, exit_grace=opts.exit_grace, problems=problems,
                     worker_envs=envs,
                     worker_sandboxes=[sandbox.for_worker(rundir, w, mountpoint)
                                       for w in range(n)])
    for w in range(n):
        peers[w].follow(functools.partial(sup.live_pids, w),
                        others=functools.partial(_other_workers_pids, sup, w))
    console.start_progress(None, n)  # the total is known once the listing ends
    interrupted: list[str] = []
    outcome = "killed"
    stopped_by = ""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, nursery.cancel_scope, interrupted)
            for w, worker in enumerate(loop.workers):
                await nursery.start(serve_local, envs[w][LOCAL_SOCKET_ENV], worker, peers[w])
            with trio.move_on_after(spec.job_timeout or math.inf) as job_scope:
                outcome = await sup.run()
            if job_scope.cancelled_caught:
                outcome = "killed"
                stopped_by = "job_timeout"
                problems.append(f"job_timeout of {fmt_seconds(spec.job_timeout or 0)} expired; "
                                "the job was stopped")
            nursery.cancel_scope.cancel()
        if interrupted:
            outcome = "killed"
            stopped_by = interrupted[0]
            problems.append(f"interrupted by {interrupted[0]}")
    finally:
        with trio.CancelScope(shield=True):
            loop.close()
            await sup.stop_all()
            if outcome == "killed":
                await loop.abort("the job was stopped while this datum was running")
            for server in servers:
                server.stop(grace=0)
    return outcome, sup.restarts, stopped_by


async def _tune_read_ahead(mountpoint: str) -> None:
    """Let the kernel read ahead 1 MiB on /pfs (the default is 128 KiB).

    Bigger read-ahead means bigger FUSE read requests, so fewer round trips per megabyte:
    measured in docs/benchmarks.md, served reads go from ~1.7 to ~3.3 GB/s. Only root may
    change it; anyone else keeps the default.
    """
    try:
        # stat() of the mount is answered by our own handlers: never on the trio thread.
        dev = (await trio.to_thread.run_sync(os.stat, mountpoint)).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        await trio.to_thread.run_sync(_write_text, path, str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("keeping the default read-ahead on %s: %s", mountpoint, exc)


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


async def _committer(loop: DatumLoop, done: trio.Event) -> None:
    """Group-commit ended datums every COMMIT_INTERVAL seconds until `done`."""
    while not done.is_set():
        with trio.move_on_after(COMMIT_INTERVAL):
            await done.wait()
        if not done.is_set():
            await loop.flush()


async def _watch_signals(scope: trio.CancelScope, interrupted: list[str]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            interrupted.append(signal.Signals(signum).name)
            scope.cancel()
            return

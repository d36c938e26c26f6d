"""`pfsmount run SPEC...` over a DAG, `--watch`, and `pfsmount dag`: the DAG's console side.

Every step runs through `cli.run_pipeline`, the same code as a one-pipeline `pfsmount run`,
so a step keeps all of that command's guarantees and messages; this module only says which
step runs, why a step did not, and how the DAG as a whole ended.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from pfsmount.console import Console, plural
from pfsmount.dag import (
    EXIT_SIGNALLED,
    NOT_RUN,
    SUCCEEDED,
    Dag,
    DagError,
    DagReport,
    Step,
    StepResult,
    build_dag,
    run_dag,
)
from pfsmount.spec import SpecDocument, SpecError, load_specs

if TYPE_CHECKING:
    from pfsmount.watch import Watcher

# The exit codes of a DAG run (README, "DAGs of pipelines"): a signal wins (130, 143), then
# any step that did not succeed; 2 only when the DAG was refused before anything ran.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def run_dag_command(docs: Sequence[SpecDocument], data_dir: str, args: argparse.Namespace,
                    console: Console) -> int:
    """Check the DAG, run it, and with `--watch` keep it up to date until Ctrl-C."""
    from pfsmount.store.base import StoreError

    try:
        dag = build_dag(docs, data_dir)
    except (DagError, StoreError) as exc:
        for line in str(exc).splitlines():
            console.error(line)
        return EXIT_USAGE
    watcher = None
    if args.watch:
        from pfsmount.watch import WatchError, open_watcher

        try:
            # Opened before the first round, so data that lands meanwhile is not missed.
            watcher = open_watcher(data_dir, dag.data_repos, poll=args.poll_interval)
        except WatchError as exc:
            console.error(str(exc))
            return EXIT_USAGE
    try:
        status = _round(dag, data_dir, args, console, only=None)
        if watcher is None or status in EXIT_SIGNALLED:
            return status
        return _watch(dag, watcher, data_dir, args, console, status)
    finally:
        if watcher is not None:
            watcher.close()


def _watch(dag: Dag, watcher: Watcher, data_dir: str, args: argparse.Namespace,
           console: Console, status: int) -> int:
    """Re-run what changed data affects until Ctrl-C (or SIGTERM); the last round's status."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while True:
            console.info(f"watching {', '.join(dag.data_repos)} ({watcher.how}) for new or "
                         "changed files; Ctrl-C to stop")
            changed = watcher.wait()
            affected = dag.affected_by(changed)
            console.info(f"{', '.join(sorted(changed))} changed: running "
                         f"{', '.join(s.location for s in dag.steps if s.location in affected)}")
            signal.signal(signal.SIGTERM, previous)
            status = _round(dag, data_dir, args, console, only=affected)
            signal.signal(signal.SIGTERM, _raise_interrupt)
            if status in EXIT_SIGNALLED:
                return status
    except KeyboardInterrupt:
        console.info("stopped watching")
        return status
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _round(dag: Dag, data_dir: str, args: argparse.Namespace, console: Console,
           only: set[str] | None) -> int:
    """One pass over the DAG (or the `only` steps); prints a summary per step."""
    from pfsmount.cli import _state_dir, run_pipeline

    chosen = [s for s in dag.steps if only is None or s.location in only]
    # Each step's run has just mirrored its bucket's records into the local ledger.
    ledgers = _state_dir(args, console) or data_dir
    jobs = step_slots(args, console, len(chosen))
    children = _Children(dag, data_dir, args, console) if jobs > 1 else None
    # Steps side by side print from several threads: one line at a time.
    printing = children.lock if children is not None else contextlib.nullcontext()
    lines: dict[str, str] = {}

    def run_step(step: Step) -> int:
        index = chosen.index(step) + 1
        with printing:
            console.info(f"step {index}/{len(chosen)}: {step.location} ({step.doc.path})")
        started = time.monotonic()
        if children is None:
            code = run_pipeline(step.doc, data_dir, args, console)
        else:
            code = children.run(step)
        lines[step.location] = (f"{last_job(ledgers, step.location)} "
                                f"(exit {code}, {time.monotonic() - started:.1f}s)")
        return code

    def not_run(result: StepResult) -> None:
        with printing:
            console.warn(f"step {result.location}: not run: {result.reason}")

    try:
        report = run_dag(dag, run_step, only=only, on_skip=not_run, jobs=jobs,
                         on_interrupt=children.interrupt if children else None)
    finally:
        if children is not None:
            children.close()
    return _summary(report, lines, console)


def step_slots(args: argparse.Namespace, console: Console, steps: int) -> int:
    """How many steps may run at once: `--jobs`, else half the CPUs (each step's job has
    its own user code and threads to feed), 1 for one step. More than one needs a mount
    namespace per step (root), so every step sees its own /pfs at the same path, and
    distinct ports."""
    wanted = args.jobs or max(1, (os.cpu_count() or 1) // 2)
    wanted = min(wanted, steps)
    if wanted > 1 and os.geteuid() != 0:
        if args.jobs:
            console.warn("--jobs: steps run one at a time: running several needs a mount "
                         "namespace per step, which only root may create")
        return 1
    if wanted > 1 and args.port:
        if args.jobs:
            console.warn(f"--jobs: steps run one at a time: they would all listen on --port "
                         f"{args.port} (drop --port to let each step choose one)")
        return 1
    return wanted


class _Children:
    """Steps run as child `pfsmount run --dag-step` processes, each in a mount namespace of
    its own, their output passed through here with the step's name in front.

    Each child holds the read end of a pipe whose write end only this process holds: when
    this process dies, even by SIGKILL, the children see EOF and stop their jobs cleanly.
    """

    def __init__(self, dag: Dag, data_dir: str, args: argparse.Namespace,
                 console: Console) -> None:
        self.console = console
        self.lock = threading.Lock()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.interrupted: set[str] = set()
        self.lifeline_r, self.lifeline_w = os.pipe2(os.O_CLOEXEC)
        paths = list(dict.fromkeys(s.doc.path for s in dag.steps))
        self.base = [sys.executable, "-m", "pfsmount", "run", *paths, "--data", data_dir,
                     "--mountpoint", os.path.abspath(args.mountpoint),
                     "--lifeline", str(self.lifeline_r)]
        if args.shared_tmp:
            self.base.append("--shared-tmp")
        if args.state_dir:
            self.base += ["--state-dir", args.state_dir]
        if args.parallelism:
            self.base += ["--parallelism", str(args.parallelism)]
        if getattr(args, "cache_dir", None) is not None:
            self.base += ["--cache-dir", os.path.abspath(args.cache_dir)]
        if getattr(args, "cache_size", None) is not None:
            self.base += ["--cache-size", str(args.cache_size)]
        if args.verbose:
            self.base.append("--verbose")

    def run(self, step: Step) -> int:
        # A session of its own: a Ctrl-C at the terminal reaches this process only, which
        # passes it on once (a second SIGINT would cut short a step's orderly stop).
        proc = subprocess.Popen([*self.base, "--dag-step", step.location],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(self.lifeline_r,), start_new_session=True)
        with self.lock:
            self.procs[step.location] = proc
        pumps = [threading.Thread(target=self._pump, args=(step.location, pipe, stream),
                                  daemon=True)
                 for pipe, stream in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
        for pump in pumps:
            pump.start()
        code = proc.wait()
        for pump in pumps:
            pump.join()
        with self.lock:
            del self.procs[step.location]
        return code

    def _pump(self, location: str, pipe, stream: str) -> None:
        for line in pipe:
            with self.lock:
                self.console.user_line(stream, f"[{location}] ".encode()
                                       + line.rstrip(b"\n"))
        pipe.close()

    def interrupt(self) -> None:
        """Ctrl-C: each running step stops its job (as on its own terminal), then ends."""
        with self.lock:
            for location, proc in self.procs.items():
                if location not in self.interrupted:
                    self.interrupted.add(location)
                    proc.send_signal(signal.SIGINT)

    def close(self) -> None:
        os.close(self.lifeline_w)
        os.close(self.lifeline_r)


def start_step_child(args: argparse.Namespace) -> None:
    """In a `--dag-step` child: a mount namespace of its own (so /pfs at the same path as the
    other steps' is ours alone), and a watch on the parent's lifeline."""
    from pfsmount.dagns import private_mounts

    private_mounts()
    if args.lifeline is not None:
        fd = args.lifeline

        def watch() -> None:
            while os.read(fd, 1):
                pass
            # The DAG's process is gone: stop this job as SIGTERM does (finished datums kept).
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, daemon=True, name="lifeline").start()


def _summary(report: DagReport, lines: dict[str, str], console: Console) -> int:
    width = max((len(r.location) for r in report.results), default=0)
    ok = sum(1 for r in report.results if r.outcome == SUCCEEDED)
    console.info(f"DAG: {ok} of {plural(len(report.results), 'step')} succeeded")
    for r in report.results:
        detail = r.reason if r.outcome == NOT_RUN else lines.get(r.location, "")
        console.info(f"  {r.location:{width}}  {r.outcome}" + (f": {detail}" if detail else ""))
    stop = report.interrupted
    if stop is not None:
        return stop.exit_code
    return EXIT_OK if report.ok else EXIT_FAILED


# ----- pfsmount dag ------------------------------------------------------------------------


def cmd_dag(args: argparse.Namespace, console: Console) -> int:
    from pfsmount.cli import _check_data_dir, _data_location, _output_url, _state_dir
    from pfsmount.store.base import StoreError

    data_dir = _data_location(args)
    ledgers = _state_dir(args, console)
    if ledgers is None or not _check_data_dir(data_dir, console):
        return EXIT_USAGE
    try:
        dag = build_dag(load_specs(args.spec), data_dir)
    except (SpecError, StoreError) as exc:
        for line in str(exc).splitlines():
            console.error(line)
        return EXIT_USAGE
    url = _output_url(args)
    states = {s.location: last_job(ledgers, s.location, bucket=url) for s in dag.steps}
    (print_dot if args.dot else print_text)(dag, states, sys.stdout)
    return EXIT_OK


def last_job(data_dir: str, location: str, bucket: str | None = None) -> str:
    """The pipeline's last recorded job, in a few words ("never run" without a ledger).

    `data_dir` holds the ledgers (every shard's, when the pipeline ran as shards); with
    `bucket` (S3 outputs) they are first made to mirror the bucket's records, which any
    machine may have written.
    """
    from pfsmount.jobview import JobRecords, has_records
    from pfsmount.ledger import LedgerError
    from pfsmount.store.base import StoreError

    if bucket is not None:
        from pfsmount.s3output import bucket_view

        try:
            data_dir = bucket_view(bucket, data_dir, location)
        except (StoreError, LedgerError, OSError) as exc:
            return f"records unreadable ({exc})"
    if not has_records(data_dir, location):
        return "never run"
    try:
        ledger = JobRecords(data_dir, location)
    except LedgerError as exc:
        return f"ledger unreadable ({exc})"
    try:
        jobs = ledger.jobs()
    finally:
        ledger.close()
    if not jobs:
        return "never run"
    j = jobs[-1]
    return (f"job {j['job_id'][:12]} {j['state']}: {j['processed']} processed, "
            f"{j['skipped']} skipped, {j['failed']} failed")


def print_text(dag: Dag, states: dict[str, str], out: TextIO) -> None:
    for repo in dag.data_repos:
        out.write(f"{repo}  (data repo)\n")
    for s in dag.steps:
        reads = ", ".join([*s.data_repos, *s.upstream])
        out.write(f"{s.location}  <- {reads}  [{states.get(s.location, '')}]\n")


def print_dot(dag: Dag, states: dict[str, str], out: TextIO) -> None:
    out.write("digraph pfsmount {\n  rankdir=LR;\n")
    for repo in dag.data_repos:
        out.write(f"  {_quote(repo)} [shape=cylinder];\n")
    for s in dag.steps:
        label = f'"{_escape(s.location)}\\n{_escape(states.get(s.location, ""))}"'
        out.write(f"  {_quote(s.location)} [shape=box, label={label}];\n")
        for source in (*s.data_repos, *s.upstream):
            out.write(f"  {_quote(source)} -> {_quote(s.location)};\n")
    out.write("}\n")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _quote(text: str) -> str:
    return f'"{_escape(text)}"'

"""Pipelines chained into a DAG: built from specs, checked, ordered and run step by step.

A pipeline's output repo is the input repo of the same name (and project) downstream, as in
Pachyderm, so the edges come from names alone. The graph is checked before anything runs:
two pipelines with one name, a cycle, a pipeline whose output would land in a data repo that
no pipeline wrote, and an input repo that is neither a pipeline of the DAG nor a directory in
the data directory are refused, each naming the specs involved.

Running is a walk in dependency order that asks a `StepRunner` to run one pipeline; a step
that fails stops its descendants, other branches carry on. Independent steps may run at the
same time (`jobs`); how a step runs (in this process, or in a child process with a mount
namespace of its own) is the runner's business.
"""

from __future__ import annotations

import difflib
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from pfsmount.datums import pfs_fields
from pfsmount.spec import PipelineSpec, SpecDocument, SpecError
from pfsmount.store import is_remote

log = logging.getLogger(__name__)

# How a step ended, as the DAG sees it.
SUCCEEDED = "succeeded"
FAILED = "failed"
INTERRUPTED = "interrupted"
NOT_RUN = "not run"


class DagError(SpecError):
    """A set of specs that do not form a runnable DAG; the message names the specs."""


@dataclass(frozen=True)
class Step:
    """One pipeline of the DAG."""

    doc: SpecDocument
    upstream: tuple[str, ...]  # locations of the DAG's pipelines whose output it reads
    data_repos: tuple[str, ...]  # repo keys it reads straight from the data directory

    @property
    def spec(self) -> PipelineSpec:
        return self.doc.spec

    @property
    def location(self) -> str:
        return self.doc.spec.location


@dataclass(frozen=True)
class Dag:
    """The pipelines in dependency order (spec order among independent ones)."""

    steps: tuple[Step, ...]

    def step(self, location: str) -> Step:
        return next(s for s in self.steps if s.location == location)

    @property
    def data_repos(self) -> tuple[str, ...]:
        """Every repo the DAG reads that no pipeline of it writes: what `--watch` watches."""
        seen: dict[str, None] = {}
        for s in self.steps:
            seen.update(dict.fromkeys(s.data_repos))
        return tuple(seen)

    def affected_by(self, repos: Iterable[str]) -> set[str]:
        """The pipelines that read any of `repos`, and everything downstream of them."""
        changed = set(repos)
        hit: set[str] = set()
        for s in self.steps:  # dependency order: an upstream step is decided first
            if changed & set(s.data_repos) or hit & set(s.upstream):
                hit.add(s.location)
        return hit


def build_dag(docs: Sequence[SpecDocument], data_dir: str) -> Dag:
    """Check `docs` and order them; raises DagError naming the specs at fault."""
    by_location: dict[str, SpecDocument] = {}
    for doc in docs:
        earlier = by_location.get(doc.spec.location)
        if earlier is not None:
            raise DagError(
                f"pipeline '{doc.spec.location}' is defined twice: in {_where(earlier)} and in "
                f"{_where(doc)}; rename one (a pipeline's name is its output repo's name)")
        by_location[doc.spec.location] = doc
    problems: list[str] = []
    steps: dict[str, Step] = {}
    read = {pfs.repo_key for doc in docs for _, pfs in pfs_fields(doc.spec.input, "input")}
    for location, doc in by_location.items():
        if location in read:
            _check_output_repo(doc, data_dir, problems)
        upstream: dict[str, None] = {}
        data: dict[str, None] = {}
        for where, pfs in pfs_fields(doc.spec.input, "input"):
            if pfs.repo_key in by_location:
                upstream[pfs.repo_key] = None
            elif _is_data_repo(data_dir, pfs.repo_key):
                data[pfs.repo_key] = None
            else:
                problems.append(_unknown_repo(doc, where, pfs.repo_key, by_location, data_dir))
        steps[location] = Step(doc, tuple(upstream), tuple(data))
    if problems:
        raise DagError("\n".join(problems))
    return Dag(tuple(steps[loc] for loc in _order(steps)))


def _where(doc: SpecDocument) -> str:
    """A spec as people find it: the file's path, and the document within it."""
    suffix = doc.spec.source[len(os.path.basename(doc.path)):]
    return f"{doc.path}{suffix}"


def _check_output_repo(doc: SpecDocument, data_dir: str, problems: list[str]) -> None:
    """A pipeline read by others may not be named like a data repo: which of the two its
    readers mean is anyone's guess, and its output would land among the repo's files."""
    location = doc.spec.location
    if is_remote(data_dir):
        from pfsmount.store.s3out import has_objects

        repo = f"{data_dir.rstrip('/')}/{location}/"
        ours = has_objects(data_dir, f".pfsmount/{location}/")
        empty = ours or not has_objects(data_dir, f"{location}/")
    else:
        from pfsmount.jobview import has_records

        repo = os.path.join(data_dir, location)
        ours = has_records(data_dir, location)  # a ledger, or its shards' ledgers
        if ours or not os.path.isdir(repo):
            return
        try:
            empty = not os.listdir(repo)
        except OSError:
            empty = False
    if not empty:
        problems.append(
            f"{_where(doc)}: pipeline.name: '{location}' is also a data repo ({repo} holds "
            "files that no pipeline wrote), and the DAG reads a repo of that name: rename the "
            "pipeline (and its readers' input repo)")


def _unknown_repo(doc: SpecDocument, where: str, repo: str, pipelines: Iterable[str],
                  data_dir: str) -> str:
    try:
        existing = [] if is_remote(data_dir) else [
            n for n in os.listdir(data_dir) if not n.startswith(".")]
    except OSError:
        existing = []
    close = difflib.get_close_matches(repo, [*pipelines, *existing], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return (f"{_where(doc)}: {where}.repo: '{repo}' is neither a pipeline of this DAG nor a "
            f"directory in {data_dir}{hint}; add the spec of the pipeline that makes it, or "
            "create the repo directory")


def _is_data_repo(data_dir: str, key: str) -> bool:
    """A repo directory locally; in a bucket, a prefix holding objects."""
    if is_remote(data_dir):
        from pfsmount.store.s3out import has_objects

        return has_objects(data_dir, f"{key}/")
    return os.path.isdir(os.path.join(data_dir, key))


def _order(steps: dict[str, Step]) -> list[str]:
    """Dependency order, keeping spec order among independent pipelines; refuses cycles."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = placed
    path: list[str] = []

    def visit(location: str) -> None:
        if state.get(location) == 2:
            return
        if state.get(location) == 1:
            cycle = [*path[path.index(location):], location]
            raise DagError(
                "the pipelines form a cycle: "
                + " -> ".join(f"{loc} ({_where(steps[loc].doc)})" for loc in cycle[:-1])
                + f" -> {location}; a pipeline cannot read its own output, directly or "
                "through others: rename an input repo or remove a spec")
        state[location] = 1
        path.append(location)
        for up in steps[location].upstream:
            visit(up)
        path.pop()
        state[location] = 2
        order.append(location)

    for location in steps:
        visit(location)
    return order


# ----- running ---------------------------------------------------------------------------


@dataclass
class StepResult:
    """How one step ended: the DAG's verdict, `pfsmount run`'s exit code for the step, and
    why it did not run."""

    location: str
    outcome: str
    exit_code: int = 0
    reason: str = ""


@dataclass
class DagReport:
    results: list[StepResult] = field(default_factory=list)

    @property
    def interrupted(self) -> StepResult | None:
        return next((r for r in self.results if r.outcome == INTERRUPTED), None)

    @property
    def ok(self) -> bool:
        return all(r.outcome == SUCCEEDED for r in self.results)


# Runs one pipeline and returns `pfsmount run`'s exit code for it.
StepRunner = Callable[[Step], int]

EXIT_OK = 0
EXIT_STOPPED = (124, 130, 143)  # job_timeout, SIGINT, SIGTERM: see cli.STOPPED_EXIT
EXIT_SIGNALLED = (130, 143)


def run_dag(dag: Dag, run_step: StepRunner, *, only: set[str] | None = None,
            on_skip: Callable[[StepResult], None] | None = None, jobs: int = 1,
            on_interrupt: Callable[[], None] | None = None) -> DagReport:
    """Run the DAG's steps (or those in `only`) in order; a failure stops its descendants.

    With `jobs` > 1, up to that many steps whose upstream steps all succeeded run at once,
    each `run_step` in a thread of its own (it is expected to wait for a child process); a
    Ctrl-C in the meantime calls `on_interrupt` and waits for the running steps to stop.
    With 1, each step runs on the calling thread, as signal handling in a job needs.
    A step stopped by a signal stops the whole DAG: the person asked everything to stop.
    """
    walk = _Walk(list(_selected(dag, only)), on_skip)
    if jobs <= 1:
        while (step := walk.next_ready()) is not None:
            walk.finish(step, run_step(step))
        return walk.report()
    finished: queue.Queue[tuple[Step, int]] = queue.Queue()
    running: list[Step] = []

    def run_in_thread(step: Step) -> None:
        try:
            code = run_step(step)
        except BaseException:
            log.exception("step %s could not run", step.location)
            code = 1
        finished.put((step, code))

    while True:
        while len(running) < jobs and (step := walk.next_ready(running)) is not None:
            running.append(step)
            threading.Thread(target=run_in_thread, args=(step,), daemon=True,
                             name=f"step-{step.location}").start()
        if not running:
            return walk.report()
        try:
            step, code = finished.get(timeout=0.5)
        except queue.Empty:
            continue
        except KeyboardInterrupt:
            walk.stopped = True
            if on_interrupt is not None:
                on_interrupt()
            continue
        running.remove(step)
        walk.finish(step, code)


class _Walk:
    """Which step may start next, and how each ended; the failure rules in one place."""

    def __init__(self, steps: list[Step], on_skip: Callable[[StepResult], None] | None) -> None:
        self.pending = steps
        self.order = [s.location for s in steps]
        self.results: dict[str, StepResult] = {}
        self.blocked: dict[str, str] = {}  # step -> the failed step upstream of it
        self.stopped = False
        self.on_skip = on_skip

    def next_ready(self, running: Sequence[Step] = ()) -> Step | None:
        """A step that may start now (removed from pending), after marking every step that
        never will; None when none may start yet."""
        busy = {s.location for s in running}
        for step in list(self.pending):
            cause = next((self.blocked[u] for u in step.upstream if u in self.blocked), None)
            if self.stopped or cause is not None:
                reason = ("interrupted before it started" if self.stopped
                          else f"upstream {cause} failed")
                self._record(StepResult(step.location, NOT_RUN, reason=reason))
                self.blocked[step.location] = cause or step.location
                self.pending.remove(step)
                if self.on_skip is not None:
                    self.on_skip(self.results[step.location])
                continue
            waiting = {s.location for s in self.pending} | busy
            if not waiting & set(step.upstream):
                self.pending.remove(step)
                return step
        return None

    def finish(self, step: Step, code: int) -> None:
        if code == EXIT_OK:
            self._record(StepResult(step.location, SUCCEEDED, code))
            return
        outcome = INTERRUPTED if code in EXIT_SIGNALLED else FAILED
        self._record(StepResult(step.location, outcome, code))
        self.blocked[step.location] = step.location
        if outcome == INTERRUPTED:
            self.stopped = True

    def _record(self, result: StepResult) -> None:
        self.results[result.location] = result

    def report(self) -> DagReport:
        return DagReport([self.results[loc] for loc in self.order if loc in self.results])


def _selected(dag: Dag, only: set[str] | None) -> Iterator[Step]:
    for step in dag.steps:
        if only is None or step.location in only:
            yield step

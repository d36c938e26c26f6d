"""Pipelines chained into a DAG: built from specs, checked, ordered and run step by step.

A pipeline's output repo is the input repo of the same name (and project) downstream, as in
Pachyderm, so the edges come from names alone. The graph is checked before anything runs:
two pipelines with one name, a cycle, a pipeline whose output would land in a data repo that
no pipeline wrote, and an input repo that is neither a pipeline of the DAG nor a directory in
the data directory are refused, each naming the specs involved.

Running is a walk in dependency order that asks a `StepRunner` to run one pipeline; a step
that fails stops its descendants, other branches carry on. Steps run one at a time: each
one's own job already uses the machine (its user code, pfsmount's threads), and pyfuse3
serves one mount per process, so a step is the unit of work.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from pfsmount.datums import pfs_fields
from pfsmount.spec import PipelineSpec, SpecDocument, SpecError

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
    for location, doc in by_location.items():
        _check_output_repo(doc, data_dir, problems)
        upstream: dict[str, None] = {}
        data: dict[str, None] = {}
        for where, pfs in pfs_fields(doc.spec.input, "input"):
            if pfs.repo_key in by_location:
                upstream[pfs.repo_key] = None
            elif os.path.isdir(os.path.join(data_dir, pfs.repo_key)):
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
    """A pipeline may not write into a data repo: its output replaces the repo's files."""
    location = doc.spec.location
    repo = os.path.join(data_dir, location)
    ours = os.path.exists(os.path.join(data_dir, ".pfsmount", location, "ledger.sqlite"))
    if ours or not os.path.isdir(repo):
        return
    try:
        empty = not os.listdir(repo)
    except OSError:
        empty = False
    if not empty:
        problems.append(
            f"{_where(doc)}: pipeline.name: '{location}' is also a data repo ({repo} holds "
            "files that no pipeline wrote); the pipeline's output would replace them: rename "
            "the pipeline")


def _unknown_repo(doc: SpecDocument, where: str, repo: str, pipelines: Iterable[str],
                  data_dir: str) -> str:
    try:
        existing = [n for n in os.listdir(data_dir) if not n.startswith(".")]
    except OSError:
        existing = []
    close = difflib.get_close_matches(repo, [*pipelines, *existing], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return (f"{_where(doc)}: {where}.repo: '{repo}' is neither a pipeline of this DAG nor a "
            f"directory in {data_dir}{hint}; add the spec of the pipeline that makes it, or "
            "create the repo directory")


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
            on_skip: Callable[[StepResult], None] | None = None) -> DagReport:
    """Run the DAG's steps (or those in `only`) in order; a failure stops its descendants.

    A step stopped by a signal stops the whole DAG: the person asked everything to stop.
    """
    report = DagReport()
    blocked: dict[str, str] = {}  # step -> the failed step upstream of it
    for step in _selected(dag, only):
        cause = next((blocked[u] for u in step.upstream if u in blocked), None)
        stop = report.interrupted
        if stop is not None or cause is not None:
            reason = ("interrupted before it started" if stop is not None
                      else f"upstream {cause} failed")
            result = StepResult(step.location, NOT_RUN, reason=reason)
            blocked[step.location] = cause or step.location
        else:
            code = run_step(step)
            if code == EXIT_OK:
                result = StepResult(step.location, SUCCEEDED, code)
            elif code in EXIT_SIGNALLED:
                result = StepResult(step.location, INTERRUPTED, code)
                blocked[step.location] = step.location
            else:
                result = StepResult(step.location, FAILED, code)
                blocked[step.location] = step.location
        report.results.append(result)
        if result.outcome == NOT_RUN and on_skip is not None:
            on_skip(result)
    return report


def _selected(dag: Dag, only: set[str] | None) -> Iterator[Step]:
    for step in dag.steps:
        if only is None or step.location in only:
            yield step

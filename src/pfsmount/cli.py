"""The `pfsmount` command line; everything it prints goes through one Console."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pfsmount import __version__
from pfsmount.console import Console, ConsoleLogHandler
from pfsmount.names import display, json_text

if TYPE_CHECKING:
    from pfsmount.datums import Datum, DatumInput
    from pfsmount.joblog import LogLine
    from pfsmount.spec import PipelineSpec, SpecDocument

# The exit codes of `pfsmount run`, documented in README.md ("Exit codes").
EXIT_OK = 0  # every datum succeeded (or was recovered by err_cmd)
EXIT_FAILED = 1  # the job ran, and some datum failed or the user code crash-looped
EXIT_USAGE = 2  # usage or start-up error: nothing ran
EXIT_JOB_TIMEOUT = 124  # job_timeout expired (as timeout(1) exits)
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2
EXIT_TERMINATED = 143  # SIGTERM: 128 + 15
STOPPED_EXIT = {"SIGINT": EXIT_INTERRUPTED, "SIGTERM": EXIT_TERMINATED,
                "job_timeout": EXIT_JOB_TIMEOUT}

log = logging.getLogger(__name__)


def _default_data_dir() -> str:
    return os.environ.get("PFSMOUNT_DATA", "./data")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pfsmount",
        description="Run Pachyderm-style datum-batching pipelines over a lazy FUSE /pfs.",
    )
    p.add_argument("--version", action="version", version=f"pfsmount {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a pipeline, or a DAG of pipelines, over their datums")
    run.add_argument("spec", nargs="+",
                     help="pipeline spec (YAML or JSON, Pachyderm's format); several specs, "
                          "files of several `---`-separated pipelines or directories of specs "
                          "run as one DAG")
    _data_arg(run)
    run.add_argument("--watch", action="store_true",
                     help="after the DAG is up to date, re-run what new or changed input data "
                          "affects, until Ctrl-C")
    run.add_argument("--poll-interval", type=_seconds, default=None, metavar="SECONDS",
                     help="with --watch: poll the input repos every SECONDS instead of using "
                          "inotify")
    run.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                     help="DAG steps that may run at the same time (default: half the CPUs; "
                          "1 unless root, as each then runs in a mount namespace of its own)")
    # How a DAG run starts one step in a child process (not for people).
    run.add_argument("--dag-step", default=None, help=argparse.SUPPRESS)
    run.add_argument("--lifeline", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--mountpoint", default="/pfs",
                     help="where to mount the datum view (default: /pfs)")
    run.add_argument("--port", type=_port, default=0,
                     help="gRPC port for NextDatum on 127.0.0.1 (default: a free one)")
    run.add_argument("--shared-tmp", action="store_true",
                     help="let user code use this machine's /tmp instead of a private one")
    run.add_argument("--parallelism", type=_workers, default=None, metavar="N",
                     help="run N workers side by side (overrides parallelism_spec)")
    run.add_argument("--shard", default=None, metavar="I/N",
                     help="run only shard I of N of the job's datums (I counted from 0; auto/N "
                          "takes I from $JOB_COMPLETION_INDEX, as in a Kubernetes Indexed Job; "
                          "default: $PFSMOUNT_SHARDS=N does the same)")
    run.add_argument("--job", default=None, metavar="NAME",
                     help="the job's name, shared by all its shards (default: $PFSMOUNT_JOB; "
                          "shards without one derive it from the spec and N)")
    run.add_argument("--cache-dir", default=None, metavar="DIR",
                     help="with s3:// data: also cache fetched object bytes in DIR (kept "
                          "across runs; default: memory only)")
    run.add_argument("--cache-size", type=_size, default=None, metavar="SIZE",
                     help="with s3:// data: the cache's bound, e.g. 512M or 4G: of --cache-dir "
                          "when given (default 2G), else of the memory cache (default 128M)")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    ls = sub.add_parser("list-datums", help="print the datums a pipeline would process")
    ls.add_argument("spec")
    _data_arg(ls)
    ls.add_argument("--json", action="store_true", help="one JSON record per line (JSON Lines)")
    ls.add_argument("--count", action="store_true", help="print only the number of datums")
    ls.add_argument("--job", default=None, metavar="JOB",
                    help="show each datum's state in this recorded job (id prefix)")

    lj = sub.add_parser("list-jobs", help="the recorded jobs of pipelines")
    lj.add_argument("pipeline", nargs="+",
                    help="pipeline spec files or directories (every pipeline in them), or "
                         "pipeline names")
    _data_arg(lj)

    ij = sub.add_parser("inspect-job", help="counts, timings and failures of one job")
    ij.add_argument("pipeline", nargs="+", metavar="PIPELINE [JOB]",
                    help="pipeline spec files or directories, or pipeline names; then, for one "
                         "pipeline, a job id (prefix); default: each pipeline's latest job")
    ij.add_argument("--job", default=None, help="job id (prefix) of the one pipeline")
    _data_arg(ij)

    dg = sub.add_parser("dag", help="print the DAG of pipelines and each one's last job")
    dg.add_argument("spec", nargs="+", help="pipeline spec files or directories of them")
    _data_arg(dg)
    dg.add_argument("--dot", action="store_true", help="Graphviz dot instead of text")

    lg = sub.add_parser("logs", help="show what the user code printed, per datum")
    lg.add_argument("pipeline", help="pipeline spec file, or pipeline name")
    _data_arg(lg)
    lg.add_argument("--job", default="", help="job id (prefix); default: the latest job")
    lg.add_argument("--datum", default="", help="only this datum (id prefix)")
    lg.add_argument("--failed", action="store_true", help="only failed or recovered datums")

    from pfsmount.k8scli import add_k8s_parser

    add_k8s_parser(sub)

    nd = sub.add_parser("next-datum",
                        help="(inside user code) finish this datum and wait for the next; "
                             "exit 0 = ready, 3 = no more datums, 1 = error")
    nd.add_argument("--error", default="", help="report the current datum as failed")
    return p


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a TCP port: use 1-65535, or 0 to let the system choose one")
    return port


def _size(text: str) -> int:
    from pfsmount.store.cache import parse_size

    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 1 << 20:
        raise argparse.ArgumentTypeError(f"{text!r} is too small for a cache: use 1M or more")
    return size


def _jobs(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of steps (1-64)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 < s <= 86400)")
    return value


def _workers(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers: use 1 or more")
    return int(text)


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, metavar="DIR",
                   help="directory holding one directory per repo, or s3://BUCKET[/PREFIX] "
                        "holding one prefix per repo (default: $PFSMOUNT_DATA or ./data)")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="with s3:// data: keep the output repo and job records in this local "
                        "directory instead of the bucket (default: $PFSMOUNT_OUTPUT_DIR)")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="with s3:// data: this machine's local state (staging, a cache of the "
                        "bucket's job records, logs; default: $PFSMOUNT_STATE_DIR or "
                        "~/.cache/pfsmount/s3/BUCKET/PREFIX); any machine may resume a job")


def _state_dir(args: argparse.Namespace, console: Console) -> str | None:
    """Where the ledger, staging and logs live, or None after printing why not.

    Local data keeps them (and the output repo) in the data directory, as always. S3 data
    writes its output repo and job records to the bucket and keeps only a local cache in
    the state directory, unless --output-dir keeps everything in a local directory.
    """
    from pfsmount.store import is_remote

    data = args.data or _default_data_dir()
    out = getattr(args, "output_dir", None) or os.environ.get("PFSMOUNT_OUTPUT_DIR")
    state = getattr(args, "state_dir", None) or os.environ.get("PFSMOUNT_STATE_DIR")
    if not is_remote(data):
        for flag in ("output_dir", "state_dir"):
            if getattr(args, flag, None):
                console.error(f"--{flag.replace('_', '-')} is only for s3:// data; with a "
                              "local --data DIR the output repo and its records are in DIR "
                              f"(drop --{flag.replace('_', '-')})")
                return None
        return os.path.abspath(data)
    if out:
        return os.path.abspath(out)
    if state:
        return os.path.abspath(state)
    from pfsmount.store.base import StoreError
    from pfsmount.store.s3 import parse_location

    try:
        where = parse_location(data)
    except StoreError as exc:
        console.error(str(exc))
        return None
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "pfsmount", "s3", where.bucket, where.prefix.rstrip("/"))


def _output_url(args: argparse.Namespace) -> str | None:
    """The s3:// location whose PREFIX/<pipeline>/ is the output repo, or None (local)."""
    from pfsmount.store import is_remote

    data = args.data or _default_data_dir()
    if not is_remote(data) or getattr(args, "output_dir", None) \
            or os.environ.get("PFSMOUNT_OUTPUT_DIR"):
        return None
    return data


def _configure_cache(args: argparse.Namespace, data: str, console: Console) -> bool:
    """Apply --cache-dir/--cache-size to the S3 reads of this process; False after printing
    why they cannot be used."""
    from pfsmount.store import is_remote

    cache_dir, cache_size = getattr(args, "cache_dir", None), getattr(args, "cache_size", None)
    if not is_remote(data):
        if cache_dir is not None or cache_size is not None:
            console.error("--cache-dir and --cache-size are for s3:// data; a local --data "
                          "directory is read directly (drop them)")
            return False
        return True
    from pfsmount.store.cache import CacheSettings
    from pfsmount.store.s3 import configure_cache

    configure_cache(CacheSettings.from_options(cache_dir, cache_size))
    return True


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["next-datum"]:
        # The hot path of shell loops: skip argparse setup of every other command.
        from pfsmount.shims import next_datum_main

        return next_datum_main(argv[1:])
    args = build_parser().parse_args(argv)  # exits 2, with one line, on bad usage
    for stream in (sys.stdout, sys.stderr):
        # Names are bytes and need not be UTF-8: printing one must never crash a command.
        # (They are escaped as \xff on the way; this is the net under that.)
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    console = Console()
    _setup_logging(console, verbose=getattr(args, "verbose", False))
    if args.command is None:
        build_parser().print_help(sys.stderr)
        return EXIT_USAGE
    from pfsmount.ledger import LedgerError

    try:
        if args.command == "run":
            return _cmd_run(args, console)
        if args.command == "list-datums":
            return _cmd_list_datums(args, console)
        if args.command == "logs":
            return _cmd_logs(args, console)
        if args.command == "list-jobs":
            return _cmd_list_jobs(args, console)
        if args.command == "inspect-job":
            return _cmd_inspect_job(args, console)
        if args.command == "k8s":
            from pfsmount.k8scli import cmd_k8s

            return cmd_k8s(args, console)
        if args.command == "dag":
            from pfsmount.dagcli import cmd_dag

            return cmd_dag(args, console)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except LedgerError as exc:
        # A damaged ledger can fail any query, not only opening it.
        console.error(str(exc))
        return EXIT_USAGE
    return EXIT_USAGE


def _setup_logging(console: Console, *, verbose: bool) -> None:
    handler = ConsoleLogHandler(console)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # pyfuse3 logs every ENOENT at debug level; noise unless asked for.
    logging.getLogger("pyfuse3").setLevel(logging.DEBUG if verbose else logging.WARNING)
    # botocore tells at info level where it found credentials: noise beside pfsmount's words.
    logging.getLogger("botocore").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _load(args: argparse.Namespace, console: Console):
    """Spec, repos and datums, or None after printing why not."""
    from pfsmount.spec import SpecError, load_spec

    data_dir = _data_location(args)
    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        console.error(str(exc))
        return None
    opened = _open(spec, data_dir, console)
    if opened is None:
        return None
    repos, datums = opened
    return spec, repos, datums, data_dir


def _data_location(args: argparse.Namespace) -> str:
    """Where the input repos are: an absolute directory, or s3://BUCKET[/PREFIX] as given."""
    from pfsmount.store import is_remote

    data = args.data or _default_data_dir()
    return data if is_remote(data) else os.path.abspath(data)


def _check_data_dir(data_dir: str, console: Console) -> bool:
    from pfsmount.store import is_remote

    if not is_remote(data_dir) and not os.path.isdir(data_dir):
        console.error(f"data directory {data_dir} does not exist (pass --data DIR, the directory "
                      "that holds one directory per repo, or set PFSMOUNT_DATA)")
        return False
    return True


def _open(spec: PipelineSpec, data_dir: str, console: Console):
    """Repos and datums of a loaded spec, or None after printing why not."""
    from pfsmount.datums import iter_datums, open_repos
    from pfsmount.spec import SpecError
    from pfsmount.store.local import StoreError

    for warning in spec.warnings:
        console.warn(warning)
    if not _check_data_dir(data_dir, console):
        return None
    try:
        repos = open_repos(spec.input, data_dir, source=spec.source)
    except (SpecError, StoreError) as exc:
        console.error(str(exc))
        return None
    # Datums stream while the repos are listed: nothing is expanded yet.
    return repos, iter_datums(spec.input, repos)


def _cmd_list_datums(args: argparse.Namespace, console: Console) -> int:
    loaded = _load(args, console)
    if loaded is None:
        return EXIT_USAGE
    from pfsmount.spec import SpecError
    from pfsmount.store.base import StoreError

    _spec, _repos, datums, _data = loaded
    try:
        return _print_datums(args, console, _spec, _repos, datums)
    except (SpecError, StoreError) as exc:
        # Found while streaming (a directory that cannot be listed, a bad join template).
        console.error(str(exc))
        return EXIT_USAGE


def _print_datums(args: argparse.Namespace, console: Console, _spec: PipelineSpec,
                  _repos: Mapping[str, Any], datums: Iterator[Datum]) -> int:
    if args.count:
        sys.stdout.write(f"{sum(1 for _ in datums)}\n")
        return EXIT_OK
    if args.job is not None:
        args.pipeline = args.spec
        found = _find_job(args, console, args.job)
        if found is None:
            return EXIT_USAGE
        ledger, job = found
    out = sys.stdout
    if args.job is None:
        from pfsmount.listing import print_datums

        try:
            print_datums(_spec, _repos, datums, as_json=args.json, out=out)
        except BrokenPipeError:
            # `pfsmount list-datums ... | head`: the reader left early; not an error.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    # The job's states are looked up per batch of listed datums (the primary key), never
    # loaded whole: a job may hold millions.
    while batch := list(itertools.islice(datums, 1000)):
        states = ledger.job_datum_states_of(job["job_id"], [d.id for d in batch])
        for d in batch:
            rec = states.get(d.id)
            if args.json:
                record = {"id": d.id, "inputs": [_json_input(i) for i in d.inputs]}
                if rec is not None:
                    record.update(state=rec[0], attempts=rec[1], error=rec[2])
                out.write(json.dumps(record) + "\n")
                continue
            out.write(f"{d.id}  {rec[0] if rec else 'not in job':10}  "
                      + "  ".join(f"{i.name}:{display(i.path)}" for i in d.inputs) + "\n")
        out.flush()
    return EXIT_OK


def _json_input(item: DatumInput) -> dict[str, Any]:
    record: dict[str, Any] = {"name": item.name, "repo": item.repo, "branch": item.branch}
    json_text(record, "path", item.path)
    return record


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    from pfsmount.spec import SpecError, load_specs

    if args.dag_step is not None:
        from pfsmount.dagcli import start_step_child
        from pfsmount.dagns import NamespaceError

        try:
            start_step_child(args)  # first: a mount namespace needs a process with one thread
        except NamespaceError as exc:
            console.error(str(exc))
            return EXIT_USAGE
    data_dir = _data_location(args)
    if not _configure_cache(args, data_dir, console):
        return EXIT_USAGE
    try:
        docs = load_specs(args.spec)
    except SpecError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    if args.dag_step is not None:
        docs = [d for d in docs if d.spec.location == args.dag_step]
        if len(docs) != 1:
            console.error(f"no pipeline '{args.dag_step}' in {' '.join(args.spec)}")
            return EXIT_USAGE
    if len(docs) == 1 and not args.watch:
        return run_pipeline(docs[0], data_dir, args, console)
    if args.shard is not None or args.job is not None or os.environ.get("PFSMOUNT_SHARDS"):
        console.error("--shard, $PFSMOUNT_SHARDS and --job run one pipeline's job; pass a "
                      "single pipeline spec (run each pipeline of a DAG as its own sharded job)")
        return EXIT_USAGE
    from pfsmount.dagcli import run_dag_command
    from pfsmount.store import is_remote

    if is_remote(data_dir) and _output_url(args) is None:
        # A step's output repo would land in the local --output-dir, where the next step,
        # reading s3://, would never find it.
        console.error(f"--data {data_dir}: a DAG (several pipelines, or --watch) reads each "
                      "step's output from the bucket; drop --output-dir (and "
                      "PFSMOUNT_OUTPUT_DIR) so outputs are written there")
        return EXIT_USAGE
    if not _check_data_dir(data_dir, console):
        return EXIT_USAGE
    return run_dag_command(docs, data_dir, args, console)


def run_pipeline(doc: SpecDocument, data_dir: str, args: argparse.Namespace,
                 console: Console) -> int:
    """One pipeline's job, from its loaded spec to its summary; `pfsmount run`'s exit code."""
    import trio

    from pfsmount.run import RunError, RunOptions, run_job
    from pfsmount.shards import ShardError, job_for, parse_shard

    spec = doc.spec
    state_dir = _state_dir(args, console)
    if state_dir is None or not _configure_cache(args, data_dir, console):
        return EXIT_USAGE
    try:
        # A DAG step's child never shards: its parent's environment must not make it one.
        shard = (parse_shard(getattr(args, "shard", None))
                 if getattr(args, "dag_step", None) is None else None)
        job_name = job_for(spec.location, doc.digest, shard, getattr(args, "job", None))
    except ShardError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    opened = _open(spec, data_dir, console)
    if opened is None:
        return EXIT_USAGE
    repos, _ = opened
    output_url = _output_url(args)
    if spec.location in repos and (state_dir == data_dir or output_url is not None):
        # Repos are keyed by their place under DATA, so this compares projects too.
        console.error(f"{spec.source}: pipeline.name: '{spec.name}' is also an input repo; the "
                      "output repo would overwrite it (rename the pipeline)")
        return EXIT_USAGE
    if output_url is not None:
        from pfsmount.s3output import check_writable
        from pfsmount.store.base import StoreError

        try:
            check_writable(output_url, spec.location)
        except StoreError as exc:
            console.error(str(exc))
            return EXIT_USAGE
    workdir = _workdir(doc.path, spec.transform.working_dir)
    if not os.path.isdir(workdir):
        console.error(f"{spec.source}: transform.working_dir: {workdir} is not a directory")
        return EXIT_USAGE
    opts = RunOptions(data_dir=state_dir, workdir=workdir,
                      mountpoint=os.path.abspath(args.mountpoint), port=args.port,
                      shared_tmp=args.shared_tmp, parallelism=args.parallelism,
                      shard=shard, job_name=job_name, output_url=output_url)
    console.info((f"shard {shard} of job {job_name} runs its share; " if shard else "")
                 + f"mounting {opts.mountpoint}; running {' '.join(spec.transform.cmd)} as "
                 "datums are listed")
    from pfsmount.datums import iter_datums

    def datums() -> Iterator[Datum]:
        # A fresh stream per call: the job lists once, plus once more to sweep vanished
        # datums when the ledger remembers some.
        return iter_datums(spec.input, repos)

    try:
        report = trio.run(run_job, spec, repos, datums, opts, console, doc.digest)
    except RunError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    if not report.listed and report.outcome == "success":
        console.warn("the input matched no datums; the output will be empty")
    return _summarize(report, console, doc.path)


def _fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _workdir(spec_path: str, working_dir: str | None) -> str:
    """Where user code starts: `working_dir`, relative to the spec's own directory.

    Off Kubernetes there is no image WORKDIR; the spec's directory plays that part, so a
    pipeline and its scripts can live side by side and run from anywhere.
    """
    spec_dir = os.path.dirname(os.path.abspath(spec_path))
    return os.path.normpath(os.path.join(spec_dir, working_dir or "."))


def _summarize(report, console: Console, spec_path: str) -> int:
    """The end-of-job lines and the exit code; every count covers the whole job, including
    the datums a resumed job finished before its interruption (as `list-jobs` does)."""
    from pfsmount.console import plural
    from pfsmount.worker import DatumState

    ok = report.count(DatumState.SUCCESS)
    failed = report.count(DatumState.FAILED)
    recovered = report.count(DatumState.RECOVERED)
    unrun = report.unrun
    ran = report.ran
    rate = ran / report.seconds if report.seconds > 0 else 0.0
    for problem in report.problems:
        console.error(problem)
    troubled = [r for r in report.all_records()
                if r.state in (DatumState.FAILED, DatumState.RECOVERED)]
    for rec in troubled[:20]:
        inputs = ", ".join(f"{i.name}:{display(i.path)}" for i in rec.datum.inputs)
        line = (f"datum {rec.datum.id[:12]} ({inputs}) {rec.state.value} after "
                f"{plural(rec.attempts, 'attempt')}: {rec.error}")
        # A recovered datum is not an error: err_cmd dealt with it and the job can succeed.
        (console.error if rec.state is DatumState.FAILED else console.warn)(line)
    if len(troubled) > 20:
        console.info(f"... and {len(troubled) - 20} more failed or recovered datums")
    if troubled:
        console.info(f"their output: pfsmount logs {spec_path} --failed "
                     "(or --datum ID for one datum)")
    verdict = {"success": "succeeded", "failed": "FAILED", "killed": "was KILLED"}[report.outcome]
    console.info(
        f"job {report.job_id[:12]} {verdict}: {plural(ok, 'datum')} processed, {failed} failed"
        + (f", {recovered} recovered" if recovered else "")
        + (f" ({report.resumed} finished before the interruption)" if report.resumed else "")
        + (f", {report.skipped} skipped (unchanged)" if report.skipped else "")
        + (f", {unrun} not run" if unrun else "")
        + (f", user code restarted {plural(report.restarts, 'time')}" if report.restarts else "")
        + f", in {report.seconds:.1f}s ({rate:.1f} datums/s)"
    )
    if len(report.workers) > 1:
        busy = ", ".join(f"{attempts} attempts, {100 * held / max(report.seconds, 1e-9):.0f}%"
                         f" busy" for attempts, held in report.workers)
        console.info(f"{len(report.workers)} workers ran: {busy}")
    console.info(f"read {_fmt_bytes(report.input_bytes)} from "
                 f"{plural(report.input_files, 'input file')}")
    if report.outcome == "killed":
        console.info(f"output: {report.output_dir} holds the datums finished so far; run the "
                     "same command again to resume the job")
        return STOPPED_EXIT.get(report.stopped_by, EXIT_INTERRUPTED)
    console.info(f"output: {report.output_dir}")
    return EXIT_OK if report.outcome == "success" else EXIT_FAILED


def _cmd_logs(args: argparse.Namespace, console: Console) -> int:
    from pfsmount.joblog import read_lines_at
    from pfsmount.store.base import StoreError

    found = _find_job(args, console, args.job)
    if found is None:
        return EXIT_USAGE
    ledger, job = found
    # Indexed questions about this job only: a job of millions of datums is not loaded.
    wanted: set[str] | None = None
    if args.failed:
        wanted = {d["datum_id"] for d in ledger.troubled_datums(job["job_id"])}
    if args.datum:
        matches = set(ledger.datum_ids_in_job(job["job_id"], args.datum))
        if not matches:
            console.error(f"job {job['job_id'][:12]} has no datum whose id starts with "
                          f"'{args.datum}' (see `pfsmount list-datums`)")
            return EXIT_USAGE
        wanted = matches if wanted is None else wanted & matches
    out = sys.stdout
    damaged: list[int] = []
    found_any = False
    # A sharded job has a log per shard: shown one shard after the other. With outputs in a
    # bucket, every writer's log is there, merged in time order.
    sources = ([_bucket_log(args, job["pipeline"], job["job_id"], damaged.append)]
               if _output_url(args) is not None else
               [read_lines_at(path, damaged.append) for path in ledger.log_paths(job["job_id"])])
    for lines in sources:
        try:
            for line in lines:
                found_any = True
                if wanted is not None and line.datum not in wanted:
                    continue
                tag = f"{line.datum[:12] or '-':12} #{line.attempt}"
                if line.source != "user":
                    tag += f" {line.source}"
                out.write(f"[{tag} {line.stream}] {line.text}\n")
        except FileNotFoundError:
            continue
        except (OSError, StoreError) as exc:
            console.error(f"cannot read the log of job {job['job_id'][:12]}: {exc}")
            return EXIT_USAGE
    if not found_any:
        console.info(f"job {job['job_id'][:12]} has no log: its user code never ran")
    if damaged:
        from pfsmount.console import plural

        console.warn(f"skipped {plural(len(damaged), 'damaged line')} of the job log (line "
                     f"{', '.join(map(str, damaged[:5]))}{', ...' if len(damaged) > 5 else ''}): "
                     "cut off when pfsmount was killed, or when the disk was full")
    return EXIT_OK


def _bucket_log(args: argparse.Namespace, pipeline: str, job_id: str,
                on_damaged: Callable[[int], None]) -> Iterator[LogLine]:
    """A job's log lines from the bucket, every writer's (each machine that ran part of
    it), in time order."""
    import tempfile

    from pfsmount.joblog import read_lines_at
    from pfsmount.s3output import records_of

    records = records_of(_output_url(args) or "", pipeline)
    with tempfile.TemporaryDirectory(prefix="pfsmount-logs-") as scratch:
        paths = records.logs(job_id, scratch)
        if not paths:
            raise FileNotFoundError(job_id)
        lines = [line for path in paths for line in read_lines_at(path, on_damaged)]
    yield from sorted(lines, key=lambda line: line.time)


def _open_ledger(args: argparse.Namespace, console: Console):
    """The pipeline's job records (`jobview.JobRecords`: every shard's, merged), or None."""
    from pfsmount.jobview import JobRecords, has_records
    from pfsmount.ledger import LedgerError

    data_dir = _state_dir(args, console)
    if data_dir is None:
        return None
    pipeline = _pipeline_name(args.pipeline, console)
    if pipeline is None:
        return None
    url = _output_url(args)
    if url is not None:
        return _mirrored_records(url, data_dir, pipeline, console)
    if not has_records(data_dir, pipeline):
        console.error(f"no job of pipeline '{pipeline}' is recorded in {data_dir} "
                      "(run it first, or pass --data DIR)")
        return None
    try:
        return JobRecords(data_dir, pipeline)
    except LedgerError as exc:
        console.error(str(exc))
        return None


def _mirrored_records(url: str, state_dir: str, pipeline: str, console: Console):
    """The job records of the bucket, mirrored below the local state directory (they are
    the truth: any machine, any shard, may have run the pipeline's jobs)."""
    from pfsmount.jobview import JobRecords, has_records
    from pfsmount.ledger import LedgerError
    from pfsmount.s3output import bucket_view
    from pfsmount.store.base import StoreError

    try:
        view = bucket_view(url, state_dir, pipeline)
        if not has_records(view, pipeline):
            console.error(f"no job of pipeline '{pipeline}' is recorded in {url} "
                          "(run it first, or check --data)")
            return None
        return JobRecords(view, pipeline)
    except (StoreError, LedgerError, OSError) as exc:
        console.error(str(exc))
        return None


def _find_job(args: argparse.Namespace, console: Console, job_prefix: str):
    """(ledger, job record) for the recorded job `job_prefix` ("" = latest), or None."""
    ledger = _open_ledger(args, console)
    if ledger is None:
        return None
    job = ledger.job(job_prefix)
    if job is None:
        console.error(f"no recorded job matches '{job_prefix}' (see `pfsmount list-jobs`)")
        return None
    return ledger, job


def _when(ts: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _cmd_list_jobs(args: argparse.Namespace, console: Console) -> int:
    pipelines = _pipelines(args.pipeline, console)
    if pipelines is None:
        return EXIT_USAGE
    status = EXIT_OK
    for pipeline in pipelines:
        if len(pipelines) > 1:
            sys.stdout.write(f"{'' if pipeline == pipelines[0] else chr(10)}== {pipeline}\n")
        args.pipeline = pipeline
        status = max(status, _list_jobs(args, console))
    return status


def _list_jobs(args: argparse.Namespace, console: Console) -> int:
    ledger = _open_ledger(args, console)
    if ledger is None:
        return EXIT_USAGE
    out = sys.stdout
    out.write(f"{'JOB':12}  {'STATE':9}  {'STARTED':19}  {'SECONDS':>8}  {'DATUMS':>6}  "
              f"{'DONE':>6}  {'SKIPPED':>7}  {'FAILED':>6}  {'RECOVERED':>9}\n")
    for j in ledger.jobs():
        secs = f"{j['ended'] - j['started']:.1f}" if j["ended"] else "-"
        out.write(f"{j['job_id'][:12]}  {j['state']:9}  {_when(j['started'])}  {secs:>8}  "
                  f"{j['total']:>6}  {j['processed']:>6}  {j['skipped']:>7}  {j['failed']:>6}  "
                  f"{j['recovered']:>9}\n")
    return EXIT_OK


def _cmd_inspect_job(args: argparse.Namespace, console: Console) -> int:
    targets = list(args.pipeline)
    job = args.job
    if job is None and len(targets) == 2 and not _is_pipeline(args, targets[1]):
        # The original form, `inspect-job PIPELINE JOB`.
        job = targets.pop()
    pipelines = _pipelines(targets, console)
    if pipelines is None:
        return EXIT_USAGE
    if job and len(pipelines) > 1:
        console.error("a job id names a job of one pipeline; pass one pipeline with it")
        return EXIT_USAGE
    status = EXIT_OK
    for pipeline in pipelines:
        if len(pipelines) > 1:
            sys.stdout.write(f"{'' if pipeline == pipelines[0] else chr(10)}== {pipeline}\n")
        args.pipeline = pipeline
        status = max(status, _inspect_job(args, console, job or ""))
    return status


def _inspect_job(args: argparse.Namespace, console: Console, job_prefix: str) -> int:
    from pfsmount.console import plural

    found = _find_job(args, console, job_prefix)
    if found is None:
        return EXIT_USAGE
    ledger, job = found
    # Counted and sorted by SQLite over this job's rows: nothing per datum is loaded but
    # the failures printed.
    counts = ledger.state_counts(job["job_id"])
    timed, median, longest, total = ledger.attempt_seconds(job["job_id"])
    out = sys.stdout
    out.write(f"job       {job['job_id']}\nstate     {job['state']}\n"
              f"started   {_when(job['started'])}\nended     {_when(job['ended'])}\n")
    if job.get("shards"):
        out.write(f"shards    {len(job['shards'])} of {job['shard_count']} recorded: "
                  + ", ".join(f"{shard.index} {row['state']}"
                              for shard, row in sorted(job["shards"].items(),
                                                       key=lambda item: item[0].index))
                  + "\n")
    if job["message"]:
        out.write(f"problems  {job['message']}\n")
    for conflict in job.get("conflicts", []):
        out.write(f"conflict  {conflict}\n")
    out.write("datums    " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
              + f" (of {job['total']})\n")
    if timed:
        out.write(f"timings   median {median:.3f}s, max {longest:.3f}s, "
                  f"total {total:.1f}s per datum attempt\n")
    for d in ledger.troubled_datums(job["job_id"]):
        if d["state"] in ("failed", "recovered"):
            inputs = ", ".join(f"{i['name']}:{display(i['path'])}" for i in d["inputs"])
            where = f" [shard {d['shard']}]" if d.get("shard") else ""
            out.write(f"{d['state']:9} {d['datum_id'][:12]}{where} ({inputs}) after "
                      f"{plural(d['attempts'], 'attempt')}: {d['error']}\n")
    return EXIT_OK


def _pipeline_name(arg: str, console: Console) -> str | None:
    """A pipeline name (`@project/name` outside the default project), or a spec file's."""
    if not os.path.isfile(arg):
        return arg
    from pfsmount.spec import SpecError, load_spec

    try:
        return load_spec(arg).location
    except SpecError as exc:
        console.error(str(exc))
        return None


def _is_pipeline(args: argparse.Namespace, target: str) -> bool:
    """A spec path, or the name of a pipeline with a ledger in the data directory (records
    in the bucket, for S3 outputs)."""
    from pfsmount.jobview import has_records

    if os.path.exists(target):
        return True
    url = _output_url(args)
    if url is not None:
        from pfsmount.store.base import StoreError
        from pfsmount.store.s3out import has_objects

        try:
            return has_objects(url, f".pfsmount/{target}/")
        except StoreError:
            return False  # taken for a job id; opening the pipeline then says what is wrong
    data_dir = os.path.abspath(args.data or _default_data_dir())
    return has_records(data_dir, target)


def _pipelines(targets: Sequence[str], console: Console) -> list[str] | None:
    """Pipeline names from names, spec files (of one or several pipelines) and directories."""
    from pfsmount.spec import SpecError, load_specs

    names: list[str] = []
    for target in targets:
        if not os.path.exists(target):
            names.append(target)
            continue
        try:
            names.extend(doc.spec.location for doc in load_specs([target]))
        except SpecError as exc:
            console.error(str(exc))
            return None
    return list(dict.fromkeys(names))

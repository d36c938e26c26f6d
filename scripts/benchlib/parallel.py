"""The `parallel` section (issue 12): N workers against 1 on the same datums.

- CPU-bound: each datum ~40 ms of pure-Python work, 1 and 2 workers (target: >= 1.8x
  datums/s with 2 on a 2-core machine);
- I/O-bound: each datum waits 0.25 s, 1 and 8 workers (target: >= 7x);
- per-datum overhead: datums that do nothing, 1 and 2 workers; the overhead is a worker's gap
  between the end of one datum and the start of its next (NextDatum, commit, swap): 2
  workers' within 20 % of 1 worker's.

Throughput is datums / (last datum's end - first datum's start), from the times each datum's
output records, so start-up and unmount are left out alike for every worker count.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchlib.common import USERCODE_DIR, Context, say
from benchlib.fixtures import build_datum_files, fixture
from benchlib.procs import batching_spec, expect_exit, run_pfsmount

WORK = str(USERCODE_DIR / "parallel_work.py")
CPU_SECONDS = 0.040
IO_SECONDS = 0.25


def calibrate(seconds: float) -> int:
    """Iterations of parallel_work's cpu loop that take about `seconds` here."""
    n = 200_000
    while True:
        t0 = time.perf_counter()
        total = 0
        for i in range(n):
            total += i * i
        took = time.perf_counter() - t0
        if took > 0.05:
            return max(1, int(n * seconds / took))
        n *= 2


def parallel(ctx: Context) -> dict[str, Any]:
    quick = ctx.quick
    cpu_n = 40 if quick else 150
    io_n = 24 if quick else 96
    none_n = 300 if quick else 2000
    iterations = calibrate(CPU_SECONDS)
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for i in range(ctx.repeat):
        for workers in (1, 2):
            runs[f"cpu_{workers}"].append(
                _job(ctx, "par-cpu", cpu_n, ["cpu", str(iterations)], workers, i))
        for workers in (1, 8):
            runs[f"io_{workers}"].append(
                _job(ctx, "par-io", io_n, ["io", str(IO_SECONDS)], workers, i))
        for workers in (1, 2):
            runs[f"none_{workers}"].append(_job(ctx, "par-none", none_n, ["none"], workers, i))
        say(f"  parallel repetition {i + 1}/{ctx.repeat} done")
    summary = {key: _median(rs) for key, rs in runs.items()}
    return {
        "cpu_iterations": iterations,
        "datums": {"cpu": cpu_n, "io": io_n, "none": none_n},
        "runs": summary,
        "cpu_speedup": summary["cpu_2"]["datums_per_second"]
        / summary["cpu_1"]["datums_per_second"],
        "io_speedup": summary["io_8"]["datums_per_second"]
        / summary["io_1"]["datums_per_second"],
        "overhead_ratio": summary["none_2"]["gap_ms"] / summary["none_1"]["gap_ms"],
    }


def _job(ctx: Context, pipeline: str, n: int, args: Sequence[str], workers: int,
         i: int) -> dict[str, Any]:
    repo = f"{pipeline}-in"
    fixture(ctx, repo, build_datum_files(n, 64), (n, 64))
    name = f"{pipeline}-{workers}w-{i}"
    spec = batching_spec(pipeline, repo, "/*", ["python3", WORK, *args], {})
    spec["input"]["pfs"]["name"] = "files"
    spec["parallelism_spec"] = {"constant": workers}
    job = run_pfsmount(ctx, name, spec)
    expect_exit(job, name)
    return _timings(ctx.data / pipeline, n) | {"job_seconds": job.seconds}


def _timings(out_dir: Path, n: int) -> dict[str, Any]:
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for path in out_dir.iterdir():
        port, start, end = path.read_text().split()
        spans[port].append((float(start), float(end)))
    count = sum(len(s) for s in spans.values())
    if count != n:
        raise RuntimeError(f"{out_dir}: {count} outputs, expected {n}")
    first = min(s for ss in spans.values() for s, _ in ss)
    last = max(e for ss in spans.values() for _, e in ss)
    gaps = []
    for ss in spans.values():
        ss.sort()
        gaps += [b[0] - a[1] for a, b in itertools.pairwise(ss)]
    return {"workers_seen": len(spans), "span_seconds": last - first,
            "datums_per_second": n / (last - first), "gap_ms": statistics.median(gaps) * 1000}


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


# ----- the report ------------------------------------------------------------------------------


LABELS = {
    "cpu_1": "CPU-bound (~40 ms/datum), 1 worker",
    "cpu_2": "CPU-bound (~40 ms/datum), 2 workers",
    "io_1": "I/O-bound (0.25 s wait/datum), 1 worker",
    "io_8": "I/O-bound (0.25 s wait/datum), 8 workers",
    "none_1": "empty datums, 1 worker",
    "none_2": "empty datums, 2 workers",
}


def render_parallel(r: Mapping[str, Any]) -> tuple[str, list[str]]:
    from benchlib.report import table

    rows = [[label, str(int(r["runs"][key]["workers_seen"])),
             f"{r['runs'][key]['datums_per_second']:,.1f}", f"{r['runs'][key]['gap_ms']:.2f}",
             f"{r['runs'][key]['job_seconds']:.2f}"] for key, label in LABELS.items()]
    return ("Parallel workers: throughput and per-datum overhead",
            table(["run", "workers seen", "datums/s", "gap between a worker's datums ms",
                   "whole job s"], rows))


def parallel_targets(r: Mapping[str, Any]) -> list[Any]:
    from benchlib.report import at_least, at_most

    return [
        at_least("CPU-bound datums/s, 2 workers / 1", r["cpu_speedup"], 1.8, "x", ".2f"),
        at_least("I/O-bound datums/s, 8 workers / 1", r["io_speedup"], 7.0, "x", ".2f"),
        at_most("per-datum overhead, 2 workers / 1", r["overhead_ratio"], 1.2, "x"),
    ]

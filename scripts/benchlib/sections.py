"""The five measurements of issue 6; each returns a JSON-able dict of its numbers."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib.common import MB, MIB, PACHCTL_LOOP, USERCODE, VENV_PY, BenchError, Context, say
from benchlib.fixtures import build_big_file, build_datum_files, build_flat, build_tree, fixture
from benchlib.procs import (
    batching_spec,
    bindfs,
    ensure_bindfs,
    expect_exit,
    fresh_dir,
    fresh_result,
    read_result,
    run_direct,
    run_pfsmount,
)
from benchlib.scale import scale_trees

# The user program of pfsmount without datum batching, started once per datum: the same work
# as workload.handle_datum, inlined so the process imports nothing but os and time.
PER_PROCESS_SNIPPET = (
    "import os, time\n"
    "path = os.environ['files']\n"
    "with open(path, 'rb') as f:\n"
    "    data = f.read()\n"
    "with open('/pfs/out/' + os.path.basename(path) + '.len', 'w') as f:\n"
    "    f.write(f'{len(data)} {time.time():.6f}\\n')\n"
)


# ----- 1. per-datum overhead -----------------------------------------------------------------

ALTERNATIVES: dict[str, str] = {
    "floor": "floor: Python loop over the repo dir",
    "pfsmount_client": "pfsmount + pfsmount client",
    "pachyderm_sdk": "pfsmount + pachyderm-sdk decorator",
    "pachyderm_sdk_env40": "pfsmount + pachyderm-sdk, 40 more env variables",
    "bare_grpc": "pfsmount + bare Pachyderm-wire gRPC client",
    "pachctl_loop": "pfsmount + `pachctl next datum` shell loop",
    "pachctl_subprocess": "pfsmount + `pachctl next datum` via subprocess.run",
    "process_per_datum": "pfsmount without batching (process per datum)",
}
# What a launching shell adds to the environment; the user code inherits all of it.
EXTRA_ENV = {f"BENCH_SHELL_VAR_{i:02d}": f"value-{i:02d}-" + "x" * 40 for i in range(40)}


def per_datum(ctx: Context) -> dict[str, Any]:
    n = ctx.sizes.datums
    repo = fixture(ctx, "files", build_datum_files(n, ctx.sizes.datum_bytes),
                   (n, ctx.sizes.datum_bytes))
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in ALTERNATIVES}
    # Alternatives interleaved per repetition, so drift on the machine hits them all alike.
    for i in range(ctx.repeat):
        runs["floor"].append(_floor(ctx, repo, i))
        runs["pfsmount_client"].append(
            _pfsmount_loop(ctx, "bench-own", ["python3", USERCODE, "own"], i))
        runs["pachyderm_sdk"].append(
            _pfsmount_loop(ctx, "bench-sdk", ["python3", USERCODE, "sdk"], i))
        runs["pachyderm_sdk_env40"].append(
            _pfsmount_loop(ctx, "bench-sdk40", ["python3", USERCODE, "sdk"], i, env=EXTRA_ENV))
        runs["bare_grpc"].append(
            _pfsmount_loop(ctx, "bench-grpc", ["python3", USERCODE, "grpc"], i))
        runs["pachctl_loop"].append(
            _pfsmount_loop(ctx, "bench-pachctl", ["bash", PACHCTL_LOOP], i))
        runs["pachctl_subprocess"].append(
            _pfsmount_loop(ctx, "bench-pachctl-py", ["python3", USERCODE, "subprocess"], i))
        if i < ctx.repeat_slow:
            runs["process_per_datum"].append(_pfsmount_loop(
                ctx, "bench-classic", ["python3", "-c", PER_PROCESS_SNIPPET], i,
                batching=False))
        say(f"  per-datum repetition {i + 1}/{ctx.repeat} done")
    floor_s = statistics.median(r["loop_seconds"] for r in runs["floor"])
    return {
        "datums": n,
        "datum_bytes": ctx.sizes.datum_bytes,
        "timing": "loop = last datum's output written - first datum's output written, "
                  "i.e. n-1 datum transitions; per datum = loop / (n-1)",
        "alternatives": {key: _summarize_loop(runs[key], n, floor_s) for key in ALTERNATIVES},
    }


def loop_seconds(out_dir: Path, n: int) -> float:
    """Spread of the moments written into the n outputs: the time of n-1 datum transitions."""
    names = os.listdir(out_dir)
    if len(names) != n:
        raise BenchError(f"{out_dir}: {len(names)} output files instead of {n}")
    moments = [float((out_dir / name).read_text().split()[1]) for name in names]
    return max(moments) - min(moments)


def _floor(ctx: Context, repo: Path, i: int) -> dict[str, Any]:
    out = fresh_dir(ctx, "floor-out")
    started = time.perf_counter()
    ctx.janitor.run([str(VENV_PY), USERCODE, "floor", str(repo), str(out)],
                    timeout=ctx.timeout)
    return {"loop_seconds": loop_seconds(out, ctx.sizes.datums),
            "process_seconds": time.perf_counter() - started}


def _pfsmount_loop(ctx: Context, pipeline: str, cmd: Sequence[str], i: int,
                   batching: bool = True, env: dict[str, str] | None = None) -> dict[str, Any]:
    name = f"{pipeline}-{i}"
    spec = batching_spec(pipeline, "files", "/*", cmd, {})
    spec["transform"]["datum_batching"] = batching
    job = run_pfsmount(ctx, name, spec, env=env)
    expect_exit(job, name)
    return {"loop_seconds": loop_seconds(ctx.data / pipeline, ctx.sizes.datums),
            "job_seconds": job.seconds, "peak_rss_mb": job.peak_rss_kb / 1024}


def _summarize_loop(runs: list[dict[str, Any]], n: int, floor_s: float) -> dict[str, Any]:
    loop_s = statistics.median(r["loop_seconds"] for r in runs)
    summary: dict[str, Any] = {
        "runs": runs,
        "loop_seconds": loop_s,
        "datums_per_second": (n - 1) / loop_s,
        "ms_per_datum": loop_s / (n - 1) * 1000,
        "overhead_ms_per_datum": (loop_s - floor_s) / (n - 1) * 1000,
    }
    if "job_seconds" in runs[0]:
        job_s = statistics.median(r["job_seconds"] for r in runs)
        summary["job_seconds"] = job_s
        summary["job_datums_per_second"] = n / job_s
    return summary


# ----- 2. large reads ------------------------------------------------------------------------


READ_AHEAD_KB = 1024  # the lever measured beside the default: 1 MiB kernel read-ahead
READ_PATHS = {
    "direct": "direct",
    "bindfs": "bindfs",
    "pfsmount": "pfsmount",
    "pfsmount_read_ahead": f"pfsmount, read_ahead_kb={READ_AHEAD_KB} (lever, not default)",
}


def large_read(ctx: Context) -> dict[str, Any]:
    size = ctx.sizes.big_bytes
    repo = fixture(ctx, "big", build_big_file(size), size)
    source = str(repo / "big.bin")
    bindfs_missing = ensure_bindfs(ctx)
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key in READ_PATHS}
    for i in range(ctx.repeat):
        # An untimed read first: a virtual disk may be cached by its host, and dropping the
        # guest's caches does not touch that; primed, every path starts from the same state.
        run_direct(ctx, f"read-prime-{i}", ["reads-direct", source])
        runs["direct"].append(run_direct(ctx, f"read-direct-{i}", ["reads-direct", source]))
        if bindfs_missing is None:
            runs["bindfs"].append(_read_bindfs(ctx, repo, source, i))
        runs["pfsmount"].append(_read_pfsmount(ctx, source, i))
        runs["pfsmount_read_ahead"].append(
            _read_pfsmount(ctx, source, i, read_ahead_kb=READ_AHEAD_KB))
    paths = {key: _summarize_reads(r) for key, r in runs.items() if r}
    if bindfs_missing is not None:
        paths["bindfs"] = {"skipped": bindfs_missing}
    direct = paths["direct"]
    for summary in paths.values():
        if "skipped" not in summary:
            summary["first_vs_direct"] = summary["first_mb_s"] / direct["first_mb_s"]
            summary["second_vs_direct"] = summary["second_mb_s"] / direct["second_mb_s"]
    evicted_by = runs["direct"][0]["evicted_by"]
    return {"bytes": size, "cold_cache_by": evicted_by, "read_request_bytes": MIB,
            "paths": paths}


def _read_bindfs(ctx: Context, repo: Path, source: str, i: int) -> dict[str, Any]:
    with bindfs(ctx, repo) as mountpoint:
        return run_direct(ctx, f"read-bindfs-{i}",
                          ["reads-direct", str(mountpoint / "big.bin"), source])


def _read_pfsmount(ctx: Context, source: str, i: int, read_ahead_kb: int = 0
                   ) -> dict[str, Any]:
    name = f"read-pfsmount-{i}" + (f"-ra{read_ahead_kb}" if read_ahead_kb else "")
    env = {"BENCH_SOURCE": source}
    if read_ahead_kb:
        env["BENCH_READ_AHEAD_KB"] = str(read_ahead_kb)
    return _measure(ctx, name, "bench-read", "big", "/*", "reads", env)


def _measure(ctx: Context, name: str, pipeline: str, repo: str, glob: str, mode: str,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `usercode.py MODE` under pfsmount to success; return what it measured."""
    result = fresh_result(ctx, name)
    job = run_pfsmount(ctx, name, batching_spec(
        pipeline, repo, glob, ["python3", USERCODE, mode],
        {"BENCH_RESULT": str(result), **(env or {})}))
    expect_exit(job, name)
    return read_result(result, name, job)


def _summarize_reads(runs: list[dict[str, Any]]) -> dict[str, Any]:
    size = runs[0]["bytes"]
    summary: dict[str, Any] = {"runs": runs}
    for read in ("first", "second", "served"):
        if f"{read}_seconds" in runs[0]:
            seconds = statistics.median(r[f"{read}_seconds"] for r in runs)
            summary[f"{read}_seconds"] = seconds
            summary[f"{read}_mb_s"] = size / seconds / MB
    return summary


# ----- 3. many small files -------------------------------------------------------------------


def small_files(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    repo = fixture(ctx, "small", build_tree(1, s.small_files, s.small_bytes),
                   (s.small_files, s.small_bytes))
    bindfs_missing = ensure_bindfs(ctx)
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "bindfs": [], "pfsmount": []}
    for i in range(ctx.repeat):
        # Direct first: it also warms the source files, so every path reads from page cache
        # and the comparison is the cost of FUSE, not of the disk.
        runs["direct"].append(run_direct(ctx, f"small-direct-{i}", ["small-direct", str(repo)]))
        if bindfs_missing is None:
            with bindfs(ctx, repo) as mountpoint:
                runs["bindfs"].append(run_direct(ctx, f"small-bindfs-{i}",
                                                 ["small-direct", str(mountpoint)]))
        runs["pfsmount"].append(_small_pfsmount(ctx, i))
    # The direct walks both read from page cache; the second is the steadier.
    direct_s = statistics.median(r["second_seconds"] for r in runs["direct"])
    walks: dict[str, Any] = {"direct": {"seconds": direct_s, "vs_direct": 1.0}}
    for key in ("bindfs", "pfsmount"):
        if not runs[key]:
            walks[f"{key}_first_walk"] = {"skipped": bindfs_missing}
            continue
        for walk in ("first", "second"):
            seconds = statistics.median(r[f"{walk}_seconds"] for r in runs[key])
            walks[f"{key}_{walk}_walk"] = {"seconds": seconds, "vs_direct": seconds / direct_s}
    return {
        "files": s.small_files, "file_bytes": s.small_bytes,
        "layout": "one datum (glob /) of directories of 100 files each",
        "walks": walks,
        "runs": runs,
    }


def _small_pfsmount(ctx: Context, i: int) -> dict[str, Any]:
    return _measure(ctx, f"small-pfsmount-{i}", "bench-small", "small", "/", "small")


# ----- 4. swap latency -----------------------------------------------------------------------


def swap(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    fixture(ctx, "swap", build_tree(s.swap_datums, s.swap_files, 0),
            (s.swap_datums, s.swap_files))
    first_calls: list[float] = []
    swaps: list[float] = []
    for i in range(ctx.repeat):
        calls = _measure(ctx, f"swap-{i}", "bench-swap", "swap", "/*", "swap")["call_seconds"]
        # calls: the first datum, then datum-to-datum swaps, then the final "no more" call.
        first_calls.append(calls[0])
        swaps.extend(calls[1:-1])
    return {
        "files_per_datum": s.swap_files, "datums_per_run": s.swap_datums,
        "swap_ms_median": statistics.median(swaps) * 1000,
        "swap_ms_max": max(swaps) * 1000,
        "first_datum_ms_median": statistics.median(first_calls) * 1000,
        "swap_ms_all": [x * 1000 for x in swaps],
    }


# ----- 5. scale ------------------------------------------------------------------------------


def scale(ctx: Context) -> dict[str, Any]:
    n = ctx.sizes.scale_files
    fixture(ctx, "scale", build_flat(n), n)
    firsts: list[dict[str, Any]] = []
    listing: list[float] = []
    for i in range(ctx.repeat):
        firsts.append(_first_datum(ctx, i))
        listing.append(_list_datums(ctx))
    whole = _whole_job(ctx)
    first_s = statistics.median(r["first_datum_seconds"] for r in firsts)
    peak_first = statistics.median(r["peak_rss_mb"] for r in firsts)
    return {
        "files": n, "glob": "/*",
        "first_datum_seconds": first_s,
        "peak_rss_mb_to_first_datum": peak_first,
        "whole_job": whole,
        "peak_rss_mb": max(peak_first, whole["peak_rss_mb"]),
        "list_datums_seconds": statistics.median(listing),
        "runs": firsts,
        "list_datums_runs": listing,
        "trees": scale_trees(ctx, ctx.sizes.scale_trees),
    }


def _scale_spec(name: str, result: Path, everything: bool) -> dict[str, Any]:
    env = {"BENCH_RESULT": str(result), "BENCH_ALL": "1" if everything else "0"}
    return batching_spec(name, "scale", "/*", ["python3", USERCODE, "first"], env)


def _first_datum(ctx: Context, i: int) -> dict[str, Any]:
    name = f"scale-first-{i}"
    result = fresh_result(ctx, name)
    job = run_pfsmount(ctx, name, _scale_spec("bench-scale", result, everything=False),
                       stop=result.exists)
    expect_exit(job, name, code=143)  # stopped by SIGTERM once the first datum was there
    arrived = read_result(result, name, job)["first_datum_at"]
    return {"first_datum_seconds": arrived - job.started_at,
            "peak_rss_mb": job.peak_rss_kb / 1024, "job_seconds": job.seconds}


def _whole_job(ctx: Context) -> dict[str, Any]:
    """One run through the datums, so the peak covers a job, not only its start.

    It is stopped after `scale_window` seconds if it has not finished: what matters is the
    memory and whether the rate holds up as the job goes on, not the hours a slow one takes.
    """
    name = "scale-all"
    result = fresh_result(ctx, name)
    deadline = time.monotonic() + ctx.scale_window
    job = run_pfsmount(ctx, name, _scale_spec("bench-scale", result, everything=True),
                       stop=lambda: time.monotonic() > deadline)
    finished = job.returncode == 0
    if not finished:
        expect_exit(job, name, code=143)  # stopped by SIGTERM
    measured = read_result(result, name, job)
    progress = measured["progress"]  # [seconds since the first datum, datums so far]
    return {
        "finished": finished,
        "window_seconds": ctx.scale_window,
        "datums_handed_out": measured["datums"],
        "of": ctx.sizes.scale_files,
        "peak_rss_mb": job.peak_rss_kb / 1024,
        "job_seconds": job.seconds,
        "rate_first_tenth": _rate(progress, 0.0, 0.1),
        "rate_last_tenth": _rate(progress, 0.9, 1.0),
        "progress": progress,
    }


def _rate(progress: Sequence[Sequence[float]], start: float, end: float) -> float:
    """Datums per second between two fractions of the time the loop ran."""
    if len(progress) < 2:
        return 0.0
    span = progress[-1][0]
    points = [p for p in progress if start * span <= p[0] <= end * span]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return 0.0
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


def _list_datums(ctx: Context) -> float:
    spec = ctx.path("specs", "scale-list.json")
    spec.write_text(json.dumps(_scale_spec("bench-scale", ctx.work / "unused", True)))
    started = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        ctx.janitor.run([str(VENV_PY), "-m", "pfsmount", "list-datums", str(spec),
                         "--data", str(ctx.data)], stdout=devnull, timeout=ctx.timeout)
    return time.perf_counter() - started

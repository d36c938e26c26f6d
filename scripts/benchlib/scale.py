"""Issue 18's scale rows: repos of 1M and 10M empty files, streamed datums.

Each size is a repo of `n / 1000` directories of 1,000 empty files (made with mknod; the
time to make it is not counted), glob `/*/*`. Per size: the time from `pfsmount run` to the
first datum in user code and pfsmount's peak memory until then (a first run: no ledger);
`list-datums --json` first-line latency, total time and peak memory; a whole job with user
code that does nothing, stopped after `scale_window` seconds (datums/s, peak memory, ledger
size); and the first datum of the next run, which resumes that stopped job: the datums it
finished are listed and left out (indexed ledger lookups) before the first one left to run.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchlib.common import USERCODE, VENV_PY, Context, say
from benchlib.fixtures import fixture
from benchlib.procs import batching_spec, expect_exit, fresh_result, read_result, run_pfsmount

PER_DIR = 1000
GLOB = "/*/*"


def build_empty_tree(n: int) -> Callable[[Path], None]:
    def build(repo: Path) -> None:
        mode = stat.S_IFREG | 0o644
        root = os.fspath(repo)
        for d in range(max(1, n // PER_DIR)):
            sub = f"{root}/d{d:05d}"
            os.mkdir(sub)
            for f in range(min(PER_DIR, n - d * PER_DIR)):
                os.mknod(f"{sub}/f{f:04d}", mode)

    return build


def scale_trees(ctx: Context, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        repo = f"tree{n}"
        fixture(ctx, repo, build_empty_tree(n), (n, PER_DIR))
        say(f"  {n:,} files: first datum, list-datums, whole job")
        rows.append({"files": n, "dirs": max(1, n // PER_DIR), "glob": GLOB,
                     **_first_datum(ctx, repo, "first"),
                     **_list_datums(ctx, repo),
                     "whole_job": _whole_job(ctx, repo),
                     "second_run": _first_datum(ctx, repo, "second", fresh=False)})
    return rows


def _spec(ctx: Context, repo: str, result: Path, everything: bool) -> dict[str, Any]:
    env = {"BENCH_RESULT": str(result), "BENCH_ALL": "1" if everything else "0"}
    return batching_spec(f"bench-{repo}", repo, GLOB, ["python3", USERCODE, "first"], env)


def _forget(ctx: Context, repo: str) -> None:
    # A first run: no ledger, no output of an earlier run.
    shutil.rmtree(ctx.data / ".pfsmount" / f"bench-{repo}", ignore_errors=True)
    shutil.rmtree(ctx.data / f"bench-{repo}", ignore_errors=True)


def _first_datum(ctx: Context, repo: str, label: str, fresh: bool = True) -> dict[str, Any]:
    if fresh:
        _forget(ctx, repo)
    name = f"{repo}-{label}"
    result = fresh_result(ctx, name)
    job = run_pfsmount(ctx, name, _spec(ctx, repo, result, everything=False),
                       stop=result.exists)
    expect_exit(job, name, code=143)
    arrived = read_result(result, name, job)["first_datum_at"]
    return {"first_datum_seconds": arrived - job.started_at,
            "peak_rss_mb_to_first_datum": job.peak_rss_kb / 1024}


def _list_datums(ctx: Context, repo: str) -> dict[str, Any]:
    spec = ctx.path("specs", f"{repo}-list.json")
    spec.write_text(json.dumps(_spec(ctx, repo, ctx.work / "unused", True)))
    started = time.perf_counter()
    proc = subprocess.Popen([str(VENV_PY), "-m", "pfsmount", "list-datums", str(spec), "--json",
                             "--data", str(ctx.data)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    first = time.perf_counter() - started
    for _ in iter(lambda: proc.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
        pass
    _pid, status, usage = os.wait4(proc.pid, 0)
    total = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"list_datums_first_line_seconds": first, "list_datums_seconds": total,
            "list_datums_peak_rss_mb": usage.ru_maxrss / 1024,
            "list_datums_exit": proc.returncode}


def _whole_job(ctx: Context, repo: str) -> dict[str, Any]:
    _forget(ctx, repo)
    name = f"{repo}-all"
    result = fresh_result(ctx, name)
    deadline = time.monotonic() + ctx.scale_window
    job = run_pfsmount(ctx, name, _spec(ctx, repo, result, everything=True),
                       stop=lambda: time.monotonic() > deadline)
    finished = job.returncode == 0
    if not finished:
        expect_exit(job, name, code=143)
    measured = read_result(result, name, job)
    progress = measured.get("progress", [[0.0, 1]])
    seconds = progress[-1][0]
    workspace = ctx.data / ".pfsmount" / f"bench-{repo}"
    size = sum(p.stat().st_size for p in workspace.glob("ledger.sqlite*"))
    return {"finished": finished, "window_seconds": ctx.scale_window,
            "datums_handed_out": measured.get("datums", 1),
            "datums_per_second": (progress[-1][1] - 1) / seconds if seconds > 0 else 0.0,
            "peak_rss_mb": job.peak_rss_kb / 1024, "job_seconds": job.seconds,
            "ledger_mb": size / 1e6}

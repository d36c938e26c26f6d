"""The `shards` section (issue 16): one job as 3 shards at once against one process.

An I/O-bound pipeline (each datum waits 0.1 s) runs once as a whole (one process, one
worker) and once as 3 `pfsmount run --shard auto/3` processes started together, each in its
own mount namespace with JOB_COMPLETION_INDEX set, as the pods of an Indexed Job, on one
data directory. Throughput is datums / (last datum's end - first datum's start), from the
times each datum's output records (as the `parallel` section does). Target: 3 shards reach
>= 2.7x one process's datums/s.

Datums go to shards by a hash of their id, so the shares are even only on average: the job
lasts as long as the largest share, which caps the speedup at N / (largest share / mean).
With 24 datums the shares here are 6/8/10 (cap 2.4x), with 300 they are 95/98/107 (2.8x);
so the section runs 300 datums (150 with --quick) and reports the shares and that cap.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping
from typing import Any

from benchlib.common import VENV_PY, BenchError, Context, say
from benchlib.fixtures import build_datum_files, fixture
from benchlib.parallel import WORK, _timings
from benchlib.procs import batching_spec, expect_exit, run_pfsmount

SHARDS = 3
IO_SECONDS = 0.1


def shards(ctx: Context) -> dict[str, Any]:
    n = 150 if ctx.quick else 300
    repo = "shards-in"
    fixture(ctx, repo, build_datum_files(n, 64), (n, 64))
    one: list[float] = []
    three: list[float] = []
    shares: list[int] = []
    for i in range(ctx.repeat):
        one.append(_whole(ctx, repo, n, i))
        rate, shares = _sharded(ctx, repo, n, i)
        three.append(rate)
        say(f"  shards repetition {i + 1}/{ctx.repeat} done")
    one_rate, three_rate = statistics.median(one), statistics.median(three)
    return {"datums": n, "shards": SHARDS, "shares": shares,
            "balance_cap": n / max(shares), "one_datums_per_second": one_rate,
            "sharded_datums_per_second": three_rate, "speedup": three_rate / one_rate}


def _spec(pipeline: str, repo: str) -> dict[str, Any]:
    spec = batching_spec(pipeline, repo, "/*", ["python3", WORK, "io", str(IO_SECONDS)], {})
    spec["input"]["pfs"]["name"] = "files"
    return spec


def _whole(ctx: Context, repo: str, n: int, i: int) -> float:
    job = run_pfsmount(ctx, f"shards-one-{i}", _spec("shards-one", repo))
    expect_exit(job, f"shards-one-{i}")
    return float(_timings(ctx.data / "shards-one", n)["datums_per_second"])


def _sharded(ctx: Context, repo: str, n: int, i: int) -> tuple[float, list[int]]:
    name = f"shards-three-{i}"
    spec_path = ctx.path("specs", f"{name}.json")
    spec_path.write_text(json.dumps(_spec("shards-three", repo), indent=1))
    path = os.pathsep.join([str(VENV_PY.parent), os.environ.get("PATH", os.defpath)])
    procs = []
    for index in range(SHARDS):
        log = ctx.path("logs", f"{name}-{index}.err")
        cmd = ["unshare", "--mount", "--propagation", "private", str(VENV_PY), "-m", "pfsmount",
               "run", str(spec_path), "--data", str(ctx.data), "--mountpoint", "/pfs",
               "--shard", f"auto/{SHARDS}"]
        with open(log, "wb") as err:
            procs.append((ctx.janitor.spawn(
                cmd, env={**os.environ, "PATH": path, "JOB_COMPLETION_INDEX": str(index)},
                stdout=err, stderr=err), log))
    for proc, log in procs:
        proc.wait(ctx.timeout)
        ctx.janitor.done(proc)
        if proc.returncode != 0:
            raise BenchError(f"{name}: shard exited {proc.returncode} (log: {log})")
    out = ctx.data / "shards-three"
    # Each shard's one worker has its own port, which every output records first.
    ports = [p.read_text().split()[0] for p in out.iterdir()]
    shares = sorted(ports.count(port) for port in set(ports))
    return float(_timings(out, n)["datums_per_second"]), shares


def render_shards(r: Mapping[str, Any]) -> tuple[str, list[str]]:
    from benchlib.report import table

    rows = [["1 process (whole job)", f"{r['one_datums_per_second']:,.2f}", "-"],
            [f"{r['shards']} shards at once", f"{r['sharded_datums_per_second']:,.2f}",
             "/".join(map(str, r["shares"])) + f" (speedup cap {r['balance_cap']:.2f}x)"]]
    return (f"Shards: {r['datums']} I/O-bound datums ({IO_SECONDS} s each), one job",
            table(["run", "datums/s", "datums per shard"], rows))


def shards_targets(r: Mapping[str, Any]) -> list[Any]:
    from benchlib.report import at_least

    return [at_least("I/O-bound datums/s, 3 shards / 1 process", r["speedup"], 2.7, "x",
                     ".2f")]

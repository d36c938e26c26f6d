"""Judging the targets, and the table: what a person reads after a run."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchlib import iobench, s3bench
from benchlib.common import MIB, ROOT, SECTIONS, VENV_PY
from benchlib.parallel import parallel_targets, render_parallel
from benchlib.sections import ALTERNATIVES, READ_PATHS
from benchlib.shards import render_shards, shards_targets

# ----- targets -------------------------------------------------------------------------------


@dataclass
class Target:
    """One row of the issue's target table, judged against this run."""

    what: str
    target: str
    measured: str
    met: bool
    margin: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def at_most(what: str, value: float, limit: float, unit: str, fmt: str = ".2f") -> Target:
    met = value <= limit
    margin = f"{(limit - value) / limit:.0%} under" if met else f"{value / limit:.1f}x the limit"
    return Target(what, f"<= {limit:{fmt}} {unit}", f"{value:{fmt}} {unit}", met, margin)


def at_least(what: str, value: float, floor: float, unit: str, fmt: str = ".0f") -> Target:
    met = value >= floor
    margin = (f"{value / floor - 1:.0%} over" if met
              else f"{1 - value / floor:.0%} short")
    return Target(what, f">= {floor:{fmt}} {unit}", f"{value:{fmt}} {unit}", met, margin)


def judge(results: Mapping[str, Any]) -> list[Target]:
    """The issue's targets, for the sections that ran."""
    targets: list[Target] = []
    for name, check in TARGET_CHECKS.items():
        section = results.get(name)
        if isinstance(section, dict) and "error" not in section:
            targets.extend(check(section))
    return targets


# Issue 13's limits on the overhead per datum of each client, in ms.
OVERHEAD_LIMITS_MS = {
    "pfsmount_client": 0.7,
    "pachyderm_sdk": 2.0,
    "pachyderm_sdk_env40": 2.0,
    "bare_grpc": 1.0,
    "pachctl_loop": 5.0,
    "pachctl_subprocess": 5.0,
}


def _per_datum_targets(r: Mapping[str, Any]) -> list[Target]:
    alternatives = r["alternatives"]
    own = alternatives["pfsmount_client"]
    return [
        *(at_most(f"overhead per datum, {ALTERNATIVES[key].removeprefix('pfsmount + ')}",
                  alternatives[key]["overhead_ms_per_datum"], limit, "ms")
          for key, limit in OVERHEAD_LIMITS_MS.items()),
        at_least("datums/s, pfsmount client (datum loop)", own["datums_per_second"],
                 1000, "/s"),
        at_least("datums/s, pfsmount client (whole job incl. start-up)",
                 own["job_datums_per_second"], 1000, "/s"),
    ]


def _large_read_targets(r: Mapping[str, Any]) -> list[Target]:
    paths = r["paths"]
    pfs = paths["pfsmount"]
    targets = [at_least("large file, second read vs direct", pfs["second_vs_direct"] * 100,
                        90, "%")]
    if "skipped" not in paths["bindfs"]:
        targets.insert(0, at_least("large file, first read vs bindfs", pfs["first_mb_s"],
                                   paths["bindfs"]["first_mb_s"], "MB/s"))
    return targets


def _small_targets(r: Mapping[str, Any]) -> list[Target]:
    return [at_most(f"{r['files']:,}-file datum, walk + read vs direct",
                    r["walks"]["pfsmount_first_walk"]["vs_direct"], 3.0, "x", fmt=".1f")]


def _swap_targets(r: Mapping[str, Any]) -> list[Target]:
    return [at_most(f"swap to a {r['files_per_datum']:,}-file datum (median)",
                    r["swap_ms_median"], 50, "ms", fmt=".1f")]


def _scale_targets(r: Mapping[str, Any]) -> list[Target]:
    return [
        at_most(f"{r['files']:,}-file repo: time to first datum", r["first_datum_seconds"],
                2.0, "s"),
        at_most(f"{r['files']:,}-file repo: peak memory", r["peak_rss_mb"], 300, "MB",
                fmt=".0f"),
    ]


TARGET_CHECKS: dict[str, Callable[[Mapping[str, Any]], list[Target]]] = {
    "per_datum": _per_datum_targets,
    "large_read": _large_read_targets,
    "small_files": _small_targets,
    "swap": _swap_targets,
    "scale": _scale_targets,
    "s3": s3bench.targets,
    "parallel": parallel_targets,
    "shards": shards_targets,
    "io": iobench.targets,
}


# ----- the table -----------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table (readable as plain text too), columns padded to their widest cell."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *(line(r) for r in rows)]


def render(results: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for name in SECTIONS:
        section = results.get(name)
        if section is None:
            continue
        if "error" in section:
            parts.append(f"### {name}\n\nFAILED: {section['error']}\n")
            continue
        title, lines = RENDERERS[name](section)
        parts.append(f"### {title}\n\n" + "\n".join(lines) + "\n")
    targets = results.get("targets", [])
    if targets:
        rows = [[t["what"], t["target"], t["measured"], "met" if t["met"] else "MISSED",
                 t["margin"]] for t in targets]
        parts.append("### Targets\n\n" + "\n".join(
            table(["what", "target", "measured", "verdict", "margin"], rows)) + "\n")
    return "\n".join(parts)


def _render_per_datum(r: Mapping[str, Any]) -> tuple[str, list[str]]:
    rows = []
    for key, label in ALTERNATIVES.items():
        a = r["alternatives"][key]
        overhead = "—" if key == "floor" else f"{a['overhead_ms_per_datum']:.3f}"
        job = f"{a['job_seconds']:.2f}" if "job_seconds" in a else "—"
        rows.append([label, f"{a['loop_seconds']:.2f}", f"{a['datums_per_second']:,.0f}",
                     f"{a['ms_per_datum']:.3f}", overhead, job])
    title = (f"Per-datum overhead: {r['datums']:,} datums of one {r['datum_bytes']:,}-byte "
             "file")
    return title, table(["alternative", "loop s", "datums/s", "ms/datum",
                         "overhead ms/datum", "whole job s"], rows)


def _render_large_read(r: Mapping[str, Any]) -> tuple[str, list[str]]:
    rows = []
    for key, label in READ_PATHS.items():
        p = r["paths"].get(key)
        if p is None:
            continue
        if "skipped" in p:
            rows.append([label, f"n/a ({p['skipped']})", "n/a", "n/a", "n/a", "n/a"])
            continue
        served = f"{p['served_mb_s']:,.0f}" if "served_mb_s" in p else "—"
        rows.append([label, f"{p['first_mb_s']:,.0f}", f"{p['second_mb_s']:,.0f}",
                     f"{p['first_vs_direct']:.2f}", f"{p['second_vs_direct']:.2f}", served])
    title = (f"Large reads: {r['bytes'] / MIB:,.0f} MiB file, 1 MiB reads, first read after "
             f"{r['cold_cache_by']}")
    return title, table(["path", "first MB/s", "second MB/s", "first / direct",
                         "second / direct", "served MB/s (source cached, mount's cache "
                         "dropped)"], rows)


SMALL_LABELS = {
    "direct": "direct (source in page cache)",
    "bindfs_first_walk": "bindfs, first walk",
    "bindfs_second_walk": "bindfs, second walk",
    "pfsmount_first_walk": "pfsmount, first walk",
    "pfsmount_second_walk": "pfsmount, second walk",
}


def _render_small(r: Mapping[str, Any]) -> tuple[str, list[str]]:
    n = r["files"]
    rows = []
    for key, label in SMALL_LABELS.items():
        walk = r["walks"].get(key)
        if walk is None:
            continue
        if "skipped" in walk:
            rows.append([label, f"n/a ({walk['skipped']})", "n/a", "n/a"])
            continue
        rows.append([label, f"{walk['seconds']:.3f}", f"{n / walk['seconds']:,.0f}",
                     f"{walk['vs_direct']:.2f}"])
    title = f"Many small files: one datum of {n:,} files of {r['file_bytes']:,} bytes"
    return title, table(["walk + read", "seconds", "files/s", "vs direct"], rows)


def _render_swap(r: Mapping[str, Any]) -> tuple[str, list[str]]:
    rows = [
        ["NextDatum, datum to datum (median)", f"{r['swap_ms_median']:.1f}"],
        ["NextDatum, datum to datum (max)", f"{r['swap_ms_max']:.1f}"],
        ["NextDatum, first datum (median)", f"{r['first_datum_ms_median']:.1f}"],
    ]
    return (f"Swap latency: next datum has {r['files_per_datum']:,} files",
            table(["call", "ms"], rows))


def _render_scale(r: Mapping[str, Any]) -> tuple[str, list[str]]:
    whole = r["whole_job"]
    if whole["finished"]:
        job = f"all {whole['of']:,} datums in {whole['job_seconds']:.1f} s"
    else:
        job = (f"{whole['datums_handed_out']:,} of {whole['of']:,} datums in "
               f"{whole['window_seconds']:.0f} s, then stopped")
    rows = [
        ["`pfsmount run` start to first datum in user code", f"{r['first_datum_seconds']:.2f} s"],
        ["peak memory of pfsmount, up to the first datum",
         f"{r['peak_rss_mb_to_first_datum']:.0f} MB"],
        ["whole job (one run, empty user code)", job],
        ["peak memory of pfsmount, whole job", f"{whole['peak_rss_mb']:.0f} MB"],
        ["datums/s in the first / last tenth of that run",
         f"{whole['rate_first_tenth']:,.0f} / {whole['rate_last_tenth']:,.0f}"],
        ["`pfsmount list-datums`", f"{r['list_datums_seconds']:.2f} s"],
    ]
    lines = table(["measurement", "value"], rows)
    trees = r.get("trees") or []
    if trees:
        lines += ["", *_tree_table(trees)]
    return (f"Scale: repo of {r['files']:,} files, glob {r['glob']}", lines)


def _tree_table(trees: Sequence[Mapping[str, Any]]) -> list[str]:
    """Issue 18: how start time and memory grow with the repo (they should not)."""
    def whole(t: Mapping[str, Any]) -> str:
        w = t["whole_job"]
        done = ("all" if w["finished"]
                else f"{w['datums_handed_out']:,} in {w['window_seconds']:.0f} s")
        return f"{w['datums_per_second']:,.0f}/s ({done})"

    rows = [
        ["first datum in user code (first run)",
         *(f"{t['first_datum_seconds']:.2f} s" for t in trees)],
        ["peak memory up to the first datum",
         *(f"{t['peak_rss_mb_to_first_datum']:.0f} MB" for t in trees)],
        ["first datum, resuming that stopped job (its datums skipped)",
         *(f"{t['second_run']['first_datum_seconds']:.2f} s" for t in trees)],
        ["`list-datums --json`: first line",
         *(f"{t['list_datums_first_line_seconds']:.2f} s" for t in trees)],
        ["`list-datums --json`: all / peak memory",
         *(f"{t['list_datums_seconds']:.1f} s / {t['list_datums_peak_rss_mb']:.0f} MB"
           for t in trees)],
        ["whole job, empty user code", *(whole(t) for t in trees)],
        ["peak memory, whole job", *(f"{t['whole_job']['peak_rss_mb']:.0f} MB" for t in trees)],
        ["ledger size after it", *(f"{t['whole_job']['ledger_mb']:.0f} MB" for t in trees)],
    ]
    return table(["streamed datums, glob /*/*",
                  *(f"{t['files']:,} files ({t['dirs']:,} dirs)" for t in trees)], rows)


RENDERERS: dict[str, Callable[[Mapping[str, Any]], tuple[str, list[str]]]] = {
    "per_datum": _render_per_datum,
    "large_read": _render_large_read,
    "small_files": _render_small,
    "swap": _render_swap,
    "scale": _render_scale,
    "s3": s3bench.render,
    "parallel": render_parallel,
    "shards": render_shards,
    "io": iobench.render,
}


# ----- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(_meminfo_kb("MemTotal") / MIB, 1),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": _venv_python_version(),
        "fuse": _first_line(["fusermount3", "--version"]),
        "bindfs": _first_line(["bindfs", "--version"]),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_average_at_end": os.getloadavg(),
        "git": _git_state(),
    }


def _git_state() -> dict[str, Any]:
    """Which code was measured: the commit, and the files changed on top of it."""
    head = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                            capture_output=True, text=True, check=False).stdout
    return {"commit": head, "changed": [line[3:] for line in status.splitlines()]}


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _meminfo_kb(key: str) -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _os_name() -> str:
    with contextlib.suppress(OSError):
        return platform.freedesktop_os_release().get("PRETTY_NAME", "")
    return ""


def _venv_python_version() -> str:
    return _first_line([str(VENV_PY), "-c", "import sys; print(sys.version.split()[0])"])


def _first_line(cmd: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not available"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "not available"

"""`scripts/bench --quick` runs end to end, so the benchmark cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support import ROOT, is_mounted, needs_fuse

pytestmark = needs_fuse

SECTIONS = {
    # section: keys its JSON must hold
    "per_datum": {"datums", "alternatives"},
    "large_read": {"bytes", "cold_cache_by", "paths"},
    "small_files": {"files", "walks"},
    "swap": {"swap_ms_median", "swap_ms_max", "first_datum_ms_median"},
    "scale": {"first_datum_seconds", "peak_rss_mb", "whole_job", "list_datums_seconds"},
    "parallel": {"runs", "cpu_speedup", "io_speedup", "overhead_ratio"},
    "shards": {"speedup", "job_speedup", "shares"},
    "io": {"rows", "runs"},
}
ALTERNATIVES = {"floor", "pfsmount_client", "pachyderm_sdk", "pachyderm_sdk_env40", "bare_grpc",
                "pachctl_loop", "pachctl_subprocess", "process_per_datum"}
TARGETS = 26  # rows of the issues' target tables that a run with bindfs judges (io: 7)


def test_quick_benchmark_measures_every_section(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench"), "--quick", "--no-install",
         "--json", str(out), "--workdir", str(work)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"

    results = json.loads(out.read_text())
    assert results["config"]["quick"] is True
    assert {"cores", "ram_gib", "kernel", "python"} <= set(results["machine"])
    for section, keys in SECTIONS.items():
        assert "error" not in results[section], results[section]
        assert keys <= set(results[section]), (section, sorted(results[section]))

    alternatives = results["per_datum"]["alternatives"]
    assert set(alternatives) == ALTERNATIVES
    assert all(a["datums_per_second"] > 0 for a in alternatives.values())
    assert {"direct", "pfsmount"} <= set(results["large_read"]["paths"])
    bindfs = results["large_read"]["paths"].get("bindfs", {})
    assert len(results["targets"]) == TARGETS - (1 if "skipped" in bindfs else 0)

    for title in ("Per-datum overhead", "Large reads", "Many small files", "Swap latency",
                  "Scale", "Parallel workers", "I/O through /pfs", "Targets"):
        assert title in done.stdout
    # Nothing the benchmark mounted is left behind.
    assert not any(is_mounted(p) for p in (work / "mnt").glob("*"))

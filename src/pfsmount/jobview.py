"""A pipeline's recorded jobs read as wholes, for `list-jobs`, `inspect-job`, `list-datums
--job` and `logs`: its one ledger, or, when it ran as shards, every shard's ledger merged.

`JobRecords` answers the same questions as a `Ledger` (jobs, job, job_datums), so the
commands do not care how the job ran. A sharded job is one row: counts summed, started at
the first shard's start, ended at the last shard's end, its state the worst of its shards'
("running" while any runs; "partial" while a shard has not recorded the job at all). An
output path written by datums of two shards fails the job and is listed as a conflict by
`job` (what `inspect-job` reads).
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Sequence
from typing import Any

from pfsmount.ledger import RUNNING, Ledger
from pfsmount.shardjob import conflicts
from pfsmount.shards import Shard, shard_dirs
from pfsmount.workspace import Workspace

_COUNTED = ("total", "skipped", "processed", "failed", "recovered")
# Worst first: the state a whole job shows when its shards differ.
_STATE_ORDER = (RUNNING, "partial", "killed", "failed", "success")


def has_records(data_dir: str, pipeline: str) -> bool:
    ws = Workspace.of(data_dir, pipeline)
    return os.path.exists(ws.ledger_path) or any(
        os.path.exists(os.path.join(d, "ledger.sqlite")) for d in shard_dirs(ws.root).values())


class JobRecords:
    """The jobs of one pipeline in one data directory, merged over its shards' ledgers."""

    def __init__(self, data_dir: str, pipeline: str) -> None:
        self.data_dir = data_dir
        self.pipeline = pipeline
        ws = Workspace.of(data_dir, pipeline)
        self._ledgers: dict[Shard | None, Ledger] = {}
        try:
            if os.path.exists(ws.ledger_path):
                self._ledgers[None] = Ledger(ws.ledger_path)
            for shard, directory in sorted(shard_dirs(ws.root).items(),
                                           key=lambda item: (item[0].count, item[0].index)):
                path = os.path.join(directory, "ledger.sqlite")
                if os.path.exists(path):
                    self._ledgers[shard] = Ledger(path)
        except BaseException:
            self.close()
            raise

    @property
    def sharded(self) -> bool:
        return any(shard is not None for shard in self._ledgers)

    def close(self) -> None:
        for ledger in self._ledgers.values():
            ledger.close()

    def jobs(self) -> list[dict[str, Any]]:
        """Every job, oldest first; a sharded job once, with `shards` (shard -> its row)."""
        rows: dict[str, list[tuple[Shard | None, dict[str, Any]]]] = {}
        for shard, ledger in self._ledgers.items():
            for job in ledger.jobs():
                rows.setdefault(job["job_id"], []).append((shard, job))
        merged = [self._merge(job_id, parts) for job_id, parts in rows.items()]
        return sorted(merged, key=lambda j: j["started"])

    def job(self, job_prefix: str) -> dict[str, Any] | None:
        """One job, as `jobs` gives it, plus its shards' output conflicts (`conflicts`; such
        a job is `failed`). Only here: finding them reads every output path, which listing
        the jobs must not cost."""
        jobs = self.jobs()
        exact = [j for j in jobs if j["job_id"] == job_prefix]
        matches = exact or [j for j in jobs if j["job_id"].startswith(job_prefix)]
        if not matches:
            return None
        job = matches[-1]
        if job.get("shards"):
            job["conflicts"] = self.conflicts(list(job["shards"]))
            if job["conflicts"] and job["state"] == "success":
                job["state"] = "failed"
        return job

    def job_datums(self, job_id: str) -> list[dict[str, Any]]:
        """Every datum of the job, shard by shard; each record names its `shard` ("" when
        the job was not sharded)."""
        out: list[dict[str, Any]] = []
        for shard, ledger in self._ledgers.items():
            for rec in ledger.job_datums(job_id):
                rec["shard"] = str(shard) if shard is not None else ""
                out.append(rec)
        return out

    # Per-job questions answered by each shard's ledger (indexed), then merged: a job of
    # millions of datums is never loaded whole (`Ledger`'s methods of the same names).

    def state_counts(self, job_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ledger in self._ledgers.values():
            for state, n in ledger.state_counts(job_id).items():
                counts[state] = counts.get(state, 0) + n
        return counts

    def attempt_seconds(self, job_id: str) -> tuple[int, float, float, float]:
        """(ended datums, median, max and total seconds) over every shard's datums."""
        ledgers = list(self._ledgers.values())
        if len(ledgers) == 1:
            return ledgers[0].attempt_seconds(job_id)
        parts = [ledger.attempt_seconds(job_id) for ledger in ledgers]
        n = sum(p[0] for p in parts)
        if not n:
            return 0, 0.0, 0.0, 0.0
        merged = heapq.merge(*(ledger.ended_seconds(job_id) for ledger in ledgers))
        median = next(itertools.islice(merged, n // 2, None))
        return n, median, max(p[2] for p in parts), sum(p[3] for p in parts)

    def troubled_datums(self, job_id: str) -> list[dict[str, Any]]:
        """The job's FAILED and RECOVERED datums, shard by shard, each naming its `shard`."""
        out: list[dict[str, Any]] = []
        for shard, ledger in self._ledgers.items():
            for rec in ledger.troubled_datums(job_id):
                rec["shard"] = str(shard) if shard is not None else ""
                out.append(rec)
        return out

    def datum_ids_in_job(self, job_id: str, prefix: str) -> list[str]:
        return [d for ledger in self._ledgers.values()
                for d in ledger.datum_ids_in_job(job_id, prefix)]

    def job_datum_states_of(self, job_id: str, datum_ids: Sequence[str]
                            ) -> dict[str, tuple[str, int, str]]:
        states: dict[str, tuple[str, int, str]] = {}
        for ledger in self._ledgers.values():
            states.update(ledger.job_datum_states_of(job_id, datum_ids))
        return states

    def log_paths(self, job_id: str) -> list[str]:
        """The job's log files: one per shard that ran it."""
        paths = []
        for shard in self._ledgers:
            ws = Workspace.of(self.data_dir, self.pipeline, shard)
            paths.append(ws.log_path(job_id))
        return paths

    def conflicts(self, shards: Sequence[Shard | None]) -> list[str]:
        """Output paths written by datums of two of `shards` (the job's)."""
        owned = {s: self._ledgers[s].all_outputs() for s in shards
                 if s is not None and s in self._ledgers}
        return conflicts(owned) if len(owned) > 1 else []

    def _merge(self, job_id: str, parts: list[tuple[Shard | None, dict[str, Any]]]
               ) -> dict[str, Any]:
        if len(parts) == 1 and parts[0][0] is None:
            return parts[0][1]
        shards = [shard for shard, _ in parts]
        count = max(shard.count for shard in shards if shard is not None)
        rows = [row for _, row in parts]
        job: dict[str, Any] = {
            "job_id": job_id, "pipeline": rows[0]["pipeline"],
            "started": min(r["started"] for r in rows),
            "ended": (max(r["ended"] for r in rows)
                      if all(r["ended"] for r in rows) and len(rows) == count else None),
            **{k: sum(r[k] for r in rows) for k in _COUNTED},
            "shards": dict(parts), "shard_count": count,
        }
        states = {r["state"] for r in rows}
        if len(rows) < count:
            states.add("partial")
        job["state"] = next(s for s in (*_STATE_ORDER, *sorted(states)) if s in states)
        missing = sorted(set(range(count)) - {s.index for s in shards if s is not None})
        messages = [f"shard {shard}: {row['message']}" for shard, row in parts if row["message"]]
        if missing:
            messages.append(f"shard{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(map(str, missing))} of {count} not started")
        job["message"] = "; ".join(messages)
        return job

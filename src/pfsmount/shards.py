"""One job split over N processes (Kubernetes Indexed Job pods): which shard owns a datum,
which job all shards share, and the shape of a sharded workspace.

Pure decisions, no I/O but a directory listing: `plan.planned` applies `select` at one place
of its planning, `workspace.py` keys every name a shard writes by `Shard.key`.

- **Assignment**: a datum belongs to shard `shard_of(datum_id, n)`, from a BLAKE2b hash of its
  id. It depends on nothing but the id and N, so a retried pod of the same index gets exactly
  the datums its predecessor had, every datum belongs to exactly one shard, and a shard can
  decide each datum as the listing streams by, without seeing the others.
- **Job id**: `--job NAME` (`k8s render` passes the Job's name through the downward API), else
  derived from what every shard knows before listing anything: the pipeline, the spec's
  digest and N (`derived_job_id`). The input state is deliberately not in it (it is known only
  after the whole listing); a later run with new data re-enters the same id as a new round
  (see `run.choose_job`): unchanged, processed datums are skipped as in any new job.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pfsmount.datums import Datum

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
SHARDS_ENV = "PFSMOUNT_SHARDS"  # N: shard I/N with I from INDEX_ENV
JOB_ENV = "PFSMOUNT_JOB"  # the job name when --job is not given
MAX_SHARDS = 100_000  # Kubernetes' own limit on completions of an Indexed Job

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SHARD_DIR = re.compile(r"shard-(\d+)-of-(\d+)")


class ShardError(Exception):
    """A bad --shard / --job / environment value; the message names it and the fix."""


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count)."""

    index: int
    count: int

    @property
    def key(self) -> str:
        """Its name in the workspace: `shard-I-of-N`."""
        return f"shard-{self.index}-of-{self.count}"

    def owns(self, datum_id: str) -> bool:
        return shard_of(datum_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(datum_id: str, n: int) -> int:
    """The shard (0..n-1) that processes datum `datum_id`: stable across runs, machines and
    Python versions (no `hash()`, which is salted per process)."""
    digest = hashlib.blake2b(datum_id.encode(), digest_size=8, person=b"pfsm-shard").digest()
    return int.from_bytes(digest, "big") % n


def select(datums: Iterable[Datum], shard: Shard | None) -> Iterator[Datum]:
    """The datums `shard` owns, in their order (all of them without a shard)."""
    if shard is None or shard.count == 1:
        yield from datums
        return
    for d in datums:
        if shard_of(d.id, shard.count) == shard.index:
            yield d


def parse_shard(text: str | None, env: Mapping[str, str] = os.environ) -> Shard | None:
    """`--shard I/N` or `auto/N` (I from JOB_COMPLETION_INDEX), else PFSMOUNT_SHARDS=N;
    None when the run is not sharded. Raises ShardError naming the bad value."""
    if text is None:
        count = env.get(SHARDS_ENV)
        if not count:
            return None
        what = f"{SHARDS_ENV}={count}"
        n = _count(count, what)
        return _shard(_index_from_env(env, what), n, what)
    what = f"--shard {text}"
    index_text, sep, count_text = text.partition("/")
    if not sep:
        raise ShardError(f"{what}: write I/N (shard I of N, counted from 0, e.g. 0/3) or auto/N "
                         f"(I from ${INDEX_ENV}, as Kubernetes sets it in an Indexed Job)")
    count = _count(count_text, what)
    index = _index_from_env(env, what) if index_text == "auto" else _index(index_text, what)
    return _shard(index, count, what)


def _count(text: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_SHARDS:
        raise ShardError(f"{what}: the number of shards must be a whole number from 1 to "
                         f"{MAX_SHARDS}, not {text!r}")
    return int(text)


def _index(text: str, what: str) -> int:
    if not text.isdigit():
        raise ShardError(f"{what}: the shard index must be a whole number counted from 0 "
                         f"(or auto, to take it from ${INDEX_ENV}), not {text!r}")
    return int(text)


def _index_from_env(env: Mapping[str, str], what: str) -> int:
    value = env.get(INDEX_ENV)
    if value is None:
        raise ShardError(f"{what}: ${INDEX_ENV} is not set; Kubernetes sets it in the pods of "
                         f"an Indexed Job (completionMode: Indexed); elsewhere pass --shard I/N")
    if not value.isdigit():
        raise ShardError(f"{what}: ${INDEX_ENV} is {value!r}, not a shard index (0, 1, ...)")
    return int(value)


def _shard(index: int, count: int, what: str) -> Shard:
    if index >= count:
        raise ShardError(f"{what}: shard index {index} is not below the number of shards "
                         f"{count} (shards are numbered 0 to {count - 1})")
    return Shard(index, count)


def parse_job_name(text: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """`--job NAME`, else $PFSMOUNT_JOB; None when neither is given."""
    name = text if text is not None else env.get(JOB_ENV) or None
    if name is None:
        return None
    if not _JOB_NAME.fullmatch(name):
        source = "--job" if text is not None else f"${JOB_ENV}"
        raise ShardError(f"{source} {name!r}: a job name is 1-100 letters, digits, '.', '_' or "
                         "'-', starting with a letter or digit (a Kubernetes Job's name is one)")
    return name


def job_for(pipeline: str, spec_digest: str, shard: Shard | None, job_arg: str | None,
            env: Mapping[str, str] = os.environ) -> str | None:
    """The job name a run joins: `--job`/$PFSMOUNT_JOB, else for a shard the derived one,
    else None (an unsharded run picks its own, as always)."""
    name = parse_job_name(job_arg, env)
    if name is None and shard is not None and shard.count > 1:
        return derived_job_id(pipeline, spec_digest, shard)
    return name


def derived_job_id(pipeline: str, spec_digest: str, shard: Shard) -> str:
    """The job id every shard of a run computes alone, before listing anything."""
    h = hashlib.blake2b(digest_size=16, person=b"pfsm-job")
    for part in (pipeline, spec_digest, str(shard.count)):
        data = part.encode()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def shard_dirs(workspace_root: str) -> dict[Shard, str]:
    """The shard workspaces below a pipeline's workspace root: shard -> directory."""
    found: dict[Shard, str] = {}
    try:
        names = os.listdir(workspace_root)
    except FileNotFoundError:
        return found
    for name in names:
        m = _SHARD_DIR.fullmatch(name)
        if m and int(m[1]) < int(m[2]):
            found[Shard(int(m[1]), int(m[2]))] = os.path.join(workspace_root, name)
    return found

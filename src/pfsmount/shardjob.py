"""A shard's side of a sharded job: which job it joins, whether the workspace's records fit
its shard count, and what it tells the other shards (the outputs it owns).

The shards of a job share nothing but the data directory, and each writes only below its
own `shard-I-of-N/` (see `workspace.py`). What another shard needs to know about this one's
outputs, to report an output path written by datums of two shards, it reads from this
shard's `outputs.list`: replaced atomically (write, fsync, rename) at the start and end of
each of its runs, so a reader on another machine never sees half of one and never opens
this shard's SQLite ledger while it is being written (unsafe on NFS).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence

from pfsmount.ledger import RUNNING, Ledger
from pfsmount.names import display
from pfsmount.shards import Shard, shard_dirs
from pfsmount.workspace import Workspace

log = logging.getLogger(__name__)

OUTPUTS_FILE = "outputs.list"


class LayoutError(Exception):
    """The workspace holds records of another shard count; the message says what to do."""


def choose_job(ledger: Ledger, name: str | None) -> tuple[str, bool]:
    """(job id, resuming) for this run.

    Without a name: the interrupted last job is resumed, else a new one starts (as always).
    With one (`--job`, or the id every shard derives alone): that job is resumed while this
    ledger says it is running or was killed (a retried pod continues its predecessor). A job
    of that name that ended is entered again as a new round: its datum rows go (this
    ledger's rows are this shard's alone), while what each datum last became stays, so
    unchanged processed datums are skipped and the others run, as in any new job.
    """
    if name is None:
        interrupted = ledger.interrupted_job()
        return (interrupted["job_id"], True) if interrupted else (uuid.uuid4().hex, False)
    job = next((j for j in ledger.jobs() if j["job_id"] == name), None)
    if job is not None and job["state"] in (RUNNING, "killed"):
        return name, True
    if job is not None:
        ledger.forget_job(name)
    return name, False


def check_layout(workspace: Workspace) -> None:
    """Refuse a run whose shard count differs from the one the recorded outputs were made
    with: its shards' ledgers would not know which datum owns which output file."""
    mine = workspace.shard.count if workspace.shard is not None else 1
    counts = {shard.count for shard, path in shard_dirs(workspace.root).items()
              if os.path.exists(os.path.join(path, "ledger.sqlite"))}
    if os.path.exists(os.path.join(workspace.root, "ledger.sqlite")):
        counts.add(1)
    others = sorted(counts - {mine})
    if not others:
        return
    before = " and ".join("unsharded" if n == 1 else f"with --shard I/{n}" for n in others)
    now = "unsharded" if mine == 1 else f"with --shard I/{mine}"
    raise LayoutError(
        f"pipeline '{workspace.pipeline}' in {workspace.data_dir} was run {before}; its outputs "
        f"and records belong to that layout, and a run {now} would not know which datum owns "
        f"which output file. Run it as before, or start afresh by moving "
        f"{workspace.repo_dir} and {workspace.root} away")


def export_outputs(workspace: Workspace, outputs: Mapping[str, str]) -> None:
    """Publish this shard's output files (path -> datum id) for the other shards."""
    path = os.path.join(workspace.own, OUTPUTS_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    # NUL-separated "datum<TAB>path": paths are bytes and may hold tabs and newlines.
    data = b"".join(d.encode() + b"\t" + os.fsencode(p) + b"\0" for p, d in outputs.items())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def read_outputs(shard_dir: str) -> dict[str, str]:
    """What a shard last published: output path -> datum id ({} when nothing yet)."""
    try:
        with open(os.path.join(shard_dir, OUTPUTS_FILE), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    owners: dict[str, str] = {}
    for record in data.split(b"\0"):
        datum, sep, path = record.partition(b"\t")
        if sep:
            owners[os.fsdecode(path)] = datum.decode(errors="replace")
    return owners


def others_outputs(workspace: Workspace) -> Iterator[tuple[Shard, dict[str, str]]]:
    """Every other shard's published outputs (same shard count)."""
    assert workspace.shard is not None
    for shard, directory in sorted(shard_dirs(workspace.root).items(),
                                   key=lambda item: item[0].index):
        if shard.count == workspace.shard.count and shard != workspace.shard:
            yield shard, read_outputs(directory)


def conflicts(owned: Mapping[Shard, Mapping[str, str]]) -> list[str]:
    """An output path written by datums of two shards, worded as the one-machine conflict
    (`OutputRepo._check_conflicts`): the same path, or a file in one that is a directory of
    the other's files."""
    first: dict[str, tuple[str, Shard]] = {}
    found: list[str] = []
    for shard in sorted(owned, key=lambda s: s.index):
        for path, datum in owned[shard].items():
            seen = first.get(path)
            if seen is None:
                first[path] = (datum, shard)
            elif seen[1] != shard:
                found.append(
                    f"output path /{display(path)} was written by datum {seen[0]} (shard "
                    f"{seen[1]}) and datum {datum} (shard {shard}); each output path may come "
                    "from one datum only (write datum-specific names, e.g. include the input "
                    "file name)")
    for path, (datum, shard) in first.items():
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = first.get("/".join(parts[:i]))
            if parent is not None and parent[1] != shard:
                found.append(
                    f"output path /{display(path)} of datum {datum} (shard {shard}) collides "
                    f"with datum {parent[0]}'s output (shard {parent[1]}): a file or symlink in "
                    "one is a directory in the other; each output path may come from one datum "
                    "only")
                break
    return found


def cross_shard_conflicts(workspace: Workspace, mine: Mapping[str, str]) -> list[str]:
    """Conflicts between this shard's outputs and what the others published."""
    assert workspace.shard is not None
    owned: dict[Shard, Mapping[str, str]] = {workspace.shard: mine}
    with contextlib.suppress(OSError):
        owned.update(others_outputs(workspace))
    return conflicts(owned)


class ForeignOutputs:
    """`OutputRepo.foreign` for a shard: never commit over a file that is not its own.

    A file in the output repo that no datum of this shard wrote may be another shard's
    output: the datum that would replace it fails with the one-machine conflict message
    (naming the other datum when that shard has published it), and the file stays. Checked
    in the committer thread right before the ledger promises the files; two shards committing
    one path within that instant are caught afterwards by `publish_outputs`.
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._owners: dict[str, tuple[str, Shard]] = {}

    def __call__(self, datum_id: str, paths: Sequence[str]) -> str | None:
        for path in paths:
            if not os.path.lexists(os.path.join(self.workspace.repo_dir, path)):
                continue
            owner = self._owners.get(path)
            if owner is None:
                self._reload()  # published since last looked
                owner = self._owners.get(path)
            who = (f"datum {owner[0]} (shard {owner[1]})" if owner is not None
                   else "another shard's datum, or no datum,")
            return (f"output path /{display(path)} was written by {who} and datum {datum_id} "
                    f"(shard {self.workspace.shard}); each output path may come from one datum "
                    "only (write datum-specific names, e.g. include the input file name)")
        return None

    def _reload(self) -> None:
        with contextlib.suppress(OSError):
            self._owners = {path: (datum, shard) for shard, outputs in
                            others_outputs(self.workspace) for path, datum in outputs.items()}


def publish_outputs(workspace: Workspace, ledger: Ledger) -> list[str]:
    """Publish this shard's outputs, and return its conflicts with the other shards'."""
    mine = ledger.all_outputs()
    try:
        export_outputs(workspace, mine)
    except OSError as exc:
        # Only the cross-shard check needs it, and the next run publishes again.
        log.warning("cannot publish this shard's output list in %s (%s); other shards "
                    "check against it when it can be written", workspace.own,
                    exc.strerror or exc)
    return cross_shard_conflicts(workspace, mine)

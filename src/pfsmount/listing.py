"""`pfsmount list-datums`: the datums a pipeline would process, for a person or a program.

The table is for reading: one row per datum, its full id (the value of `PACH_DATUM_ID`) and,
per input, the matched path. When every datum has the same inputs in the same order (a `pfs`
input, a `cross`, an inner `join`) each input gets its own column headed by its name;
otherwise (`union`, outer joins, `group`) the row lists `name:path` items.

Both stream: rows are written while the repos are still being listed (a `join` or `group`
first reads all its inputs). `--json` is for programs: JSON Lines, one object per datum,
with the id, the datum hash (what decides skipping: content fingerprint of every input and
the pipeline salt) and the inputs. The JSON
is valid UTF-8 for every parser. A path (or join/group key) whose bytes are not UTF-8 is
written with each such byte as U+FFFD, and its exact bytes, base64-encoded, under
`path_b64` (`join_on_b64`, `group_by_b64`): `base64.b64decode(record["path_b64"])` is the
name, `names.from_json` the same as a Python string. In the table such bytes show as `\\xff`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from pfsmount.datums import Datum, DatumInput, datum_hash, pfs_fields
from pfsmount.names import display, json_text
from pfsmount.spec import GroupInput, Input, JoinInput, PfsInput, PipelineSpec, UnionInput
from pfsmount.store.base import RepoSource

__all__ = ["json_record", "print_datums"]

_GAP = "  "
_CHUNK = 4096  # rows per write: one write per row is slow for 100k datums
_LATENCY = 0.1  # seconds a row may wait for its batch
_SAMPLE = 1000  # datums that size the table's columns


def print_datums(
    spec: PipelineSpec,
    repos: Mapping[str, RepoSource],
    datums: Iterable[Datum],
    *,
    as_json: bool,
    out: TextIO,
) -> None:
    """Print `datums` to `out` as they come, as a table or as JSON Lines (`as_json`)."""
    rows = _json_rows(spec, repos, datums) if as_json else _table_rows(spec.input, datums)
    batch: list[str] = []
    last_write = time.monotonic()
    for row in rows:
        batch.append(row)
        # Batched for speed, but never held long: the first lines appear at once.
        if len(batch) >= _CHUNK or time.monotonic() - last_write > _LATENCY:
            out.write("".join(batch))
            out.flush()
            batch.clear()
            last_write = time.monotonic()
    out.write("".join(batch))
    out.flush()


def json_record(datum: Datum, repos: Mapping[str, RepoSource], salt: str) -> dict[str, Any]:
    """The machine-readable form of one datum."""
    return {
        "id": datum.id,
        "hash": datum_hash(datum, repos, salt),
        "inputs": [_json_input(item) for item in datum.inputs],
    }


def _json_input(item: DatumInput) -> dict[str, Any]:
    record: dict[str, Any] = {"name": item.name, "repo": item.repo, "branch": item.branch}
    json_text(record, "path", item.path)
    record["commit"] = item.commit
    json_text(record, "join_on", item.join_on)
    json_text(record, "group_by", item.group_by)
    return record


def _json_rows(
    spec: PipelineSpec, repos: Mapping[str, RepoSource], datums: Iterable[Datum]
) -> Iterator[str]:
    for datum in datums:
        yield json.dumps(json_record(datum, repos, spec.salt)) + "\n"


def _table_rows(input: Input, datums: Iterable[Datum]) -> Iterator[str]:
    """The table. Its columns are sized from the first `_SAMPLE` datums (all of them in a
    small listing, which is then laid out exactly as a whole); a longer listing streams the
    rest, whose longer cells push their row's later cells right."""
    stream = iter(datums)
    sample = list(itertools.islice(stream, _SAMPLE))
    complete = len(sample) < _SAMPLE
    names = _common_names(sample) if complete else _static_names(input)
    if names is None:
        yield f"DATUM{' ' * (64 - 5)}{_GAP}INPUTS\n"
        for datum in itertools.chain(sample, stream):
            items = _GAP.join(f"{i.name}:{display(i.path)}" for i in datum.inputs)
            yield f"{datum.id}{_GAP}{items}\n"
        return
    cells = [[display(i.path) for i in d.inputs] for d in sample]
    widths = [max([len(name), *(len(row[c]) for row in cells)]) for c, name in enumerate(names)]
    yield _line(["DATUM".ljust(64), *names], widths)  # the id column is always 64 wide
    for datum, row in zip(sample, cells, strict=True):
        yield _line([datum.id, *row], widths)
    for datum in stream:
        yield _line([datum.id, *(display(i.path) for i in datum.inputs)], widths)


def _static_names(node: Input) -> list[str] | None:
    """The input names every datum of `node` has, in order, known from the spec alone: a
    `pfs`, a `cross` or inner `join` of such, a `union` whose branches agree; else None."""
    if isinstance(node, PfsInput):
        return [node.name]
    if isinstance(node, GroupInput) or (
            isinstance(node, JoinInput) and any(p.outer_join for _, p in pfs_fields(node, ""))):
        return None
    parts = [_static_names(child) for child in node.children]
    if any(part is None for part in parts):
        return None
    if isinstance(node, UnionInput):
        return parts[0] if all(part == parts[0] for part in parts) else None
    names = [name for part in parts for name in part or ()]
    return names if len(set(names)) == len(names) else None


def _line(cells: list[str], widths: list[int]) -> str:
    """The id, then each input's cell padded to its column; the last one is not padded."""
    head, last = cells[:-1], cells[-1]
    padded = [head[0], *(cell.ljust(w) for cell, w in zip(head[1:], widths, strict=False))]
    return _GAP.join([*padded, last]) + "\n"


def _common_names(datums: Sequence[Datum]) -> list[str] | None:
    """The input names when every datum has exactly these, in this order; else None."""
    if not datums:
        return None
    first = [i.name for i in datums[0].inputs]
    if len(set(first)) != len(first):
        return None
    for datum in datums:
        if len(datum.inputs) != len(first) or any(
            i.name != name for i, name in zip(datum.inputs, first, strict=True)
        ):
            return None
    return first


"""`pfsmount list-datums`: the datums a pipeline would process, for a person or a program.

The table is for reading: one row per datum, its full id (the value of `PACH_DATUM_ID`) and,
per input, the matched path. When every datum has the same inputs in the same order (a `pfs`
input, a `cross`, an inner `join`) each input gets its own column headed by its name;
otherwise (`union`, outer joins, `group`) the row lists `name:path` items.

`--json` is for programs: one JSON object per line with the id, the datum hash (what decides
skipping: content fingerprint of every input and the pipeline salt) and the inputs. The JSON
is valid UTF-8 for every parser. A path (or join/group key) whose bytes are not UTF-8 is
written with each such byte as U+FFFD, and its exact bytes, base64-encoded, under
`path_b64` (`join_on_b64`, `group_by_b64`): `base64.b64decode(record["path_b64"])` is the
name, `names.from_json` the same as a Python string. In the table such bytes show as `\\xff`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from pfsmount.datums import Datum, DatumInput, datum_hash
from pfsmount.names import display, json_text
from pfsmount.spec import PipelineSpec
from pfsmount.store.base import RepoListing

__all__ = ["json_record", "print_datums"]

_GAP = "  "
_CHUNK = 4096  # rows per write: one write per row is slow for 100k datums


def print_datums(
    spec: PipelineSpec,
    repos: Mapping[str, RepoListing],
    datums: Sequence[Datum],
    *,
    as_json: bool,
    out: TextIO,
) -> None:
    """Print `datums` to `out` as a table, or as JSON lines when `as_json` is set."""
    rows = _json_rows(spec, repos, datums) if as_json else _table_rows(datums)
    batch: list[str] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= _CHUNK:
            out.write("".join(batch))
            batch.clear()
    out.write("".join(batch))
    out.flush()


def json_record(datum: Datum, repos: Mapping[str, RepoListing], salt: str) -> dict[str, Any]:
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
    spec: PipelineSpec, repos: Mapping[str, RepoListing], datums: Sequence[Datum]
) -> Any:
    for datum in datums:
        yield json.dumps(json_record(datum, repos, spec.salt)) + "\n"


def _table_rows(datums: Sequence[Datum]) -> Any:
    names = _common_names(datums)
    if names is None:
        yield f"DATUM{' ' * (64 - 5)}{_GAP}INPUTS\n"
        for datum in datums:
            items = _GAP.join(f"{i.name}:{display(i.path)}" for i in datum.inputs)
            yield f"{datum.id}{_GAP}{items}\n"
        return
    cells = [[display(i.path) for i in d.inputs] for d in datums]
    widths = [max([len(name), *(len(row[c]) for row in cells)]) for c, name in enumerate(names)]
    yield _line(["DATUM".ljust(64), *names], widths)  # the id column is always 64 wide
    for datum, row in zip(datums, cells, strict=True):
        yield _line([datum.id, *row], widths)


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


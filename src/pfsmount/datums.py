"""The input algebra: turn a spec's input tree and the repo listings into ordered datums.

Datum order (deterministic, so a job's datums and their ids are the same on every run over the
same repos):

- `pfs`: matching entries in repo listing order (`RepoListing.entries`: a directory comes right
  before its contents). Files and directories both match; the root only for the glob "/".
- `cross`: the cartesian product, first child outermost; a datum's inputs in child order.
- `union`: the children's datums one after the other.
- `join`: keys in sorted (string) order; per key, the product of the children's inputs with
  that key, first child outermost.
- `group`: keys in sorted order; per key, one datum holding every input with that key, in child
  order then match order.

Join and group work on *inputs*, as Pachyderm does: each input of each child datum is keyed by
its own `join_on` / `group_by` template, so a child that is itself a cross is split into its
inputs. Within a child an input that several child datums share is counted once. Whether an
input is kept unmatched by an outer join depends on the pfs input it came from (if two union
branches match the very same path, either one having `outer_join` is enough).

Differences from Pachyderm, all deliberate:

- Pachyderm orders join and group datums by a hash of the key; pfsmount sorts by the key itself
  so the order is the one a person would predict.
- Pachyderm lists a directory after names that sort below "/" (`/a b` before `/a/`); pfsmount's
  listing order keeps each subtree contiguous (`/a`, `/a/x`, `/a b`).
- For an outer join, a key missing from some child yields the outer-join children's inputs for
  that key crossed with each other; Pachyderm builds the same datums but may emit one of them
  once per matching non-outer input. Duplicates are dropped here.

A group datum may hold several inputs of the same name; `Datum.env` then lists each of them in
order (`images=/pfs/images/a.png`, `images=/pfs/images/b.png`, ...), as Pachyderm does, so a
program that reads the variable sees the last one and should list `/pfs/<name>` instead.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pfsmount.glob import compile_glob, expand_template, template_groups
from pfsmount.names import FS_ENCODING, FS_ERRORS
from pfsmount.spec import (
    CrossInput,
    GroupInput,
    Input,
    JoinInput,
    PfsInput,
    SpecError,
    UnionInput,
)
from pfsmount.store import open_repo
from pfsmount.store.base import RepoListing, StoreError
from pfsmount.store.local import DEFAULT_PROJECT, repo_location

__all__ = [
    "Datum",
    "DatumError",
    "DatumInput",
    "datum_hash",
    "datum_id",
    "expand",
    "open_repos",
]

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">q")


class DatumError(SpecError):
    """Inputs that cannot be expanded into datums; the message names the input and the fix.

    A `SpecError`, because every cause is a spec that bypassed `parse_spec`'s checks, and
    callers already report `SpecError`s to the user.
    """


@dataclass(frozen=True)
class DatumInput:
    """One matched path of one input: what appears at /pfs/<name> for a datum."""

    name: str
    repo: str
    branch: str
    path: str
    commit: str
    join_on: str = ""
    group_by: str = ""
    empty_files: bool = False
    # Which pfs input it came from is not part of what the datum shows, so two union branches
    # that match the same path give equal inputs; outer_join only steers the join.
    outer_join: bool = field(default=False, compare=False)
    # Not part of the datum id (Pachyderm's hashes the repo name only), but of the input's
    # identity: images:/a of two projects are different files.
    project: str = DEFAULT_PROJECT

    @property
    def repo_key(self) -> str:
        """The key of this input's repo among the opened repos (its place under DATA)."""
        return repo_location(self.project, self.repo)


@dataclass(frozen=True)
class Datum:
    """One unit of work: its id and its inputs, in datum order."""

    id: str
    inputs: tuple[DatumInput, ...]

    def env(self, mountpoint: str = "/pfs") -> list[tuple[str, str]]:
        """The per-input environment variables (PACHYDERM.md §4 part 2), in order."""
        base = mountpoint.rstrip("/")
        pairs: list[tuple[str, str]] = []
        for item in self.inputs:
            location = f"{base}/{item.name}{item.path}".rstrip("/")
            pairs.append((item.name, location))
            pairs.append((f"{item.name}_COMMIT", item.commit))
            if item.join_on:
                pairs.append((f"PACH_DATUM_{item.name}_JOIN_ON", item.join_on))
            if item.group_by:
                pairs.append((f"PACH_DATUM_{item.name}_GROUP_BY", item.group_by))
        return pairs


def _framed(text: str) -> bytes:
    """One length-suffixed part of an id or hash.

    Paths that are not valid UTF-8 come from the listing as surrogate escapes; this hashes
    their original bytes, as Pachyderm hashes a path's bytes.
    """
    data = text.encode(FS_ENCODING, FS_ERRORS)
    return data + _LENGTH.pack(len(data))


def _digest(parts: Iterable[str]) -> str:
    # One update with the joined parts: per-part updates dominate listing 100k datums.
    return hashlib.blake2b(b"".join(map(_framed, parts)), digest_size=32).hexdigest()


def datum_id(inputs: Sequence[DatumInput]) -> str:
    """The datum id: BLAKE2b-256 over each input's name, repo, branch and path, length-suffixed."""
    return hashlib.blake2b(
        b"".join([_source_part(item.name, item.repo, item.branch) + _framed(item.path)
                  for item in inputs]),
        digest_size=32,
    ).hexdigest()


@functools.lru_cache(maxsize=256)
def _source_part(name: str, repo: str, branch: str) -> bytes:
    # The same for every datum of an input: framed once, not 100,000 times.
    return _framed(name) + _framed(repo) + _framed(branch)


def datum_hash(datum: Datum, repos: Mapping[str, RepoListing], salt: str) -> str:
    """The hash that decides skipping: id, each input's content fingerprint, then the salt.

    Each part is length-suffixed like the parts of the id, so no two sequences collide.
    """
    fingerprints = (repos[item.repo_key].content_fingerprint(item.path)
                    for item in datum.inputs)
    return _digest((datum.id, *fingerprints, salt))


def open_repos(input: Input, data_dir: str, source: str = "") -> dict[str, RepoListing]:
    """Open every repo the input tree names, once each, keyed by `PfsInput.repo_key`.

    A repo that cannot be used raises `StoreError` naming the spec field that asks for it
    (prefixed with `source`, the spec file's name, when given), then the store's reason and fix.
    """
    repos: dict[str, RepoListing] = {}
    for where, pfs in pfs_fields(input, "input"):
        if pfs.repo_key in repos:
            continue
        try:
            repos[pfs.repo_key] = open_repo(data_dir, pfs.repo, pfs.project)
        except StoreError as exc:
            prefix = f"{source}: " if source else ""
            raise StoreError(f"{prefix}{where}.repo: {exc}") from None
    return repos


def pfs_fields(node: Input, where: str) -> Iterator[tuple[str, PfsInput]]:
    """Every pfs input with its field path in the spec, e.g. "input.join[1].pfs"."""
    if isinstance(node, PfsInput):
        yield f"{where}.pfs", node
        return
    kind = {CrossInput: "cross", UnionInput: "union", JoinInput: "join", GroupInput: "group"}
    for i, child in enumerate(node.children):
        yield from pfs_fields(child, f"{where}.{kind[type(node)]}[{i}]")


def expand(input: Input, repos: Mapping[str, RepoListing]) -> list[Datum]:
    """All datums of an input tree, in the order described in the module docstring."""
    return [_make_datum(inputs) for inputs in _expand(input, repos)]


def _make_datum(inputs: Sequence[DatumInput]) -> Datum:
    return Datum(id=datum_id(inputs), inputs=tuple(inputs))


_Inputs = tuple[DatumInput, ...]


def _expand(node: Input, repos: Mapping[str, RepoListing]) -> list[_Inputs]:
    if isinstance(node, PfsInput):
        return [(item,) for item in _expand_pfs(node, repos)]
    children = [_expand(child, repos) for child in node.children]
    if isinstance(node, CrossInput):
        return [_concat(combo) for combo in itertools.product(*children)]
    if isinstance(node, UnionInput):
        return [inputs for child in children for inputs in child]
    if isinstance(node, JoinInput):
        return _join(children)
    if isinstance(node, GroupInput):
        return _group(children)
    raise TypeError(f"not an input node: {node!r}")


def _concat(parts: Iterable[_Inputs]) -> _Inputs:
    return tuple(item for part in parts for item in part)


def _expand_pfs(pfs: PfsInput, repos: Mapping[str, RepoListing]) -> list[DatumInput]:
    repo = repos.get(pfs.repo_key)
    if repo is None:
        raise DatumError(
            f"input {pfs.name!r}: repo {pfs.repo_key!r} was not opened (open it with open_repos)"
        )
    glob = compile_glob(pfs.glob)
    for field_name, template in (("join_on", pfs.join_on), ("group_by", pfs.group_by)):
        missing = sorted(n for n in template_groups(template) if n > glob.ngroups)
        if missing:
            raise DatumError(
                f"input {pfs.name!r}: {field_name} {template!r} refers to capture group "
                f"${missing[0]}, but the glob {glob.pattern!r} has {glob.ngroups}; add a "
                "(...) group to the glob or fix the template"
            )
    entries = repo.entries if glob.pattern != "/" else repo.entries[:1]
    make = functools.partial(DatumInput, pfs.name, pfs.repo, pfs.branch)
    commit, join_on, group_by = repo.commit, pfs.join_on, pfs.group_by
    extra = {"empty_files": pfs.empty_files, "outer_join": pfs.outer_join,
             "project": pfs.project}
    matched: list[DatumInput] = []
    if "$" not in join_on and "$" not in group_by:
        # No template needs the capture groups: a plain match per entry (100k-file repos).
        matches = glob.matches
        matched = [make(e.path, commit, join_on, group_by, **extra)
                   for e in entries if matches(e.path)]
    else:
        for entry in entries:
            groups = glob.match(entry.path)
            if groups is not None:
                matched.append(make(entry.path, commit,
                                    expand_template(join_on, entry.path, groups),
                                    expand_template(group_by, entry.path, groups), **extra))
    if not matched:
        log.info("input %s: glob %s matches nothing in repo %s", pfs.name, pfs.glob, pfs.repo)
    return matched


def _keyed(child: list[_Inputs], key_of: str) -> dict[str, list[DatumInput]]:
    """A child's distinct inputs, grouped by their join_on or group_by key, in child order.

    An input that several of the child's datums share is kept once; it counts as an outer-join
    input when any pfs input that produced it has `outer_join`.
    """
    by_key: dict[str, list[DatumInput]] = {}
    seen: dict[DatumInput, tuple[str, int]] = {}
    for inputs in child:
        for item in inputs:
            where = seen.get(item)
            if where is None:
                items = by_key.setdefault(getattr(item, key_of), [])
                seen[item] = (getattr(item, key_of), len(items))
                items.append(item)
            elif item.outer_join:
                key, index = where
                by_key[key][index] = item
    return by_key


def _join(children: list[list[_Inputs]]) -> list[_Inputs]:
    keyed = [_keyed(child, "join_on") for child in children]
    result: list[_Inputs] = []
    for key in sorted(set().union(*keyed)):
        present = [by_key[key] for by_key in keyed if key in by_key]
        if len(present) < len(keyed):
            # Unmatched somewhere: only outer-join inputs survive, crossed with each other.
            present = [
                kept
                for kept in (
                    [i for i in items if i.outer_join] for items in present
                )
                if kept
            ]
            if not present:
                continue
        result.extend(tuple(combo) for combo in itertools.product(*present))
    return result


def _group(children: list[list[_Inputs]]) -> list[_Inputs]:
    keyed = [_keyed(child, "group_by") for child in children]
    keys = sorted(set().union(*keyed))
    return [tuple(item for child in keyed for item in child.get(key, ())) for key in keys]

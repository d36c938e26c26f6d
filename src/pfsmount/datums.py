"""The input algebra: turn a spec's input tree and the repo listings into ordered datums.

Datum order (deterministic, so a job's datums and their ids are the same on every run over the
same repos):

- `pfs`: matching entries in repo listing order (`RepoSource.walk`: a directory comes right
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

import collections
import functools
import hashlib
import itertools
import logging
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pfsmount.glob import Glob, compile_glob, expand_template, template_groups
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
from pfsmount.spill import KeyedSpill, Replay
from pfsmount.store import open_repo
from pfsmount.store.base import Entry, RepoListing, RepoSource, StoreError, digest_entries
from pfsmount.store.local import DEFAULT_PROJECT, repo_location

__all__ = [
    "Datum",
    "DatumError",
    "DatumInput",
    "datum_hash",
    "datum_id",
    "expand",
    "iter_datums",
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
    # What the view of this input is built from, carried so that no listing must be kept:
    # the directories above the match (root first) and the match with its subtree, in
    # listing order. Empty when the input was made by hand (then the repo listing is asked).
    parents: tuple[Entry, ...] = field(default=(), compare=False, repr=False)
    subtree: tuple[Entry, ...] = field(default=(), compare=False, repr=False)

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


def datum_hash(datum: Datum, repos: Mapping[str, RepoSource], salt: str) -> str:
    """The hash that decides skipping: id, each input's content fingerprint, then the salt.

    Each part is length-suffixed like the parts of the id, so no two sequences collide.
    """
    fingerprints = (digest_entries(item.subtree) if item.subtree
                    else _listing(repos, item).content_fingerprint(item.path)
                    for item in datum.inputs)
    return _digest((datum.id, *fingerprints, salt))


def _listing(repos: Mapping[str, RepoSource], item: DatumInput) -> RepoListing:
    repo = repos[item.repo_key]
    if not isinstance(repo, RepoListing):
        raise DatumError(f"input {item.name!r}: {item.path} carries no entries and repo "
                         f"{item.repo_key!r} is streamed (make inputs with iter_datums)")
    return repo


def open_repos(input: Input, data_dir: str, source: str = "") -> dict[str, RepoSource]:
    """Open every repo the input tree names, once each, keyed by `PfsInput.repo_key`.

    A repo that cannot be used raises `StoreError` naming the spec field that asks for it
    (prefixed with `source`, the spec file's name, when given), then the store's reason and fix.
    """
    repos: dict[str, RepoSource] = {}
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


def expand(input: Input, repos: Mapping[str, RepoSource]) -> list[Datum]:
    """All datums of an input tree, in the order described in the module docstring."""
    return list(iter_datums(input, repos))


def iter_datums(input: Input, repos: Mapping[str, RepoSource]) -> Iterator[Datum]:
    """The datums of an input tree as a stream, in `expand`'s order, while the repos are listed.

    `pfs`, `cross` and `union` yield their first datum as soon as its entries are listed;
    `join` and `group` first read every input into a temporary spill sorted by key (they need
    all keys), then stream. Each input carries its own entries (`DatumInput.subtree`), so
    nothing downstream needs the whole listing.
    """
    make = _make_datum
    for inputs in _stream(input, repos):
        yield make(inputs)


def _make_datum(inputs: Sequence[DatumInput]) -> Datum:
    return Datum(id=datum_id(inputs), inputs=tuple(inputs))


_Inputs = tuple[DatumInput, ...]


def _stream(node: Input, repos: Mapping[str, RepoSource]) -> Iterator[_Inputs]:
    if isinstance(node, PfsInput):
        return ((item,) for item in _stream_pfs(node, repos))
    if isinstance(node, CrossInput):
        return _cross(node.children, repos)
    if isinstance(node, UnionInput):
        return itertools.chain.from_iterable(_stream(c, repos) for c in node.children)
    if isinstance(node, JoinInput):
        return _join(node.children, repos)
    if isinstance(node, GroupInput):
        return _group(node.children, repos)
    raise TypeError(f"not an input node: {node!r}")


def _cross(children: Sequence[Input], repos: Mapping[str, RepoSource]) -> Iterator[_Inputs]:
    """The cartesian product, first child outermost, each child listed once.

    The first child streams; every other child is replayed once per combination of the
    children before it, so it is recorded on its first pass (`Replay`: memory, then a
    temporary file). An empty child means no datums at all, as `itertools.product` says.
    """
    inner = [Replay(_stream(child, repos)) for child in children[1:]]
    try:
        for outer in _stream(children[0], repos):
            for combo in _product(inner):
                yield (*outer, *_concat(combo))
    finally:
        for replay in inner:
            replay.close()


def _product(replays: Sequence[Replay[_Inputs]]) -> Iterator[tuple[_Inputs, ...]]:
    # itertools.product would read every replay whole before its first combination.
    if not replays:
        yield ()
        return
    first, rest = replays[0], replays[1:]
    for head in first:
        for tail in _product(rest):
            yield (head, *tail)


def _concat(parts: Iterable[_Inputs]) -> _Inputs:
    return tuple(item for part in parts for item in part)


def _check_templates(pfs: PfsInput, glob: Glob) -> None:
    for field_name, template in (("join_on", pfs.join_on), ("group_by", pfs.group_by)):
        missing = sorted(n for n in template_groups(template) if n > glob.ngroups)
        if missing:
            raise DatumError(
                f"input {pfs.name!r}: {field_name} {template!r} refers to capture group "
                f"${missing[0]}, but the glob {glob.pattern!r} has {glob.ngroups}; add a "
                "(...) group to the glob or fix the template"
            )


def _stream_pfs(pfs: PfsInput, repos: Mapping[str, RepoSource]) -> Iterator[DatumInput]:
    """The matches of one pfs input in listing order, each with its ancestors and subtree.

    A matched file is complete at once; a matched directory once the walk leaves it. Matches
    come out in the order they were found, so a directory's datum waits for its subtree, and
    with nested matches (`/**`) the ones inside it wait behind it.
    """
    repo = repos.get(pfs.repo_key)
    if repo is None:
        raise DatumError(
            f"input {pfs.name!r}: repo {pfs.repo_key!r} was not opened (open it with open_repos)"
        )
    glob = compile_glob(pfs.glob)
    _check_templates(pfs, glob)
    make = functools.partial(DatumInput, pfs.name, pfs.repo, pfs.branch)
    commit, join_on, group_by = repo.commit, pfs.join_on, pfs.group_by
    templated = "$" in join_on or "$" in group_by
    extra = {"empty_files": pfs.empty_files, "outer_join": pfs.outer_join,
             "project": pfs.project}
    whole_repo = glob.pattern == "/"
    matches, match = glob.matches, glob.match
    ready: collections.deque[_Match] = collections.deque()  # found, in order
    open_dirs: list[_Match] = []  # matched directories the walk is still inside
    parents: list[Entry] = []  # the directories above the entry being walked, root first
    found = False
    for entry in repo.walk():
        path = entry.path
        while parents and not _below(path, parents[-1].path):
            parents.pop()
        while open_dirs and not _below(path, open_dirs[-1].path):
            open_dirs.pop().complete = True
        for m in open_dirs:
            m.entries.append(entry)
        if path == "/" if whole_repo else matches(path):
            if templated:
                groups = match(path) or ()
                keys = (expand_template(join_on, path, groups),
                        expand_template(group_by, path, groups))
            else:
                keys = (join_on, group_by)
            found = True
            m = _Match(path, keys, tuple(parents), [entry], not entry.is_dir)
            ready.append(m)
            if not m.complete:
                open_dirs.append(m)
        if entry.is_dir:
            parents.append(entry)
        while ready and ready[0].complete:
            m = ready.popleft()
            yield make(m.path, commit, *m.keys, **extra, parents=m.parents,
                       subtree=tuple(m.entries))
    for m in ready:
        yield make(m.path, commit, *m.keys, **extra, parents=m.parents,
                   subtree=tuple(m.entries))
    if not found:
        log.info("input %s: glob %s matches nothing in repo %s", pfs.name, pfs.glob, pfs.repo)


def _below(path: str, directory: str) -> bool:
    """Whether `path` is inside `directory` (both "/a/b" form; the root is "/")."""
    if directory == "/":
        return True
    return path.startswith(directory) and path[len(directory):len(directory) + 1] == "/"


@dataclass(slots=True)
class _Match:
    path: str
    keys: tuple[str, str]
    parents: tuple[Entry, ...]
    entries: list[Entry]
    complete: bool


def _keyed_spill(children: Sequence[Input], repos: Mapping[str, RepoSource],
                 key_of: str) -> KeyedSpill:
    """Every child's distinct inputs, by their join_on or group_by key, in a spill.

    An input that several of a child's datums share is kept once; it counts as an outer-join
    input when any pfs input that produced it has `outer_join`.
    """
    spill = KeyedSpill()
    try:
        for c, child in enumerate(children):
            for inputs in _stream(child, repos):
                for item in inputs:
                    spill.add(c, getattr(item, key_of), _identity(item), item.outer_join, item)
    except BaseException:
        spill.close()
        raise
    return spill


def _identity(item: DatumInput) -> tuple[object, ...]:
    # The fields that make two inputs equal (dataclass eq): not outer_join, parents, subtree.
    return (item.name, item.repo, item.branch, item.path, item.commit, item.join_on,
            item.group_by, item.empty_files, item.project)


def _join(children: Sequence[Input], repos: Mapping[str, RepoSource]) -> Iterator[_Inputs]:
    spill = _keyed_spill(children, repos, "join_on")
    try:
        for _key, present in spill.by_key(len(children)):
            if any(not items for items in present):
                # Unmatched somewhere: only outer-join inputs survive, crossed with each other.
                present = [kept for kept in ([i for i in items if i.outer_join]
                                             for items in present if items) if kept]
                if not present:
                    continue
            yield from (tuple(combo) for combo in itertools.product(*present))
    finally:
        spill.close()


def _group(children: Sequence[Input], repos: Mapping[str, RepoSource]) -> Iterator[_Inputs]:
    spill = _keyed_spill(children, repos, "group_by")
    try:
        for _key, present in spill.by_key(len(children)):
            yield tuple(item for items in present for item in items)
    finally:
        spill.close()

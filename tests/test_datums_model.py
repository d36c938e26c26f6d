"""Datum expansion checked against a brute-force reference model written here.

The model shares no code with pfsmount: globs are generated as small syntax trees, rendered to
text for pfsmount and matched by the model with an exhaustive backtracking matcher over the
tree (stars try the longest run first, alternatives are tried in order: the meaning of
Pachyderm's greedy regexp-based globs); repo listings are a depth-first walk with sorted
names; cross, union, join (inner and outer) and group are written out from their definitions
in the `pfsmount.datums` docstring; the datum id is PACHYDERM.md §5 in a few lines.

The generated specs go through `parse_spec` (as JSON), so they are specs a user could write.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pfsmount.datums import expand, open_repos
from pfsmount.spec import parse_spec

SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
NAME_CHARS = "ab1-."

# --- globs as syntax trees --------------------------------------------------------------------


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Star:
    """`*`: any run of characters but `/`."""


@dataclass(frozen=True)
class SuperStar:
    """`**`: any run of characters, `/` included."""


@dataclass(frozen=True)
class Quest:
    """`?`: one character but `/`."""


@dataclass(frozen=True)
class Class:
    chars: frozenset[str]
    text: str  # how it is written between the brackets
    negated: bool


@dataclass(frozen=True)
class Alt:
    """`{a,b}` (not capturing) or `(a|b)` (capturing, numbered by its opening parenthesis)."""

    options: tuple[tuple[Node, ...], ...]
    capture: bool


@dataclass(frozen=True)
class Rep:
    """An extglob `?(..)`, `*(..)`, `+(..)`, `@(..)`: a capture group repeated min..max times."""

    quantifier: str
    options: tuple[str, ...]


Node: TypeAlias = Lit | Star | SuperStar | Quest | Class | Alt | Rep
Caps = tuple[str, ...]
Cont = Callable[[int, Caps], "Caps | None"]

_REPEATS = {"?": (0, 1), "*": (0, 99), "+": (1, 99), "@": (1, 1)}


@dataclass
class GlobTree:
    """A whole glob: segments of nodes, or None for the root glob "/"."""

    segments: tuple[tuple[Node, ...], ...] | None
    trailing_slash: bool = False
    leading_slash: bool = True

    def text(self) -> str:
        if self.segments is None:
            return "/"
        body = "/".join("".join(render(n) for n in seg) for seg in self.segments)
        return ("/" if self.leading_slash else "") + body + ("/" if self.trailing_slash else "")

    def nodes(self) -> tuple[Node, ...]:
        """The segments joined with literal slashes: one sequence to match a path against."""
        assert self.segments is not None
        out: list[Node] = []
        for seg in self.segments:
            out.append(Lit("/"))
            out.extend(seg)
        return tuple(out)


def render(node: Node) -> str:
    if isinstance(node, Lit):
        return node.text
    if isinstance(node, Star):
        return "*"
    if isinstance(node, SuperStar):
        return "**"
    if isinstance(node, Quest):
        return "?"
    if isinstance(node, Class):
        return "[" + ("!" if node.negated else "") + node.text + "]"
    if isinstance(node, Rep):
        return node.quantifier + "(" + "|".join(node.options) + ")"
    sep, (left, right) = ("|", "()") if node.capture else (",", "{}")
    return left + sep.join("".join(render(n) for n in opt) for opt in node.options) + right


def count_groups(nodes: tuple[Node, ...]) -> int:
    total = 0
    for node in nodes:
        if isinstance(node, Rep):
            total += 1
        elif isinstance(node, Alt):
            total += int(node.capture) + sum(count_groups(opt) for opt in node.options)
    return total


def _one(node: Node, s: str, pos: int, caps: Caps, base: int, k: Cont) -> Caps | None:
    if isinstance(node, Lit):
        return k(pos + len(node.text), caps) if s.startswith(node.text, pos) else None
    if isinstance(node, (Star, SuperStar)):
        end = pos
        while end < len(s) and (isinstance(node, SuperStar) or s[end] != "/"):
            end += 1
        for stop in range(end, pos - 1, -1):
            found = k(stop, caps)
            if found is not None:
                return found
        return None
    if isinstance(node, (Quest, Class)):
        if pos >= len(s) or s[pos] == "/":
            return None
        if isinstance(node, Class) and (s[pos] in node.chars) == node.negated:
            return None
        return k(pos + 1, caps)
    if isinstance(node, Rep):
        return _rep(node, s, pos, pos, 0, caps, base, k)
    return _alt(node, s, pos, caps, base, k)


def _alt(node: Alt, s: str, pos: int, caps: Caps, base: int, k: Cont) -> Caps | None:
    def done(p: int, c: Caps) -> Caps | None:
        if node.capture:
            c = (*c[:base], s[pos:p], *c[base + 1:])
        return k(p, c)

    inner_base = base + int(node.capture)
    for option in node.options:
        found = _seq(option, s, pos, caps, inner_base, done)
        if found is not None:
            return found
        # Groups are numbered by their opening parenthesis, across all the options.
        inner_base += count_groups(option)
    return None


def _seq(nodes: tuple[Node, ...], s: str, pos: int, caps: Caps, base: int,
         k: Cont) -> Caps | None:
    """Match `nodes` at s[pos:], then continue with `k`; their first group is number `base`."""
    if not nodes:
        return k(pos, caps)
    head, tail = nodes[0], nodes[1:]
    return _one(head, s, pos, caps, base,
                lambda p, c: _seq(tail, s, p, c, base + count_groups((head,)), k))


def _rep(node: Rep, s: str, start: int, pos: int, count: int, caps: Caps, base: int,
         k: Cont) -> Caps | None:
    low, high = _REPEATS[node.quantifier]
    if count < high:
        for option in node.options:  # options are non-empty literals: no empty iterations
            if s.startswith(option, pos):
                found = _rep(node, s, start, pos + len(option), count + 1, caps, base, k)
                if found is not None:
                    return found
    if count >= low:
        return k(pos, (*caps[:base], s[start:pos], *caps[base + 1:]))
    return None


def model_match_path(glob: GlobTree, path: str) -> Caps | None:
    """The captures of the first match in backtracking priority order, or None."""
    if glob.segments is None:
        return () if path == "/" else None
    if path == "/":
        return None  # only the glob "/" matches the root
    nodes = glob.nodes()
    start: Caps = ("",) * count_groups(nodes)
    return _seq(nodes, path, 0, start, 0, lambda pos, caps: caps if pos == len(path) else None)


# --- templates ($1, ${1}, $0, $$) -------------------------------------------------------------

Template = tuple[str, ...]  # tokens: "$N", "${N}", "$$" or literal text without "$" or digits


def expand_model_template(tokens: Template, path: str, caps: Caps) -> str:
    out = []
    for token in tokens:
        if token == "$$":
            out.append("$")
        elif token.startswith("$"):
            n = int(token.strip("${}"))
            out.append(path if n == 0 else caps[n - 1])
        else:
            out.append(token)
    return "".join(out)


# --- the model of repos and datums ------------------------------------------------------------


def model_listing(files: set[str], dirs: set[str]) -> list[str]:
    """Every path of a repo, root first, each directory right before its sorted children."""
    children: dict[str, list[str]] = {}
    for path in files | dirs:
        parent = path.rsplit("/", 1)[0] or "/"
        children.setdefault(parent, []).append(path)

    def walk(path: str) -> Iterator[str]:
        yield path
        for child in sorted(children.get(path, []), key=lambda p: p.rsplit("/", 1)[1]):
            yield from walk(child)

    return list(walk("/"))


@dataclass(frozen=True)
class Leaf:
    name: str
    repo: str
    branch: str
    glob: GlobTree = field(compare=False)
    join_on: Template = ()
    group_by: Template = ()
    outer: bool = False
    empty_files: bool = False


@dataclass(frozen=True)
class MInput:
    """One matched input as the model sees it."""

    name: str
    repo: str
    branch: str
    path: str
    join_on: str
    group_by: str
    empty_files: bool
    outer: bool = field(compare=False)  # not shown to user code, so not part of identity


@dataclass
class Tree:
    kind: str  # pfs, cross, union, join, group
    leaf: Leaf | None = None
    children: list[Tree] = field(default_factory=list)


MDatum = tuple[MInput, ...]


def model_expand(tree: Tree, listings: dict[str, list[str]]) -> list[MDatum]:
    if tree.kind == "pfs":
        assert tree.leaf is not None
        return [(item,) for item in model_pfs(tree.leaf, listings[tree.leaf.repo])]
    kids = [model_expand(child, listings) for child in tree.children]
    if tree.kind == "cross":
        # Nested loops, first child outermost: itertools.product's documented order.
        return [sum(combo, ()) for combo in itertools.product(*kids)]
    if tree.kind == "union":
        return [d for kid in kids for d in kid]
    if tree.kind == "join":
        return model_join(kids)
    return model_group(kids)


def model_pfs(leaf: Leaf, listing: list[str]) -> list[MInput]:
    found = []
    for path in listing:
        caps = model_match_path(leaf.glob, path)
        if caps is None:
            continue
        found.append(MInput(leaf.name, leaf.repo, leaf.branch, path,
                            expand_model_template(leaf.join_on, path, caps),
                            expand_model_template(leaf.group_by, path, caps),
                            leaf.empty_files, leaf.outer))
    return found


def distinct_inputs(datums: list[MDatum]) -> list[MInput]:
    """Each input once, in order of first appearance; outer if any copy of it is outer."""
    seen: list[MInput] = []
    for datum in datums:
        for item in datum:
            if item not in seen:
                seen.append(item)
            elif item.outer:
                seen[seen.index(item)] = item
    return seen


def model_join(kids: list[list[MDatum]]) -> list[MDatum]:
    inputs = [distinct_inputs(kid) for kid in kids]
    keys = sorted({i.join_on for kid in inputs for i in kid})
    result: list[MDatum] = []
    for key in keys:
        per_child = [[i for i in kid if i.join_on == key] for kid in inputs]
        if all(per_child):
            result.extend(itertools.product(*per_child))
            continue
        # Some child lacks the key: the outer-join inputs that have it, crossed.
        outer = [[i for i in items if i.outer] for items in per_child]
        outer = [items for items in outer if items]
        if outer:
            result.extend(itertools.product(*outer))
    return result


def model_group(kids: list[list[MDatum]]) -> list[MDatum]:
    inputs = [distinct_inputs(kid) for kid in kids]
    keys = sorted({i.group_by for kid in inputs for i in kid})
    return [tuple(i for kid in inputs for i in kid if i.group_by == key) for key in keys]


def model_id(datum: MDatum) -> str:
    h = hashlib.blake2b(digest_size=32)
    for item in datum:
        for part in (item.name, item.repo, item.branch, item.path):
            raw = part.encode()
            h.update(raw + struct.pack(">q", len(raw)))
    return h.hexdigest()


# --- generators -------------------------------------------------------------------------------

names = st.text(NAME_CHARS, min_size=1, max_size=3).filter(lambda n: n not in (".", ".."))


@st.composite
def repo_trees(draw: st.DrawFn) -> tuple[set[str], set[str]]:
    """A small repo: (files, directories), at least one file, paths like "/a/b"."""
    files: set[str] = set()
    dirs: set[str] = set()
    for parts in draw(st.lists(st.lists(names, min_size=1, max_size=3), min_size=1,
                               max_size=7)):
        path = ""
        for i, part in enumerate(parts):
            path += "/" + part
            last = i == len(parts) - 1
            if path in files or (last and path in dirs):
                break
            (files if last else dirs).add(path)
    empty_dir = draw(st.one_of(st.none(), names))
    if empty_dir and "/" + empty_dir not in files:
        dirs.add("/" + empty_dir)
    return files, dirs


literals = st.text(NAME_CHARS, min_size=1, max_size=2).map(Lit)


@st.composite
def classes(draw: st.DrawFn) -> Class:
    ranges = draw(st.lists(st.sampled_from(["a", "b", "1", ".", "a-b", "0-9"]), min_size=1,
                           max_size=3))
    chars: set[str] = set()
    for item in ranges:
        if "-" in item:
            low, high = item.split("-")
            chars |= {chr(c) for c in range(ord(low), ord(high) + 1)}
        else:
            chars.add(item)
    return Class(frozenset(chars), "".join(ranges), draw(st.booleans()))


def _atoms(depth: int) -> st.SearchStrategy[Node]:
    simple: list[st.SearchStrategy[Node]] = [
        literals, st.just(Star()), st.just(Quest()), classes(), st.just(SuperStar()),
    ]
    if depth < 2:
        seq = st.lists(_atoms(depth + 1), min_size=0, max_size=2).map(_tidy)
        simple.append(st.builds(Alt, st.lists(seq, min_size=1, max_size=3).map(tuple),
                                st.booleans()))
        simple.append(st.builds(
            Rep, st.sampled_from(list(_REPEATS)),
            st.lists(st.text(NAME_CHARS, min_size=1, max_size=2), min_size=1,
                     max_size=2).map(tuple)))
    return st.one_of(*simple)


def _tidy(nodes: list[Node]) -> tuple[Node, ...]:
    """Drop what the text form would read differently from the tree.

    Two adjacent stars would be written "**" (one super star), and a star or "?" right before
    "(" would be read as an extglob; neither is what the tree means.
    """
    out: list[Node] = []
    for node in nodes:
        prev = out[-1] if out else None
        wild = (Star, SuperStar, Quest)
        if isinstance(node, (Star, SuperStar)) and isinstance(prev, (Star, SuperStar)):
            continue
        if isinstance(node, (Alt, Rep)) and isinstance(prev, wild) and (
            isinstance(node, Rep) or node.capture
        ):
            out.append(Lit("_"))
        out.append(node)
    return tuple(out)


@st.composite
def globs(draw: st.DrawFn) -> GlobTree:
    if draw(st.integers(0, 9)) == 0:
        return GlobTree(None)
    segments = tuple(
        draw(st.lists(_atoms(0), min_size=1, max_size=3).map(_tidy))
        for _ in range(draw(st.integers(1, 2)))
    )
    segments = tuple(seg for seg in segments if seg) or ((Star(),),)
    return GlobTree(segments, trailing_slash=draw(st.booleans()),
                    leading_slash=draw(st.integers(0, 4)) > 0)


@st.composite
def templates(draw: st.DrawFn, ngroups: int) -> Template:
    choices = ["$0", "$$", "k", "-"]
    choices += [f"${n}" for n in range(1, ngroups + 1)] + [f"${{{n}}}" for n in
                                                           range(1, ngroups + 1)]
    if ngroups:
        # Mostly capture groups, so keys collide across inputs and joins have partners.
        return tuple(draw(st.lists(st.sampled_from([*choices[4:], "k"]), min_size=1,
                                   max_size=2)))
    return tuple(draw(st.lists(st.sampled_from(choices), min_size=0, max_size=2)))


@dataclass
class _Names:
    """Hands out input names: unique, except that union branches may share one."""

    leaves: int = 0
    unions: int = 0


@st.composite
def input_trees(draw: st.DrawFn, repos: list[str]) -> Tree:
    return _tree(draw, repos, draw(st.integers(1, 4)), _Names(), depth=0, shared=None)


def _tree(draw: st.DrawFn, repos: list[str], leaves: int, names: _Names, depth: int,
          shared: str | None) -> Tree:
    """A tree with exactly `leaves` pfs inputs."""
    kinds = ["union", "group"] if depth < 3 else []
    if leaves == 1:
        kinds = ["pfs"] * 3 + kinds
    else:
        kinds += ["cross", "join"]
    kind = draw(st.sampled_from(kinds))
    if kind == "pfs":
        return Tree("pfs", leaf=_leaf(draw, repos, names, shared))
    minimum = 2 if kind in ("cross", "join") else 1
    count = draw(st.integers(minimum, min(3, leaves)))
    # Split the leaves among the children, each getting at least one.
    cuts = sorted(draw(st.lists(st.integers(1, leaves - 1), min_size=count - 1,
                                max_size=count - 1, unique=True))) if count > 1 else []
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, leaves], strict=True)]
    share = None
    if kind == "union" and draw(st.booleans()):
        names.unions += 1
        share = f"u{names.unions}"
    if shared is not None and kind != "union":
        shared = None  # a shared name may only repeat across the branches of one union
    return Tree(kind, children=[
        _tree(draw, repos, size, names, depth + 1, share if kind == "union" else shared)
        for size in sizes
    ])


def _leaf(draw: st.DrawFn, repos: list[str], names: _Names, shared: str | None) -> Leaf:
    names.leaves += 1
    glob = draw(globs())
    ngroups = 0 if glob.segments is None else count_groups(glob.nodes())
    return Leaf(
        name=shared or f"in{names.leaves}",
        repo=draw(st.sampled_from(repos)),
        branch=draw(st.sampled_from(["master", "master", "dev"])),
        glob=glob,
        join_on=draw(templates(ngroups)),
        group_by=draw(templates(ngroups)),
        outer=draw(st.booleans()),
        empty_files=draw(st.integers(0, 4)) == 0,
    )


def to_spec(tree: Tree) -> dict[str, Any]:
    if tree.leaf is None:
        return {tree.kind: [to_spec(child) for child in tree.children]}
    leaf = tree.leaf
    pfs: dict[str, Any] = {"name": leaf.name, "repo": leaf.repo, "glob": leaf.glob.text()}
    if leaf.branch != "master":
        pfs["branch"] = leaf.branch
    if leaf.join_on:
        pfs["join_on"] = "".join(leaf.join_on)
    if leaf.group_by:
        pfs["groupBy"] = "".join(leaf.group_by)  # camelCase is accepted too
    if leaf.outer:
        pfs["outer_join"] = True
    if leaf.empty_files:
        pfs["empty_files"] = True
    return {"pfs": pfs}


# --- the properties ---------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, tuple[set[str], set[str]]], Tree]:
    repo_names = ["r1", "r2", "r3"][: draw(st.integers(1, 3))]
    repos = {name: draw(repo_trees()) for name in repo_names}
    return repos, draw(input_trees(repo_names))


def make_repos(root: Path, repos: dict[str, tuple[set[str], set[str]]]) -> None:
    for name, (files, dirs) in repos.items():
        for d in sorted(dirs):
            (root / name / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
        for f in files:
            target = root / name / f.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f)


def shape(datums: list[Any]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    return [(d.id, [(i.name, i.repo, i.branch, i.path, i.join_on, i.group_by, i.empty_files)
                    for i in d.inputs]) for d in datums]


def model_shape(datums: list[MDatum]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    return [(model_id(d), [(i.name, i.repo, i.branch, i.path, i.join_on, i.group_by,
                            i.empty_files) for i in d]) for d in datums]


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenarios())
def test_expand_matches_the_reference_model(
    scenario: tuple[dict[str, tuple[set[str], set[str]]], Tree],
) -> None:
    repos, tree = scenario
    spec = parse_spec(json.dumps({"pipeline": {"name": "p"}, "input": to_spec(tree),
                                  "transform": {"cmd": ["true"]}}), source="p.json")
    root = Path(tempfile.mkdtemp(dir=SCRATCH, prefix="pfsmount-model-"))
    try:
        make_repos(root, repos)
        indexes = open_repos(spec.input, str(root))
        actual = shape(expand(spec.input, indexes))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    listings = {name: model_listing(files, dirs) for name, (files, dirs) in repos.items()}
    assert actual == model_shape(model_expand(tree, listings))


@settings(max_examples=300, deadline=None)
@given(globs(), repo_trees())
def test_glob_matches_the_reference_matcher(glob: GlobTree, repo: tuple[set[str], set[str]],
                                            ) -> None:
    from pfsmount.glob import compile_glob

    compiled = compile_glob(glob.text())
    files, dirs = repo
    for path in model_listing(files, dirs):
        assert compiled.match(path) == model_match_path(glob, path), (glob.text(), path)


def test_model_matcher_agrees_with_hand_written_cases() -> None:
    """The model itself, on cases worked out by hand."""
    def g(*segments: tuple[Node, ...]) -> GlobTree:
        return GlobTree(tuple(segments))

    cap_star = Alt(((Star(),),), capture=True)
    assert model_match_path(g((cap_star, Lit("-"), cap_star)), "/a-b-c") == ("a-b", "c")
    assert model_match_path(g((Star(),)), "/a/b") is None
    assert model_match_path(g((SuperStar(),)), "/a/b") == ()
    assert model_match_path(g((Star(),)), "/") is None
    assert model_match_path(GlobTree(None), "/") == ()
    nested = Alt(((Alt(((Star(),),), True), Lit("/"), Alt(((Star(),),), True)),), True)
    assert model_match_path(g((nested,)), "/x/y") == ("x/y", "x", "y")
    assert model_match_path(g((Lit("a"), Rep("*", ("b",)))), "/abb") == ("bb",)
    assert model_match_path(g((Alt(((Lit("x"),), (Alt(((Lit("y"),),), True),)), False),)),
                            "/x") == ("",)
    assert model_listing({"/a/x", "/ab", "/a b"}, {"/a"}) == ["/", "/a", "/a/x", "/a b", "/ab"]


def test_scratch_space_exists() -> None:
    if SCRATCH is None:
        pytest.skip("no /dev/shm: the model test writes its repos to the default temp dir")

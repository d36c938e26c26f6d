"""Streamed datums: the same datums as a whole listing gives, with their own entries.

The order itself is checked against a brute-force model in test_datums_model.py (which runs
the streamed expansion); here: spilled crosses, nested matches, the carried entries a view is
built from, and that datums come out while the listing is still going.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pfsmount import spill
from pfsmount.datums import datum_hash, expand, iter_datums, open_repos
from pfsmount.spec import PipelineSpec, parse_spec
from pfsmount.store.local import open_repo as open_listing
from pfsmount.view import InodeAllocator, build_view
from support import write_tree

FILES = {"a/x": "1", "a/y/z": "22", "a b": "3", "a.txt": "4", "b/c/d/e": "5",
         "b/c/f": "6", "z": "7"}


def spec_of(input_: dict) -> PipelineSpec:
    return parse_spec(json.dumps({"pipeline": {"name": "p"}, "input": input_,
                                  "transform": {"cmd": ["true"]}}), source="p.json")


def _pfs(repo: str, glob: str, **extra: object) -> dict:
    return {"pfs": {"repo": repo, "glob": glob, **extra}}


def _paths(datums: list) -> list[tuple[str, ...]]:
    return [tuple(f"{i.name}:{i.path}" for i in d.inputs) for d in datums]


def test_nested_matches_keep_listing_order_and_carry_their_subtrees(tmp_path: Path) -> None:
    write_tree(tmp_path / "r", FILES)
    spec = spec_of(_pfs("r", "/**"))
    repos = open_repos(spec.input, str(tmp_path))
    datums = expand(spec.input, repos)
    listing = open_listing(str(tmp_path), "r")
    assert [d.inputs[0].path for d in datums] == [e.path for e in listing.entries[1:]]
    for d in datums:
        item = d.inputs[0]
        assert item.subtree == tuple(listing.subtree(item.path))
        assert [e.path for e in item.parents] == [
            e.path for e in listing.entries if e.is_dir and item.path.startswith(
                e.path.rstrip("/") + "/")]
        assert datum_hash(d, repos, "s") == datum_hash(
            d.__class__(d.id, (item.__class__(item.name, item.repo, item.branch, item.path,
                                              item.commit),)), {"r": listing}, "s")


def test_view_from_carried_entries_equals_view_from_listing(tmp_path: Path) -> None:
    write_tree(tmp_path / "r", FILES)
    spec = spec_of(_pfs("r", "/b/*"))
    repos = open_repos(spec.input, str(tmp_path))
    (datum,) = expand(spec.input, repos)
    listing = open_listing(str(tmp_path), "r")
    bare = datum.__class__(datum.id, tuple(
        i.__class__(i.name, i.repo, i.branch, i.path, i.commit) for i in datum.inputs))
    streamed = build_view(datum, repos, b"", InodeAllocator())
    listed = build_view(bare, {"r": listing}, b"", InodeAllocator())
    shape = [(n.mode, n.size, n.mtime_ns, sorted(n.children or {})) for n in streamed.nodes]
    assert shape == [(n.mode, n.size, n.mtime_ns, sorted(n.children or {}))
                     for n in listed.nodes]


@pytest.mark.parametrize("memory_items", [0, 1, 10_000])
def test_cross_spilled_to_disk_gives_the_same_datums(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_items: int) -> None:
    write_tree(tmp_path / "l", {f"{i}": "x" for i in range(5)})
    write_tree(tmp_path / "m", {f"d{i}/f": "y" for i in range(3)})
    write_tree(tmp_path / "r", {"a": "1", "b": "2"})
    spec = spec_of({"cross": [_pfs("l", "/*"), {"cross": [_pfs("m", "/*"), _pfs("r", "/*")]},
                              _pfs("r", "/*", name="r2")]})
    monkeypatch.setattr(spill, "MEMORY_ITEMS", memory_items)
    monkeypatch.setattr(spill.Replay.__init__, "__defaults__", (memory_items,))
    repos = open_repos(spec.input, str(tmp_path))
    datums = expand(spec.input, repos)
    assert len(datums) == 5 * 3 * 2 * 2
    expected = [(f"l:/{a}", f"m:/d{b}", f"r:/{c}", f"r2:/{e}")
                for a in range(5) for b in range(3) for c in "ab" for e in "ab"]
    assert _paths(datums) == expected
    # The carried entries survive the spill (a view needs them).
    assert all(i.subtree for d in datums for i in d.inputs)


def test_join_and_group_keys_sort_by_code_point_with_odd_bytes(tmp_path: Path) -> None:
    names = [b"k\xff", b"k\xc3\xa9", b"k-", b"kz", b"K"]
    for repo in ("l", "r"):
        os.makedirs(tmp_path / repo)
        for n in names:
            with open(os.path.join(os.fsencode(tmp_path / repo), n), "wb") as f:
                f.write(b"x")
    keys = sorted(os.fsdecode(n) for n in names)
    spec = spec_of({"join": [_pfs("l", "/(*)", join_on="$1"),
                             _pfs("r", "/(*)", join_on="$1")]})
    repos = open_repos(spec.input, str(tmp_path))
    assert [d.inputs[0].join_on for d in expand(spec.input, repos)] == keys
    spec = spec_of({"group": [_pfs("l", "/(*)", group_by="$1"),
                              _pfs("r", "/(*)", group_by="$1")]})
    repos = open_repos(spec.input, str(tmp_path))
    grouped = expand(spec.input, repos)
    assert [d.inputs[0].group_by for d in grouped] == keys
    assert all([i.name for i in d.inputs] == ["l", "r"] for d in grouped)


def test_first_datum_comes_before_the_walk_ends(tmp_path: Path) -> None:
    write_tree(tmp_path / "r", {f"d{i:02}/f": "x" for i in range(50)})
    spec = spec_of(_pfs("r", "/*"))
    repos = open_repos(spec.input, str(tmp_path))
    walked: list[str] = []
    repo = repos["r"]
    original = repo.walk

    def watched():  # type: ignore[no-untyped-def]
        for entry in original():
            walked.append(entry.path)
            yield entry

    repo.walk = watched  # type: ignore[method-assign]
    first = next(iter_datums(spec.input, repos))
    assert first.inputs[0].path == "/d00"
    assert len(walked) <= 4, walked  # "/", "/d00", "/d00/f", "/d01": the subtree's end

"""Datum expansion (pfs, cross, union, join, group), ids, hashes and per-datum env."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pfsmount.datums import (
    Datum,
    DatumError,
    DatumInput,
    datum_hash,
    datum_id,
    expand,
    open_repos,
)
from pfsmount.plan import inputs_json
from pfsmount.spec import (
    CrossInput,
    GroupInput,
    Input,
    JoinInput,
    PfsInput,
    SpecError,
    UnionInput,
    parse_spec,
)
from pfsmount.store.local import RepoIndex, StoreError
from pfsmount.store.local import open_repo as open_listing


def expected_id(*inputs: tuple[str, str, str, str]) -> str:
    """PACHYDERM.md §5, written out independently of pfsmount.datums."""
    h = hashlib.blake2b(digest_size=32)
    for fields in inputs:
        for part in fields:
            data = part.encode()
            h.update(data)
            h.update(struct.pack(">q", len(data)))
    return h.hexdigest()


def write(root: Path, files: list[str]) -> None:
    for rel in files:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rel)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write(tmp_path / "images", ["a.png", "b.png", "dir/c.png", "dir/d/e.png"])
    write(tmp_path / "left", ["1.txt", "2.txt", "3.txt"])
    write(tmp_path / "right", ["1.csv", "2.csv", "4.csv", "2-extra.csv"])
    write(tmp_path / "logs", ["x-1.log", "y-1.log", "x-2.log"])
    return tmp_path


def pfs(repo: str, glob: str, **kw: object) -> PfsInput:
    return PfsInput(name=str(kw.pop("name", repo)), repo=repo, glob=glob, **kw)  # type: ignore[arg-type]


def run(node: Input, data: Path) -> list[Datum]:
    return expand(node, open_repos(node, str(data)))


def shape(datums: list[Datum]) -> list[list[str]]:
    return [[f"{i.name}:{i.path}" for i in d.inputs] for d in datums]


def test_pfs_files_and_directories_in_listing_order(data: Path) -> None:
    assert shape(run(pfs("images", "/*"), data)) == [
        ["images:/a.png"], ["images:/b.png"], ["images:/dir"],
    ]  # fmt: skip


def test_pfs_root_glob_is_one_datum(data: Path) -> None:
    datums = run(pfs("images", "/"), data)
    assert shape(datums) == [["images:/"]]
    assert datums[0].id == expected_id(("images", "images", "master", "/"))


def test_pfs_double_star_overlaps_and_excludes_root(data: Path) -> None:
    assert shape(run(pfs("images", "/**"), data)) == [
        ["images:/a.png"], ["images:/b.png"], ["images:/dir"], ["images:/dir/c.png"],
        ["images:/dir/d"], ["images:/dir/d/e.png"],
    ]  # fmt: skip


def test_pfs_second_level(data: Path) -> None:
    assert shape(run(pfs("images", "/*/*"), data)) == [["images:/dir/c.png"], ["images:/dir/d"]]


def test_pfs_no_match_is_no_datums(data: Path) -> None:
    assert run(pfs("images", "/*.jpg"), data) == []


def test_ids_commit_and_fields(data: Path) -> None:
    repos = open_repos(pfs("images", "/*"), str(data))
    datums = expand(pfs("images", "/*", name="pics", branch="dev", empty_files=True), repos)
    first = datums[0]
    assert first.id == expected_id(("pics", "images", "dev", "/a.png"))
    assert first.inputs == (
        DatumInput(name="pics", repo="images", branch="dev", path="/a.png",
                   commit=repos["images"].commit, empty_files=True),
    )  # fmt: skip
    assert len({d.id for d in datums}) == len(datums)


def test_datum_id_function_matches_spec(data: Path) -> None:
    inputs = [
        DatumInput(name="a", repo="r", branch="master", path="/x.txt", commit="c"),
        DatumInput(name="bb", repo="s", branch="b", path="/", commit="d"),
    ]
    assert datum_id(inputs) == expected_id(("a", "r", "master", "/x.txt"), ("bb", "s", "b", "/"))
    assert datum_id([]) == hashlib.blake2b(digest_size=32).hexdigest()


def test_cross_is_product_first_child_outermost(data: Path) -> None:
    node = CrossInput((pfs("left", "/*"), pfs("images", "/*.png")))
    datums = run(node, data)
    assert shape(datums) == [
        ["left:/1.txt", "images:/a.png"], ["left:/1.txt", "images:/b.png"],
        ["left:/2.txt", "images:/a.png"], ["left:/2.txt", "images:/b.png"],
        ["left:/3.txt", "images:/a.png"], ["left:/3.txt", "images:/b.png"],
    ]  # fmt: skip
    assert datums[1].id == expected_id(
        ("left", "left", "master", "/1.txt"), ("images", "images", "master", "/b.png")
    )


def test_cross_with_empty_side_is_empty(data: Path) -> None:
    assert run(CrossInput((pfs("left", "/*"), pfs("images", "/*.jpg"))), data) == []


def test_union_concatenates_and_allows_same_name(data: Path) -> None:
    node = UnionInput((pfs("left", "/1.txt", name="in"), pfs("right", "/4.csv", name="in")))
    assert shape(run(node, data)) == [["in:/1.txt"], ["in:/4.csv"]]


def test_nested_cross_of_union(data: Path) -> None:
    node = CrossInput(
        (UnionInput((pfs("left", "/1.txt"), pfs("right", "/1.csv"))), pfs("images", "/a.png"))
    )
    assert shape(run(node, data)) == [
        ["left:/1.txt", "images:/a.png"], ["right:/1.csv", "images:/a.png"],
    ]  # fmt: skip


def test_join_inner(data: Path) -> None:
    node = JoinInput(
        (pfs("left", "/(*).txt", join_on="$1"), pfs("right", "/(*).csv", join_on="$1"))
    )
    datums = run(node, data)
    assert shape(datums) == [["left:/1.txt", "right:/1.csv"], ["left:/2.txt", "right:/2.csv"]]
    assert [i.join_on for i in datums[0].inputs] == ["1", "1"]
    assert datums[1].id == expected_id(
        ("left", "left", "master", "/2.txt"), ("right", "right", "master", "/2.csv")
    )


def test_join_multiple_matches_per_key_are_crossed(data: Path) -> None:
    node = JoinInput(
        (pfs("left", "/(*).txt", join_on="$1"), pfs("right", "/(?)*.csv", join_on="$1"))
    )
    assert shape(run(node, data)) == [
        ["left:/1.txt", "right:/1.csv"],
        ["left:/2.txt", "right:/2-extra.csv"], ["left:/2.txt", "right:/2.csv"],
    ]  # fmt: skip


def test_join_keys_sorted_not_listing_order(tmp_path: Path) -> None:
    write(tmp_path / "a", ["z/k", "b/k"])
    write(tmp_path / "b", ["k-z", "k-b"])
    node = JoinInput((pfs("a", "/(*)/k", join_on="$1"), pfs("b", "/k-(*)", join_on="$1")))
    assert shape(run(node, tmp_path)) == [["a:/b/k", "b:/k-b"], ["a:/z/k", "b:/k-z"]]


def test_outer_join_keeps_unmatched_of_the_outer_side_only(data: Path) -> None:
    node = JoinInput(
        (
            pfs("left", "/(*).txt", join_on="$1", outer_join=True),
            pfs("right", "/(*).csv", join_on="$1"),
        )
    )
    assert shape(run(node, data)) == [
        ["left:/1.txt", "right:/1.csv"], ["left:/2.txt", "right:/2.csv"], ["left:/3.txt"],
    ]  # fmt: skip


def test_full_outer_join(data: Path) -> None:
    node = JoinInput(
        (
            pfs("left", "/(*).txt", join_on="$1", outer_join=True),
            pfs("right", "/(*).csv", join_on="$1", outer_join=True),
        )
    )
    result = shape(run(node, data))
    assert result == [
        ["left:/1.txt", "right:/1.csv"], ["left:/2.txt", "right:/2.csv"],
        ["right:/2-extra.csv"], ["left:/3.txt"], ["right:/4.csv"],
    ]  # fmt: skip
    datums = run(node, data)
    # Keys sort as strings: "2" < "2-extra" < "3".
    assert datums[3].id == expected_id(("left", "left", "master", "/3.txt"))


def test_three_way_join_with_outer_partial_match(tmp_path: Path) -> None:
    write(tmp_path / "a", ["1", "2"])
    write(tmp_path / "b", ["1", "2"])
    write(tmp_path / "c", ["1"])
    node = JoinInput(
        (
            pfs("a", "/(*)", join_on="$1", outer_join=True),
            pfs("b", "/(*)", join_on="$1"),
            pfs("c", "/(*)", join_on="$1"),
        )
    )
    # Key "2" is missing from c: only the outer input a survives, once.
    assert shape(run(node, tmp_path)) == [["a:/1", "b:/1", "c:/1"], ["a:/2"]]


def test_group_collects_every_input_per_key(data: Path) -> None:
    node = GroupInput(
        (
            pfs("logs", "/*-(*).log", group_by="$1"),
            pfs("left", "/(*).txt", group_by="$1"),
        )
    )
    datums = run(node, data)
    assert shape(datums) == [
        ["logs:/x-1.log", "logs:/y-1.log", "left:/1.txt"],
        ["logs:/x-2.log", "left:/2.txt"],
        ["left:/3.txt"],
    ]
    assert datums[1].id == expected_id(
        ("logs", "logs", "master", "/x-2.log"), ("left", "left", "master", "/2.txt")
    )
    assert [i.group_by for i in datums[0].inputs] == ["1", "1", "1"]


def test_group_single_child(data: Path) -> None:
    node = GroupInput((pfs("logs", "/(*)-*.log", group_by="$1"),))
    assert shape(run(node, data)) == [["logs:/x-1.log", "logs:/x-2.log"], ["logs:/y-1.log"]]


def test_join_of_cross_splits_into_inputs_like_pachyderm(tmp_path: Path) -> None:
    write(tmp_path / "a", ["1"])
    write(tmp_path / "b", ["1", "2"])
    write(tmp_path / "c", ["1", "2"])
    node = JoinInput(
        (
            CrossInput((pfs("a", "/(*)", join_on="$1"), pfs("b", "/(*)", join_on="x"))),
            pfs("c", "/(*)", join_on="$1"),
        )
    )
    # b's inputs all have key "x", which c never has; a's "1" meets c's "1".
    assert shape(run(node, tmp_path)) == [["a:/1", "c:/1"]]


def test_env_values(data: Path) -> None:
    node = JoinInput(
        (pfs("left", "/(*).txt", join_on="$1"), pfs("right", "/(*).csv", join_on="$1"))
    )
    repos = open_repos(node, str(data))
    datum = expand(node, repos)[0]
    assert datum.env() == [
        ("left", "/pfs/left/1.txt"),
        ("left_COMMIT", repos["left"].commit),
        ("PACH_DATUM_left_JOIN_ON", "1"),
        ("right", "/pfs/right/1.csv"),
        ("right_COMMIT", repos["right"].commit),
        ("PACH_DATUM_right_JOIN_ON", "1"),
    ]
    assert datum.env("/mnt/pfs/")[0] == ("left", "/mnt/pfs/left/1.txt")


def test_env_root_glob_and_group(data: Path) -> None:
    repos = open_repos(pfs("images", "/"), str(data))
    root = expand(pfs("images", "/"), repos)[0]
    assert root.env()[0] == ("images", "/pfs/images")
    group = GroupInput((pfs("logs", "/*-(*).log", group_by="$1"),))
    repos = open_repos(group, str(data))
    env = expand(group, repos)[0].env()
    assert [pair for pair in env if pair[0] == "logs"] == [
        ("logs", "/pfs/logs/x-1.log"), ("logs", "/pfs/logs/y-1.log"),
    ]  # fmt: skip
    assert ("PACH_DATUM_logs_GROUP_BY", "1") in env


def test_datum_hash(tmp_path: Path) -> None:
    write(tmp_path / "r", ["a", "b"])
    repos = open_repos(pfs("r", "/*"), str(tmp_path))
    a, b = expand(pfs("r", "/*"), repos)
    # The streamed datum's own entries fingerprint as the whole listing's subtree does.
    fingerprint = open_listing(str(tmp_path), "r").content_fingerprint("/a")
    h = hashlib.blake2b(digest_size=32)
    for part in (a.id, fingerprint, "salt"):
        h.update(part.encode())
        h.update(struct.pack(">q", len(part)))
    assert datum_hash(a, repos, "salt") == h.hexdigest()
    assert datum_hash(a, repos, "salt") != datum_hash(a, repos, "other")
    assert datum_hash(a, repos, "") != datum_hash(b, repos, "")
    (tmp_path / "r" / "b").write_text("changed content, longer")
    changed = open_repos(pfs("r", "/*"), str(tmp_path))
    # A datum carries the entries it was listed with: a new listing gives new datums.
    a2, b2 = expand(pfs("r", "/*"), changed)
    assert datum_hash(a2, changed, "") == datum_hash(a, repos, "")
    assert datum_hash(b2, changed, "") != datum_hash(b, repos, "")


def test_open_repos_once_each_and_missing(data: Path) -> None:
    node = CrossInput((pfs("left", "/*", name="l1"), pfs("left", "/", name="l2")))
    repos = open_repos(node, str(data))
    assert list(repos) == ["left"]
    with pytest.raises(StoreError, match="repo 'nope' not found"):
        open_repos(pfs("nope", "/*"), str(data))


def test_template_referencing_missing_group_is_a_spec_error(data: Path) -> None:
    node = JoinInput((pfs("left", "/*.txt", join_on="$1"), pfs("right", "/(*).csv", join_on="$1")))
    with pytest.raises(DatumError) as info:
        run(node, data)
    assert isinstance(info.value, SpecError)
    message = str(info.value)
    assert "input 'left'" in message and "$1" in message and "add a (...) group" in message


def test_unopened_repo_is_reported(data: Path) -> None:
    with pytest.raises(DatumError, match="repo 'left' was not opened"):
        expand(pfs("left", "/*"), {})


def test_end_to_end_from_spec(data: Path) -> None:
    spec = parse_spec(
        """
pipeline: {name: p}
input:
  cross:
    - pfs: {repo: left, glob: "/*"}
    - pfs: {repo: images, name: img, glob: "/dir/*"}
transform: {cmd: [sh]}
"""
    )
    assert shape(run(spec.input, data)) == [
        ["left:/1.txt", "img:/dir/c.png"], ["left:/1.txt", "img:/dir/d"],
        ["left:/2.txt", "img:/dir/c.png"], ["left:/2.txt", "img:/dir/d"],
        ["left:/3.txt", "img:/dir/c.png"], ["left:/3.txt", "img:/dir/d"],
    ]  # fmt: skip


def test_datum_index_order_is_stable(data: Path) -> None:
    node = pfs("images", "/**")
    assert [d.id for d in run(node, data)] == [d.id for d in run(node, data)]


def test_repos_mapping_is_keyed_by_repo_name(data: Path) -> None:
    repos: dict[str, RepoIndex] = open_repos(pfs("left", "/*", name="renamed"), str(data))
    assert set(repos) == {"left"}


def test_repo_errors_name_the_spec_field(data: Path) -> None:
    (data / "hollow" / "sub").mkdir(parents=True)
    node = JoinInput((pfs("left", "/*"), UnionInput((pfs("right", "/*"), pfs("nope", "/*")))))
    with pytest.raises(StoreError) as info:
        open_repos(node, str(data), source="p.yaml")
    assert str(info.value).startswith(
        "p.yaml: input.join[1].union[1].pfs.repo: repo 'nope' not found: "
    )
    with pytest.raises(StoreError) as info:
        open_repos(CrossInput((pfs("left", "/*"), pfs("hollow", "/*"))), str(data))
    assert str(info.value).startswith("input.cross[1].pfs.repo: repo 'hollow' is empty: ")
    assert "add the input files under" in str(info.value)


_text = st.text(st.characters(codec="utf-8") | st.sampled_from(["\udcff", '"', "\\", "\n"]))


@given(st.lists(st.tuples(_text, _text, _text), min_size=1, max_size=4))
def test_fast_encodings_equal_the_reference_ones(parts: list[tuple[str, str, str]]) -> None:
    # The id and the ledger's inputs column are built by hand for speed; they must stay
    # byte-identical to the obvious definitions (ids are stored in ledgers across versions).
    inputs = tuple(DatumInput(name, repo, "master", "/" + path, "c") for name, repo, path in parts)
    expected_id = hashlib.blake2b(b"".join(
        (lambda b: b + struct.pack(">q", len(b)))(part.encode("utf-8", "surrogateescape"))
        for i in inputs for part in (i.name, i.repo, i.branch, i.path)), digest_size=32)
    assert datum_id(inputs) == expected_id.hexdigest()
    assert inputs_json(Datum(id="x", inputs=inputs)) == json.dumps(
        [{"name": i.name, "repo": i.repo, "path": i.path} for i in inputs])

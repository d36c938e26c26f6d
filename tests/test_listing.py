"""`pfsmount list-datums`: the table, the JSON records, odd names, and speed at 100k files."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfsmount.datums import datum_hash, expand, open_repos
from pfsmount.listing import print_datums
from pfsmount.names import from_json
from pfsmount.spec import PipelineSpec, parse_spec
from support import PY, ROOT, pachyderm_datum_id, write_spec, write_tree

CLI_SOURCE = ROOT / "src" / "pfsmount" / "cli.py"


def spec_of(input_: dict, salt: str = "") -> PipelineSpec:
    return parse_spec(json.dumps({"pipeline": {"name": "p"}, "input": input_, "salt": salt,
                                  "transform": {"cmd": ["true"]}}), source="p.json")


def listing(spec: PipelineSpec, data: Path, *, as_json: bool) -> str:
    repos = open_repos(spec.input, str(data))
    out = io.StringIO()
    print_datums(spec, repos, expand(spec.input, repos), as_json=as_json, out=out)
    return out.getvalue()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_tree(tmp_path / "left", {"1.txt": "a", "2.txt": "bb", "3.txt": "ccc"})
    write_tree(tmp_path / "right", {"1.csv": "x", "2.csv": "y"})
    write_tree(tmp_path / "images", {"a.png": "A", "dir/b.png": "B"})
    return tmp_path


def _pfs(repo: str, glob: str, **extra: object) -> dict:
    return {"pfs": {"repo": repo, "glob": glob, **extra}}


def test_table_has_a_column_per_input_when_every_datum_has_the_same_inputs(data: Path) -> None:
    spec = spec_of({"join": [_pfs("left", "/(*).txt", join_on="$1"),
                             _pfs("right", "/(*).csv", join_on="$1", name="r")]})
    lines = listing(spec, data, as_json=False).splitlines()
    id1 = pachyderm_datum_id([("left", "left", "master", "/1.txt"),
                              ("r", "right", "master", "/1.csv")])
    id2 = pachyderm_datum_id([("left", "left", "master", "/2.txt"),
                              ("r", "right", "master", "/2.csv")])
    assert lines == [
        "DATUM" + " " * 59 + "  left    r",
        f"{id1}  /1.txt  /1.csv",
        f"{id2}  /2.txt  /2.csv",
    ]


def test_table_lists_name_path_items_when_datums_differ(data: Path) -> None:
    spec = spec_of({"join": [_pfs("left", "/(*).txt", join_on="$1", outer_join=True),
                             _pfs("right", "/(*).csv", join_on="$1")]})
    lines = listing(spec, data, as_json=False).splitlines()
    assert lines[0] == "DATUM" + " " * 59 + "  INPUTS"
    assert [line[66:] for line in lines[1:]] == [
        "left:/1.txt  right:/1.csv", "left:/2.txt  right:/2.csv", "left:/3.txt",
    ]  # fmt: skip
    assert lines[3][:64] == pachyderm_datum_id([("left", "left", "master", "/3.txt")])


def test_group_datum_lists_every_input(data: Path) -> None:
    spec = spec_of({"group": [_pfs("left", "/*", group_by="all"),
                              _pfs("right", "/*", group_by="all")]})
    lines = listing(spec, data, as_json=False).splitlines()
    assert len(lines) == 2
    assert lines[1][66:] == ("left:/1.txt  left:/2.txt  left:/3.txt  right:/1.csv  "
                             "right:/2.csv")


def test_json_records(data: Path) -> None:
    spec = spec_of({"cross": [_pfs("left", "/(1).txt", join_on="$1"),
                              _pfs("images", "/*", branch="dev")]}, salt="s1")
    repos = open_repos(spec.input, str(data))
    datums = expand(spec.input, repos)
    records = [json.loads(line) for line in listing(spec, data, as_json=True).splitlines()]
    assert [r["id"] for r in records] == [d.id for d in datums]
    assert [r["hash"] for r in records] == [datum_hash(d, repos, "s1") for d in datums]
    assert records[1]["inputs"] == [
        {"name": "left", "repo": "left", "branch": "master", "path": "/1.txt",
         "commit": repos["left"].commit, "join_on": "1", "group_by": ""},
        {"name": "images", "repo": "images", "branch": "dev", "path": "/dir",
         "commit": repos["images"].commit, "join_on": "", "group_by": ""},
    ]  # fmt: skip


def test_hash_follows_content_and_salt(data: Path) -> None:
    spec = spec_of(_pfs("left", "/*"))
    before = [json.loads(line)["hash"] for line in listing(spec, data, as_json=True).splitlines()]
    salted = spec_of(_pfs("left", "/*"), salt="new")
    after_salt = [json.loads(line)["hash"]
                  for line in listing(salted, data, as_json=True).splitlines()]
    assert not set(before) & set(after_salt)
    (data / "left" / "2.txt").write_text("changed content")
    after = [json.loads(line)["hash"] for line in listing(spec, data, as_json=True).splitlines()]
    assert [a == b for a, b in zip(before, after, strict=True)] == [True, False, True]


def test_odd_names_stay_on_one_line_and_round_trip_in_json(tmp_path: Path) -> None:
    repo = tmp_path / "odd"
    repo.mkdir()
    for name in (b"new\nline", b"caf\xe9", b"tab\there", b"plain name"):
        (repo / os.fsdecode(name)).write_text("x")
    spec = spec_of(_pfs("odd", "/*"))
    table = listing(spec, tmp_path, as_json=False).splitlines()
    assert len(table) == 5
    assert [line[66:] for line in table[1:]] == [
        "/caf\\xe9", "/new\\nline", "/plain name", "/tab\\there",
    ]  # fmt: skip
    # Strict JSON: undecodable bytes as U+FFFD, the exact bytes in base64 in path_b64.
    paths = [from_json(json.loads(line)["inputs"][0], "path")
             for line in listing(spec, tmp_path, as_json=True).splitlines()]
    assert [os.fsencode(p) for p in paths] == [b"/caf\xe9", b"/new\nline", b"/plain name",
                                               b"/tab\there"]


def test_no_datums_prints_only_the_header(data: Path) -> None:
    spec = spec_of(_pfs("left", "/*.nothing"))
    assert listing(spec, data, as_json=False) == "DATUM" + " " * 59 + "  INPUTS\n"
    assert listing(spec, data, as_json=True) == ""


@pytest.fixture
def fast_dir() -> Iterator[Path]:
    """tmpfs scratch space: creating 100k files in the default temp dir takes minutes here."""
    if not os.access("/dev/shm", os.W_OK):
        pytest.skip("needs a writable tmpfs at /dev/shm to create 100k files quickly")
    path = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="pfsmount-listing-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_hundred_thousand_datums_list_in_seconds(fast_dir: Path) -> None:
    big = fast_dir / "big"
    big.mkdir()
    for i in range(100_000):
        os.close(os.open(big / f"f{i:06}", os.O_CREAT | os.O_WRONLY, 0o644))
    spec = spec_of(_pfs("big", "/*"))
    start = time.perf_counter()
    repos = open_repos(spec.input, str(fast_dir))
    datums = expand(spec.input, repos)
    out = io.StringIO()
    print_datums(spec, repos, datums, as_json=True, out=out)
    elapsed = time.perf_counter() - start
    assert out.getvalue().count("\n") == 100_000
    # About 2 s on a loaded 2-core machine; the bound leaves room, minutes would fail it.
    assert elapsed < 10, f"listing 100k datums took {elapsed:.1f}s"


@pytest.mark.skipif("listing" not in CLI_SOURCE.read_text(),
                    reason="pfsmount list-datums is not wired to pfsmount.listing yet")
def test_cli_list_datums_json(data: Path, tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path / "p.yaml", {
        "pipeline": {"name": "p"},
        "input": {"group": [_pfs("left", "/(*).txt", group_by="$1"),
                            _pfs("right", "/(*).csv", group_by="$1")]},
        "transform": {"cmd": ["true"], "datum_batching": True},
    })
    result = subprocess.run([PY, "-m", "pfsmount", "list-datums", str(spec_path), "--data",
                             str(data), "--json"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    expected = listing(spec_of({"group": [_pfs("left", "/(*).txt", group_by="$1"),
                                          _pfs("right", "/(*).csv", group_by="$1")]}),
                       data, as_json=True)
    assert result.stdout == expected
    keys = [[i["group_by"] for i in json.loads(line)["inputs"]]
            for line in result.stdout.splitlines()]
    assert keys == [["1", "1"], ["2", "2"], ["3"]]

"""`pfsmount run` with join, outer join, group and empty_files inputs: real mounts, real user
code that records what it sees for every datum, and the exact output repo."""

from __future__ import annotations

import json
import re
from pathlib import Path

from support import (
    batching_spec,
    needs_fuse,
    pachyderm_datum_id,
    read_tree,
    run_pfsmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse

# The user code: for every datum, record the files under the mountpoint (content and size),
# the datum's variables in os.environ and /pfs/.env, into /pfs/out/<datum id>.json.
RECORDER = """
    import json, os, re
    from pfsmount import iter_datums

    mnt = os.environ["MNT"]
    names = os.environ["NAMES"].split(",")
    ours = re.compile("^(" + "|".join(names) + ")(_COMMIT)?$|^PACH_DATUM_")
    for datum in iter_datums():
        files = {}
        for top in sorted(os.listdir(mnt)):
            if top in ("out", ".env"):
                continue
            for dirpath, _dirs, filenames in os.walk(os.path.join(mnt, top)):
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    with open(path, "rb") as f:
                        content = f.read().decode()
                    files[os.path.relpath(path, mnt)] = [content, os.stat(path).st_size]
        env = {k: v for k, v in os.environ.items() if ours.match(k)}
        with open(os.path.join(mnt, ".env")) as f:
            env_file = [line.rstrip("\\n") for line in f if ours.match(line.split("=", 1)[0])]
        record = {"files": files, "env": env, "env_file": env_file}
        with open(os.path.join(mnt, "out", datum.id + ".json"), "w") as f:
            json.dump(record, f, sort_keys=True)
"""


def _pfs(repo: str, glob: str, **extra: object) -> dict:
    return {"pfs": {"repo": repo, "glob": glob, **extra}}


def run_recorder(tmp_path: Path, mnt: Path, data: Path, input_: dict,
                 names: list[str]) -> dict[str, dict]:
    """Run the recorder over `input_`; the records by datum id (the exact output repo)."""
    script = write_script(tmp_path / "record.py", RECORDER)
    spec = write_spec(tmp_path / "pipeline.yaml", batching_spec(
        "seen", input_, ["python3", str(script)],
        env={"MNT": str(mnt), "NAMES": ",".join(names)},
    ))
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 0, result
    output = read_tree(data / "seen")
    assert all(re.fullmatch(r"[0-9a-f]{64}\.json", name) for name in output), output
    return {name.removesuffix(".json"): json.loads(raw) for name, raw in output.items()}


def commit_of(record: dict, name: str) -> str:
    commit = record["env"][f"{name}_COMMIT"]
    assert re.fullmatch(r"[0-9a-f]{32}", commit)
    return commit


def join_data(data: Path) -> None:
    write_tree(data / "left", {"1/a.txt": "L1a", "1/b.txt": "L1b", "2/a.txt": "L2",
                               "3/a.txt": "L3"})
    write_tree(data / "right", {"1.csv": "R1", "2.csv": "R2", "4.csv": "R4"})


def both(key: str) -> str:
    """The id of the joined datum for `key` in `join_data`."""
    return pachyderm_datum_id([("left", "left", "master", f"/{key}"),
                               ("right", "right", "master", f"/{key}.csv")])


def test_join(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    join_data(data)
    inner = {"join": [_pfs("left", "/(*)", join_on="$1"),
                      _pfs("right", "/(*).csv", join_on="$1")]}
    records = run_recorder(tmp_path, mnt, data, inner, ["left", "right"])
    assert set(records) == {both("1"), both("2")}
    one = records[both("1")]
    assert one["files"] == {"left/1/a.txt": ["L1a", 3], "left/1/b.txt": ["L1b", 3],
                            "right/1.csv": ["R1", 2]}
    assert one["env"] == {
        "left": f"{mnt}/left/1", "left_COMMIT": commit_of(one, "left"),
        "PACH_DATUM_left_JOIN_ON": "1",
        "right": f"{mnt}/right/1.csv", "right_COMMIT": commit_of(one, "right"),
        "PACH_DATUM_right_JOIN_ON": "1",
        "PACH_DATUM_ID": both("1"),
    }  # fmt: skip
    assert one["env_file"] == [
        f"left={mnt}/left/1", f"left_COMMIT={commit_of(one, 'left')}",
        "PACH_DATUM_left_JOIN_ON=1",
        f"right={mnt}/right/1.csv", f"right_COMMIT={commit_of(one, 'right')}",
        "PACH_DATUM_right_JOIN_ON=1", f"PACH_DATUM_ID={both('1')}",
    ]  # fmt: skip
    assert records[both("2")]["files"] == {"left/2/a.txt": ["L2", 2], "right/2.csv": ["R2", 2]}


def test_full_outer_join(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    join_data(data)
    outer = {"join": [_pfs("left", "/(*)", join_on="$1", outer_join=True),
                      _pfs("right", "/(*).csv", join_on="$1", outer_join=True)]}
    records = run_recorder(tmp_path, mnt, data, outer, ["left", "right"])
    only_left = pachyderm_datum_id([("left", "left", "master", "/3")])
    only_right = pachyderm_datum_id([("right", "right", "master", "/4.csv")])
    # Keys in sorted order: 1, 2 joined; 3 and 4 partial.
    assert set(records) == {both("1"), both("2"), only_left, only_right}
    assert set(records[both("2")]["files"]) == {"left/2/a.txt", "right/2.csv"}
    # A partial datum has no /pfs/<name> and no variables for the missing side, not even
    # ones left over from the datum before.
    left3 = records[only_left]
    assert left3["files"] == {"left/3/a.txt": ["L3", 2]}
    assert left3["env"] == {"left": f"{mnt}/left/3", "left_COMMIT": commit_of(left3, "left"),
                            "PACH_DATUM_left_JOIN_ON": "3", "PACH_DATUM_ID": only_left}
    assert [line.split("=")[0] for line in left3["env_file"]] == [
        "left", "left_COMMIT", "PACH_DATUM_left_JOIN_ON", "PACH_DATUM_ID"]
    right4 = records[only_right]
    assert right4["files"] == {"right/4.csv": ["R4", 2]}
    assert right4["env"] == {
        "right": f"{mnt}/right/4.csv", "right_COMMIT": commit_of(right4, "right"),
        "PACH_DATUM_right_JOIN_ON": "4", "PACH_DATUM_ID": only_right,
    }  # fmt: skip


def test_group(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "logs", {"x-1.log": "x1", "y-1.log": "y1", "x-2.log": "x2",
                               "other.txt": "not matched"})
    write_tree(data / "meta", {"1.json": "{1}", "3.json": "{3}"})
    group = {"group": [_pfs("logs", "/*-(*).log", group_by="$1"),
                       _pfs("meta", "/(*).json", group_by="$1", name="m")]}
    records = run_recorder(tmp_path, mnt, data, group, ["logs", "m"])
    key1 = pachyderm_datum_id([("logs", "logs", "master", "/x-1.log"),
                               ("logs", "logs", "master", "/y-1.log"),
                               ("m", "meta", "master", "/1.json")])
    key2 = pachyderm_datum_id([("logs", "logs", "master", "/x-2.log")])
    key3 = pachyderm_datum_id([("m", "meta", "master", "/3.json")])
    assert set(records) == {key1, key2, key3}

    first = records[key1]
    # Every match of one input appears under the same /pfs/<name>.
    assert first["files"] == {"logs/x-1.log": ["x1", 2], "logs/y-1.log": ["y1", 2],
                              "m/1.json": ["{1}", 3]}
    logs_commit, m_commit = commit_of(first, "logs"), commit_of(first, "m")
    # /pfs/.env lists each input in datum order; os.environ keeps the last of a repeated name.
    assert first["env_file"] == [
        f"logs={mnt}/logs/x-1.log", f"logs_COMMIT={logs_commit}", "PACH_DATUM_logs_GROUP_BY=1",
        f"logs={mnt}/logs/y-1.log", f"logs_COMMIT={logs_commit}", "PACH_DATUM_logs_GROUP_BY=1",
        f"m={mnt}/m/1.json", f"m_COMMIT={m_commit}", "PACH_DATUM_m_GROUP_BY=1",
        f"PACH_DATUM_ID={key1}",
    ]  # fmt: skip
    assert first["env"]["logs"] == f"{mnt}/logs/y-1.log"
    assert records[key2]["files"] == {"logs/x-2.log": ["x2", 2]}
    assert set(records[key2]["env"]) == {"logs", "logs_COMMIT", "PACH_DATUM_logs_GROUP_BY",
                                         "PACH_DATUM_ID"}
    assert records[key3]["files"] == {"m/3.json": ["{3}", 3]}
    assert records[key3]["env"]["PACH_DATUM_m_GROUP_BY"] == "3"


def test_empty_files_and_lazy(tmp_path: Path, mnt: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "big", {"a.bin": "x" * 1000, "d/b.txt": "hello"})
    write_tree(data / "small", {"s1": "one", "s2": "two"})
    input_ = {"cross": [_pfs("big", "/", empty_files=True), _pfs("small", "/*", lazy=True)]}
    records = run_recorder(tmp_path, mnt, data, input_, ["big", "small"])
    ids = {pachyderm_datum_id([("big", "big", "master", "/"), ("small", "small", "master", p)]):
           p for p in ("/s1", "/s2")}
    assert set(records) == set(ids)
    for datum_id, path in ids.items():
        record = records[datum_id]
        content = {"/s1": "one", "/s2": "two"}[path]
        # empty_files: names only, zero length; lazy: accepted, files read as usual.
        assert record["files"] == {"big/a.bin": ["", 0], "big/d/b.txt": ["", 0],
                                   f"small{path}": [content, 3]}
        assert record["env"]["big"] == f"{mnt}/big"
        assert record["env"]["small"] == f"{mnt}/small{path}"

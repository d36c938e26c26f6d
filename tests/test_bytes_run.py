"""Names are bytes, end to end: real mounts, real user code, names and values not UTF-8.

Issue 10 (D2): a byte like \\xff in a repo's file names (also deep inside a `/` datum), in an
inherited environment variable, or in `--data` crashed pfsmount and wedged the job. Issue 13:
/pfs/.env and the NextDatum reply hold the datum's variables, not the launching environment.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

from support import (
    PY,
    batching_spec,
    datum_states,
    finish,
    needs_fuse,
    start_pfsmount,
    write_script,
    write_spec,
)

pytestmark = needs_fuse

SECRET = {"AWS_SECRET_ACCESS_KEY": "xyz"}
# Inherited: BAD stays in the process env only; PACH_ODD is a PACH_* variable, so it is also
# part of every datum's env (/pfs/.env and the reply).
ODD_ENV = {"BAD": os.fsdecode(b"a\xffb"), "PACH_ODD": os.fsdecode(b"p\xff'q $x")}


def _write_bytes_tree(root: Path, files: dict[bytes, bytes]) -> None:
    for rel, content in files.items():
        path = os.path.join(os.fsencode(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)


def _pfs(repo: str, glob: str) -> dict:
    return {"pfs": {"repo": repo, "glob": glob}}


# What the user code in each scenario records per datum, as hex so JSON can carry bytes.
_PROBE = """
    import json, os, subprocess

    def tree(root):
        found = {}
        for dirpath, _, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    found[os.path.relpath(path, root).hex()] = f.read().hex()
        return found

    def sourced(shell, env_path):
        # Only what /pfs/.env sets: the shell starts with an empty environment.
        script = ('. "$1"; printf "%s\\\\0%s\\\\0%s" "$in" "$PACH_ODD" '
                  '"${AWS_SECRET_ACCESS_KEY-unset}"')
        out = subprocess.run([shell, "-c", script, shell, env_path], env={"PATH": "/usr/bin:/bin"},
                             capture_output=True, check=True).stdout
        return [part.hex() for part in out.split(b"\\0")]
"""


def test_non_utf8_names_values_and_data_dir(tmp_path: Path) -> None:
    # Three jobs at once (each its own mount), then the same three again: all must skip.
    top = tmp_path / "top"
    _write_bytes_tree(top / "data" / "in", {
        b"a\xff.txt": b"top \xff",
        b"d\xffir/sub/deep\xfe.txt": b"deep",
        b"ok.txt": b"ok",
    })
    top_script = write_script(tmp_path / "top.py", _PROBE + """
    import dotenv, sys
    from pfsmount import iter_datums
    mnt = os.environ["MNT"]
    for d in iter_datums():
        env_path = os.path.join(mnt, ".env")
        record = {
            "in": os.environb[b"in"].hex(),
            "reply_in": os.fsencode(d.env["in"]).hex(),
            "reply_keys": sorted(d.env),
            "tree": tree(os.fsencode(os.path.join(mnt, "in"))),
            "env_file": open(env_path, "rb").read().hex(),
            "bash": sourced("bash", env_path),
            "dash": sourced("dash", env_path),
            "dotenv": dotenv.dotenv_values(env_path),
            "secret": os.environ.get("AWS_SECRET_ACCESS_KEY"),
            "bad": os.environb.get(b"BAD", b"").hex(),
        }
        with open(os.path.join(mnt, "out", d.id + ".json"), "w") as f:
            json.dump(record, f)
    """)
    top_spec = write_spec(tmp_path / "top.yaml", batching_spec(
        "top", _pfs("in", "/*"), [PY, str(top_script)], env={"MNT": str(tmp_path / "m1")}))

    deep = tmp_path / "deep"
    _write_bytes_tree(deep / "data" / "one", {
        b"x/y\xff/z\xff.bin": b"zz\xff",
        b"plain.txt": b"p",
    })
    deep_script = write_script(tmp_path / "deep.py", _PROBE + """
    from pachyderm_sdk import batch_all_datums

    @batch_all_datums
    def main():  # pachyderm-sdk reads /pfs/.env with python-dotenv before each datum
        record = {"one": os.environ["one"], "tree": tree(b"/pfs/one"),
                  "secret": os.environ.get("AWS_SECRET_ACCESS_KEY")}
        with open("/pfs/out/result.json", "w") as f:
            json.dump(record, f)

    main()
    """)
    deep_spec = write_spec(tmp_path / "deep.yaml", batching_spec(
        "deep", _pfs("one", "/"), [PY, str(deep_script)]))

    odd_data = Path(os.fsdecode(os.fsencode(tmp_path) + b"/d\xffata"))
    _write_bytes_tree(odd_data, {b"plain/f": b"from an odd data dir"})
    shell_spec = write_spec(tmp_path / "shell.yaml", batching_spec(
        "shell", _pfs("plain", "/*"),
        ["bash", "-c", 'while pachctl next datum; do . "$MNT/.env"; cp "$plain" "$MNT/out/"; '
                       "done"],
        env={"MNT": str(tmp_path / "m3")}))

    runs = [
        (top_spec, top / "data", tmp_path / "m1", {}),
        (deep_spec, deep / "data", "/pfs", {"namespace": True}),
        (shell_spec, odd_data, tmp_path / "m3", {}),
    ]

    def run_all() -> list:
        procs = [(start_pfsmount(spec, data, mnt, env={**SECRET, **ODD_ENV}, **kw), mnt)
                 for spec, data, mnt, kw in runs]
        return [finish(proc, mnt) for proc, mnt in procs]

    first = run_all()
    for result in first:
        assert result.returncode == 0, result
        assert "Traceback" not in result.stderr, result

    # --- glob /*: names at the top level and two levels below a matched directory --------
    records = [json.loads(p.read_text()) for p in (top / "data" / "top").iterdir()]
    assert len(records) == 3
    mnt1 = os.fsencode(tmp_path / "m1")
    trees = {}
    for rec in records:
        in_path = bytes.fromhex(rec["in"])
        assert bytes.fromhex(rec["reply_in"]) == in_path  # the local socket carries bytes
        name = in_path[len(mnt1 + b"/in/"):]
        trees[name] = {bytes.fromhex(k): bytes.fromhex(v) for k, v in rec["tree"].items()}
        # `source /pfs/.env` in bash and dash yields the exact bytes, and no secret.
        for shell in ("bash", "dash"):
            got = [bytes.fromhex(part) for part in rec[shell]]
            assert got == [in_path, b"p\xff'q $x", b"unset"], shell
        env_file = bytes.fromhex(rec["env_file"])
        env_file.decode("utf-8")  # python-dotenv reads it as UTF-8
        assert b"xyz" not in env_file and b"BAD" not in env_file and b"HOME=" not in env_file
        assert "AWS_SECRET_ACCESS_KEY" not in rec["reply_keys"]
        assert "BAD" not in rec["reply_keys"] and "HOME" not in rec["reply_keys"]
        assert {"in", "in_COMMIT", "PACH_ODD", "PPS_WORKER_GRPC_PORT", "PACH_DATUM_ID",
                "MNT"} <= set(rec["reply_keys"])
        assert "AWS_SECRET_ACCESS_KEY" not in rec["dotenv"]
        assert rec["secret"] == "xyz"  # the process still inherits its environment
        assert bytes.fromhex(rec["bad"]) == b"a\xffb"
        if in_path.endswith(b"ok.txt"):
            assert rec["dotenv"]["in"] == os.fsdecode(in_path)
    assert trees == {
        b"a\xff.txt": {b"a\xff.txt": b"top \xff"},
        b"d\xffir": {b"d\xffir/sub/deep\xfe.txt": b"deep"},
        b"ok.txt": {b"ok.txt": b"ok"},
    }
    assert set(datum_states(top / "data", "top")) == {
        os.fsdecode(b"/a\xff.txt"), os.fsdecode(b"/d\xffir"), "/ok.txt"}

    # --- glob /: a name deep inside the one datum, through pachyderm-sdk ------------------
    result = json.loads((deep / "data" / "deep" / "result.json").read_text())
    assert result["one"] == "/pfs/one"
    assert {bytes.fromhex(k): bytes.fromhex(v) for k, v in result["tree"].items()} == {
        b"x/y\xff/z\xff.bin": b"zz\xff", b"plain.txt": b"p"}
    assert result["secret"] == "xyz"
    assert "could not parse" not in first[1].stderr  # python-dotenv read every line

    # --- --data holding \xff ----------------------------------------------------------------
    assert (odd_data / "shell" / "f").read_bytes() == b"from an odd data dir"
    assert "shell" in first[2].stderr and "\\xff" in first[2].stderr  # output dir, escaped

    second = run_all()
    for result in second:
        assert result.returncode == 0, result
        assert "skipped (unchanged)" in result.stderr, result
        assert "0 datums processed" in result.stderr, result


def test_list_datums_shows_and_round_trips_non_utf8_paths(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_bytes_tree(data / "in", {b"a\xff.txt": b"1", b"caf\xc3\xa9": b"2", b"tab\tx": b"3"})
    spec = write_spec(tmp_path / "p.yaml", batching_spec("p", _pfs("in", "/*"), ["true"]))
    base = [PY, "-m", "pfsmount", "list-datums", str(spec), "--data", str(data)]
    env = {**os.environ, "LANG": "en_US.UTF-8", "PYTHONIOENCODING": "utf-8"}

    table = subprocess.run(base, capture_output=True, env=env, check=True).stdout
    table.decode("utf-8")
    assert b"/a\\xff.txt" in table and "/café".encode() in table and b"/tab\\tx" in table

    lines = subprocess.run([*base, "--json"], capture_output=True, env=env,
                           check=True).stdout.decode("utf-8").splitlines()
    assert all("\\ud" not in line for line in lines)  # no lone surrogates: strict JSON
    inputs = [json.loads(line)["inputs"][0] for line in lines]
    raw = {base64.b64decode(i["path_b64"]) if "path_b64" in i else i["path"].encode()
           for i in inputs}
    assert raw == {b"/a\xff.txt", "/café".encode(), b"/tab\tx"}
    odd = next(i for i in inputs if "path_b64" in i)
    assert odd["path"] == "/a\ufffd.txt"


def test_launching_env_stays_out_of_env_file_and_pachyderm_reply(tmp_path: Path,
                                                                  mnt: Path) -> None:
    # Issue 13: the datum's variables only; a secret of the launching shell stays in the
    # process environment. Over Pachyderm's gRPC wire a value that is not UTF-8 arrives as
    # U+FFFD (protobuf strings must be UTF-8; betterproto would fail on anything else).
    data = tmp_path / "data"
    _write_bytes_tree(data / "in", {b"1": b"a", b"2": b"b"})
    script = write_script(tmp_path / "raw.py", """
        import json, os
        from pachyderm_sdk import Client
        worker, mnt, n = Client().worker, os.environ["MNT"], 0
        while True:
            env = list(worker.next_datum().env)  # never returns after the last datum
            n += 1
            with open(os.path.join(mnt, "out", str(n)), "w") as f:
                json.dump({"reply": env, "env_file": open(os.path.join(mnt, ".env")).read(),
                           "secret": os.environ.get("AWS_SECRET_ACCESS_KEY")}, f)
    """)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "raw", _pfs("in", "/*"), [PY, str(script)], env={"MNT": str(mnt), "GREETING": "hi"}))
    result = finish(start_pfsmount(spec, data, mnt, env={**SECRET, **ODD_ENV}), mnt)
    assert result.returncode == 0, result
    for name in ("1", "2"):
        rec = json.loads((data / "raw" / name).read_text())
        reply = dict(item.split("=", 1) for item in rec["reply"])
        assert rec["secret"] == "xyz"
        assert "xyz" not in rec["env_file"] and "AWS_SECRET_ACCESS_KEY" not in reply
        assert "HOME" not in reply and "BAD" not in reply and "PATH" not in reply
        assert reply["PACH_ODD"] == "p\ufffd'q $x"
        assert reply["GREETING"] == "hi" and reply["in"] == f"{mnt}/in/{name}"
        keys = [line.split("=", 1)[0] for line in rec["env_file"].splitlines()]
        assert keys == [k.split("=", 1)[0] for k in rec["reply"]]  # the same list, in order


def test_an_error_quoting_undecodable_bytes_is_recorded_as_text(tmp_path: Path,
                                                                 mnt: Path) -> None:
    data = tmp_path / "data"
    _write_bytes_tree(data / "in", {b"f\xff": b"x"})
    spec = write_spec(tmp_path / "p.yaml", {
        **batching_spec("err", _pfs("in", "/*"), [
            "bash", "-c",
            "pfsmount next-datum && pfsmount next-datum --error $'cannot read \\xff'"]),
        "datum_tries": 1,
    })
    result = finish(start_pfsmount(spec, data, mnt), mnt)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert "cannot read \\xff" in result.stderr and "in:/f\\xff" in result.stderr
    shown = subprocess.run([PY, "-m", "pfsmount", "inspect-job", "err", "--data", str(data)],
                           capture_output=True, check=True).stdout
    assert b"(in:/f\\xff) after 1 attempt: cannot read \\xff" in shown

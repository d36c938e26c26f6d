"""S3 inputs (issue 15) against a real SeaweedFS: listing, datums, lazy reads, faults, skips."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

from s3server import CountingProxy, S3Server
from support import (
    PY,
    batching_spec,
    datum_states,
    needs_fuse,
    read_tree,
    run_pfsmount,
    write_script,
    write_spec,
    write_tree,
)

FILES = {
    "images/a.png": b"AAAA",
    "images/dir/b.png": b"BB",
    "images/dir/c/d.png": b"D" * 5000,
    "images/zz/": b"",  # a directory marker: an empty directory
    "images/zz-sibling.png": b"z",
    "labels/l.txt": b"labels",
    "labels/sub/m.txt": b"m",
}


def _local_copy(root: Path, files: dict[str, bytes]) -> None:
    write_tree(root, {k: v for k, v in files.items()})


def _pfs(repo: str, glob: str, **extra: object) -> dict:
    return {"pfs": {"repo": repo, "glob": glob, **extra}}


def _cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "pfsmount", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout, check=False)


def test_s3_datums_identical_to_local_directory(tmp_path: Path, s3server: S3Server) -> None:
    url = s3server.bucket("same", {f"pre/fix/{k}": v for k, v in FILES.items()})
    _local_copy(tmp_path / "data", FILES)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "p", {"cross": [_pfs("images", "/*"), _pfs("labels", "/**", name="lab")]}, ["true"]))
    local = _cli(["list-datums", str(spec), "--json", "--data", str(tmp_path / "data")], {})
    remote = _cli(["list-datums", str(spec), "--json", "--data", f"{url}/pre/fix/"],
                  s3server.env())
    assert local.returncode == 0, local.stderr
    assert remote.returncode == 0, remote.stderr
    # Ids, order, names and paths are equal; content hashes and commits differ by nature
    # (mtimes locally, ETags in S3).
    assert _shape(remote.stdout) == _shape(local.stdout)
    assert len(_shape(local.stdout)) == 4 * 3  # images/*: 4 entries; labels/**: 3
    paths = [json.loads(line)["inputs"][0]["path"] for line in remote.stdout.splitlines()]
    assert "/zz" in paths  # the marker object is a directory the glob matches
    # PFSMOUNT_DATA works like --data.
    env_run = _cli(["list-datums", str(spec), "--json"],
                   {**s3server.env(), "PFSMOUNT_DATA": f"{url}/pre/fix"})
    assert env_run.stdout == remote.stdout, env_run.stderr


def _shape(lines: str) -> list[tuple]:
    shaped = []
    for line in lines.splitlines():
        record = json.loads(line)
        shaped.append((record["id"], *[(i["name"], i["repo"], i["path"])
                                       for i in record["inputs"]]))
    return shaped


def test_s3_startup_faults_are_one_line_errors(tmp_path: Path, s3server: S3Server) -> None:
    url = s3server.bucket("faults", {"in/a": b"a"})
    spec = write_spec(tmp_path / "p.yaml", batching_spec("p", _pfs("in", "/*"), ["true"]))
    cases = {
        "unreachable": (["--data", url], {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"},
                        "cannot reach the S3 endpoint"),
        "credentials": (["--data", url], {"AWS_SECRET_ACCESS_KEY": "wrong"},
                        "credentials were rejected"),
        "bucket": (["--data", "s3://no-such-bucket"], {}, "does not exist"),
        "repo": (["--data", f"{url}/elsewhere"], {}, "not found or empty"),
    }
    procs = {}
    for name, (args, env, _) in cases.items():
        cmd = ["run", str(spec), "--mountpoint", str(tmp_path / "never"), *args,
               "--output-dir", str(tmp_path / "out")]
        procs[name] = subprocess.Popen(
            [PY, "-m", "pfsmount", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, **s3server.env(), **env})
    for name, proc in procs.items():
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (name, err)
        assert cases[name][2] in err, (name, err)
        assert "Traceback" not in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)
    assert not (tmp_path / "never").exists() or not os.listdir(tmp_path / "never")


@needs_fuse
def test_s3_run_reads_lazily_and_skips_unchanged(tmp_path: Path, s3server: S3Server,
                                                  mnt: Path) -> None:
    big = os.urandom(1 << 20) * 96  # 96 MiB; the read below is 1 MiB at 48 MiB
    files = {"in/small/a.txt": b"alpha", "in/small/b.txt": b"beta" * 10000,
             "in/big/blob": big}
    url = s3server.bucket("lazy", files)
    proxy = CountingProxy(int(s3server.endpoint.rsplit(":", 1)[1]))
    script = write_script(tmp_path / "user.py", """
        import hashlib, os, sys
        from pfsmount import iter_datums
        mnt = sys.argv[1]
        for d in iter_datums():
            for dp, _, fns in os.walk(os.path.join(mnt, "in")):
                for n in fns:
                    p = os.path.join(dp, n)
                    rel = os.path.relpath(p, os.path.join(mnt, "in")).replace("/", "_")
                    with open(p, "rb") as f:
                        if os.stat(p).st_size > 10_000_000:
                            f.seek(48 << 20)
                            data = f.read(1 << 20)
                        else:
                            data = f.read()
                    with open(os.path.join(mnt, "out", rel), "w") as out:
                        out.write(hashlib.sha256(data).hexdigest())
    """)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "lazyp", _pfs("in", "/*"), ["python3", str(script), str(mnt)]))
    outdir = tmp_path / "state"
    env = s3server.env(proxy.endpoint)
    result = run_pfsmount(spec, url, mnt, extra=["--output-dir", str(outdir)], env=env)
    assert result.returncode == 0, result
    got = read_tree(outdir / "lazyp")
    assert got == {
        "small_a.txt": hashlib.sha256(b"alpha").hexdigest().encode(),
        "small_b.txt": hashlib.sha256(b"beta" * 10000).hexdigest().encode(),
        "big_blob": hashlib.sha256(big[48 << 20:49 << 20]).hexdigest().encode(),
    }
    # Listing, two small files and one 1 MiB read of 96 MiB: a few MiB crossed the wire.
    assert proxy.sent < 6 << 20, proxy.sent
    # Unchanged objects: nothing runs again.
    again = run_pfsmount(spec, url, mnt, extra=["--output-dir", str(outdir)], env=env)
    assert again.returncode == 0, again
    assert set(datum_states(outdir, "lazyp").values()) == {("skipped", 0)}, \
        datum_states(outdir, "lazyp")
    # Rewritten object, same size and (coarse) time: its ETag changes, its datum runs again.
    s3server.client.put_object(Bucket="lazy", Key="in/small/a.txt", Body=b"ALPHA")
    third = run_pfsmount(spec, url, mnt, extra=["--output-dir", str(outdir)], env=env)
    assert third.returncode == 0, third
    states = datum_states(outdir, "lazyp")
    assert states["/small"][0] == "success" and states["/big"] == ("skipped", 0), states
    assert (outdir / "lazyp" / "small_a.txt").read_text() == hashlib.sha256(b"ALPHA").hexdigest()
    proxy.close()


@needs_fuse
def test_s3_failed_read_is_eio_naming_the_object(tmp_path: Path, s3server: S3Server,
                                                  mnt: Path) -> None:
    url = s3server.bucket("gone", {"in/x": b"x" * 100, "in/y": b"y"})
    script = write_script(tmp_path / "user.py", """
        import os, sys, time
        from pfsmount import iter_datums
        mnt, flag = sys.argv[1], sys.argv[2]
        for d in iter_datums():
            while not os.path.exists(flag):
                time.sleep(0.05)
            for n in os.listdir(os.path.join(mnt, "in")):
                with open(os.path.join(mnt, "in", n), "rb") as f:
                    f.read()
    """)
    flag = tmp_path / "deleted"
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "gonep", _pfs("in", "/x"), ["python3", str(script), str(mnt), str(flag)]))
    from support import finish, start_pfsmount

    proc = start_pfsmount(spec, url, mnt, extra=["--output-dir", str(tmp_path / "state")],
                          env=s3server.env())
    deadline = time.monotonic() + 30
    while not (mnt / "in").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    s3server.client.delete_object(Bucket="gone", Key="in/x")  # after listing, before reading
    flag.touch()
    result = finish(proc, mnt, timeout=90)
    assert result.returncode != 0, result
    assert "Input/output error" in result.stderr or "EIO" in result.stderr, result
    assert "s3://gone/in/x" in result.stderr, result
    assert datum_states(tmp_path / "state", "gonep")["/x"][0] == "failed"

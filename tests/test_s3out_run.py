"""S3 outputs (issue 15) against a real SeaweedFS: outputs and commit records in the bucket,
failures, incremental reruns, deleted datums, and job state read back from a fresh machine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from s3server import S3Server
from support import PY, batching_spec, needs_fuse, run_pfsmount, write_script, write_spec

# A user program that writes, per datum, one output named after each input file: its
# content upper-cased. A file named "bad*" fails its datum (after writing an output, which
# must then never appear).
UPPER = """
    import os, sys
    from pfsmount import iter_datums, report_error
    mnt = sys.argv[1]
    for d in iter_datums():
        for dp, dirs, names in os.walk(mnt):
            if dp == mnt:
                dirs[:] = [x for x in dirs if x != "out"]
                names = [n for n in names if n != ".env"]
            for n in names:
                rel = os.path.relpath(os.path.join(dp, n), mnt).split("/", 1)[1]
                rel = rel.replace("/", "_")
                with open(os.path.join(dp, n), "rb") as f, \\
                        open(os.path.join(mnt, "out", rel), "wb") as out:
                    out.write(f.read().upper())
                print("wrote", rel, flush=True)
                if n.startswith("bad"):
                    report_error(f"{n} is bad")
"""


def s3out_tree(s3: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object below `prefix` as relative key -> content."""
    c = s3.client
    got: dict[str, bytes] = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):  # type: ignore[attr-defined]
        for obj in page.get("Contents", ()):
            body = c.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()  # type: ignore[attr-defined]
            got[obj["Key"][len(prefix):]] = body
    return got


def s3out_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pfsmount", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60, check=False)


def _pfs(repo: str, glob: str, **extra: object) -> dict:
    return {"pfs": {"repo": repo, "glob": glob, **extra}}


@needs_fuse
def test_s3out_outputs_records_failures_and_incremental(tmp_path: Path, s3server: S3Server,
                                                        mnt: Path) -> None:
    url = s3server.bucket("s3out-basic", {"pre/in/a.txt": b"alpha", "pre/in/b.txt": b"beta",
                                          "pre/in/bad.txt": b"oops", "pre/in/c/d.txt": b"d"})
    script = write_script(tmp_path / "user.py", UPPER)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "up", _pfs("in", "/*"), ["python3", str(script), str(mnt)]))
    env = s3server.env()
    state = ["--state-dir", str(tmp_path / "state1")]
    first = run_pfsmount(spec, f"{url}/pre", mnt, extra=state, env=env)
    assert first.returncode == 1, first  # the bad datum failed
    assert "s3://s3out-basic/pre/up/" in first.stderr, first.stderr
    outputs = s3out_tree(s3server, "s3out-basic", "pre/up/")
    assert outputs == {"a.txt": b"ALPHA", "b.txt": b"BETA", "c_d.txt": b"D"}, outputs
    meta = s3out_tree(s3server, "s3out-basic", "pre/.pfsmount/up/")
    # One record per datum (the failed one too), no blob left, no local output repo.
    records = sorted(k for k in meta if k.startswith("commits/"))
    assert len(records) == 4 and not [k for k in meta if k.startswith("blobs/")], meta.keys()
    states = sorted(json.loads(meta[k])["state"] for k in records)
    assert states == ["failed", "success", "success", "success"]
    assert not (tmp_path / "state1" / "up").exists()

    # Another machine (a fresh state directory) sees the job, its datums and its logs.
    fresh = ["--data", f"{url}/pre", "--state-dir", str(tmp_path / "state2")]
    jobs = s3out_cli(["list-jobs", "up", *fresh], env)
    assert jobs.returncode == 0 and "failed" in jobs.stdout, jobs
    inspect = s3out_cli(["inspect-job", str(spec), *fresh], env)
    assert inspect.returncode == 0, inspect
    assert "bad.txt is bad" in inspect.stdout, inspect.stdout
    logs = s3out_cli(["logs", "up", "--failed", *fresh], env)
    assert logs.returncode == 0, logs
    assert "wrote bad.txt" in logs.stdout and "wrote a.txt" not in logs.stdout, logs.stdout
    listed = s3out_cli(["list-datums", str(spec), "--job", "", "--json", *fresh], env)
    assert listed.returncode == 0, listed
    by_path = {json.loads(r)["inputs"][0]["path"]: json.loads(r).get("state")
               for r in listed.stdout.splitlines()}
    assert by_path == {"/a.txt": "success", "/b.txt": "success", "/bad.txt": "failed",
                       "/c": "success"}, by_path

    # Incremental, from yet another fresh state: a changed object reruns only its datum, a
    # deleted one takes its outputs with it, a fixed one now succeeds.
    c = s3server.client
    c.put_object(Bucket="s3out-basic", Key="pre/in/a.txt", Body=b"alpha2")  # type: ignore[attr-defined]
    c.delete_object(Bucket="s3out-basic", Key="pre/in/b.txt")  # type: ignore[attr-defined]
    c.delete_object(Bucket="s3out-basic", Key="pre/in/bad.txt")  # type: ignore[attr-defined]
    c.put_object(Bucket="s3out-basic", Key="pre/in/good.txt", Body=b"good")  # type: ignore[attr-defined]
    second = run_pfsmount(spec, f"{url}/pre", mnt, extra=["--state-dir", str(tmp_path / "s3")],
                          env=env)
    assert second.returncode == 0, second
    assert "2 datums processed" in second.stderr and "1 skipped" in second.stderr, second.stderr
    outputs = s3out_tree(s3server, "s3out-basic", "pre/up/")
    assert outputs == {"a.txt": b"ALPHA2", "c_d.txt": b"D", "good.txt": b"GOOD"}, outputs
    meta = s3out_tree(s3server, "s3out-basic", "pre/.pfsmount/up/")
    assert len([k for k in meta if k.startswith("commits/")]) == 3, meta.keys()
    assert not [k for k in meta if k.startswith("blobs/")], meta.keys()


@needs_fuse
def test_s3out_symlink_or_non_utf8_output_fails_its_datum(tmp_path: Path, s3server: S3Server,
                                                          mnt: Path) -> None:
    url = s3server.bucket("s3out-names", {"in/link": b"1", "in/bytes": b"2", "in/ok": b"3"})
    script = write_script(tmp_path / "user.py", """
        import os, sys
        from pfsmount import iter_datums
        mnt = sys.argv[1]
        for d in iter_datums():
            name = os.listdir(os.path.join(mnt, "in"))[0]
            out = os.path.join(mnt, "out")
            if name == "link":
                os.symlink("/etc/hostname", os.path.join(out, "l"))
            elif name == "bytes":
                open(os.path.join(os.fsencode(out), b"caf\\xe9"), "w").close()
            else:
                open(os.path.join(out, "ok"), "w").write("fine")
    """)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "names", _pfs("in", "/*"), ["python3", str(script), str(mnt)]))
    result = run_pfsmount(spec, url, mnt, env=s3server.env(),
                          extra=["--state-dir", str(tmp_path / "state")])
    assert result.returncode == 1, result
    assert "output path /l is a symlink (/etc/hostname)" in result.stderr, result.stderr
    assert "output path /caf\\xe9 is not UTF-8" in result.stderr, result.stderr
    assert s3out_tree(s3server, "s3out-names", "names/") == {"ok": b"fine"}

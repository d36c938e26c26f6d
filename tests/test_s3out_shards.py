"""Shards over S3 outputs (issues 15 and 16), each with a state directory of its own as on
separate machines: an output path written by datums of two shards fails the job, naming both,
whether the second shard writes it later (its commit sees the first's record) or at the same
time (the shards' end-of-job check of every record finds it)."""

from __future__ import annotations

from pathlib import Path

from s3server import S3Server
from support import batching_spec, finish, needs_fuse, start_pfsmount, write_script, write_spec

# Each process's first datum writes "same.txt" (after a pause, so two shards started together
# both write it before either commits); every datum also writes a file of its own.
USER = """
    import os, sys, time
    from pfsmount import iter_datums
    mnt, first = sys.argv[1], True
    for d in iter_datums():
        name = os.listdir(os.path.join(mnt, "in"))[0]
        if first:
            time.sleep(1.5)
            open(os.path.join(mnt, "out", "same.txt"), "w").write(name)
            first = False
        open(os.path.join(mnt, "out", name + ".out"), "w").write(name)
"""


@needs_fuse
def test_s3out_two_shards_writing_one_path_fail_naming_both(tmp_path: Path,
                                                            s3server: S3Server) -> None:
    url = s3server.bucket("s3out-shards", {f"in/f{i}": b"x" for i in range(6)})
    script = write_script(tmp_path / "user.py", USER)
    procs = []
    for i in range(2):
        mnt = tmp_path / f"mnt{i}"
        spec = write_spec(tmp_path / f"p{i}.yaml", batching_spec(
            "sh", {"pfs": {"repo": "in", "glob": "/*"}}, ["python3", str(script), str(mnt)]))
        procs.append((start_pfsmount(spec, url, mnt, env=s3server.env(), extra=[
            "--shard", f"{i}/2", "--state-dir", str(tmp_path / f"state{i}")]), mnt))
    results = [finish(p, m, timeout=120) for p, m in procs]
    assert any(r.returncode == 1 for r in results), results
    text = "\n".join(r.stderr for r in results)
    assert "output path /same.txt was written by datum" in text, text
    assert "(shard 0/2)" in text and "(shard 1/2)" in text, text

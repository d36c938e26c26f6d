"""Every input kind over S3 writes the same output repo to the bucket as over a local
directory (issue 15): pfs, cross, join and group, run side by side on the same files."""

from __future__ import annotations

from pathlib import Path

from s3server import S3Server
from support import (
    batching_spec,
    finish,
    needs_fuse,
    read_tree,
    start_pfsmount,
    write_script,
    write_spec,
    write_tree,
)
from test_s3out_run import s3out_tree

FILES = {
    "a/1.txt": b"a one", "a/2.txt": b"a two", "a/sub/3.txt": b"a three",
    "b/1.txt": b"b one", "b/2.txt": b"b two", "b/9.txt": b"b nine",
}
# One output per datum, named by the datum's files, holding their names and contents.
SUMMARY = """
    import hashlib, os, sys
    from pfsmount import iter_datums
    mnt = sys.argv[1]
    for d in iter_datums():
        lines = []
        for dp, dirs, names in os.walk(mnt):
            if dp == mnt:
                dirs[:] = sorted(x for x in dirs if x != "out")
                names = []
            for n in sorted(names):
                p = os.path.join(dp, n)
                lines.append(os.path.relpath(p, mnt) + "=" + open(p).read())
        key = hashlib.sha256("\\n".join(lines).encode()).hexdigest()[:16]
        with open(os.path.join(mnt, "out", key + ".txt"), "w") as f:
            f.write("\\n".join(lines) + "\\n")
"""
INPUTS = {
    "pfs": {"pfs": {"repo": "a", "glob": "/*"}},
    "cross": {"cross": [{"pfs": {"repo": "a", "glob": "/*"}},
                        {"pfs": {"repo": "b", "glob": "/*"}}]},
    "join": {"join": [{"pfs": {"repo": "a", "glob": "/(*).txt", "join_on": "$1"}},
                      {"pfs": {"repo": "b", "glob": "/(*).txt", "join_on": "$1"}}]},
    "group": {"group": [{"pfs": {"repo": "a", "glob": "/**/(*).txt", "group_by": "$1"}},
                        {"pfs": {"repo": "b", "glob": "/(*).txt", "group_by": "$1"}}]},
}


@needs_fuse
def test_s3out_input_kinds_write_what_a_local_run_writes(tmp_path: Path,
                                                         s3server: S3Server) -> None:
    url = s3server.bucket("s3out-kinds", {f"k/{k}": v for k, v in FILES.items()})
    write_tree(tmp_path / "data", FILES)
    script = write_script(tmp_path / "user.py", SUMMARY)
    env = s3server.env()
    procs = []
    for kind, input_ in INPUTS.items():
        for where in ("s3", "local"):
            mnt = tmp_path / f"mnt-{kind}-{where}"
            spec = write_spec(tmp_path / f"{kind}-{where}.yaml", batching_spec(
                kind, input_, ["python3", str(script), str(mnt)]))
            if where == "s3":
                proc = start_pfsmount(spec, f"{url}/k", mnt, env=env,
                                      extra=["--state-dir", str(tmp_path / "state")])
            else:
                proc = start_pfsmount(spec, tmp_path / "data", mnt)
            procs.append((kind, where, proc, mnt))
    for kind, where, proc, mnt in procs:
        result = finish(proc, mnt, timeout=120)
        assert result.returncode == 0, (kind, where, result)
    for kind in INPUTS:
        local = read_tree(tmp_path / "data" / kind)
        assert len(local) >= 2, (kind, local)
        assert s3out_tree(s3server, "s3out-kinds", f"k/{kind}/") == local, kind

"""The receive thread reads S3 objects from --cache-dir (issue 14), on a real mount and bucket.

A child process mounts PfsOperations with the receive thread on, over a repo in a real S3
server with a cache directory. The first read of an object goes to Python (it fetches, and the
chunks land in the cache directory); once they are there, READs are answered in C from the
chunk files, with the same bytes, also across chunk boundaries and at the end. A chunk that is
not whole, or is a symlink, is never read in C: Python answers, with the right bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyfuse3
import pytest

from s3server import S3Server
from support import PY, needs_fuse

patched = pytest.mark.skipif(getattr(pyfuse3, "PFSMOUNT_PATCH", 0) < 6,
                             reason="needs pfsmount's patched pyfuse3 ≥ 6 (scripts/setup)")

MIB = 1 << 20

PROBE = r"""
import collections, glob, json, os, sys
import pyfuse3, trio
from pfsmount.datums import expand, open_repos
from pfsmount.fs import PfsOperations
from pfsmount.spec import PfsInput
from pfsmount.store.cache import CacheSettings
from pfsmount.store.s3 import configure_cache
from pfsmount.view import build_view
from fuseprobe import serve_while

url, mnt, cache = sys.argv[1], sys.argv[2], sys.argv[3]
want = {name: open(os.path.join(sys.argv[4], name), "rb").read()
        for name in ("big.bin", "small.bin", "empty.bin")}
calls = collections.Counter()


class Counting(PfsOperations):
    async def read(self, fh, off, size, inode=0):
        calls["read"] += 1
        return await super().read(fh, off, size, inode)


configure_cache(CacheSettings(directory=cache))
spec_input = PfsInput(name="in", repo="in", glob="/")
repos = open_repos(spec_input, url)
(repo,) = repos.values()
fs = Counting(no_open=True, splice=True, fast_path=True)
(datum,) = list(expand(spec_input, repos))
result = {}


def pread(path, off, size):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the read must ask the server
        return os.pread(fd, size, off)
    finally:
        os.close(fd)


def run(token):
    sync = lambda fn, *a: trio.from_thread.run_sync(fn, *a, trio_token=token)
    sync(lambda: fs.show(build_view(datum, repos, b"K=V\n", fs.inodes), None))
    path = {name: os.path.join(mnt, "in", name) for name in want}
    # The first reads: Python fetches; the chunks are written to the cache directory.
    first = {name: pread(p, 0, 4 * 1024 * 1024) for name, p in path.items()}
    result["first_ok"] = first == want
    result["first_python"] = calls["read"]
    repo.bucket.disk.flush()
    chunks = sorted(glob.glob(os.path.join(cache, "*", "*", "*.*")))
    result["chunks"] = len(chunks)
    for c in chunks:
        os.utime(c, (1000, 1000))  # long unused: a read in C must make them recent again
    # Again, with the page cache dropped: every READ answered in C from the chunk files.
    before, stats = calls["read"], pyfuse3.pfsmount_fast_stats()
    big, size = want["big.bin"], len(want["big.bin"])
    reads = [("big.bin", 0, size + 100), ("big.bin", (1 << 20) - 100, 300),
             ("big.bin", 3 * (1 << 20) - 5, 4096), ("big.bin", size - 10, 100),
             ("big.bin", size + 10, 100), ("small.bin", 0, 4096), ("small.bin", 3, 7)]
    result["again_ok"] = [pread(path[n], off, sz) == want[n][off:off + sz]
                          for n, off, sz in reads]
    result["empty_ok"] = pread(path["empty.bin"], 0, 100) == b""
    after = pyfuse3.pfsmount_fast_stats()
    result["again_python"] = calls["read"] - before
    result["c_reads"] = after["read"] - stats["read"]
    result["c_bytes"] = after["bytes_read"] - stats["bytes_read"]
    result["input_files"] = fs.input_files  # reports the thread's opens: the cache is told
    repo.bucket.disk.flush()
    result["touched"] = sum(os.stat(c).st_mtime > 1000 for c in chunks)
    # A chunk that is not whole, and one that is a symlink: Python answers, right bytes.
    chunk1 = next(c for c in chunks if c.endswith(".1"))
    with open(chunk1 + ".tmp", "wb") as f:
        f.write(big[1 << 20:(1 << 20) + 1000])
    os.replace(chunk1 + ".tmp", chunk1)
    chunk2 = next(c for c in chunks if c.endswith(".2"))
    with open(os.path.join(cache, "elsewhere"), "wb") as f:
        f.write(b"\0" * (size - 2 * (1 << 20)))
    os.unlink(chunk2)
    os.symlink(os.path.join(cache, "elsewhere"), chunk2)
    before = calls["read"]
    result["broken_ok"] = [pread(path["big.bin"], off, 1000) == big[off:off + 1000]
                           for off in ((1 << 20) + 5, 2 * (1 << 20) + 5)]
    result["broken_python"] = calls["read"] - before


serve_while(fs, mnt, "pfsmount-fast-s3-test", run)
print(json.dumps(result))
"""


@needs_fuse
@patched
def test_cached_s3_chunks_are_read_by_the_receive_thread(
        tmp_path: Path, s3server: S3Server, mnt: Path) -> None:
    files = {"big.bin": os.urandom(3 * MIB + 12345), "small.bin": os.urandom(5000),
             "empty.bin": b""}
    url = s3server.bucket("fastchunks", {f"in/{k}": v for k, v in files.items()})
    local = tmp_path / "want"
    local.mkdir()
    mnt.mkdir()
    for name, body in files.items():
        (local / name).write_bytes(body)
    proc = subprocess.run(
        [PY, "-c", PROBE, url, str(mnt), str(tmp_path / "cache"), str(local)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, **s3server.env(), "PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["first_ok"] and got["first_python"] >= 2, got
    assert got["chunks"] == 5, got  # big: 4 chunks, small: 1; empty: none
    # Every READ of the cached objects answered in C, bytes exact, across a chunk boundary,
    # at the short last chunk, and past the end.
    assert all(got["again_ok"]) and got["empty_ok"], got
    assert got["again_python"] == 0, got
    assert got["c_reads"] >= 7 and got["c_bytes"] >= len(files["big.bin"]) + 5000, got
    assert got["input_files"] == 2, got
    assert got["touched"] == 5, got  # what the thread read is the most recent in the cache
    assert all(got["broken_ok"]) and got["broken_python"] >= 2, got

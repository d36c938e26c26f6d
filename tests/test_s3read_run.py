"""S3 reads in real runs (issue 15): shared files from the cache, --cache-dir across runs,
the next datum's small files fetched ahead, and objects overwritten after listing."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from s3server import CountingProxy, S3Server
from support import (
    batching_spec,
    datum_states,
    finish,
    needs_fuse,
    read_tree,
    run_pfsmount,
    start_pfsmount,
    write_script,
    write_spec,
)

MIB = 1 << 20


@contextmanager
def _proxy(s3server: S3Server) -> Iterator[CountingProxy]:
    proxy = CountingProxy(int(s3server.endpoint.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.close()


def _errors(state: Path, pipeline: str) -> dict[str, str]:
    db = sqlite3.connect(state / ".pfsmount" / pipeline / "ledger.sqlite")
    try:
        return {inputs: error for inputs, error in db.execute(
            "SELECT inputs, error FROM job_datums WHERE state = 'failed'")}
    finally:
        db.close()


@needs_fuse
def test_s3read_shared_file_is_fetched_once_and_cache_dir_outlives_the_run(
        tmp_path: Path, s3server: S3Server, mnt: Path) -> None:
    shared = os.urandom(3 * MIB)
    url = s3server.bucket("shared", {"model/weights.bin": shared,
                                     **{f"items/{i}.txt": b"item %d" % i for i in range(4)}})
    script = write_script(tmp_path / "user.py", """
        import hashlib, os, sys
        from pfsmount import iter_datums
        mnt = sys.argv[1]
        for d in iter_datums():
            with open(os.path.join(mnt, "model", "weights.bin"), "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            (item,) = os.listdir(os.path.join(mnt, "items"))
            with open(os.path.join(mnt, "out", item), "w") as out:
                out.write(digest)
    """)
    cross = {"cross": [{"pfs": {"repo": "items", "glob": "/*"}},
                       {"pfs": {"repo": "model", "glob": "/"}}]}
    cache = tmp_path / "cache"
    want = hashlib.sha256(shared).hexdigest().encode()
    with _proxy(s3server) as proxy:
        env = s3server.env(proxy.endpoint)
        for name, budget in (("first", 3 * MIB), ("second", 0)):
            spec = write_spec(tmp_path / f"{name}.yaml", batching_spec(
                name, cross, ["python3", str(script), str(mnt)]))
            before = proxy.sent
            result = run_pfsmount(spec, url, mnt, env=env, extra=[
                "--output-dir", str(tmp_path / "state"), "--cache-dir", str(cache),
                "--cache-size", "64M"])
            assert result.returncode == 0, result
            assert read_tree(tmp_path / "state" / name) == {f"{i}.txt": want for i in range(4)}
            # Four datums read the 3 MiB file: the first run fetches it once (the other
            # datums read the cache); the second run, a new process, reads it from --cache-dir.
            # What else crossed the wire is listings and the tiny items: well under 1 MiB.
            sent = proxy.sent - before
            assert budget <= sent < budget + MIB, (name, sent)
    assert any(cache.rglob("*.0"))


@needs_fuse
def test_s3read_next_datums_small_files_arrive_while_the_current_one_runs(
        tmp_path: Path, s3server: S3Server, mnt: Path) -> None:
    files = {f"in/d{d}/f{i}": os.urandom(64 * 1024) for d in range(4) for i in range(8)}
    url = s3server.bucket("ahead", files)
    counter = tmp_path / "sent"
    # The user code sees what the server sent so far (the proxy is in this process).
    script = write_script(tmp_path / "user.py", """
        import os, sys, time
        from pfsmount import iter_datums
        mnt, counter = sys.argv[1], sys.argv[2]
        def sent():
            time.sleep(0.3)  # the counter file is rewritten every 20 ms
            return int(open(counter).read())
        for d in iter_datums():
            time.sleep(1.5)  # the current datum's "work": the next one's files arrive meanwhile
            before = sent()
            (name,) = os.listdir(os.path.join(mnt, "in"))
            for f in sorted(os.listdir(os.path.join(mnt, "in", name))):
                with open(os.path.join(mnt, "in", name, f), "rb") as fh:
                    assert len(fh.read()) == 64 * 1024
            with open(os.path.join(mnt, "out", name), "w") as out:
                out.write(str(sent() - before))
    """)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "aheadp", {"pfs": {"repo": "in", "glob": "/*"}},
        ["python3", str(script), str(mnt), str(counter)]))
    stop = threading.Event()
    with _proxy(s3server) as proxy:
        def publish() -> None:
            while not stop.wait(0.02):
                tmp = counter.with_suffix(".tmp")
                tmp.write_text(str(proxy.sent))
                tmp.replace(counter)

        counter.write_text("0")
        threading.Thread(target=publish, daemon=True).start()
        try:
            result = run_pfsmount(spec, url, mnt, env=s3server.env(proxy.endpoint),
                                  extra=["--output-dir", str(tmp_path / "state")])
        finally:
            stop.set()
    assert result.returncode == 0, result
    during = {k: int(v) for k, v in read_tree(tmp_path / "state" / "aheadp").items()}
    # The first datum was shown before anything could be fetched ahead: its reads crossed
    # the wire (the control). Every later datum's files were already in the cache.
    assert during["d0"] >= 8 * 64 * 1024, during
    assert [during[f"d{d}"] for d in range(1, 4)] == [0, 0, 0], during


@needs_fuse
def test_s3read_object_overwritten_after_listing_fails_its_datum_never_mixes(
        tmp_path: Path, s3server: S3Server, mnt: Path) -> None:
    old = os.urandom(24 * MIB)
    url = s3server.bucket("moving", {"in/big": old, "in/small": b"s" * 100})
    read_some, overwritten = tmp_path / "read-some", tmp_path / "overwritten"
    report = tmp_path / "report"
    # The user code swallows every EIO and succeeds: the datum must fail all the same.
    script = write_script(tmp_path / "user.py", """
        import os, sys, time
        from pfsmount import iter_datums
        mnt, read_some, overwritten, report = sys.argv[1:5]
        for d in iter_datums():
            with open(os.path.join(mnt, "in", "big"), "rb") as f:
                head = f.read(1 << 20)
                open(read_some, "w").close()
                while not os.path.exists(overwritten):
                    time.sleep(0.05)
                try:
                    rest = f.read()
                    what = "read %d" % len(rest)
                except OSError as exc:
                    what = "errno %d" % exc.errno
            with open(report, "a") as r:
                r.write(what + "\\n")
            open(os.path.join(mnt, "out", "done"), "w").close()
    """)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "movingp", {"pfs": {"repo": "in", "glob": "/"}},
        ["python3", str(script), str(mnt), str(read_some), str(overwritten), str(report)]))
    proc = start_pfsmount(spec, url, mnt, env=s3server.env(),
                          extra=["--output-dir", str(tmp_path / "state")])
    deadline = time.monotonic() + 60
    while not read_some.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    # Same size: only the ETag tells the versions apart.
    s3server.client.put_object(Bucket="moving", Key="in/big", Body=os.urandom(len(old)))
    overwritten.touch()
    result = finish(proc, mnt, timeout=120)
    assert result.returncode == 1, result
    # Never a mix of versions: the rest of the file is refused (EIO), in every attempt.
    lines = report.read_text().split()
    assert lines and set(lines[1::2]) == {"5"}, lines
    assert datum_states(tmp_path / "state", "movingp")["/"][0] == "failed"
    (error,) = _errors(tmp_path / "state", "movingp").values()
    assert "s3://moving/in/big was overwritten after the repo was listed" in error, error
    assert "s3://moving/in/big was overwritten" in result.stderr, result
    assert not (tmp_path / "state" / "movingp" / "done").exists()

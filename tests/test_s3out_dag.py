"""A DAG over S3 (issue 15): a step reads the output repo its upstream step wrote to the
bucket, and `--watch` polls the bucket's listing for new objects."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from s3server import S3Server
from support import batching_spec, finish, needs_fuse, start_pfsmount, write_script, write_spec
from test_s3out_run import s3out_cli, s3out_tree

STEP = """
    import os, sys
    from pfsmount import iter_datums
    mnt, repo, mode = sys.argv[1:4]
    for d in iter_datums():
        for name in os.listdir(os.path.join(mnt, repo)):
            data = open(os.path.join(mnt, repo, name), "rb").read()
            data = data.upper() if mode == "upper" else data[::-1]
            with open(os.path.join(mnt, "out", name), "wb") as f:
                f.write(data)
"""


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@needs_fuse
def test_s3out_dag_reads_upstream_output_from_the_bucket_and_watches(
        tmp_path: Path, s3server: S3Server, mnt: Path) -> None:
    url = s3server.bucket("s3out-dag", {"d/raw/a.txt": b"one", "d/raw/b.txt": b"two"})
    script = write_script(tmp_path / "step.py", STEP)
    (tmp_path / "specs").mkdir()
    write_spec(tmp_path / "specs" / "up.yaml", batching_spec(
        "up", {"pfs": {"repo": "raw", "glob": "/*"}},
        ["python3", str(script), str(mnt), "raw", "upper"]))
    write_spec(tmp_path / "specs" / "rev.yaml", batching_spec(
        "rev", {"pfs": {"repo": "up", "glob": "/*"}},
        ["python3", str(script), str(mnt), "up", "reverse"]))
    env = s3server.env()
    state = ["--state-dir", str(tmp_path / "state")]
    proc = start_pfsmount(tmp_path / "specs", f"{url}/d", mnt, env=env, extra=[
        "--watch", "--poll-interval", "0.3", "--jobs", "1", *state])
    try:
        _wait_for(lambda: s3out_tree(s3server, "s3out-dag", "d/rev/") ==
                  {"a.txt": b"ENO", "b.txt": b"OWT"}, "the first round")
        time.sleep(1.5)  # the round has ended; the watcher polls now
        s3server.client.put_object(Bucket="s3out-dag", Key="d/raw/c.txt", Body=b"three")  # type: ignore[attr-defined]
        _wait_for(lambda: s3out_tree(s3server, "s3out-dag", "d/rev/").get("c.txt") == b"EERHT",
                  "the new object's round")
    finally:
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
    result = finish(proc, mnt, timeout=60)
    assert result.returncode == 0, result
    assert "raw changed: running up, rev" in result.stderr, result.stderr
    assert "polling every 0.3s" in result.stderr
    assert s3out_tree(s3server, "s3out-dag", "d/up/") == {
        "a.txt": b"ONE", "b.txt": b"TWO", "c.txt": b"THREE"}
    # `pfsmount dag` on a machine that never ran it shows each step's last job.
    shown = s3out_cli(["dag", str(tmp_path / "specs"), "--data", f"{url}/d",
                       "--state-dir", str(tmp_path / "fresh")], env)
    assert shown.returncode == 0, shown
    assert "rev  <- up  [job " in shown.stdout, shown.stdout
    assert "up  <- raw  [job " in shown.stdout and "never run" not in shown.stdout, shown.stdout
    # Two pipeline names (no local ledger): both are pipelines, not a pipeline and a job id.
    both = s3out_cli(["inspect-job", "up", "rev", "--data", f"{url}/d",
                      "--state-dir", str(tmp_path / "fresh2")], env)
    assert both.returncode == 0, both
    assert "== up" in both.stdout and "== rev" in both.stdout, both.stdout

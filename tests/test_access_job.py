"""Issue 11 S1-S3: no one but the job's user code drives its datums, reads /pfs, or
reads through a symlink swapped into a repo. Real mounts, real attacks: a second uid
(`nobody`) and root processes outside the job's process tree."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfsmount.wire import ASK_PACHYDERM, LocalCallError, LocalWorker, NextDatumRequest
from support import (
    batching_spec,
    datum_states,
    finish,
    needs_fuse,
    read_tree,
    start_pfsmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
FILES = {f"f{i}.txt": f"content {i}\n" for i in range(6)}

# Waits at its first datum until the test says "go", so attacks land while the job runs.
WAITING_USER_CODE = """
    import json, os, time
    from pfsmount import iter_datums
    mnt, ctl = os.environ["MNT"], os.environ["CTL"]
    first = True
    for d in iter_datums():
        if first:
            first = False
            with open(os.path.join(ctl, "ready.tmp"), "w") as f:
                json.dump({"port": os.environ["PPS_WORKER_GRPC_PORT"],
                           "socket": os.environ["PFSMOUNT_WORKER_SOCKET"]}, f)
            os.rename(os.path.join(ctl, "ready.tmp"), os.path.join(ctl, "ready"))
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(ctl, "go")) and time.monotonic() < deadline:
                time.sleep(0.02)
        # The user code (pfsmount's uid) still reads everything, .env included.
        env = open(os.path.join(mnt, ".env")).read()
        assert "PACH_DATUM_ID=" + d.id in env, env
        path = dict(d.env)["in"]
        with open(path) as src, open(os.path.join(mnt, "out", os.path.basename(path)), "w") as o:
            o.write(src.read())
"""

# A gRPC client run as another process: prints the status code its call got.
GRPC_ATTACK = """
import grpc, sys
request = bytes.fromhex(sys.argv[3])
with grpc.insecure_channel(sys.argv[1]) as channel:
    try:
        channel.unary_unary(sys.argv[2])(request, timeout=5)
        print("ANSWERED")
    except grpc.RpcError as exc:
        print(exc.code().name, exc.details())
"""

SOCKET_ATTACK = """
import sys
from pfsmount.wire import LocalWorker, LocalCallError
try:
    LocalWorker(sys.argv[1]).next_datum("hijack!")
    print("ANSWERED")
except LocalCallError as exc:
    print("REFUSED", exc)
"""


@pytest.fixture
def shared_mnt() -> Iterator[Path]:
    """A mountpoint other uids could reach if the mount let them (tmp_path is 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="pfsmount-access-", dir="/tmp"))
    parent.chmod(0o755)
    mnt = parent / "pfs"
    yield mnt
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
    shutil.rmtree(parent, ignore_errors=True)


def _start_waiting_job(tmp_path: Path, mnt: Path) -> tuple[subprocess.Popen[str], Path, dict]:
    data = tmp_path / "data"
    write_tree(data / "in", FILES)
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    script = write_script(tmp_path / "user.py", WAITING_USER_CODE)
    spec = write_spec(tmp_path / "pipeline.yaml", batching_spec(
        "copy", {"pfs": {"repo": "in", "glob": "/*"}}, [sys.executable, str(script)],
        env={"MNT": str(mnt), "CTL": str(ctl), "SECRET_TOKEN": "s3cr3t"},
    ))
    proc = start_pfsmount(spec, data, mnt)
    deadline = time.monotonic() + 60
    while not (ctl / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(str(finish(proc, mnt)))
        time.sleep(0.02)
    return proc, data, json.loads((ctl / "ready").read_text())


def _finish_job(proc: subprocess.Popen[str], tmp_path: Path, data: Path, mnt: Path) -> str:
    (tmp_path / "ctl" / "go").touch()
    result = finish(proc, mnt)
    assert result.returncode == 0, str(result)
    assert read_tree(data / "copy") == {k: v.encode() for k, v in FILES.items()}
    states = datum_states(data, "copy")
    assert states == {f"/{name}": ("success", 1) for name in FILES}, states
    return result.stderr


def _run(cmd: list[str], *, as_nobody: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run((NOBODY if as_nobody else []) + cmd, capture_output=True, text=True,
                          timeout=30, cwd="/")


def _grpc_attack(target: str, method: str, *, as_nobody: bool) -> str:
    request = NextDatumRequest("hijack!").encode().hex()
    done = _run([sys.executable, "-c", GRPC_ATTACK, target, method, request],
                as_nobody=as_nobody)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_only_the_jobs_user_code_can_call_nextdatum(tmp_path: Path, shared_mnt: Path) -> None:
    proc, data, ready = _start_waiting_job(tmp_path, shared_mnt)
    try:
        port, sock = ready["port"], ready["socket"]
        for target in (f"127.0.0.1:{port}", f"[::1]:{port}"):
            for method in ("/pachyderm.worker.Worker/NextDatum",
                           "/pfsmount.worker.Worker/NextDatum"):
                # Another uid: refused by the owner of its socket.
                out = _grpc_attack(target, method, as_nobody=True)
                assert out.startswith("PERMISSION_DENIED") and "uid 65534" in out, out
                # Root, but not a process of the job: refused by the process tree check.
                out = _grpc_attack(target, method, as_nobody=False)
                assert out.startswith("PERMISSION_DENIED") and "no process" in out, out
        # The Unix socket: another uid cannot even reach it (its directory is 0700) ...
        out = _run([sys.executable, "-c", SOCKET_ATTACK, sock], as_nobody=True)
        assert "REFUSED" in out.stdout and "Permission denied" in out.stdout, out
        assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
        # ... and a root process outside the job is refused by its peer credentials.
        for kind in (0, ASK_PACHYDERM):
            with pytest.raises(LocalCallError, match="no process of this job"):
                LocalWorker(sock).next_datum("hijack!", kind)
    finally:
        stderr = _finish_job(proc, tmp_path, data, shared_mnt)
    assert "uid 65534" in stderr and "refused" in stderr, stderr
    assert "hijack!" not in stderr, stderr


def test_other_users_cannot_read_pfs(tmp_path: Path, shared_mnt: Path) -> None:
    proc, data, _ = _start_waiting_job(tmp_path, shared_mnt)
    try:
        input_file = shared_mnt / "in" / "f0.txt"
        # pfsmount's own uid (the user code's) sees everything, with true owners and modes.
        assert input_file.read_text() == FILES["f0.txt"]
        listed = os.stat(data / "in" / "f0.txt")
        shown = os.stat(input_file)
        assert (shown.st_mode, shown.st_uid, shown.st_gid) == (
            listed.st_mode, listed.st_uid, listed.st_gid)
        assert stat.S_IMODE(os.stat(shared_mnt / ".env").st_mode) == 0o400
        assert "SECRET_TOKEN=s3cr3t" in (shared_mnt / ".env").read_text()
        for cmd in (["ls", str(shared_mnt)], ["cat", str(shared_mnt / ".env")],
                    ["cat", str(input_file)], ["stat", str(shared_mnt / "in")]):
            done = _run(cmd, as_nobody=True)
            assert done.returncode != 0 and "Permission denied" in done.stderr, (cmd, done)
            assert "content 0" not in done.stdout and "PACH_" not in done.stdout
    finally:
        _finish_job(proc, tmp_path, data, shared_mnt)


def test_input_files_keep_their_owner_and_mode(tmp_path: Path, shared_mnt: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"a/b.txt": "B", "c.txt": "C"})
    os.chown(data / "in" / "a", 1234, 5678)
    os.chmod(data / "in" / "a", 0o750)
    os.chown(data / "in" / "a" / "b.txt", 4321, 8765)
    os.chmod(data / "in" / "a" / "b.txt", 0o640)
    script = write_script(tmp_path / "user.py", """
        import json, os
        from pfsmount import iter_datums
        mnt = os.environ["MNT"]
        for d in iter_datums():
            seen = {}
            for rel in ("in/a", "in/a/b.txt", "in/c.txt", ".env"):
                p = os.path.join(mnt, rel)
                if os.path.lexists(p):
                    st = os.stat(p)
                    seen[rel] = [st.st_uid, st.st_gid, oct(st.st_mode)]
            with open(os.path.join(mnt, "out", d.id), "w") as f:
                json.dump(seen, f)
    """)
    spec = write_spec(tmp_path / "pipeline.yaml", batching_spec(
        "owners", {"pfs": {"repo": "in", "glob": "/"}}, [sys.executable, str(script)],
        env={"MNT": str(shared_mnt)}))
    result = finish(start_pfsmount(spec, data, shared_mnt), shared_mnt)
    assert result.returncode == 0, str(result)
    (seen,) = [json.loads(v) for v in read_tree(data / "owners").values()]
    assert seen["in/a"] == [1234, 5678, oct(stat.S_IFDIR | 0o750)]
    assert seen["in/a/b.txt"] == [4321, 8765, oct(stat.S_IFREG | 0o640)]
    assert seen["in/c.txt"][2] == oct(stat.S_IFREG | 0o644)
    assert seen[".env"] == [os.getuid(), os.getgid(), oct(stat.S_IFREG | 0o400)]


def test_symlinks_swapped_in_after_the_listing_are_not_followed(
    tmp_path: Path, shared_mnt: Path
) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"file.txt": "listed file\n", "dir/inner.txt": "listed inner\n",
                             "keep.txt": "untouched\n"})
    (data / "in" / "link").symlink_to("keep.txt")
    secret_dir = tmp_path / "secret"
    write_tree(secret_dir, {"inner.txt": "TOPSECRET\n"})
    secret = secret_dir / "inner.txt"
    secret.chmod(0o600)
    secret_dir.chmod(0o700)
    script = write_script(tmp_path / "user.py", """
        import errno, json, os
        from pfsmount import iter_datums
        mnt, repo, secret = os.environ["MNT"], os.environ["REPO"], os.environ["SECRET"]
        for d in iter_datums():
            # The hostile swap, after the listing: a listed file and a listed directory
            # become symlinks to a root-only file and directory.
            os.rename(os.path.join(repo, "file.txt"), os.path.join(repo, "file.old"))
            os.symlink(secret, os.path.join(repo, "file.txt"))
            os.rename(os.path.join(repo, "dir"), os.path.join(repo, "dir.old"))
            os.symlink(os.path.dirname(secret), os.path.join(repo, "dir"))
            os.unlink(os.path.join(repo, "link"))
            os.symlink(secret, os.path.join(repo, "link"))
            seen = {}
            for rel in ("file.txt", "dir/inner.txt", "keep.txt", "link"):
                try:
                    with open(os.path.join(mnt, "in", rel)) as f:
                        seen[rel] = f.read()
                except OSError as exc:
                    seen[rel] = errno.errorcode[exc.errno]
            seen["readlink"] = os.readlink(os.path.join(mnt, "in", "link"))
            with open(os.path.join(mnt, "out", "seen.json"), "w") as f:
                json.dump(seen, f)
    """)
    spec = write_spec(tmp_path / "pipeline.yaml", batching_spec(
        "swap", {"pfs": {"repo": "in", "glob": "/"}}, [sys.executable, str(script)],
        env={"MNT": str(shared_mnt), "REPO": str(data / "in"), "SECRET": str(secret)}))
    result = finish(start_pfsmount(spec, data, shared_mnt), shared_mnt)
    assert result.returncode == 0, str(result)
    seen = json.loads((data / "swap" / "seen.json").read_text())
    assert seen == {"file.txt": "EIO", "dir/inner.txt": "EIO", "keep.txt": "untouched\n",
                    # The listed symlink stays what the listing saw, resolved inside /pfs.
                    "link": "untouched\n", "readlink": "keep.txt"}, seen
    assert "TOPSECRET" not in result.stdout + result.stderr
    for rel in ("file.txt", "dir/inner.txt"):
        assert f"refusing to read {data / 'in' / rel}" in result.stderr, result.stderr

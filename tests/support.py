"""Helpers for tests that run the real thing: pfsmount in a subprocess, a real FUSE mount."""

from __future__ import annotations

import glob
import hashlib
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pfsmount import mountinfo

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent

needs_fuse = pytest.mark.skipif(
    not (os.geteuid() == 0 and os.access("/dev/fuse", os.W_OK)),
    reason="real FUSE mounts need root and /dev/fuse",
)


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> None:
    """Create files (and their directories) below `root`; a path ending in / is a dir."""
    for rel, content in files.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_script(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def batching_spec(name: str, input_: dict, cmd: Sequence[str], **transform: object) -> dict:
    return {
        "pipeline": {"name": name},
        "input": input_,
        "transform": {"cmd": list(cmd), "datum_batching": True, **transform},
    }


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def unmount(mountpoint: str | Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True,
                   check=False)


def is_mounted(mountpoint: str | Path) -> bool:
    return mountinfo.fstype(str(mountpoint)) is not None


def start_pfsmount(
    spec: Path,
    data: Path,
    mountpoint: str | Path,
    *,
    namespace: bool = False,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    cmd = [PY, "-m", "pfsmount", "run", str(spec), "--data", str(data),
           "--mountpoint", str(mountpoint), *extra]
    if namespace:
        # A private mount namespace lets the test use the real /pfs path without
        # touching the host's /pfs; the mount dies with the namespace.
        cmd = ["unshare", "--mount", "--propagation", "private", *cmd]
    # `python3` in a cmd is the user's: for these tests, one with pfsmount's dependencies.
    path = os.pathsep.join([os.path.dirname(PY), os.environ.get("PATH", os.defpath)])
    full_env = {**os.environ, "PATH": path, **(env or {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=full_env)


def finish(proc: subprocess.Popen[str], mountpoint: str | Path, timeout: float = 120) -> Finished:
    """Wait for pfsmount; on timeout kill its group. The mount is always gone afterwards."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        unmount(mountpoint)
        raise AssertionError(f"pfsmount run timed out after {timeout}s\n{err}") from None
    finally:
        if is_mounted(mountpoint):
            unmount(mountpoint)
    return Finished(proc.returncode, out, err)


def run_pfsmount(spec: Path, data: Path, mountpoint: str | Path, *, timeout: float = 120,
                 **kwargs: object) -> Finished:
    return finish(start_pfsmount(spec, data, mountpoint, **kwargs), mountpoint, timeout)


def read_tree(root: Path) -> dict[str, bytes]:
    """Every non-directory below `root` as relative path -> content (symlinks: target)."""
    result: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                result[rel] = b"->" + os.fsencode(os.readlink(path))
            else:
                result[rel] = Path(path).read_bytes()
    return result


def pachyderm_datum_id(inputs: Sequence[tuple[str, str, str, str]]) -> str:
    """Datum id as Pachyderm computes it, written independently of pfsmount.datums."""
    h = hashlib.blake2b(digest_size=32)
    for name, repo, branch, path in inputs:
        for part in (name, repo, branch, path):
            raw = part.encode()
            h.update(raw)
            h.update(struct.pack(">q", len(raw)))
    return h.hexdigest()


def datum_states(data: Path, pipeline: str) -> dict[str, tuple[str, int]]:
    """Each datum's state and attempts in the latest job, by its first input's path."""
    import json
    import sqlite3

    db = sqlite3.connect(data / ".pfsmount" / pipeline / "ledger.sqlite")
    try:
        (job,) = db.execute("SELECT job_id FROM jobs ORDER BY started DESC LIMIT 1").fetchone()
        rows = db.execute("SELECT inputs, state, attempts FROM job_datums WHERE job_id = ?",
                          (job,)).fetchall()
    finally:
        db.close()
    return {json.loads(inputs)[0]["path"]: (state, attempts) for inputs, state, attempts in rows}


def proc_survivors(marker: str) -> list[int]:
    """Host pids of live processes whose command line or environment contains `marker`."""
    needle = marker.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                if f.read().rsplit(b") ", 1)[1][:1] == b"Z":
                    continue
            blobs = [Path(f"/proc/{entry}/{name}").read_bytes() for name in ("cmdline", "environ")]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if any(needle in blob for blob in blobs):
            found.append(int(entry))
    return found


def wait_for_staged(proc: subprocess.Popen[str], data: Path, mountpoint: str | Path,
                    pipeline: str, name: str, timeout: float = 60) -> str:
    """The path of output file `name` once a running datum of `pipeline` has written it into
    its staging directory (user code's way of saying "look now"); kills pfsmount's process
    group and fails if it never comes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        # glob.glob, not Path.glob: staging directories come and go while it looks.
        found = glob.glob(str(data / ".pfsmount" / pipeline / "staging" / "*" / "*" / name))
        if found:
            return found[0]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no datum of {pipeline} wrote {name}: {finish(proc, mountpoint)}")


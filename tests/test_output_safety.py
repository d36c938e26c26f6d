"""The output repo and the workspace under hostile conditions: a symlink planted in the
output repo (S4), other local users reading what user code wrote or printed (S6), and
output names that are not UTF-8 (D2)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import (
    datum_states,
    finish,
    needs_fuse,
    read_tree,
    run_pfsmount,
    start_pfsmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _classic(name: str, script: Path, **extra: object) -> dict:
    return {"pipeline": {"name": name}, "input": {"pfs": {"repo": "in", "glob": "/*"}},
            "transform": {"cmd": ["bash", str(script)], **extra}, "datum_tries": 1}


def test_a_symlink_planted_in_the_output_repo_is_never_written_through(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"a.txt": "a", "b.txt": "b"})
    victim = tmp_path / "victim"
    victim.mkdir()
    (data / "hostile").mkdir()
    (data / "hostile" / "u").symlink_to(victim)
    script = write_script(tmp_path / "w.sh", """\
        n=$(basename "$in")
        if [ "$n" = a.txt ]; then mkdir -p /pfs/out/u; echo pwned > /pfs/out/u/pwned.txt; fi
        echo ok > "/pfs/out/$n"
    """)
    spec = write_spec(tmp_path / "p.yaml", _classic("hostile", script))
    result = run_pfsmount(spec, data, "/pfs", namespace=True)
    assert result.returncode == 1, result
    assert list(victim.iterdir()) == []
    assert f"{data}/hostile/u is a symlink that no datum wrote" in result.stderr
    assert read_tree(data / "hostile") == {"u": f"->{victim}".encode(), "b.txt": b"ok\n"}
    assert datum_states(data, "hostile") == {"/a.txt": ("failed", 1), "/b.txt": ("success", 1)}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every local user can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pfsmount-s6-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _nobody_reads(path: Path) -> bool:
    return subprocess.run([*NOBODY, "cat", str(path)], capture_output=True).returncode == 0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_workspace_ledger_logs_and_staging_are_private(shared_dir: Path) -> None:
    data = shared_dir / "data"
    write_tree(data / "in", {"a.txt": "a"})
    data.chmod(0o755)
    # What an older pfsmount left: everything world-readable.
    work = data / ".pfsmount" / "priv"
    write_tree(work / "logs", {"old.jsonl": "{}\n"})
    for path, mode in ((data / ".pfsmount", 0o755), (work, 0o755), (work / "logs", 0o755),
                       (work / "logs" / "old.jsonl", 0o644)):
        path.chmod(mode)
    ready, go = shared_dir / "ready", shared_dir / "go"
    script = write_script(shared_dir / "w.sh", f"""\
        echo "a secret line"
        printf private > /pfs/out/secret.txt
        chmod 0644 /pfs/out/secret.txt
        touch {ready}
        while [ ! -e {go} ]; do sleep 0.05; done
    """)
    spec = write_spec(shared_dir / "p.yaml", _classic("priv", script))
    proc = start_pfsmount(spec, data, "/pfs", namespace=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        assert _nobody_reads(data / "in" / "a.txt")  # the check below can fail
        staged = list((work / "staging").glob("*/*/secret.txt"))  # staging/<worker>/<n>/
        assert len(staged) == 1
        ledger = work / "ledger.sqlite"
        logs = list((work / "logs").glob("*.jsonl"))
        files = [ledger, work / "lock", *logs, staged[0]]
        files += [p for p in (Path(f"{ledger}-wal"), Path(f"{ledger}-shm")) if p.exists()]
        assert Path(f"{ledger}-wal").exists()
        for path in files:
            assert not _nobody_reads(path), path
            if path != staged[0]:
                assert _mode(path) == 0o600, path
        for path in (work, work / "logs", work / "staging", staged[0].parent.parent,
                     staged[0].parent):
            assert _mode(path) == 0o700, path
    finally:
        go.touch()
        result = finish(proc, "/pfs")
    assert result.returncode == 0, result
    # Committed output keeps the mode the user code gave it.
    assert _mode(data / "priv" / "secret.txt") == 0o644


NAMES = """\
import os
path = os.environ["in"]
out = os.fsencode(os.path.dirname(os.path.dirname(path))) + b"/out/"
text = open(path, "rb").read()
with open(out + b"tmp\\xfd", "wb") as f:
    f.write(text)
os.rename(out + b"tmp\\xfd", out + b"\\xff" + os.path.basename(path).encode())
assert os.listdir(out) == [b"\\xff" + os.path.basename(path).encode()]
os.makedirs(out + b"d\\xfe", exist_ok=True)
with open(out + b"d\\xfe/" + os.path.basename(path).encode(), "wb") as f:
    f.write(b"deep " + text)
if text.startswith(b"CLAIM"):
    with open(out + b"\\xff.txt", "wb") as f:
        f.write(text)
"""


def test_output_names_that_are_not_utf8_are_committed_byte_for_byte(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"a": "CLAIM a", "b": "plain b"})
    prog = tmp_path / "names.py"
    prog.write_text(NAMES)
    spec = write_spec(tmp_path / "p.yaml", {
        "pipeline": {"name": "names"}, "input": {"pfs": {"repo": "in", "glob": "/*"}},
        "transform": {"cmd": ["python3", str(prog)]}, "datum_tries": 1})
    mnt = tmp_path / "pfs"
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 0, result
    expected = {b"\xffa": b"CLAIM a", b"\xffb": b"plain b", b"d\xfe/a": b"deep CLAIM a",
                b"d\xfe/b": b"deep plain b", b"\xff.txt": b"CLAIM a"}
    out = {os.fsencode(k): v for k, v in read_tree(data / "names").items()}
    assert out == expected
    # Unchanged: the rerun skips both datums and warns about no "untracked" file.
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 0, result
    assert "not written by any datum" not in result.stderr
    assert datum_states(data, "names") == {"/a": ("skipped", 0), "/b": ("skipped", 0)}
    # A new datum writing the same name conflicts, named readably; the first keeps it.
    (data / "in" / "c").write_text("CLAIM c")
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 1, result
    assert "output path /\\xff.txt was written by datum" in result.stderr, result
    out = {os.fsencode(k): v for k, v in read_tree(data / "names").items()}
    assert out == expected

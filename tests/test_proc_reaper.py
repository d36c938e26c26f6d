"""reaper.py on its own: what it does without the privileges namespaces need."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from support import ROOT, proc_survivors

REAPER = str(ROOT / "src" / "pfsmount" / "reaper.py")
# The reaper needs only the standard library: any python3 runs it, here one that `nobody`
# may execute (pfsmount's own may live under a private home).
PYTHON = "/usr/bin/python3"
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

needs_root_and_nobody = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists(PYTHON)
    or not os.access(REAPER, os.R_OK),
    reason="needs root, setpriv and /usr/bin/python3",
)


@needs_root_and_nobody
def test_without_cap_sys_admin_the_probe_says_why() -> None:
    result = subprocess.run([*AS_NOBODY, PYTHON, "-S", REAPER, "--probe"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 1
    assert "unshare" in result.stderr and "not permitted" in result.stderr


@needs_root_and_nobody
def test_the_process_group_fallback_still_ends_with_pfsmount(tmp_path: Path) -> None:
    marker = f"pfsmount-test-{os.getpid()}-{time.monotonic_ns()}"
    read, write = os.pipe()
    proc = subprocess.Popen(
        [*AS_NOBODY, PYTHON, "-S", REAPER, "--lifeline", str(read), "--", "sh", "-c",
         f"export MARKER={marker}; sleep 1000 & echo started; wait"],
        pass_fds=(read,), stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        os.close(read)
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        assert len(proc_survivors(marker)) >= 2
        os.close(write)  # as when pfsmount dies
        assert proc.wait(timeout=5) == -9
        deadline = time.monotonic() + 2
        while proc_survivors(marker):
            assert time.monotonic() < deadline, proc_survivors(marker)
            time.sleep(0.02)
    finally:
        proc.kill()
        for pid in proc_survivors(marker):
            os.kill(pid, 9)

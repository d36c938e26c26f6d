"""Pachyderm's opencv pair, `edges` then `montage`, run as one DAG at the real /pfs path (in
a private mount namespace), with the specs' shape unchanged and pure-Python stand-ins for
OpenCV and ImageMagick."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support import PY, ROOT, finish, needs_fuse, read_tree

pytestmark = needs_fuse


def test_opencv_edges_then_montage_in_one_command(tmp_path: Path) -> None:
    ex = tmp_path / "opencv"
    shutil.copytree(ROOT / "examples" / "opencv", ex,
                    ignore=shutil.ignore_patterns(".pfsmount", "edges", "montage", "__pycache__"))
    # The README's command: both specs, then the options.
    cmd = ["unshare", "--mount", "--propagation", "private", PY, "-m", "pfsmount", "run",
           "edges.yaml", "montage.yaml", "--data", "data"]
    path = os.pathsep.join([os.path.dirname(PY), os.environ.get("PATH", os.defpath)])
    proc = subprocess.Popen(cmd, cwd=ex, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "PATH": path})
    result = finish(proc, "/pfs")
    assert result.returncode == 0, result
    edges = read_tree(ex / "data" / "edges")
    assert sorted(edges) == ["circle.pgm", "cross.pgm", "square.pgm"]
    magic, size, _top, pixels = edges["square.pgm"].decode().split("\n", 3)
    assert (magic, size) == ("P2", "24 24")
    assert "255" in pixels and " 0 " in pixels  # edges found, and flat areas left black
    montage = read_tree(ex / "data" / "montage")
    assert list(montage) == ["montage.pgm"]
    # Six tiles of 24 pixels, each with a 2-pixel margin on both sides.
    assert montage["montage.pgm"].split(b"\n")[1] == b"168 28"
    assert "DAG: 2 of 2 steps succeeded" in result.stderr

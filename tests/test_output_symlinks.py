"""Symlinks written to /pfs/out that point into an input are committed as the input's
content (Pachyderm's handleSymlinks, which its shuffle example relies on); others stay
symlinks."""

from __future__ import annotations

import os
from pathlib import Path

from support import needs_fuse, read_tree, run_pfsmount, write_script, write_spec, write_tree

pytestmark = needs_fuse

SHUFFLE = """\
#!/bin/bash
set -e
# empty_files: what the user code sees of a file is empty; the commit must copy it whole.
if [ -f "$images" ] && [ -s "$images" ]; then echo "not empty: $images"; exit 3; fi
n=$(basename "$images")
ln -s "$images" "/pfs/out/abs-$n"
ln -s "../images/$n" "/pfs/out/rel-$n"
mkdir -p /pfs/out/deep
ln -s "../../images/$n" "/pfs/out/deep/rel-$n"
ln -s /etc/passwd "/pfs/out/passwd-$n"
ln -s "abs-$n" "/pfs/out/alias-$n"
ln -s /pfs/images/missing "/pfs/out/dangling-$n"
"""


def test_links_into_inputs_become_content_and_others_stay_links(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "images", {"a.png": b"\x89PNG a", "b.png": b"\x89PNG bb",
                                 "dir/c.txt": "c", "dir/sub/e.txt": "e"})
    os.symlink("c.txt", data / "images" / "dir" / "link")
    (data / "images" / "dir" / "sub").chmod(0o750)
    script = write_script(tmp_path / "shuffle.sh", SHUFFLE)
    spec = write_spec(tmp_path / "p.yaml", {
        "pipeline": {"name": "shuffle"},
        "input": {"pfs": {"repo": "images", "glob": "/*", "empty_files": True}},
        "transform": {"cmd": ["bash", str(script)]},
    })
    result = run_pfsmount(spec, data, "/pfs", namespace=True)
    assert result.returncode == 0, result
    out = data / "shuffle"
    tree = read_tree(out)
    dir_copy = {"c.txt": b"c", "sub/e.txt": b"e", "link": b"->c.txt"}
    expected: dict[str, bytes] = {}
    for n, content in (("a.png", b"\x89PNG a"), ("b.png", b"\x89PNG bb"), ("dir", None)):
        for copy in (f"abs-{n}", f"rel-{n}", f"deep/rel-{n}"):
            if content is None:
                expected.update({f"{copy}/{k}": v for k, v in dir_copy.items()})
            else:
                expected[copy] = content
        expected[f"passwd-{n}"] = b"->/etc/passwd"
        expected[f"alias-{n}"] = f"->abs-{n}".encode()
        expected[f"dangling-{n}"] = b"->/pfs/images/missing"
    assert tree == expected
    for copy in ("abs-dir", "rel-dir", "deep/rel-dir"):
        assert not (out / copy).is_symlink()
        assert (out / copy / "sub").stat().st_mode & 0o777 == 0o750
    # A copy, never a hard link: rewriting the input must not change the output.
    assert (out / "abs-a.png").stat().st_ino != (data / "images" / "a.png").stat().st_ino
    assert (out / "abs-a.png").stat().st_nlink == 1

"""How `outlinks` resolves symlinks left in /pfs/out, without a mount: the datum's view and
the staging directory are all it looks at."""

from __future__ import annotations

import os
from pathlib import Path

from pfsmount.datums import expand, open_repos
from pfsmount.outlinks import DatumFiles, materialize
from pfsmount.spec import PfsInput
from pfsmount.view import InodeAllocator, build_view

NOBODY = (65534, 65534)


def _files(tmp_path: Path) -> DatumFiles:
    repo = tmp_path / "data" / "in"
    (repo / "d").mkdir(parents=True)
    for rel, mode in (("pub.txt", 0o644), ("secret.txt", 0o600), ("d/pub", 0o644),
                      ("d/secret", 0o600)):
        (repo / rel).write_text(rel)
        (repo / rel).chmod(mode)
    (repo / "alias").symlink_to("pub.txt")
    spec_input = PfsInput(name="in", repo="in", glob="/", empty_files=True)
    repos = open_repos(spec_input, str(tmp_path / "data"))
    (datum,) = expand(spec_input, repos)
    view = build_view(datum, repos, b"SECRET=1\n", InodeAllocator())
    return DatumFiles(view, repos, "/pfs")


def _link(staging: Path, name: str, target: str, owner: tuple[int, int] = (0, 0)) -> None:
    (staging / name).parent.mkdir(parents=True, exist_ok=True)
    (staging / name).symlink_to(target)
    os.lchown(staging / name, *owner)


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "->" + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_text()
    return out


def test_links_resolve_like_the_kernel_would_in_the_datums_pfs(tmp_path: Path) -> None:
    files = _files(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    _link(staging, "abs", "/pfs/in/pub.txt")
    _link(staging, "dotdot", "/pfs/out/../in/./d/../pub.txt")
    _link(staging, "sub/rel", "../../in/pub.txt")
    _link(staging, "chain", "hop")
    _link(staging, "hop", "/pfs/in/alias")  # and the input's own link is resolved too
    _link(staging, "loop", "loop")
    _link(staging, "env", "/pfs/.env")
    _link(staging, "missing", "/pfs/in/nope")
    _link(staging, "file-as-dir", "/pfs/in/pub.txt/x")
    _link(staging, "outside", "/pfsx/in/pub.txt")
    _link(staging, "too-high", "../../../../in/pub.txt")
    assert materialize(str(staging), files) == 5
    assert _tree(staging) == {
        "abs": "pub.txt", "dotdot": "pub.txt", "sub/rel": "pub.txt", "chain": "pub.txt",
        "hop": "pub.txt", "loop": "->loop", "env": "->/pfs/.env", "missing": "->/pfs/in/nope",
        "file-as-dir": "->/pfs/in/pub.txt/x", "outside": "->/pfsx/in/pub.txt",
        "too-high": "->../../../../in/pub.txt"}


def test_a_copy_never_gives_its_owner_what_it_could_not_read(tmp_path: Path) -> None:
    files = _files(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    _link(staging, "secret", "/pfs/in/secret.txt", NOBODY)
    _link(staging, "pub", "/pfs/in/pub.txt", NOBODY)
    _link(staging, "dir", "/pfs/in/d", NOBODY)
    _link(staging, "root-secret", "/pfs/in/secret.txt")
    materialize(str(staging), files)
    assert _tree(staging) == {"secret": "->/pfs/in/secret.txt", "pub": "pub.txt",
                              "dir/pub": "d/pub", "root-secret": "secret.txt"}
    for name in ("pub", "dir", "dir/pub"):
        st = (staging / name).lstat()
        assert (st.st_uid, st.st_gid) == NOBODY, name
    assert (staging / "root-secret").stat().st_mode & 0o777 == 0o600

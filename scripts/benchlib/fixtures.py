"""The repos the measurements read, built once per size (and reused with --workdir)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from benchlib.common import MIB, Context, say


def fixture(ctx: Context, name: str, build: Callable[[Path], None], params: object) -> Path:
    """The repo DATA/<name>, built once per parameters (reused with --workdir)."""
    repo = ctx.data / name
    stamp = ctx.path("fixtures", f"{name}.done")
    if stamp.exists() and stamp.read_text() == repr(params) and repo.is_dir():
        return repo
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    started = time.perf_counter()
    build(repo)
    os.sync()
    stamp.write_text(repr(params))
    say(f"  built repo {name} in {time.perf_counter() - started:.1f}s")
    return repo


def build_datum_files(n: int, size: int) -> Callable[[Path], None]:
    # Text, not random bytes: the shell loop reads its file with `read`, which drops NULs.
    line = b"pfsmount benchmark datum file, the same bytes in each one, 64 bytes long..\n"

    def build(repo: Path) -> None:
        content = (line * (size // len(line) + 1))[:size]
        for i in range(n):
            (repo / f"f{i:05d}.txt").write_bytes(content)

    return build


def build_big_file(size: int) -> Callable[[Path], None]:
    def build(repo: Path) -> None:
        chunk = os.urandom(MIB)  # incompressible, in case the disk is clever
        with open(repo / "big.bin", "wb") as f:
            for i in range(size // MIB):
                f.write(chunk[i % 7:] + chunk[:i % 7])
            f.write(os.urandom(size % MIB))

    return build


def build_tree(top_dirs: int, files: int, size: int) -> Callable[[Path], None]:
    """`top_dirs` directories each holding `files` files in sub-directories of 100."""
    content = os.urandom(size)

    def build(repo: Path) -> None:
        for t in range(top_dirs):
            top = repo / f"d{t}" if top_dirs > 1 else repo
            for i in range(files):
                sub = top / f"s{i // 100:03d}"
                if i % 100 == 0:
                    sub.mkdir(parents=True)
                (sub / f"f{i:05d}").write_bytes(content)

    return build


def build_flat(n: int) -> Callable[[Path], None]:
    def build(repo: Path) -> None:
        for i in range(n):
            (repo / f"f{i:06d}").write_bytes(b"x\n")

    return build

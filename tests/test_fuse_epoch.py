"""Root names cached per datum through the kernel's name epoch (issue 14), on a real mount.

A child process mounts PfsOperations itself (pyfuse3 holds one session per process), counts
the LOOKUPs of root names, and swaps datums on the trio thread while another thread walks
paths, the way the worker does. The counts are the point: with epochs a root name costs one
LOOKUP per datum, not one per path walk; and a name cached in one datum never resolves in the
next.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyfuse3
import pytest

from support import PY, needs_fuse, write_tree

patched = pytest.mark.skipif(getattr(pyfuse3, "PFSMOUNT_PATCH", 0) < 2,
                             reason="needs pfsmount's patched pyfuse3 ≥ 2 (scripts/setup)")

PROBE = r"""
import json, os, sys, threading
import pyfuse3, trio
from pfsmount.datums import expand, open_repos
from pfsmount.epoch import Epoch
from pfsmount.fs import ROOT, PfsOperations
from pfsmount.spec import PfsInput
from pfsmount.view import build_view
from fuseprobe import serve_while

data, mnt = sys.argv[1], sys.argv[2]


class Counting(PfsOperations):
    root_lookups = 0
    listings = 0

    async def lookup(self, parent, name, ctx):
        if parent == ROOT:
            self.root_lookups += 1
        return await super().lookup(parent, name, ctx)

    async def readdir(self, fh, start_id, token):
        self.listings += 1
        return await super().readdir(fh, start_id, token)


spec_input = PfsInput(name="in", repo="in", glob="/*")
repos = open_repos(spec_input, data)
fs = Counting(no_open=True)
datums = list(expand(spec_input, repos))
result = {}


def walk(token):
    # A fresh view per swap, built on the trio thread, as the worker does.
    show = lambda d: fs.show(build_view(d, repos, b"K=V\n", fs.inodes), None)
    swap = lambda i: trio.from_thread.run_sync(show, datums[i], trio_token=token)
    swap(0)
    path = os.path.join(mnt, "in", "a", "f.txt")
    for _ in range(50):
        os.stat(path)
    result["root_lookups_per_50_walks"] = fs.root_lookups
    for _ in range(5):
        os.listdir(os.path.join(mnt, "in", "a", "sub"))
    result["listings_per_5_lists"] = fs.listings
    swap(1)
    # "in" was cached in the first datum; after the swap it must not lead to a/ any more.
    result["old_path_after_swap"] = os.path.exists(path)
    result["listing_after_swap"] = sorted(os.listdir(os.path.join(mnt, "in")))
    with open(os.path.join(mnt, "in", "b", "f.txt")) as f:
        result["read_after_swap"] = f.read()
    # Racing: a walker resolving root names while datums swap under it must always land in
    # exactly one datum: never a name of one datum holding a file of the other.
    mixed = 0
    for i in range(200):
        swap(i % 2)
        names = os.listdir(os.path.join(mnt, "in"))
        for name in names:
            try:
                with open(os.path.join(mnt, "in", name, "f.txt")) as f:
                    mixed += f.read() != name * 3
            except FileNotFoundError:
                pass  # swapped between the listing and the open: allowed
    result["mixed"] = mixed


def mounted():
    # No KernelNotifier: its entry drops would hide a missing epoch bump. The epoch alone must
    # keep every name of the old datum from being used.
    fs.epoch = Epoch.probe()
    result["epoch"] = fs.epoch is not None


serve_while(fs, mnt, "pfsmount-epoch-test", walk, mounted)
print(json.dumps(result))
"""


def _probe(tmp_path: Path, env: dict[str, str]) -> dict:
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    for name in ("a", "b"):
        write_tree(data / "in" / name, {"f.txt": name * 3, "sub/x": "x", "sub/y": "y"})
    mnt.mkdir()
    try:
        proc = subprocess.run([PY, "-c", PROBE, str(data), str(mnt)], capture_output=True,
                              text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parent), **env})
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@needs_fuse
@patched
def test_root_names_cost_one_lookup_per_datum_and_never_outlive_it(tmp_path: Path) -> None:
    got = _probe(tmp_path, {})
    if not got["epoch"]:
        pytest.skip(f"this kernel ({os.uname().release}) has no FUSE name epochs")
    assert got["root_lookups_per_50_walks"] <= 2, got
    assert got["listings_per_5_lists"] <= 2, got  # a view's listing is cached by the kernel
    assert got["old_path_after_swap"] is False, got
    assert got["listing_after_swap"] == ["b"], got
    assert got["read_after_swap"] == "bbb", got
    assert got["mixed"] == 0, got


@needs_fuse
@patched
def test_without_epochs_root_names_are_asked_every_walk(tmp_path: Path) -> None:
    got = _probe(tmp_path, {"PFSMOUNT_NO_EPOCH": "1"})
    assert got["epoch"] is False
    assert got["root_lookups_per_50_walks"] >= 50, got
    assert got["old_path_after_swap"] is False, got
    assert got["listing_after_swap"] == ["b"], got
    assert got["mixed"] == 0, got



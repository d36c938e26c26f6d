"""A job mounted elsewhere than /pfs still shows its datum at /pfs to user code.

Pachyderm's examples name /pfs in their commands (`cp /pfs/in/* /pfs/out/`); with
`--mountpoint` elsewhere (a second job on the machine, a test) they used to find nothing. Inside
the user code's own mount namespace the mountpoint is bound on /pfs as well; nothing changes for
the rest of the machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pfsmount.sandbox import Sandbox
from support import batching_spec, needs_fuse, run_pfsmount, write_script, write_spec, write_tree

HARDCODED = """
    import os
    from pfsmount import iter_datums

    for d in iter_datums():
        name = os.path.basename(d.env["in"])
        with open("/pfs/in/" + name) as f:
            text = f.read()
        with open("/pfs/out/" + name, "w") as f:
            f.write(text.upper() + " " + str(os.path.ismount("/pfs")))
"""


def test_the_alias_is_asked_for_only_where_it_can_be_given(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ns = Sandbox(pidns=True)
    assert ns.with_pfs_alias("/pfs") == ns
    assert ns.with_pfs_alias("/pfs/") == ns
    assert ns.with_pfs_alias("/pfs/job2") == ns  # its datum's paths name /pfs/job2/...
    if os.path.isdir("/pfs") and not os.path.islink("/pfs"):
        aliased = ns.with_pfs_alias(str(tmp_path / "m"))
        assert aliased.reaper_args() == ["--pidns", "--alias", str(tmp_path / "m")]
    with caplog.at_level(logging.WARNING):
        assert Sandbox().with_pfs_alias(str(tmp_path / "m")) == Sandbox()
    assert "programs that name /pfs will not find it" in caplog.text


@needs_fuse
def test_user_code_naming_pfs_finds_a_datum_mounted_elsewhere(tmp_path: Path, mnt: Path) -> None:
    # The bundled example mounts /pfs too; a fresh CI machine may not have it yet.
    os.makedirs("/pfs", exist_ok=True)
    data = tmp_path / "data"
    write_tree(data / "in", {"a": "alpha", "b": "beta"})
    script = write_script(tmp_path / "hard.py", HARDCODED)
    spec = write_spec(tmp_path / "p.yaml", batching_spec(
        "hard", {"pfs": {"repo": "in", "glob": "/*"}}, ["python3", str(script)]))
    result = run_pfsmount(spec, data, mnt)
    assert result.returncode == 0, result
    assert (data / "hard" / "a").read_text() == "ALPHA True"
    assert (data / "hard" / "b").read_text() == "BETA True"
    # Only inside the job's namespace: the machine's /pfs was never mounted on.
    assert not os.path.ismount("/pfs") or "pfsmount" not in _mount_source("/pfs")


def _mount_source(path: str) -> str:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == path:
            return fields[0]
    return ""

"""Real runs of spec features that real Pachyderm pipelines use.

accept_return_code in classic mode, the tutorial's negated glob, and inputs from two
projects. Each test starts its pfsmount runs concurrently to keep the suite short.
"""

from __future__ import annotations

from pathlib import Path

from support import (
    datum_states,
    finish,
    needs_fuse,
    read_tree,
    start_pfsmount,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse

# Writes its input's name to /pfs/out, then exits with the status its name asks for.
EXIT_AS_NAMED = 'n=$(basename "$in"); echo "$n" > "$MNT/out/$n"; exit "${n#exit}"'


def test_accept_return_code_counts_listed_exit_codes_as_success(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "in", {"exit0": "", "exit3": "", "exit4": ""})
    mnt = tmp_path / "pfs"
    spec = write_spec(tmp_path / "p.yaml", {
        "pipeline": {"name": "job"},
        "input": {"pfs": {"repo": "in", "glob": "/*"}},
        "transform": {"cmd": ["bash", "-c", EXIT_AS_NAMED], "env": {"MNT": str(mnt)},
                      "accept_return_code": [3]},
        "datum_tries": 1,
    })
    result = finish(start_pfsmount(spec, data, mnt), mnt)
    # exit 4 is not in the list: that datum fails, and with it the job.
    assert result.returncode == 1, result
    assert datum_states(data, "job") == {
        "/exit0": ("success", 1), "/exit3": ("success", 1), "/exit4": ("failed", 1),
    }
    assert read_tree(data / "job") == {"exit0": b"exit0\n", "exit3": b"exit3\n"}
    assert "cmd exited with status 4" in result.stderr
    assert "status 3" not in result.stderr

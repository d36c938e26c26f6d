"""`pachctl next datum` loops under `pfsmount run`, in every shell user code may use and from
Python's subprocess: the compiled shim (when scripts/setup built it) drives the job exactly as
the Python one did, through pfsmount's peer-checked local socket."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from pfsmount import shims
from support import (
    batching_spec,
    datum_states,
    finish,
    needs_fuse,
    start_pfsmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse

SHELL_LOOP = """
    # Whether the shim on PATH is the compiled one: its first bytes are ELF's.
    case "$(head -c 4 "$(command -v pachctl)" | tail -c 3)" in
        ELF) kind=native;;
        *) kind=python;;
    esac
    while pachctl next datum $flag; do
        . "$MNT/.env"
        name=$(basename "$in")
        echo "$kind" > "$MNT/out/$name"
        # Any other command is the Python shim's, found next to the compiled one.
        if [ "$name" = a ]; then pachctl version > "$MNT/out/version"; fi
        flag=""
        if [ "$name" = b ]; then flag="--error bad-b"; fi
    done
"""

PYTHON_LOOP = """
    import os, subprocess, sys
    mnt = os.environ["MNT"]
    error = []
    while True:
        done = subprocess.run(["pachctl", "next", "datum", *error])
        if done.returncode != 0:
            sys.exit(f"pachctl exited {done.returncode}")
        env = dict(line.split("=", 1) for line in open(mnt + "/.env").read().splitlines())
        name = os.path.basename(env["in"])
        open(f"{mnt}/out/{name}", "w").write("subprocess\\n")
        error = ["--error", "bad-b"] if name == "b" else []
"""


def test_pachctl_loops_in_every_shell_and_from_subprocess(tmp_path: Path) -> None:
    shells = [s for s in ("bash", "dash", "busybox") if shutil.which(s)]
    cmds = {s: [s, "sh"] if s == "busybox" else [s] for s in shells}
    runs = {}
    try:
        for name, cmd in [*cmds.items(), ("subprocess", [sys.executable])]:
            root = tmp_path / name
            data = root / "data"
            write_tree(data / "in", {"a": "1", "b": "2", "c": "3"})
            prog = write_script(root / "prog", PYTHON_LOOP if name == "subprocess"
                                else SHELL_LOOP)
            mnt = root / "pfs"
            spec = batching_spec("loop", {"pfs": {"repo": "in", "glob": "/*"}},
                                 [*cmd, str(prog)], env={"MNT": str(mnt)})
            spec["datum_tries"] = 1
            runs[name] = (data, mnt, start_pfsmount(write_spec(root / "p.yaml", spec), data, mnt))
    finally:
        results = {name: finish(proc, mnt) for name, (_, mnt, proc) in runs.items()}
    native = os.access(shims.NATIVE_PACHCTL, os.X_OK)
    for name, (data, _, _) in runs.items():
        result = results[name]
        # b failed with the message given to --error; a and c are the job's output.
        assert result.returncode == 1, (name, result)
        assert "bad-b" in result.stderr, (name, result)
        assert datum_states(data, "loop") == {
            "/a": ("success", 1), "/b": ("failed", 1), "/c": ("success", 1)}, name
        out = data / "loop"
        shell = name != "subprocess"
        assert sorted(os.listdir(out)) == ["a", "c", *(["version"] if shell else [])], name
        if shell:
            assert "pachctl shim from pfsmount" in (out / "version").read_text()
        expected = "subprocess" if name == "subprocess" else ("native" if native else "python")
        assert (out / "a").read_text().strip() == expected, name


@pytest.mark.skipif(not os.access(shims.NATIVE_PACHCTL, os.X_OK),
                    reason="scripts/setup did not build the compiled pachctl shim")
def test_setup_built_the_native_shim() -> None:
    assert Path(shims.NATIVE_PACHCTL).read_bytes()[:4] == b"\x7fELF"

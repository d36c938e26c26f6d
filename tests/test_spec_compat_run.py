"""Real runs of spec features that real Pachyderm pipelines use.

accept_return_code in classic mode, the tutorial's negated glob, and inputs from two
projects. Each test starts its pfsmount runs concurrently to keep the suite short.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support import (
    PY,
    datum_states,
    finish,
    needs_fuse,
    pachyderm_datum_id,
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


def test_tutorial_negated_glob_makes_one_datum_per_dotless_entry(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "images", {"cats/1.png": "c1", "cats/2.png": "c2", "dogs/3.png": "d3",
                                 "README.md": "no", "list.txt": "no", "birds": "b"})
    mnt = tmp_path / "pfs"
    # Each datum lists what its /pfs/images holds, into a file named after the datum's entry.
    script = 'n=$(basename "$images"); (cd /pfs/images && find . | sort) > "$MNT/out/$n"'
    spec = write_spec(tmp_path / "p.yaml", {
        "pipeline": {"name": "tutorial"},
        "input": {"pfs": {"repo": "images", "glob": "/!(*.*)"}},
        "transform": {"cmd": ["bash", "-c", script.replace("/pfs", str(mnt))],
                      "env": {"MNT": str(mnt)}},
    })
    result = finish(start_pfsmount(spec, data, mnt), mnt)
    assert result.returncode == 0, result
    assert read_tree(data / "tutorial") == {
        "birds": b".\n./birds\n",
        "cats": b".\n./cats\n./cats/1.png\n./cats/2.png\n",
        "dogs": b".\n./dogs\n./dogs/3.png\n",
    }


# Copies its one input file to /pfs/out as <input name>-<file name>.
COPY_INPUT = ('for n in prod stage; do f="${!n}"; [ -n "$f" ] && '
              'cp "$f" "$MNT/out/$n-$(basename "$f")" && echo "copied $n $f"; done; true')


def test_a_union_over_two_projects_reads_both_and_keeps_pipelines_apart(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    write_tree(data / "images", {f"{n}.png": f"default-{n}" for n in "abc"})
    write_tree(data / "@staging" / "images", {f"{n}.png": f"staging-{n}" for n in "abc"})
    procs = []
    # A pipeline "merge" in project staging and one of the same name in the default project:
    # different output repos, different workspaces, run at the same time.
    for project in ("staging", "default"):
        mnt = tmp_path / f"pfs-{project}"
        inputs = [{"pfs": {"repo": "images", "glob": "/*", "name": "prod",
                           "project": "default"}},
                  {"pfs": {"repo": "images", "glob": "/*", "name": "stage",
                           "project": "staging"}}]
        spec = write_spec(tmp_path / f"{project}.yaml", {
            "pipeline": {"name": "merge", "project": {"name": project}},
            "input": {"union": inputs},
            "transform": {"cmd": ["bash", "-c", COPY_INPUT], "env": {"MNT": str(mnt)}},
        })
        listed = subprocess.run(
            [PY, "-m", "pfsmount", "list-datums", str(spec), "--data", str(data), "--json"],
            capture_output=True, text=True, timeout=60, check=True)
        records = [json.loads(line) for line in listed.stdout.splitlines()]
        ids = [r["id"] for r in records]
        assert len(set(ids)) == 6
        assert ids == [pachyderm_datum_id([(name, "images", "master", f"/{n}.png")])
                       for name in ("prod", "stage") for n in "abc"]
        procs.append((project, mnt, start_pfsmount(spec, data, mnt)))
    expected = {f"{name}-{n}.png": f"{label}-{n}".encode()
                for name, label in (("prod", "default"), ("stage", "staging")) for n in "abc"}
    for project, mnt, proc in procs:
        result = finish(proc, mnt)
        assert result.returncode == 0, result
        location = "merge" if project == "default" else "@staging/merge"
        assert read_tree(data / location) == expected
        assert (data / ".pfsmount" / location / "ledger.sqlite").is_file()
        jobs = subprocess.run([PY, "-m", "pfsmount", "list-jobs", str(tmp_path / f"{project}.yaml"),
                               "--data", str(data)], capture_output=True, text=True, timeout=60)
        assert jobs.returncode == 0, jobs.stderr
        (job,) = jobs.stdout.splitlines()[1:]
        assert job.split()[1] == "success", jobs.stdout
        logs = subprocess.run([PY, "-m", "pfsmount", "logs", location, "--data", str(data)],
                              capture_output=True, text=True, timeout=60)
        assert logs.returncode == 0, logs.stderr
        assert f"copied stage {mnt}/stage/c.png" in logs.stdout
    # The input repos were only read.
    assert read_tree(data / "@staging" / "images") == {
        f"{n}.png": f"staging-{n}".encode() for n in "abc"}

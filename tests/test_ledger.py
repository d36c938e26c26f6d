"""The ledger: incremental runs, crash-safe resume, one run at a time, a full disk."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from support import (
    batching_spec,
    finish,
    is_mounted,
    needs_fuse,
    read_tree,
    run_pfsmount,
    start_pfsmount,
    write_script,
    write_spec,
    write_tree,
)

pytestmark = needs_fuse

PROGRAM = """
    import os, time
    from pfsmount import batch_datums
    RUNLOG, MNT = os.environ["RUNLOG"], os.environ["MNT"]

    @batch_datums
    def main():
        path = os.environ["in"]
        name = os.path.basename(path)
        with open(RUNLOG, "a") as log:
            log.write(name + "\\n")
        text = open(path).read()
        if text.startswith("FAIL"):
            raise ValueError("refusing " + name)
        time.sleep(float(os.environ.get("PAUSE", "0")))
        os.makedirs(f"{MNT}/out/{name}", exist_ok=True)
        with open(f"{MNT}/out/{name}/upper.txt", "w") as f:
            f.write(text.upper())
        with open(f"{MNT}/out/{name}.len", "w") as f:
            f.write(str(len(text)))

    main()
"""


class Pipeline:
    """One pipeline over repo `in`, run again and again, with the datums each run started."""

    def __init__(self, root: Path, mnt: Path, **spec_extra: object) -> None:
        self.root, self.mnt = root, mnt
        self.data = root / "data"
        (self.data / "in").mkdir(parents=True, exist_ok=True)
        self.runlog = root / "runs.log"
        script = write_script(root / "prog.py", PROGRAM)
        self.spec_dict = batching_spec(
            "inc", {"pfs": {"repo": "in", "glob": "/*"}}, ["python3", str(script)],
            env={"RUNLOG": str(self.runlog), "MNT": str(mnt)})
        self.spec_dict["datum_tries"] = 1
        self.spec_dict.update(spec_extra)
        self.spec = write_spec(root / "pipeline.yaml", self.spec_dict)

    def update_spec(self, **fields: object) -> None:
        self.spec_dict.update(fields)
        write_spec(self.spec, self.spec_dict)

    def run(self, expect: int = 0, **kwargs: object) -> tuple[set[str], str]:
        self.runlog.unlink(missing_ok=True)
        result = run_pfsmount(self.spec, self.data, self.mnt, **kwargs)
        assert result.returncode == expect, result
        ran = set(self.runlog.read_text().split()) if self.runlog.exists() else set()
        return ran, result.stderr

    def output(self) -> dict[str, bytes]:
        return read_tree(self.data / "inc")


def _expected(files: dict[str, str]) -> dict[str, bytes]:
    out = {}
    for name, text in files.items():
        if not text.startswith("FAIL"):
            out[f"{name}/upper.txt"] = text.upper().encode()
            out[f"{name}.len"] = str(len(text)).encode()
    return out


def test_incremental_runs(tmp_path: Path, mnt: Path) -> None:
    p = Pipeline(tmp_path, mnt)
    files = {"a": "alpha", "b": "bravo", "c": "charlie"}
    write_tree(p.data / "in", files)
    ran, _ = p.run()
    assert ran == {"a", "b", "c"}
    assert p.output() == _expected(files)

    # New files: only they run.
    files.update(d="delta", e="FAIL echo")
    write_tree(p.data / "in", {"d": "delta", "e": "FAIL echo"})
    ran, err = p.run(expect=1)
    assert ran == {"d", "e"}
    assert "3 skipped (unchanged)" in err
    assert p.output() == _expected(files)

    # Changed content reprocesses that datum; a FAILED datum runs again.
    time.sleep(0.01)
    files["b"] = "bravo, changed"
    (p.data / "in" / "b").write_text(files["b"])
    ran, _ = p.run(expect=1)
    assert ran == {"b", "e"}
    assert p.output() == _expected(files)

    # A deleted input file takes its datum's output with it.
    (p.data / "in" / "c").unlink()
    (p.data / "in" / "e").unlink()
    del files["c"], files["e"]
    ran, err = p.run()
    assert ran == set()
    assert p.output() == _expected(files)
    assert "no datum needs to run; the user code is not started" in err

    # A new salt changes every datum's hash.
    p.update_spec(salt="pepper")
    ran, _ = p.run()
    assert ran == {"a", "b", "d"}
    assert p.output() == _expected(files)

    # every_job: no skipping at all.
    p.update_spec(reprocess_spec="every_job")
    for _ in range(2):
        ran, _ = p.run()
        assert ran == {"a", "b", "d"}
    assert p.output() == _expected(files)


def test_the_cli_shows_jobs_and_datum_states(tmp_path: Path, mnt: Path) -> None:
    p = Pipeline(tmp_path, mnt)
    write_tree(p.data / "in", {"a": "alpha", "b": "FAIL bravo"})
    p.run(expect=1)
    write_tree(p.data / "in", {"c": "charlie"})
    p.run(expect=1)

    def cli(*args: str) -> str:
        return _cli(p, *args)

    jobs = cli("list-jobs", str(p.spec)).splitlines()
    assert len(jobs) == 3 and jobs[0].startswith("JOB")
    last = jobs[2].split()
    assert last[1] == "failed" and last[-5:] == ["3", "1", "1", "1", "0"]
    inspect = cli("inspect-job", "inc")
    assert "1 failed, 1 skipped, 1 success (of 3)" in inspect
    assert "ValueError('refusing b')" in inspect
    states = {line.split()[2]: line.split()[1] for line in
              cli("list-datums", str(p.spec), "--job", last[0]).splitlines()}
    assert states == {"in:/a": "skipped", "in:/b": "failed", "in:/c": "success"}


def _cli(p: Pipeline, *args: str) -> str:
    return subprocess.run([os.sys.executable, "-m", "pfsmount", *args, "--data", str(p.data)],
                          capture_output=True, text=True, check=True).stdout


def test_a_job_that_runs_nothing_still_lists_its_datums(tmp_path: Path, mnt: Path) -> None:
    # A job's datums reach the ledger with its first group commit; with no datum to run,
    # the end of the job is that commit.
    p = Pipeline(tmp_path, mnt)
    write_tree(p.data / "in", {"a": "alpha", "b": "bravo"})
    p.run()
    p.run()
    last = _cli(p, "list-jobs", str(p.spec)).splitlines()[-1].split()
    assert last[1] == "success"
    states = {line.split()[2]: line.split()[1] for line in
              _cli(p, "list-datums", str(p.spec), "--job", last[0]).splitlines()}
    assert states == {"in:/a": "skipped", "in:/b": "skipped"}


def test_a_second_run_of_the_same_pipeline_is_refused(tmp_path: Path, mnt: Path) -> None:
    p = Pipeline(tmp_path, mnt, datum_timeout="0s")
    write_tree(p.data / "in", {f"f{i}": "x" for i in range(40)})
    first = start_pfsmount(p.spec, p.data, mnt, env={"PAUSE": "0.2"})
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = run_pfsmount(p.spec, p.data, tmp_path / "other-mnt")
        assert second.returncode == 2, second
        assert "pipeline 'inc' is already running on this data directory" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        finish(first, mnt)


def _ledger_finished(data: Path) -> set[str]:
    db = sqlite3.connect(data / ".pfsmount" / "inc" / "ledger.sqlite")
    try:
        rows = db.execute("SELECT inputs FROM job_datums WHERE state IN "
                          "('success', 'failed', 'recovered')").fetchall()
    except sqlite3.OperationalError:
        rows = []  # killed before the ledger's tables were even created
    finally:
        db.close()
    return {json.loads(r[0])[0]["path"].lstrip("/") for r in rows}


def test_kill_9_at_any_moment_then_resume_gives_the_same_output(
    tmp_path: Path, mnt: Path
) -> None:
    template = tmp_path / "template"
    p = Pipeline(template, mnt)
    files = {f"f{i:02d}": f"content of file {i}" * (i + 1) for i in range(30)}
    write_tree(p.data / "in", files)
    started = time.monotonic()
    p.run(env={"PAUSE": "0.01"})
    full = time.monotonic() - started
    reference = p.output()
    assert reference == _expected(files)

    rng = random.Random(20261125)
    trials = [("random", rng.uniform(0.3, full)) for _ in range(20)]
    trials += [(point, 0.0) for point in ("before-ledger", "after-ledger", "mid-apply")]
    for n, (how, delay) in enumerate(trials):
        root = tmp_path / f"trial{n}"
        shutil.copytree(template, root, ignore=shutil.ignore_patterns("inc", ".pfsmount"))
        trial_mnt = tmp_path / f"mnt{n}"
        q = Pipeline(root, trial_mnt)
        env = {"PAUSE": "0.01"}
        if how != "random":
            env["PFSMOUNT_CRASH_AT"] = how
        proc = start_pfsmount(q.spec, q.data, trial_mnt, env=env)
        if how == "random":
            time.sleep(delay)
            # `kill -9 PID`: pfsmount alone dies; its fusermount3 helper must clean up.
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        # A kill inside the mount handshake can leave a dead mount; the resume clears it.
        finished_before = _ledger_finished(q.data) if (q.data / ".pfsmount" / "inc" /
                                                       "ledger.sqlite").exists() else set()
        ran, _ = q.run()
        assert not is_mounted(trial_mnt)
        assert q.output() == reference, f"trial {n} ({how} after {delay:.2f}s)"
        assert not ran & finished_before, f"trial {n}: {sorted(ran & finished_before)} ran twice"


def test_a_full_disk_during_a_commit_fails_that_datum_cleanly(
    tmp_path: Path, mnt: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    try:
        p = Pipeline(disk, mnt)
        # z comes last, so the datums before it are done when it fills the disk.
        write_tree(p.data / "in", {"a": "alpha", "c": "charlie", "z": "zulu"})
        script = write_script(disk / "fill.py", """
            import os
            from pfsmount import batch_datums
            MNT = os.environ["MNT"]

            @batch_datums
            def main():
                name = os.path.basename(os.environ["in"])
                with open(f"{MNT}/out/{name}.txt", "w") as f:
                    f.write(name)
                if name == "z":
                    # Many small files (ledger rows to write at commit), then every free block.
                    for i in range(3000):
                        open(f"{MNT}/out/z-{i:04d}", "w").close()
                    try:
                        with open(f"{MNT}/out/z-fill", "wb") as f:
                            while True:
                                f.write(b"x" * 65536)
                                f.flush()
                    except OSError:
                        pass

            main()
        """)
        p.spec_dict["transform"]["cmd"] = ["python3", str(script)]
        write_spec(p.spec, p.spec_dict)
        _, err = p.run(expect=1)
        assert "is full" in err, err
        assert p.output() == {"a.txt": b"a", "c.txt": b"c"}
        db = sqlite3.connect(p.data / ".pfsmount" / "inc" / "ledger.sqlite")
        owned = dict(db.execute("SELECT path, datum_id FROM outputs").fetchall())
        pending = db.execute("SELECT COUNT(*) FROM intents").fetchone()[0]
        db.close()
        assert sorted(owned) == ["a.txt", "c.txt"] and pending == 0
        # Space is back: the next run tries the failed datum again (and fills the disk again).
        _, err = p.run(expect=1)
        assert "0 datums processed, 1 failed, 2 skipped (unchanged)" in err, err
        assert p.output() == {"a.txt": b"a", "c.txt": b"c"}
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)

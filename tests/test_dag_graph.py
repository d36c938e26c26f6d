"""The DAG without mounts: loading several specs, building and refusing graphs, the walk's
failure rules, and the watchers over real directories."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pfsmount.dag import FAILED, INTERRUPTED, NOT_RUN, SUCCEEDED, DagError, build_dag, run_dag
from pfsmount.spec import SpecError, load_specs
from pfsmount.watch import InotifyWatcher, PollWatcher


def _spec(name: str, *repos: str, project: str = "") -> str:
    pipeline = f"{{name: {name}" + (f", project: {{name: {project}}}" if project else "") + "}"
    inputs = [f"{{pfs: {{repo: {r}, glob: /*}}}}" for r in repos]
    node = inputs[0] if len(inputs) == 1 else f"{{cross: [{', '.join(inputs)}]}}"
    return f"pipeline: {pipeline}\ninput: {node}\ntransform: {{cmd: ['true']}}\n"


def _files(tmp: Path, **specs: str) -> list[str]:
    paths = []
    for name, text in specs.items():
        (tmp / f"{name}.yaml").write_text(text)
        paths.append(str(tmp / f"{name}.yaml"))
    return paths


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_text("x")
    return root


def test_multi_document_files_and_directories(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "b.yaml").write_text(_spec("edges", "images") + "---\n" +
                                  _spec("montage", "images", "edges"))
    (specs / "a.json").write_text('{"pipeline": {"name": "first"}, "input": {"pfs": {"repo": '
                                  '"images", "glob": "/"}}, "transform": {"cmd": ["true"]}}')
    (specs / "notes.txt").write_text("not a spec")
    docs = load_specs([specs])
    assert [(d.spec.name, d.spec.source) for d in docs] == [
        ("first", "a.json"), ("edges", "b.yaml"), ("montage", "b.yaml (document 2)")]
    assert len({d.digest for d in docs}) == 3
    (specs / "c.yaml").write_text(_spec("ok", "images") + "---\npipeline: {name: bad}\n")
    with pytest.raises(SpecError, match=r"c.yaml \(document 2\): input: required"):
        load_specs([specs])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecError, match="holds no pipeline spec"):
        load_specs([empty])


def test_order_follows_repo_names_and_projects(tmp_path: Path, data: Path) -> None:
    (data / "@lab" / "images").mkdir(parents=True)
    paths = _files(tmp_path, m=_spec("montage", "images", "edges"), e=_spec("edges", "images"),
                   p=_spec("edges", "images", project="lab"))
    dag = build_dag(load_specs(paths), str(data))
    assert [s.location for s in dag.steps] == ["edges", "montage", "@lab/edges"]
    assert dag.step("montage").upstream == ("edges",)
    assert dag.step("montage").data_repos == ("images",)
    # The lab project's pipeline reads the lab project's images, not the default one's.
    assert dag.step("@lab/edges").data_repos == ("@lab/images",)
    assert dag.data_repos == ("images", "@lab/images")
    assert dag.affected_by(["@lab/images"]) == {"@lab/edges"}
    assert dag.affected_by(["images"]) == {"edges", "montage"}


def test_refusals_name_the_specs(tmp_path: Path, data: Path) -> None:
    def refused(**specs: str) -> str:
        with pytest.raises(DagError) as caught:
            build_dag(load_specs(_files(tmp_path, **specs)), str(data))
        return str(caught.value)

    twice = refused(a=_spec("edges", "images"), b=_spec("edges", "images"))
    assert "pipeline 'edges' is defined twice" in twice
    assert "a.yaml" in twice and "b.yaml" in twice

    cycle = refused(x=_spec("x", "y"), y=_spec("y", "x"))
    assert "the pipelines form a cycle: x (" in cycle and "x.yaml" in cycle and "y.yaml" in cycle
    assert "own" in refused(s=_spec("self", "self"))

    (data / "raw").mkdir()
    clash = refused(i=_spec("images", "raw"), e=_spec("edges", "images"))
    assert "pipeline.name: 'images' is also a data repo" in clash and "i.yaml" in clash

    unknown = refused(e=_spec("edges", "imagez"))
    assert "e.yaml: input.pfs.repo: 'imagez' is neither a pipeline of this DAG nor a " \
           "directory" in unknown
    assert "did you mean 'images'?" in unknown


def test_own_output_repo_is_not_a_data_repo(tmp_path: Path, data: Path) -> None:
    (data / "edges").mkdir()
    (data / "edges" / "a.png").write_text("output")
    paths = _files(tmp_path, e=_spec("edges", "images"), m=_spec("montage", "edges"))
    with pytest.raises(DagError):
        build_dag(load_specs(paths), str(data))
    # Once the pipeline has a ledger, the repo is its output, written by it.
    (data / ".pfsmount" / "edges").mkdir(parents=True)
    (data / ".pfsmount" / "edges" / "ledger.sqlite").write_text("")
    dag = build_dag(load_specs(paths), str(data))
    assert [s.location for s in dag.steps] == ["edges", "montage"]


def test_a_failure_stops_descendants_only(tmp_path: Path, data: Path) -> None:
    paths = _files(tmp_path, a=_spec("a", "images"), b=_spec("b", "a"), c=_spec("c", "b"),
                   d=_spec("d", "images"), e=_spec("e", "d", "a"))
    dag = build_dag(load_specs(paths), str(data))
    ran: list[str] = []

    def run(step) -> int:
        ran.append(step.location)
        return 1 if step.location == "b" else 0

    report = run_dag(dag, run)
    assert ran == ["a", "b", "d", "e"]
    assert [(r.location, r.outcome, r.reason) for r in report.results] == [
        ("a", SUCCEEDED, ""), ("b", FAILED, ""), ("c", NOT_RUN, "upstream b failed"),
        ("d", SUCCEEDED, ""), ("e", SUCCEEDED, "")]
    assert not report.ok


def test_a_signal_stops_the_whole_dag(tmp_path: Path, data: Path) -> None:
    paths = _files(tmp_path, a=_spec("a", "images"), b=_spec("b", "images"))
    dag = build_dag(load_specs(paths), str(data))
    report = run_dag(dag, lambda step: 130)
    assert [(r.outcome, r.reason) for r in report.results] == [
        (INTERRUPTED, ""), (NOT_RUN, "interrupted before it started")]
    assert report.interrupted is not None and report.interrupted.exit_code == 130


@pytest.mark.parametrize("kind", ["inotify", "poll"])
def test_watchers_see_new_files_and_new_directories(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    for repo in ("a", "b"):
        (data / repo).mkdir(parents=True)
    watcher = (InotifyWatcher(str(data), ["a", "b"], settle=0.2) if kind == "inotify"
               else PollWatcher(str(data), ["a", "b"], interval=0.1, settle=0.2))
    try:
        def later(action) -> None:
            threading.Timer(0.3, action).start()

        later(lambda: (data / "b" / "new.txt").write_text("x"))
        started = time.monotonic()
        assert watcher.wait() == {"b"}
        assert time.monotonic() - started < 5
        (data / "a" / "sub").mkdir()
        assert watcher.wait() == {"a"}
        later(lambda: (data / "a" / "sub" / "deep.txt").write_text("y"))
        assert watcher.wait() == {"a"}  # the new directory is watched too
    finally:
        watcher.close()


def test_run_refuses_a_bad_dag_before_anything_runs(tmp_path: Path, data: Path) -> None:
    import subprocess
    import sys

    paths = _files(tmp_path, x=_spec("x", "y"), y=_spec("y", "x"), z=_spec("z", "nowhere"))
    result = subprocess.run([sys.executable, "-m", "pfsmount", "run", *paths, "--data",
                             str(data)], capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    assert "z.yaml: input.pfs.repo: 'nowhere' is neither a pipeline" in result.stderr
    assert not (data / ".pfsmount").exists()  # nothing recorded, nothing ran

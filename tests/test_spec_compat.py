"""Spec fields real Pachyderm pipelines use: accept_return_code and projects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pfsmount.datums import DatumInput, datum_id, expand, open_repos
from pfsmount.spec import PfsInput, PipelineSpec, SpecError, UnionInput, parse_spec
from pfsmount.store.local import RepoIndex, StoreError, open_repo


def spec_from(doc: dict[str, Any]) -> PipelineSpec:
    return parse_spec(json.dumps(doc), source="p.json")


def base(transform: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "pipeline": {"name": "p"},
        "input": {"pfs": {"repo": "r", "glob": "/*"}},
        "transform": {"cmd": ["sh"], **(transform or {})},
    }
    doc.update(overrides)
    return doc


def error(doc: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        spec_from(doc)
    return str(info.value)


# --- accept_return_code -----------------------------------------------------------------------


def test_accept_return_code_is_read_in_both_spellings() -> None:
    spec = spec_from(base({"accept_return_code": [3, 1, 3]}))
    assert spec.transform.accept_return_code == frozenset({1, 3})
    camel = spec_from(base({"acceptReturnCode": [2]}))
    assert camel.transform.accept_return_code == frozenset({2})
    assert spec_from(base()).transform.accept_return_code == frozenset()
    assert not spec.warnings


def test_accept_return_code_takes_int64_strings_as_pachyderm_json_writes_them() -> None:
    spec = spec_from(base({"acceptReturnCode": ["1", "255"]}))
    assert spec.transform.accept_return_code == frozenset({1, 255})


@pytest.mark.parametrize(
    ("value", "where", "fix"),
    [
        (3, "transform.accept_return_code:", "write it as accept_return_code: [3]"),
        ("3", "transform.accept_return_code:", "expected a list of exit codes"),
        ([256], "transform.accept_return_code[0]:", "a process exits with 0..255"),
        ([1, -1], "transform.accept_return_code[1]:", "a process exits with 0..255"),
        ([True], "transform.accept_return_code[0]:", "expected an exit code"),
        ([1.5], "transform.accept_return_code[0]:", "expected an exit code"),
        (["x"], "transform.accept_return_code[0]:", "expected an exit code"),
    ],
)  # fmt: skip
def test_bad_accept_return_code_names_the_field(value: object, where: str, fix: str) -> None:
    message = error(base({"accept_return_code": value}))
    assert message.startswith(f"p.json: {where}"), message
    assert fix in message


def test_accept_return_code_with_datum_batching_warns_it_has_no_effect() -> None:
    spec = spec_from(base({"accept_return_code": [1], "datum_batching": True}))
    assert spec.transform.accept_return_code == frozenset({1})
    assert any("transform.accept_return_code has no effect with datum_batching" in w
               for w in spec.warnings)


# --- projects -----------------------------------------------------------------------------------


def _union(*inputs: dict[str, Any]) -> dict[str, Any]:
    return {"union": [{"pfs": {"glob": "/*", **i}} for i in inputs]}


def test_pfs_project_defaults_to_the_pipelines_project() -> None:
    spec = spec_from(base())
    assert (spec.project, spec.location) == ("default", "p")
    assert spec.input == PfsInput(name="r", repo="r", glob="/*", project="default")
    assert spec.input.repo_key == "r"
    staged = spec_from(base(pipeline={"name": "p", "project": {"name": "staging"}}))
    assert (staged.project, staged.location) == ("staging", "@staging/p")
    assert staged.input.project == "staging"
    assert staged.input.repo_key == "@staging/r"
    explicit = spec_from(base(pipeline={"name": "p", "project": {"name": "staging"}},
                              input={"pfs": {"repo": "r", "glob": "/*", "project": "default"}}))
    assert explicit.input.project == "default"
    assert not explicit.warnings


def test_inputs_of_two_projects_need_different_names() -> None:
    message = error(base(input=_union({"repo": "images"},
                                      {"repo": "images", "project": "staging"})))
    assert message.startswith("p.json: input.union[1].pfs: input 'images' reads repo 'images' "
                              "of project 'staging', and input.union[0].pfs reads repo 'images' "
                              "of project 'default' under the same name"), message
    assert "give one of them a different name with name: ..." in message
    spec = spec_from(base(input=_union({"repo": "images"},
                                       {"repo": "images", "project": "staging",
                                        "name": "staged"})))
    assert isinstance(spec.input, UnionInput)
    assert [(c.name, c.project) for c in spec.input.children] == [  # type: ignore[union-attr]
        ("images", "default"), ("staged", "staging")]


def test_a_cross_of_two_projects_same_repo_hits_the_uniqueness_rule() -> None:
    message = error(base(input={"cross": [
        {"pfs": {"repo": "images", "glob": "/*"}},
        {"pfs": {"repo": "images", "glob": "/*", "project": "staging"}},
    ]}))
    assert "input name 'images' is used twice" in message


@pytest.mark.parametrize(
    ("doc", "where", "fix"),
    [
        (base(pipeline={"name": "p", "project": "staging"}), "pipeline.project:",
         "write project: {name: staging}"),
        (base(pipeline={"name": "p", "project": {"name": "a/b"}}), "pipeline.project.name:",
         "not a valid project name"),
        (base(pipeline={"name": "p", "project": {"nam": "x"}}), "pipeline.project.nam:",
         "did you mean 'name'?"),
        (base(input={"pfs": {"repo": "r", "glob": "/*", "project": "@x"}}),
         "input.pfs.project:", "not a valid project name"),
        (base(input={"pfs": {"repo": "r", "glob": "/*", "project": {"name": "x"}}}),
         "input.pfs.project:", "expected a string"),
    ],
)  # fmt: skip
def test_bad_projects_name_the_field(doc: dict[str, Any], where: str, fix: str) -> None:
    message = error(doc)
    assert message.startswith(f"p.json: {where}"), message
    assert fix in message


# --- the layout of projects in the data directory ----------------------------------------------


def _repos(tmp_path: Path, spec: PipelineSpec) -> dict[str, RepoIndex]:
    return open_repos(spec.input, str(tmp_path), source="p.json")


def test_a_union_over_two_projects_gives_distinct_datums_of_the_right_files(
    tmp_path: Path,
) -> None:
    for project_dir, label in (("images", "default"), ("@staging/images", "staging")):
        for name in "abc":
            (tmp_path / project_dir).mkdir(parents=True, exist_ok=True)
            (tmp_path / project_dir / f"{name}.png").write_text(f"{label}-{name}")
    spec = spec_from(base(input=_union({"repo": "images"},
                                       {"repo": "images", "project": "staging",
                                        "name": "staged"})))
    repos = _repos(tmp_path, spec)
    assert sorted(repos) == ["@staging/images", "images"]
    datums = expand(spec.input, repos)
    assert len({d.id for d in datums}) == 6
    read = [
        (d.inputs[0].name, Path(repos[d.inputs[0].repo_key].source(d.inputs[0].path)).read_text())
        for d in datums
    ]
    assert read == [("images", "default-a"), ("images", "default-b"), ("images", "default-c"),
                    ("staged", "staging-a"), ("staged", "staging-b"), ("staged", "staging-c")]
    # The id still hashes the name and repo only, exactly as Pachyderm's.
    assert datums[3].id == datum_id([DatumInput("staged", "images", "master", "/a.png", "")])


def test_the_default_project_keeps_the_flat_layout_and_refuses_an_at_default_copy(
    tmp_path: Path,
) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a").write_text("x")
    assert open_repo(str(tmp_path), "images").root == str(tmp_path / "images")
    (tmp_path / "@default" / "images").mkdir(parents=True)
    with pytest.raises(StoreError) as info:
        open_repo(str(tmp_path), "images")
    assert f"{tmp_path}/@default/images also exists" in str(info.value)
    assert "merge the two and remove the @default one" in str(info.value)


def test_a_project_repo_in_the_ambiguous_place_gets_a_hint(tmp_path: Path) -> None:
    (tmp_path / "staging" / "images").mkdir(parents=True)
    (tmp_path / "staging" / "images" / "a").write_text("x")
    with pytest.raises(StoreError) as info:
        open_repo(str(tmp_path), "images", "staging")
    message = str(info.value)
    assert message.startswith(f"repo 'staging/images' not found: {tmp_path}/@staging/images "
                              f"does not exist; {tmp_path}/staging/images exists: move it to "
                              f"{tmp_path}/@staging/images"), message
    # DATA/staging is a default-project repo in its own right and stays readable as one.
    assert open_repo(str(tmp_path), "staging").get("/images/a") is not None


def test_a_missing_project_repo_names_the_spec_field(tmp_path: Path) -> None:
    spec = spec_from(base(input={"pfs": {"repo": "r", "glob": "/*", "project": "staging"}}))
    with pytest.raises(StoreError) as info:
        _repos(tmp_path, spec)
    assert str(info.value).startswith(
        f"p.json: input.pfs.repo: repo 'staging/r' not found: {tmp_path}/@staging/r does not "
        "exist (create it")

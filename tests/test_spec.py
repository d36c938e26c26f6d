"""Pipeline spec parsing: every field, camelCase, warnings, refusals and error messages."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pfsmount.datums import expand, open_repos
from pfsmount.spec import (
    CrossInput,
    GroupInput,
    JoinInput,
    PfsInput,
    PipelineSpec,
    SpecError,
    Transform,
    UnionInput,
    load_spec,
    parse_duration,
    parse_spec,
)
from pfsmount.store.local import StoreError

MINIMAL = """
pipeline: {name: edges}
input:
  pfs: {repo: images, glob: "/*"}
transform:
  cmd: [python3, /edges.py]
"""


def spec_from(doc: dict[str, Any]) -> PipelineSpec:
    return parse_spec(json.dumps(doc), source="p.json")


def base(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "pipeline": {"name": "p"},
        "input": {"pfs": {"repo": "r", "glob": "/*"}},
        "transform": {"cmd": ["sh"]},
    }
    doc.update(overrides)
    return doc


def error_of(text: str, source: str = "pipeline.yaml") -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, source=source)
    return str(info.value)


def doc_error(doc: Any) -> str:
    return error_of(yaml.safe_dump(doc))


# --- the happy path ---------------------------------------------------------------------------


def test_minimal_yaml_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec == PipelineSpec(
        name="edges",
        input=PfsInput(name="images", repo="images", glob="/*"),
        transform=Transform(cmd=("python3", "/edges.py")),
        source="pipeline.yaml",
    )
    assert spec.input.branch == "master"  # type: ignore[union-attr]
    assert spec.datum_tries == 3 and spec.reprocess_spec == "until_success"
    assert spec.datum_timeout is None and spec.job_timeout is None
    assert spec.parallelism == 1 and spec.warnings == ()


def test_every_field_snake_case() -> None:
    spec = parse_spec(
        """
pipeline: {name: full_pipe-1}
input:
  pfs:
    name: imgs
    repo: images
    branch: dev
    glob: "dir/*/"
    lazy: true
    empty_files: true
transform:
  cmd: [sh]
  stdin: [echo hi, ls]
  err_cmd: [sh]
  err_stdin: [exit 0]
  env: {A: "1", B: two}
  working_dir: /work
  datum_batching: true
datum_tries: 5
datum_timeout: 1m30s
job_timeout: 1.5h
reprocess_spec: every_job
salt: abc
parallelism_spec: {constant: 1}
"""
    )
    assert spec.input == PfsInput(
        name="imgs", repo="images", branch="dev", glob="/dir/*", lazy=True, empty_files=True
    )
    t = spec.transform
    assert t.cmd == ("sh",) and t.stdin == ("echo hi", "ls")
    assert t.err_cmd == ("sh",) and t.err_stdin == ("exit 0",)
    assert dict(t.env) == {"A": "1", "B": "two"}
    assert t.working_dir == "/work" and t.datum_batching is True
    assert spec.datum_tries == 5
    assert spec.datum_timeout == 90.0 and spec.job_timeout == 5400.0
    assert spec.reprocess_spec == "every_job" and spec.salt == "abc"


def test_env_is_read_only() -> None:
    spec = parse_spec(MINIMAL)
    with pytest.raises(TypeError):
        spec.transform.env["X"] = "1"  # type: ignore[index]


def test_camel_case_json() -> None:
    spec = parse_spec(
        json.dumps(
            {
                "pipeline": {"name": "p"},
                "input": {
                    "join": [
                        {"pfs": {"repo": "a", "glob": "/(*)", "joinOn": "$1", "outerJoin": True}},
                        {"pfs": {"repo": "b", "glob": "/(*)", "joinOn": "$1", "emptyFiles": True}},
                    ]
                },
                "transform": {
                    "cmd": ["sh"], "errCmd": ["sh"], "errStdin": ["x"], "workingDir": "/w",
                    "datumBatching": True, "env": {"camelCase": "kept"},
                },
                "datumTries": 2, "datumTimeout": "10s", "jobTimeout": "1h",
                "reprocessSpec": "every_job", "parallelismSpec": {"constant": 1},
            }
        ),
        source="p.json",
    )  # fmt: skip
    assert isinstance(spec.input, JoinInput)
    a, b = spec.input.children
    assert a == PfsInput(name="a", repo="a", glob="/(*)", join_on="$1", outer_join=True)
    assert b == PfsInput(name="b", repo="b", glob="/(*)", join_on="$1", empty_files=True)
    assert spec.transform.err_cmd == ("sh",) and spec.transform.working_dir == "/w"
    assert dict(spec.transform.env) == {"camelCase": "kept"}
    assert (spec.datum_tries, spec.datum_timeout, spec.job_timeout) == (2, 10.0, 3600.0)


def test_group_by_camel_case() -> None:
    spec = spec_from(
        base(input={"group": [{"pfs": {"repo": "r", "glob": "/(*)-*", "groupBy": "$1"}}]})
    )
    assert spec.input == GroupInput((PfsInput(name="r", repo="r", glob="/(*)-*", group_by="$1"),))


def test_nested_inputs() -> None:
    spec = spec_from(
        base(
            input={
                "cross": [
                    {"union": [{"pfs": {"repo": "a", "glob": "/*", "name": "in"}},
                               {"pfs": {"repo": "b", "glob": "/*", "name": "in"}}]},
                    {"pfs": {"repo": "c", "glob": "/"}},
                ]
            }
        )
    )  # fmt: skip
    assert spec.input == CrossInput(
        (
            UnionInput(
                (PfsInput(name="in", repo="a", glob="/*"), PfsInput(name="in", repo="b", glob="/*"))
            ),
            PfsInput(name="c", repo="c", glob="/"),
        )
    )


def test_json_file_and_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(base()))
    (tmp_path / "p.yaml").write_text(MINIMAL)
    assert load_spec(tmp_path / "p.json").source == "p.json"
    assert load_spec(str(tmp_path / "p.yaml")).name == "edges"


def test_yaml_flow_mapping_starting_with_brace() -> None:
    spec = parse_spec("{pipeline: {name: p}, input: {pfs: {repo: r, glob: /*}}, "
                      "transform: {cmd: [sh]}}")
    assert spec.name == "p"


def test_yaml_anchors_within_budget_are_fine() -> None:
    spec = parse_spec(
        """
pipeline: {name: p}
input:
  cross:
    - pfs: &common {repo: r, glob: "/*"}
    - pfs: {repo: s, glob: "/*"}
transform:
  cmd: &cmd [sh]
  err_cmd: *cmd
"""
    )
    assert spec.transform.err_cmd == ("sh",)


# --- warnings and refusals --------------------------------------------------------------------


def test_kubernetes_fields_collected_into_one_warning() -> None:
    spec = spec_from(
        base(
            description="d",
            resource_limits={"memory": "1G"},
            podPatch="[]",
            transform={"cmd": ["sh"], "image": "python:3", "imagePullSecrets": ["x"],
                       "secrets": [{"name": "s"}]},
            pipeline={"name": "p", "project": {"name": "default"}},
        )
    )  # fmt: skip
    assert len(spec.warnings) == 1
    warning = spec.warnings[0]
    assert warning.startswith("p.json: these Pachyderm fields have no effect in pfsmount")
    for path in ("description", "resource_limits", "podPatch", "transform.image",
                 "transform.imagePullSecrets", "transform.secrets"):
        assert path in warning  # fmt: skip


def test_parallelism_constant_and_coefficient() -> None:
    spec = spec_from(base(parallelism_spec={"constant": 4}))
    assert spec.parallelism == 4 and spec.warnings == ()
    assert spec_from(base(parallelism_spec={"constant": 0})).parallelism == 1
    cores = os.cpu_count() or 1
    assert spec_from(base(parallelism_spec={"coefficient": 2})).parallelism == 2 * cores
    assert spec_from(base(parallelism_spec={"coefficient": 0.01})).parallelism == 1


def test_join_on_outside_join_warns() -> None:
    spec = spec_from(base(input={"pfs": {"repo": "r", "glob": "/(*)", "join_on": "$1"}}))
    assert any("input.pfs.join_on has no effect outside a join" in w for w in spec.warnings)


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        (base(spout={}), "p.json: spout: pfsmount does not support this field"),
        (base(service={"type": "NodePort"}), "p.json: service: pfsmount does not support"),
        (base(egress={"URL": "s3://x"}), "p.json: egress: pfsmount does not support"),
        (base(s3Out=True), "p.json: s3Out: pfsmount does not support"),
        (base(tf_job={}), "p.json: tf_job: pfsmount does not support"),
        (base(input={"cron": {"name": "tick", "spec": "@every 1m"}}), "p.json: input.cron:"),
        (base(input={"git": {"URL": "x"}}), "p.json: input.git:"),
        (base(input={"pfs": {"repo": "r", "glob": "/*", "s3": True}}), "input.pfs.s3:"),
        (base(input={"pfs": {"repo": "r", "glob": "/*", "commit": "abc"}}), "input.pfs.commit:"),
    ],
)  # fmt: skip
def test_unsupported_pachyderm_fields_are_errors(doc: dict[str, Any], where: str) -> None:
    with pytest.raises(SpecError) as info:
        spec_from(doc)
    assert where in str(info.value)
    assert "does not support" in str(info.value)


# --- errors: each names file, field path and fix ----------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (base(input={"pfs": {"repo": "r", "glbo": "/*"}}),
         "pipeline.yaml: input.pfs.glbo: unknown field 'glbo'; did you mean 'glob'?"),
        (base(datumTrys=3), "datumTrys: unknown field 'datumTrys'; did you mean 'datumTries'?"),
        (base(transform={"cmd": ["sh"], "enviroment": {}}),
         "transform.enviroment: unknown field 'enviroment'; did you mean 'env'"),
        (base(zzz=1), "zzz: unknown field 'zzz'; valid fields here:"),
        (base(input={"pfs": {"repo": ["r"], "glob": "/*"}}),
         "pipeline.yaml: input.pfs.repo: expected a string, got a list"),
        (base(input={"pfs": {"glob": "/*"}}), "input.pfs.repo: required; name the repo"),
        (base(input={"pfs": {"repo": "r"}}), "input.pfs.glob: required; e.g. glob: '/*'"),
        (base(input={"pfs": {"repo": "r", "glob": "["}}),
         "pipeline.yaml: input.pfs.glob: '/[' is not a valid glob (unclosed character class)"),
        (base(input={"pfs": {"repo": "r", "glob": "/*", "lazy": "yes please"}}),
         "input.pfs.lazy: expected true or false, got a string"),
        (base(input={"pfs": {"repo": "bad repo", "glob": "/*"}}),
         "input.pfs.repo: 'bad repo' is not a valid repo name; use only letters, digits"),
        (base(input={"pfs": {"repo": "r", "branch": "a/b", "glob": "/*"}}),
         "input.pfs.branch: 'a/b' is not a valid branch name"),
        (base(input={"pfs": {"repo": "out", "glob": "/*"}}),
         "input.pfs.repo: 'out' cannot be an input name: /pfs/out is reserved; set a different "
         "name with name: ..."),
        (base(input={"pfs": {"repo": "r", "name": ".env", "glob": "/*"}}),
         "input.pfs.name: '.env' cannot be an input name"),
        (base(input={"pfs": {"repo": "r", "name": "a.b", "glob": "/*"}}),
         "input.pfs.name: 'a.b' is not a valid input name"),
        (base(input={}), "pipeline.yaml: input: needs exactly one input kind (pfs, cross, union, "
                         "join, group), found none"),
        (base(input={"pfs": {"repo": "r", "glob": "/*"}, "union": []}),
         "input: needs exactly one input kind (pfs, cross, union, join, group), found 'pfs' and "
         "'union'; nest them instead"),
        (base(input={"cross": [{"pfs": {"repo": "r", "glob": "/*"}}]}),
         "input.cross: a cross needs at least 2 inputs, got 1; add another input, or use the "
         "single input directly"),
        (base(input={"join": [{"pfs": {"repo": "r", "glob": "/*"}}]}),
         "input.join: a join needs at least 2 inputs, got 1"),
        (base(input={"union": []}), "input.union: a union needs at least 1 input, got 0; add"),
        (base(input={"group": {"pfs": {}}}), "input.group: expected a list of inputs, got a "
                                             "mapping"),
        (base(input={"cross": [{"pfs": {"repo": "r", "glob": "/*"}},
                               {"pfs": {"repo": "r", "glob": "/"}}]}),
         "input.cross[1]: input name 'r' is used twice; give one of them a different name"),
        (base(input={"union": [{"cross": [{"pfs": {"repo": "a", "glob": "/*"}},
                                          {"pfs": {"repo": "a", "glob": "/*", "name": "x"}},
                                          {"pfs": {"repo": "b", "glob": "/*", "name": "x"}}]}]}),
         "input.union[0].cross[2]: input name 'x' is used twice"),
        (base(input={"join": [{"pfs": {"repo": "a", "glob": "/*", "join_on": "$1"}},
                              {"pfs": {"repo": "b", "glob": "/(*)", "join_on": "$1"}}]}),
         "input.join[0].pfs.join_on: '$1' refers to capture group $1, but the glob '/*' has no "
         "capture groups; put the part of the path you want in parentheses"),
        (base(input={"group": [{"pfs": {"repo": "a", "glob": "/(*)", "group_by": "$1-$2"}}]}),
         "input.group[0].pfs.group_by: '$1-$2' refers to capture group $2, but the glob '/(*)' "
         "has 1 capture group;"),
        (base(pipeline={}), "pipeline.name: required; e.g. pipeline: {name: my-pipeline}"),
        (base(pipeline={"name": "has space"}),
         "pipeline.name: 'has space' is not a valid pipeline name; use only letters, digits"),
        (base(pipeline={"name": "x" * 64}), "pipeline.name: 'xxxxxxxxx"),
        (base(pipeline="p"), "pipeline: expected a mapping, got a string ('p')"),
        ({"input": base()["input"], "transform": base()["transform"]},
         "pipeline: required; e.g. pipeline: {name: my-pipeline}"),
        ({"pipeline": {"name": "p"}, "transform": {"cmd": ["sh"]}}, "input: required; e.g."),
        ({"pipeline": {"name": "p"}, "input": base()["input"]}, "transform: required; e.g."),
        (base(transform={}), "transform.cmd: required and must not be empty; pfsmount runs it "
                             "directly"),
        (base(transform={"cmd": []}), "transform.cmd: required and must not be empty"),
        (base(transform={"cmd": "python3 main.py"}),
         "transform.cmd: expected a list of strings, got a string ('python3 main.py'); write it "
         "as cmd: [python3, /code/main.py]"),
        (base(transform={"cmd": ["sh", 1]}), "transform.cmd[1]: expected a string, got an "
                                             "integer (1); quote it"),
        (base(transform={"cmd": ["sh"], "stdin": "echo"}), "transform.stdin: expected a list of "
                                                          "strings"),
        (base(transform={"cmd": ["sh"], "env": ["A=1"]}),
         "transform.env: expected a mapping of NAME: value, got a list"),
        (base(transform={"cmd": ["sh"], "env": {"PORT": 8080}}),
         "transform.env.PORT: expected a string, got an integer (8080); quote the value exactly "
         'as the program should see it, e.g. PORT: "..."'),
        (base(transform={"cmd": ["sh"], "env": {"ON": True}}),
         "transform.env.ON: expected a string, got a boolean (true)"),
        (base(transform={"cmd": ["sh"], "env": {"A=B": "x"}}),
         "transform.env: 'A=B' is not a valid variable name"),
        (base(transform={"cmd": ["sh"], "datum_batching": 1}),
         "transform.datum_batching: expected true or false, got an integer (1)"),
        (base(datum_tries=0), "datum_tries: must be at least 1, got 0 (it counts attempts"),
        (base(datum_tries="3"), "datum_tries: expected a whole number, got a string ('3')"),
        (base(datum_tries=True), "datum_tries: expected a whole number, got a boolean (true)"),
        (base(datum_timeout=30), "datum_timeout: expected a duration string such as '30s' or "
                                 "'1h30m', got an integer (30); did you mean '30s'?"),
        (base(job_timeout="soon"), "job_timeout: 'soon' is not a duration; write a number with "
                                   "a unit"),
        (base(reprocess_spec="always"), "reprocess_spec: 'always' is not valid; use "
                                        "'until_success'"),
        (base(salt=5), "salt: expected a string, got an integer (5)"),
        (base(parallelism_spec={"constant": -1}), "parallelism_spec.constant: must be 1 or more"),
        (base(parallelism_spec=4), "parallelism_spec: expected a mapping, got an integer (4)"),
        (base(transform={"cmd": ["sh"], "err_cmd": ["sh"], "errCmd": ["sh"]}),
         "transform.err_cmd: set twice (as 'errCmd' and 'err_cmd'); keep one"),
    ],
)  # fmt: skip
def test_error_messages(doc: dict[str, Any], expected: str) -> None:
    message = doc_error(doc)
    assert expected in message, message
    assert message.startswith("pipeline.yaml: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "pipeline.yaml: the file is empty; write a pipeline spec"),
        ("   \n\n", "the file is empty"),
        ("# only a comment\n", "the file holds no YAML document"),
        ("[1, 2]", "the top level must be a mapping with pipeline, input and transform, got a "
                   "list"),
        ("just text", "the top level must be a mapping"),
        ("a: [1, 2", "line 1 column 9: not valid YAML"),
        ("a: b\n  c: d\n", "line 2 column 4: not valid YAML"),
        ("a: 1\n---\nb: 2\n", "holds more than one YAML document; pfsmount runs one pipeline per "
                              "file"),
        ("a: 1\na: 2\n", "line 2: key 'a' appears twice in one mapping; keep one"),
        ("!!python/object:os.system {}", "are not allowed in a pipeline spec; remove the tag"),
        ("a: \x1f", "not valid YAML (unacceptable character #x001f"),
    ],
)  # fmt: skip
def test_document_errors(text: str, expected: str) -> None:
    message = error_of(text)
    assert expected in message, message


def test_json_errors_have_line_and_column() -> None:
    message = error_of('{\n  "pipeline": {"name": "p"},\n  oops\n}', source="p.json")
    assert message.startswith("p.json: line 3 column 3: not valid JSON")
    assert "appears twice" in error_of('{"a": 1, "a": 2}', source="p.json")


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 9)}]")
    message = error_of("\n".join(lines))
    assert "too large or too deeply nested" in message
    assert "aliases" in message


def test_recursive_alias_is_refused() -> None:
    assert "too large or too deeply nested" in error_of("a: &x [*x]\n")


def test_deep_nesting_is_refused() -> None:
    assert "nested" in error_of("[" * 5000 + "]" * 5000)
    assert "nested" in error_of("[" * 100 + "]" * 100)
    assert "nested" in error_of('{"a":' * 100 + "1" + "}" * 100, source="p.json")
    assert "nested" in error_of("[" * 100_000 + "]" * 100_000, source="p.json")


def test_oversized_document_is_refused() -> None:
    assert "larger than 4 MiB" in error_of("a: " + "x" * (5 * 1024 * 1024))


def test_load_spec_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"missing.yaml: cannot read the pipeline spec"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"pipeline: \xff\n")
    with pytest.raises(SpecError, match=r"not UTF-8 text .*save the spec as UTF-8"):
        load_spec(bad)
    named = tmp_path / "named.yaml"
    named.write_text("pipeline: {name: p}\n")
    with pytest.raises(SpecError, match=r"^named.yaml: input: required"):
        load_spec(named)


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0), ("1m30s", 90.0), ("1h", 3600.0), ("500ms", 0.5), ("1.5h", 5400.0),
        ("2h45m30.5s", 9930.5), ("100us", 1e-4), ("100µs", 1e-4), ("7ns", 7e-9), ("0", 0.0),
        ("0s", 0.0), (".5s", 0.5), ("+5s", 5.0),
    ],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text, "datum_timeout", "p.yaml") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "1d", "s", "1.2.3s", "5 s", "1h-5m", "abc"])
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_duration(text, "job_timeout", "p.yaml")
    message = str(info.value)
    assert message.startswith("p.yaml: job_timeout: ")
    assert "'30s'" in message


def test_negative_duration_is_refused() -> None:
    with pytest.raises(SpecError, match="is negative; use a positive duration"):
        parse_duration("-5s", "datum_timeout", "p.yaml")


def test_zero_timeout_means_none() -> None:
    assert spec_from(base(datum_timeout="0s")).datum_timeout is None


# --- properties -------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False),
    st.text(max_size=12), st.sampled_from(["/*", "$1", "(*)", "[", "master", "30s", "out"]),
)  # fmt: skip
keys = st.one_of(
    st.text(max_size=10),
    st.sampled_from(
        ["pipeline", "name", "input", "pfs", "cross", "union", "join", "group", "repo", "glob",
         "transform", "cmd", "env", "joinOn", "group_by", "datum_tries", "datumTimeout",
         "image", "spout", "cron", "parallelism_spec", "constant", "outer_join"]
    ),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=25,
)


def _mutations() -> st.SearchStrategy[dict[str, Any]]:
    """Valid-looking specs with one part replaced by something arbitrary."""
    paths = [
        ("pipeline",), ("pipeline", "name"), ("input",), ("input", "pfs"),
        ("input", "pfs", "glob"), ("input", "pfs", "repo"), ("input", "pfs", "join_on"),
        ("transform",), ("transform", "cmd"), ("transform", "env"), ("datum_timeout",),
        ("datum_tries",), ("parallelism_spec",), ("salt",), ("input", "pfs", "lazy"),
    ]  # fmt: skip

    def mutate(path: tuple[str, ...], value: Any) -> dict[str, Any]:
        doc = base()
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        return doc

    return st.builds(mutate, st.sampled_from(paths), values)


def _parse_never_crashes(text: str) -> None:
    try:
        result = parse_spec(text)
    except SpecError as exc:
        assert str(exc).startswith("pipeline.yaml")
        assert "Traceback" not in str(exc)
    else:
        assert isinstance(result, PipelineSpec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_arbitrary_documents_parse_or_raise_spec_error(document: Any) -> None:
    _parse_never_crashes(json.dumps(document))
    _parse_never_crashes(yaml.safe_dump(document))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_spec_shaped_mutations_parse_or_raise_spec_error(document: dict[str, Any]) -> None:
    _parse_never_crashes(yaml.safe_dump(document))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_spec_error(text: str) -> None:
    _parse_never_crashes(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="/*?[]{}(),|!^-\\ab.@+$", max_size=16))
def test_arbitrary_globs_in_specs(glob: str) -> None:
    _parse_never_crashes(
        yaml.safe_dump(base(input={"pfs": {"repo": "r", "glob": glob, "join_on": "$1"}}))
    )


# --- input trees: kinds swapped, children removed, wrong types ----------------------------------

_LEAVES = [
    {"pfs": {"repo": "r", "glob": "/(*)", "join_on": "$1", "group_by": "$1"}},
    {"pfs": {"repo": "s", "glob": "/*", "outer_join": True}},
    {"pfs": {"repo": "r", "name": "t", "glob": "/**", "empty_files": True, "lazy": True}},
]


@st.composite
def _input_trees(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    if depth >= 3 or draw(st.integers(0, 2)) == 0:
        return json.loads(json.dumps(draw(st.sampled_from(_LEAVES))))
    kind = draw(st.sampled_from(["cross", "union", "join", "group"]))
    minimum = 2 if kind in ("cross", "join") else 1
    return {kind: draw(st.lists(_input_trees(depth + 1), min_size=minimum, max_size=3))}


def _nodes(tree: Any) -> list[dict[str, Any]]:
    """Every input node (mapping with a kind) of a tree, root first."""
    found = [tree] if isinstance(tree, dict) else []
    for value in tree.values() if isinstance(tree, dict) else []:
        for child in value if isinstance(value, list) else []:
            found += _nodes(child)
    return found


@st.composite
def _mutated_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """A generated input tree with a few nodes broken the way people break them."""
    tree = draw(_input_trees())
    for _ in range(draw(st.integers(1, 3))):
        node = draw(st.sampled_from(_nodes(tree)))
        if not node:
            continue  # emptied by an earlier mutation
        kind = next(iter(node))
        how = draw(st.sampled_from(["swap", "drop", "empty", "second", "type", "field", "value"]))
        if how == "swap":  # kinds swapped: a list under pfs, a mapping under cross, ...
            other = draw(st.sampled_from(["pfs", "cross", "union", "join", "group", "cron",
                                          "Pfs", "joinn"]))
            node[other] = node.pop(kind)
        elif how == "drop" and isinstance(node[kind], list) and node[kind]:  # children removed
            del node[kind][draw(st.integers(0, len(node[kind]) - 1)):]
        elif how == "empty":
            node.pop(kind)
        elif how == "second":  # two kinds in one node
            node[draw(st.sampled_from(["pfs", "cross", "union"]))] = draw(values)
        elif how == "type":
            node[kind] = draw(values)
        elif how == "field" and kind == "pfs" and isinstance(node[kind], dict):
            field_name = draw(st.sampled_from(["repo", "glob", "join_on", "outer_join", "name",
                                               "group_by", "lazy", "empty_files", "branch"]))
            node[kind][field_name] = draw(values)
        elif how == "value" and isinstance(node[kind], list) and node[kind]:
            node[kind][draw(st.integers(0, len(node[kind]) - 1))] = draw(values)
    return base(input=tree)


@pytest.fixture(scope="module")
def small_repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    for repo, names in (("r", ["1", "2", "d/3"]), ("s", ["1", "x"])):
        for name in names:
            (data / repo / name).parent.mkdir(parents=True, exist_ok=True)
            (data / repo / name).write_text(name)
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_mutated_inputs())
def test_mutated_input_trees_parse_or_raise_spec_error(document: dict[str, Any],
                                                      small_repos: Path) -> None:
    _parse_never_crashes(yaml.safe_dump(document))
    _parse_never_crashes(json.dumps(document))
    try:
        spec = spec_from(document)
    except SpecError:
        return
    # What the parser accepts expands into datums, or is refused with a message, never a crash.
    try:
        expand(spec.input, open_repos(spec.input, str(small_repos)))
    except (SpecError, StoreError) as exc:
        assert "Traceback" not in str(exc) and str(exc)


@settings(max_examples=100, deadline=None)
@given(_input_trees())
def test_generated_input_trees_are_accepted_or_name_a_duplicate(tree: dict[str, Any]) -> None:
    """The unmutated trees are valid except for names repeated outside a union."""
    try:
        spec_from(base(input=tree))
    except SpecError as exc:
        assert "is used twice" in str(exc), str(exc)

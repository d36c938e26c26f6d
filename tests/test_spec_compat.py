"""Spec fields real Pachyderm pipelines use: accept_return_code and projects."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pfsmount.spec import PipelineSpec, SpecError, parse_spec


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

"""Pipeline specs: read a Pachyderm pipeline spec (YAML or JSON) and validate it.

Every problem becomes a `SpecError` whose message names the file, the field path and the fix;
bad input never produces a traceback.

Decisions worth knowing:

- Keys may be snake_case or lowerCamelCase (`datum_tries` or `datumTries`), as Pachyderm's JSON
  parser accepts both. Keys inside `transform.env` are the user's own and are never converted.
- `transform.env` values must be strings. YAML turns `yes`, `010` or `1e3` into values whose
  text is not what the user typed, so non-strings are refused with a "quote it" fix rather than
  guessed at (Pachyderm's protobuf map<string,string> refuses them too).
- Fields that only mean something on Kubernetes (`image`, `resource_limits`, ...) are accepted
  and listed in one warning. Fields that would change what the pipeline computes and that
  pfsmount does not implement (`spout`, `service`, `cron` inputs, `s3_out`, `egress`, ...) are
  errors, so a spec never silently means something else here.
- YAML anchors and aliases are allowed, but the document may expand to at most
  `MAX_NODES` nodes and nest at most `MAX_DEPTH` levels, which stops "billion laughs" bombs.
- A duration of zero (`"0s"`) means "no timeout", as in Pachyderm.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeAlias

import yaml

from pfsmount.glob import GlobError, compile_glob, template_groups
from pfsmount.store.local import DEFAULT_PROJECT, repo_location

__all__ = [
    "CrossInput",
    "GroupInput",
    "Input",
    "JoinInput",
    "PfsInput",
    "PipelineSpec",
    "SpecDocument",
    "SpecError",
    "Transform",
    "UnionInput",
    "iter_pfs",
    "load_spec",
    "load_specs",
    "parse_duration",
    "parse_spec",
]

MAX_BYTES = 4 * 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_MAX_PIPELINE_NAME = 63
_RESERVED_INPUT_NAMES = frozenset({"out", ".env"})
_REPROCESS_SPECS = ("until_success", "every_job")
_ENV_NAME = re.compile(r"^[^=\x00]+$")


class SpecError(Exception):
    """A pipeline spec that cannot be used; `str(e)` is the complete message for the user."""


@dataclass(frozen=True, kw_only=True)
class PfsInput:
    """One repo's files, split into datums by `glob`."""

    name: str
    repo: str
    branch: str = "master"
    glob: str
    join_on: str = ""
    outer_join: bool = False
    group_by: str = ""
    lazy: bool = False
    empty_files: bool = False
    project: str = DEFAULT_PROJECT

    @property
    def repo_key(self) -> str:
        """Where the repo lives under the data directory; also its key among opened repos."""
        return repo_location(self.project, self.repo)


@dataclass(frozen=True)
class CrossInput:
    """The cartesian product of the children's datums, first child outermost."""

    children: tuple[Input, ...]


@dataclass(frozen=True)
class UnionInput:
    """The children's datums one after the other."""

    children: tuple[Input, ...]


@dataclass(frozen=True)
class JoinInput:
    """The children's datums crossed per equal `join_on` key."""

    children: tuple[Input, ...]


@dataclass(frozen=True)
class GroupInput:
    """One datum per `group_by` key, holding every input with that key."""

    children: tuple[Input, ...]


Input: TypeAlias = PfsInput | CrossInput | UnionInput | JoinInput | GroupInput


@dataclass(frozen=True)
class Transform:
    """What to run: the command, its stdin and environment, and the error handler."""

    cmd: tuple[str, ...]
    stdin: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    working_dir: str | None = None
    datum_batching: bool = False
    err_cmd: tuple[str, ...] = ()
    err_stdin: tuple[str, ...] = ()
    # Exit codes of cmd besides 0 that count as success (classic mode only; never err_cmd's).
    accept_return_code: frozenset[int] = frozenset()


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline spec; durations are in seconds, None meaning no limit."""

    name: str
    input: Input
    transform: Transform
    datum_tries: int = 3
    datum_timeout: float | None = None
    job_timeout: float | None = None
    reprocess_spec: str = "until_success"
    salt: str = ""
    parallelism: int = 1
    source: str = ""
    warnings: tuple[str, ...] = ()
    project: str = DEFAULT_PROJECT

    @property
    def location(self) -> str:
        """The output repo's place under the data directory, and the pipeline's key in
        `DATA/.pfsmount/`: the name, or `@<project>/<name>` outside the default project."""
        return repo_location(self.project, self.name)


def iter_pfs(node: Input) -> Iterator[PfsInput]:
    """Every `pfs` input of an input tree, depth first, in spec order."""
    if isinstance(node, PfsInput):
        yield node
        return
    for child in node.children:
        yield from iter_pfs(child)


# --- field tables -----------------------------------------------------------------------------

# Pachyderm fields with no meaning off Kubernetes (or in a one-shot local run): accepted, warned.
_IGNORED_TOP = frozenset(
    {
        "autoscaling", "cache_size", "chunk_spec", "datum_set_spec", "description", "determined",
        "dry_run", "enable_stats", "hashtree_spec", "max_queue_size", "maximum_expected_uptime",
        "metadata", "output_branch", "pod_patch", "pod_spec", "reprocess", "resource_limits",
        "resource_requests", "scheduling_spec", "sidecar_resource_limits",
        "sidecar_resource_requests", "spec_commit", "standby", "tolerations", "update",
    }
)  # fmt: skip
_IGNORED_TRANSFORM = frozenset(
    {"debug", "dockerfile", "image", "image_pull_secrets", "memory_volume", "secrets", "user"}
)
_IGNORED_PFS = frozenset({"propagation_spec", "repo_type", "trigger"})
_IGNORED_PARALLELISM: frozenset[str] = frozenset()

# Pachyderm fields that change what the pipeline does and that pfsmount does not implement.
_REFUSED_TOP = {
    "egress": "copy the output yourself after the run",
    "s3_out": "the output is written to /pfs/out",
    "service": "run long-lived services outside pfsmount",
    "spout": "spouts have no inputs; run the program directly",
    "tf_job": "use transform.cmd to run the training program",
}
_REFUSED_TRANSFORM: dict[str, str] = {}
_REFUSED_PFS = {
    "commit": "pfsmount reads the repo directory as it is now; remove commit",
    "reference": "remove reference; files are always served in full",
    "s3": "read the files from /pfs/<name> instead of the S3 gateway",
}
_REFUSED_INPUT = {
    "cron": "put the files in a repo and use a pfs input",
    "git": "clone the repository into a repo directory and use a pfs input",
}

_TOP_FIELDS = frozenset(
    {
        "pipeline", "input", "transform", "datum_tries", "datum_timeout", "job_timeout",
        "reprocess_spec", "salt", "parallelism_spec",
    }
)  # fmt: skip
_PIPELINE_FIELDS = frozenset({"name", "project"})
_PROJECT_FIELDS = frozenset({"name"})
_TRANSFORM_FIELDS = frozenset(
    {
        "cmd", "stdin", "err_cmd", "err_stdin", "env", "working_dir", "datum_batching",
        "accept_return_code",
    }
)  # fmt: skip
_PFS_FIELDS = frozenset(
    {
        "name", "repo", "branch", "glob", "join_on", "outer_join", "group_by", "lazy",
        "empty_files", "project",
    }
)  # fmt: skip
_INPUT_KINDS = ("pfs", "cross", "union", "join", "group")
_PARALLELISM_FIELDS = frozenset({"constant", "coefficient"})


# --- loading ----------------------------------------------------------------------------------


def load_spec(path: str | os.PathLike[str]) -> PipelineSpec:
    """Read and validate the pipeline spec file at `path` (YAML, or JSON for `.json` files)."""
    source = os.fspath(path)
    text = _read_spec_file(source)
    return parse_spec(text, source=os.path.basename(source) or source)


@dataclass(frozen=True)
class SpecDocument:
    """One pipeline of a multi-pipeline load: the spec, the file it came from (its directory
    anchors `working_dir`) and a digest of its document (recorded with each job)."""

    spec: PipelineSpec
    path: str
    digest: str


SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def load_specs(paths: Sequence[str | os.PathLike[str]]) -> list[SpecDocument]:
    """Every pipeline in `paths`, in order: files (a YAML file may hold several documents
    separated by `---`, as `pachctl create pipeline -f` accepts) or directories of them (their
    `*.yaml`, `*.yml` and `*.json` files, by name, not recursing)."""
    documents: list[SpecDocument] = []
    for path in paths:
        source = os.fspath(path)
        if os.path.isdir(source):
            names = sorted(n for n in os.listdir(source) if n.endswith(SPEC_SUFFIXES)
                           and not n.startswith("."))
            if not names:
                raise SpecError(f"{source}: the directory holds no pipeline spec (*.yaml, *.yml "
                                "or *.json); pass the spec files themselves")
            for name in names:
                documents.extend(_load_file_documents(os.path.join(source, name)))
        else:
            documents.extend(_load_file_documents(source))
    return documents


def _read_spec_file(path: str) -> str:
    """The spec file's UTF-8 text (read up to one byte past the size limit)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the pipeline spec: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"{path}: not UTF-8 text (byte {exc.start + 1} is invalid); save the spec as UTF-8"
        ) from None


def _load_file_documents(path: str) -> list[SpecDocument]:
    text = _read_spec_file(path)
    name = os.path.basename(path) or path
    if name.endswith(".json") or text.lstrip().startswith("{") or not text.strip():
        # One document, exactly as `load_spec` reads it.
        digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        return [SpecDocument(parse_spec(text, source=name), path, digest)]
    if len(text) > MAX_BYTES:
        _load_document(text, name)  # raises the size error
    result: list[SpecDocument] = []
    for index, document in enumerate(_load_yaml_documents(text, name), start=1):
        source = name if index == 1 else f"{name} (document {index})"
        if not isinstance(document, dict):
            raise SpecError(f"{source}: the top level must be a mapping with pipeline, input "
                            f"and transform, got {_describe(document)}")
        digest = hashlib.blake2b(json.dumps(document, sort_keys=True, default=str).encode(),
                                 digest_size=16).hexdigest()
        result.append(SpecDocument(_build_spec(document, _Context(source)), path, digest))
    if not result:
        raise SpecError(f"{name}: the file holds no YAML document; write a pipeline spec")
    return result


def _load_yaml_documents(text: str, source: str) -> list[Any]:
    """Each `---`-separated document, bounded like a single one (empty documents skipped)."""
    documents: list[Any] = []
    with _yaml_loader(text, source) as loader:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            where = source if not documents else f"{source} (document {len(documents) + 1})"
            _check_node_budget(node, where)
            documents.append(loader.construct_document(node))
    return documents


def parse_spec(text: str, source: str = "pipeline.yaml") -> PipelineSpec:
    """Parse and validate a pipeline spec given as YAML or JSON text."""
    document = _load_document(text, source)
    return _build_spec(document, _Context(source))


def _load_document(text: str, source: str) -> Any:
    if len(text) > MAX_BYTES:
        raise SpecError(
            f"{source}: the spec is larger than {MAX_BYTES // (1024 * 1024)} MiB; a pipeline "
            "spec should be a few kilobytes (is this the right file?)"
        )
    if not text.strip():
        raise SpecError(f"{source}: the file is empty; write a pipeline spec (pipeline, "
                        "input, transform)")
    if source.endswith(".json"):
        document = _load_json(text, source)
    elif text.lstrip().startswith("{"):
        # Pachyderm reads a spec starting with "{" as JSON; a YAML flow mapping is still fine.
        try:
            document = _load_json(text, source)
        except SpecError as json_error:
            try:
                document = _load_yaml(text, source)
            except SpecError:
                raise json_error from None
    else:
        document = _load_yaml(text, source)
    if not isinstance(document, dict):
        raise SpecError(
            f"{source}: the top level must be a mapping with pipeline, input and transform, "
            f"got {_describe(document)}"
        )
    return document


def _load_json(text: str, source: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise SpecError(f"{source}: key {key!r} appears twice in one object; keep one")
            result[key] = value
        return result

    try:
        document = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"{source}: line {exc.lineno} column {exc.colno}: not valid JSON ({exc.msg})"
        ) from None
    except RecursionError:
        raise SpecError(
            f"{source}: nested too deeply to be a pipeline spec (limit {MAX_DEPTH} levels); "
            "check the brackets and indentation"
        ) from None
    _check_value_budget(document, source)
    return document


def _budget_error(source: str) -> SpecError:
    return SpecError(
        f"{source}: the document is too large or too deeply nested (limit {MAX_NODES} values, "
        f"{MAX_DEPTH} levels once YAML aliases are expanded); write the values out instead of "
        "nesting aliases"
    )


def _check_value_budget(document: object, source: str) -> None:
    """Bound a parsed JSON document the same way YAML documents are bounded."""
    visited = 0
    stack: list[tuple[object, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        visited += 1
        if visited > MAX_NODES or depth > MAX_DEPTH:
            raise _budget_error(source)
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def _load_yaml(text: str, source: str) -> Any:
    with _yaml_loader(text, source) as loader:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(f"{source}: the file holds no YAML document; write a pipeline spec")
        _check_node_budget(node, source)
        return loader.construct_document(node)


@contextlib.contextmanager
def _yaml_loader(text: str, source: str) -> Iterator[yaml.SafeLoader]:
    """A safe YAML loader over `text` whose errors become one-line `SpecError`s."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML ({_first_line(exc)}); remove it") from None
    try:
        yield loader
    except yaml.MarkedYAMLError as exc:
        raise SpecError(f"{source}: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML ({_first_line(exc)})") from None
    except RecursionError:
        raise SpecError(
            f"{source}: nested too deeply to be a pipeline spec (limit {MAX_DEPTH} levels); "
            "check the brackets and indentation"
        ) from None
    finally:
        loader.dispose()


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
    problem = exc.problem or exc.context or "invalid YAML"
    if "could not determine a constructor" in str(exc.problem or ""):
        return (f"{where}YAML tags such as {exc.problem.split()[-1]} are not allowed in a "
                "pipeline spec; remove the tag")
    if "expected a single document" in str(exc.context or ""):
        return (f"{where}the file holds more than one YAML document; pfsmount runs one "
                "pipeline per file in this command (split it into several files; `pfsmount "
                "run` and `pfsmount dag` take files of several)")
    return f"{where}not valid YAML ({problem})"


def _check_node_budget(root: yaml.Node, source: str) -> None:
    """Refuse documents whose aliases expand too far, and YAML mappings with repeated keys."""
    visited = 0
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        visited += 1
        if visited > MAX_NODES or depth > MAX_DEPTH:
            raise _budget_error(source)
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node, source)
            for key, value in node.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, depth + 1) for item in node.value)


def _check_duplicate_keys(node: yaml.MappingNode, source: str) -> None:
    seen: set[str] = set()
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        if key.value in seen:
            raise SpecError(
                f"{source}: line {key.start_mark.line + 1}: key {key.value!r} appears twice in "
                "one mapping; keep one (YAML would silently use the last)"
            )
        seen.add(key.value)


# --- validation helpers -----------------------------------------------------------------------


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({_short(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _snake(key: str) -> str:
    """lowerCamelCase -> snake_case; anything else unchanged."""
    if not re.fullmatch(r"[a-z][a-zA-Z0-9]*", key) or key.islower():
        return key
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.capitalize() for part in rest)


class _Context:
    """Per-parse state: the file name and what to warn about."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.ignored: list[str] = []
        self.warnings: list[str] = []
        # The pipeline's project: a pfs input without `project` reads a repo of it.
        self.project = DEFAULT_PROJECT

    def error(self, path: str, message: str) -> SpecError:
        return SpecError(f"{self.source}: {path}: {message}")

    def all_warnings(self) -> tuple[str, ...]:
        found = list(self.warnings)
        if self.ignored:
            found.insert(
                0,
                f"{self.source}: these Pachyderm fields have no effect in pfsmount and are "
                f"ignored: {', '.join(self.ignored)}",
            )
        return tuple(found)


class _Fields:
    """One mapping of the spec with normalized keys, typed accessors and field paths."""

    def __init__(
        self,
        raw: object,
        path: str,
        ctx: _Context,
        known: frozenset[str],
        ignored: frozenset[str] = frozenset(),
        refused: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(raw, dict):
            raise ctx.error(path, f"expected a mapping, got {_describe(raw)}")
        self.path = path
        self.ctx = ctx
        self.values: dict[str, object] = {}
        self.spelling: dict[str, str] = {}
        refused = refused or {}
        for key, value in raw.items():
            self._add(key, value, known, ignored, refused)

    def _add(
        self,
        key: object,
        value: object,
        known: frozenset[str],
        ignored: frozenset[str],
        refused: Mapping[str, str],
    ) -> None:
        if not isinstance(key, str):
            raise self.ctx.error(self.path, f"field names must be strings, got {_describe(key)}")
        name = _snake(key)
        where = self.sub(key)
        if name in self.values:
            raise self.ctx.error(
                where, f"set twice (as {self.spelling[name]!r} and {key!r}); keep one"
            )
        if name in refused:
            raise self.ctx.error(where, f"pfsmount does not support this field ({refused[name]})")
        if name in ignored:
            self.ctx.ignored.append(where)
            return
        if name not in known:
            raise self.ctx.error(where, self._unknown(key, name, known, ignored | set(refused)))
        self.values[name] = value
        self.spelling[name] = key

    @staticmethod
    def _unknown(
        key: str, name: str, known: frozenset[str], others: frozenset[str] | set[str]
    ) -> str:
        candidates = sorted(known | others)
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        # difflib misses a long misspelling of a short name ("enviroment" for "env").
        close = close or [c for c in candidates if len(c) >= 3 and name.startswith(c)][:1]
        if close:
            camel = key != name or any(c.isupper() for c in key)
            suggestion = _camel(close[0]) if camel else close[0]
            return f"unknown field {key!r}; did you mean {suggestion!r}?"
        return f"unknown field {key!r}; valid fields here: {', '.join(sorted(known))}"

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def where(self, name: str) -> str:
        return self.sub(self.spelling.get(name, name))

    def has(self, name: str) -> bool:
        return name in self.values

    def raw(self, name: str) -> object:
        return self.values.get(name)

    def string(self, name: str, default: str = "", required: str = "") -> str:
        value = self.values.get(name)
        if value is None or (required and value == ""):
            if required:
                raise self.ctx.error(self.where(name), f"required; {required}")
            return default
        if not isinstance(value, str):
            raise self.ctx.error(self.where(name), f"expected a string, got {_describe(value)}")
        return value

    def boolean(self, name: str) -> bool:
        value = self.values.get(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise self.ctx.error(
                self.where(name), f"expected true or false, got {_describe(value)}"
            )
        return value

    def integer(self, name: str, default: int) -> int:
        value = self.values.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.ctx.error(
                self.where(name), f"expected a whole number, got {_describe(value)}"
            )
        return value

    def strings(self, name: str, example: str) -> tuple[str, ...]:
        value = self.values.get(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.ctx.error(
                self.where(name),
                f"expected a list of strings, got {_describe(value)}; write it as {example}",
            )
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.ctx.error(
                    f"{self.where(name)}[{i}]",
                    f"expected a string, got {_describe(item)}; quote it",
                )
        return tuple(value)


# --- the spec ---------------------------------------------------------------------------------


def _build_spec(document: dict[str, Any], ctx: _Context) -> PipelineSpec:
    top = _Fields(document, "", ctx, _TOP_FIELDS, _IGNORED_TOP, _REFUSED_TOP)
    name, ctx.project = _pipeline_name(top, ctx)
    if not top.has("input"):
        raise ctx.error("input", "required; e.g. input: {pfs: {repo: images, glob: '/*'}}")
    root = _input(top.raw("input"), top.where("input"), ctx)
    _check_names(root, top.where("input"), ctx)
    _check_project_clashes(root, top.where("input"), ctx)
    _warn_keys_outside(root, ctx, top.where("input"), in_join=False, in_group=False)
    if not top.has("transform"):
        raise ctx.error("transform", "required; e.g. transform: {cmd: [python3, main.py]}")
    transform = _transform(top.raw("transform"), top.where("transform"), ctx)
    spec = PipelineSpec(
        name=name,
        input=root,
        transform=transform,
        datum_tries=_datum_tries(top),
        datum_timeout=_optional_duration(top, "datum_timeout"),
        job_timeout=_optional_duration(top, "job_timeout"),
        reprocess_spec=_reprocess_spec(top),
        salt=top.string("salt"),
        parallelism=_parallelism(top, ctx),
        source=ctx.source,
        warnings=(),
        project=ctx.project,
    )
    return replace(spec, warnings=ctx.all_warnings())


def _pipeline_name(top: _Fields, ctx: _Context) -> tuple[str, str]:
    """The pipeline's name and project."""
    if not top.has("pipeline"):
        raise ctx.error("pipeline", "required; e.g. pipeline: {name: my-pipeline}")
    pipeline = _Fields(top.raw("pipeline"), top.where("pipeline"), ctx, _PIPELINE_FIELDS)
    project = DEFAULT_PROJECT
    if pipeline.has("project"):
        where = pipeline.where("project")
        raw = pipeline.raw("project")
        if isinstance(raw, str):
            raise ctx.error(where, f"expected a mapping with the project's name, got "
                                   f"{_describe(raw)}; write project: {{name: {raw}}}")
        fields = _Fields(raw, where, ctx, _PROJECT_FIELDS)
        project = fields.string("name") or DEFAULT_PROJECT
        _check_name(project, fields.where("name"), ctx, "project")
    name = pipeline.string("name", required="e.g. pipeline: {name: my-pipeline}")
    where = pipeline.where("name")
    _check_name(name, where, ctx, "pipeline")
    if len(name) > _MAX_PIPELINE_NAME:
        raise ctx.error(
            where, f"{_short(name)} is {len(name)} characters long; use at most "
                   f"{_MAX_PIPELINE_NAME}"
        )
    return name, project


def _check_name(name: str, where: str, ctx: _Context, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise ctx.error(
            where,
            f"{_short(name)} is not a valid {what} name; use only letters, digits, '_' and '-'",
        )


def _datum_tries(top: _Fields) -> int:
    tries = top.integer("datum_tries", 3)
    if tries < 1:
        raise top.ctx.error(
            top.where("datum_tries"),
            f"must be at least 1, got {tries} (it counts attempts; 1 means no retry)",
        )
    return tries


def _optional_duration(top: _Fields, name: str) -> float | None:
    value = top.raw(name)
    if value is None:
        return None
    where = top.where(name)
    if not isinstance(value, str):
        hint = f"; did you mean '{value}s'?" if type(value) in (int, float) else ""
        raise top.ctx.error(
            where,
            f"expected a duration string such as '30s' or '1h30m', got {_describe(value)}{hint}",
        )
    seconds = parse_duration(value, where, top.ctx.source)
    # Pachyderm treats a zero duration as "not set".
    return seconds or None


def _reprocess_spec(top: _Fields) -> str:
    value = top.string("reprocess_spec") or "until_success"
    if value not in _REPROCESS_SPECS:
        raise top.ctx.error(
            top.where("reprocess_spec"),
            f"{_short(value)} is not valid; use 'until_success' (skip datums that already "
            "succeeded) or 'every_job'",
        )
    return value


def _parallelism(top: _Fields, ctx: _Context) -> int:
    if not top.has("parallelism_spec"):
        return 1
    where = top.where("parallelism_spec")
    spec = _Fields(top.raw("parallelism_spec"), where, ctx, _PARALLELISM_FIELDS,
                   _IGNORED_PARALLELISM)
    coefficient = spec.values.get("coefficient")
    if coefficient is not None:
        if spec.values.get("constant"):
            raise ctx.error(where, "set constant or coefficient, not both")
        if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) \
                or coefficient < 0:
            raise ctx.error(spec.where("coefficient"),
                            f"expected a number of 0 or more, got {_describe(coefficient)}")
        # Pachyderm multiplies by the cluster's nodes; here the machine is the cluster.
        return max(1, round(coefficient * (os.cpu_count() or 1)))
    constant = spec.integer("constant", 1)
    if constant < 0:
        raise ctx.error(spec.where("constant"), f"must be 1 or more, got {constant}")
    return constant or 1


# Go's time.ParseDuration units, in seconds.
_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
    "h": 3600.0,
}  # fmt: skip
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: str, field: str, source: str) -> float:
    """Seconds in a Go/Pachyderm duration such as "30s", "1m30s", "1.5h" or "500ms"."""
    text = value.strip()
    if text.startswith("-"):
        raise SpecError(f"{source}: {field}: {_short(value)} is negative; use a positive "
                        "duration such as '30s', or omit the field for no limit")
    text = text.removeprefix("+")
    if text == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise SpecError(
                f"{source}: {field}: {_short(value)} is not a duration; write a number with a "
                "unit (h, m, s, ms, us, ns), e.g. '30s', '1m30s' or '1.5h'"
            )
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not text:
        raise SpecError(f"{source}: {field}: empty duration; write e.g. '30s', or omit the field")
    return total


# --- transform --------------------------------------------------------------------------------


def _transform(raw: object, path: str, ctx: _Context) -> Transform:
    t = _Fields(raw, path, ctx, _TRANSFORM_FIELDS, _IGNORED_TRANSFORM, _REFUSED_TRANSFORM)
    cmd = t.strings("cmd", "cmd: [python3, /code/main.py]")
    if not cmd:
        raise ctx.error(
            t.where("cmd"),
            "required and must not be empty; pfsmount runs it directly (there is no container "
            "entrypoint to fall back on), e.g. cmd: [python3, /code/main.py]",
        )
    working_dir = t.string("working_dir") or None
    datum_batching = t.boolean("datum_batching")
    accepted = _accept_return_code(t)
    if accepted and datum_batching:
        ctx.warnings.append(
            f"{ctx.source}: {t.where('accept_return_code')} has no effect with datum_batching: "
            "there a process exit always ends the datum attempt, whatever its exit code"
        )
    return Transform(
        cmd=cmd,
        stdin=t.strings("stdin", "stdin: ['echo hello', 'ls /pfs']"),
        env=MappingProxyType(_env(t, ctx)),
        working_dir=working_dir,
        datum_batching=datum_batching,
        err_cmd=t.strings("err_cmd", "err_cmd: [sh]"),
        err_stdin=t.strings("err_stdin", "err_stdin: ['exit 0']"),
        accept_return_code=accepted,
    )


_DIGITS = re.compile(r"^[0-9]+$")


def _accept_return_code(t: _Fields) -> frozenset[int]:
    """Pachyderm's `repeated int64 accept_return_code`: a list of exit statuses (0..255).

    Decimal strings are accepted too: Pachyderm's JSON writes int64 values as strings, so a
    spec exported with `pachctl inspect pipeline --raw` holds ["1"].
    """
    raw = t.raw("accept_return_code")
    if raw is None:
        return frozenset()
    where = t.where("accept_return_code")
    if not isinstance(raw, list):
        example = f"[{raw}]" if isinstance(raw, int) and not isinstance(raw, bool) else "[1]"
        raise t.ctx.error(
            where, f"expected a list of exit codes, got {_describe(raw)}; write it as "
                   f"accept_return_code: {example}"
        )
    codes: set[int] = set()
    for i, item in enumerate(raw):
        if isinstance(item, str) and _DIGITS.fullmatch(item.strip()):
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int):
            raise t.ctx.error(f"{where}[{i}]",
                              f"expected an exit code (a whole number), got {_describe(item)}")
        if not 0 <= item <= 255:
            raise t.ctx.error(
                f"{where}[{i}]",
                f"{item} is not an exit code; a process exits with 0..255 (a signal is never "
                "success)",
            )
        codes.add(item)
    return frozenset(codes)


def _env(t: _Fields, ctx: _Context) -> dict[str, str]:
    raw = t.raw("env")
    if raw is None:
        return {}
    where = t.where("env")
    if not isinstance(raw, dict):
        raise ctx.error(where, f"expected a mapping of NAME: value, got {_describe(raw)}")
    env: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise ctx.error(
                where, f"{key!r} is not a valid variable name; use a string without '=' or NUL"
            )
        if not isinstance(value, str):
            raise ctx.error(
                f"{where}.{key}",
                f"expected a string, got {_describe(value)}; quote the value exactly as the "
                f'program should see it, e.g. {key}: "..."',
            )
        if "\x00" in value:
            raise ctx.error(f"{where}.{key}", "contains a NUL character, which no "
                                              "environment variable can hold; remove it")
        env[key] = value
    return env


# --- inputs -----------------------------------------------------------------------------------


def _input(raw: object, path: str, ctx: _Context) -> Input:
    if not isinstance(raw, dict):
        raise ctx.error(path, f"expected a mapping with one of {', '.join(_INPUT_KINDS)}, got "
                              f"{_describe(raw)}")
    node = _Fields(raw, path, ctx, frozenset(_INPUT_KINDS), refused=_REFUSED_INPUT)
    kinds = [k for k in _INPUT_KINDS if node.has(k)]
    if len(kinds) != 1:
        found = "none" if not kinds else " and ".join(repr(node.spelling[k]) for k in kinds)
        raise ctx.error(
            path,
            f"needs exactly one input kind ({', '.join(_INPUT_KINDS)}), found {found}; "
            "nest them instead, e.g. cross: [{pfs: ...}, {pfs: ...}]",
        )
    kind = kinds[0]
    where = node.where(kind)
    if kind == "pfs":
        return _pfs(node.raw(kind), where, ctx)
    children = _children(node.raw(kind), where, ctx, kind)
    builders: dict[str, Callable[[tuple[Input, ...]], Input]] = {
        "cross": CrossInput, "union": UnionInput, "join": JoinInput, "group": GroupInput,
    }  # fmt: skip
    return builders[kind](children)


def _children(raw: object, path: str, ctx: _Context, kind: str) -> tuple[Input, ...]:
    if not isinstance(raw, list):
        raise ctx.error(
            path, f"expected a list of inputs, got {_describe(raw)}; write {kind}: [{{pfs: ...}}, "
                  "{pfs: ...}]"
        )
    minimum = 2 if kind in ("cross", "join") else 1
    if len(raw) < minimum:
        fix = ("add another input, or use the single input directly without "
               f"{kind}") if raw else "add inputs to it"
        raise ctx.error(path, f"a {kind} needs at least {minimum} input"
                              f"{'s' if minimum > 1 else ''}, got {len(raw)}; {fix}")
    return tuple(_input(child, f"{path}[{i}]", ctx) for i, child in enumerate(raw))


def _pfs(raw: object, path: str, ctx: _Context) -> PfsInput:
    p = _Fields(raw, path, ctx, _PFS_FIELDS, _IGNORED_PFS, _REFUSED_PFS)
    repo = p.string("repo", required="name the repo (a directory under --data), e.g. repo: images")
    _check_name(repo, p.where("repo"), ctx, "repo")
    name = p.string("name") or repo
    if p.has("name"):
        _check_input_name(name, p.where("name"), ctx)
    else:
        _check_input_name(name, p.where("repo"), ctx)
    branch = p.string("branch") or "master"
    _check_name(branch, p.where("branch"), ctx, "branch")
    # As in Pachyderm, an input without a project reads a repo of the pipeline's project.
    project = p.string("project") or ctx.project
    _check_name(project, p.where("project"), ctx, "project")
    glob_text = p.string("glob", required="e.g. glob: '/*' (one datum per top-level entry)")
    try:
        glob = compile_glob(glob_text)
    except GlobError as exc:
        raise ctx.error(p.where("glob"), str(exc)) from None
    for key in ("join_on", "group_by"):
        _check_template(p, key, glob.pattern, glob.ngroups)
    return PfsInput(
        name=name,
        repo=repo,
        branch=branch,
        glob=glob.pattern,
        join_on=p.string("join_on"),
        outer_join=p.boolean("outer_join"),
        group_by=p.string("group_by"),
        lazy=p.boolean("lazy"),
        empty_files=p.boolean("empty_files"),
        project=project,
    )


def _check_input_name(name: str, where: str, ctx: _Context) -> None:
    if name in _RESERVED_INPUT_NAMES:
        raise ctx.error(
            where,
            f"{name!r} cannot be an input name: /pfs/{name} is reserved; set a different "
            "name with name: ...",
        )
    _check_name(name, where, ctx, "input")


def _check_template(p: _Fields, key: str, pattern: str, ngroups: int) -> None:
    template = p.string(key)
    missing = sorted(n for n in template_groups(template) if n > ngroups)
    if not missing:
        return
    has = f"has {ngroups} capture group{'s' if ngroups != 1 else ''}" if ngroups else \
        "has no capture groups"
    raise p.ctx.error(
        p.where(key),
        f"{template!r} refers to capture group ${missing[0]}, but the glob {pattern!r} {has}; "
        "put the part of the path you want in parentheses, e.g. glob: '/(*).txt' with "
        f"{key}: '$1'",
    )


def _check_names(node: Input, path: str, ctx: _Context) -> set[str]:
    """Input names must be unique, except that union branches may reuse a name."""
    if isinstance(node, PfsInput):
        return {node.name}
    child_names = [
        _check_names(child, f"{path}.{_kind(node)}[{i}]", ctx)
        for i, child in enumerate(node.children)
    ]
    if isinstance(node, UnionInput):
        return set().union(*child_names)
    seen: set[str] = set()
    for i, names in enumerate(child_names):
        clash = sorted(seen & names)
        if clash:
            raise ctx.error(
                f"{path}.{_kind(node)}[{i}]",
                f"input name {clash[0]!r} is used twice; give one of them a different name "
                "with name: ... (names must be unique except across union branches)",
            )
        seen |= names
    return seen


def _check_project_clashes(node: Input, path: str, ctx: _Context) -> None:
    """Same name, repo and branch in two projects: equal datum ids for different files.

    Pachyderm's datum id hashes the input's name, repo, branch and path but not the project,
    and union branches may share a name; pfsmount refuses the one case where ids would clash.
    """
    seen: dict[tuple[str, str, str], tuple[str, str]] = {}
    for where, pfs in _pfs_paths(node, path):
        key = (pfs.name, pfs.repo, pfs.branch)
        first = seen.setdefault(key, (pfs.project, where))
        if first[0] != pfs.project:
            raise ctx.error(
                where,
                f"input {pfs.name!r} reads repo {pfs.repo!r} of project {pfs.project!r}, and "
                f"{first[1]} reads repo {pfs.repo!r} of project {first[0]!r} under the same "
                "name; their datums would get equal ids (a datum id hashes the input's name, "
                "repo, branch and path, not its project): give one of them a different name "
                "with name: ...",
            )


def _pfs_paths(node: Input, path: str) -> Iterator[tuple[str, PfsInput]]:
    """Every pfs input with its field path, e.g. "input.union[1].pfs"."""
    if isinstance(node, PfsInput):
        yield f"{path}.pfs", node
        return
    for i, child in enumerate(node.children):
        yield from _pfs_paths(child, f"{path}.{_kind(node)}[{i}]")


def _kind(node: Input) -> str:
    return {CrossInput: "cross", UnionInput: "union", JoinInput: "join", GroupInput: "group"}[
        type(node)
    ]


def _warn_keys_outside(node: Input, ctx: _Context, path: str, in_join: bool,
                       in_group: bool) -> None:
    """Warn about join_on / group_by that no join / group will ever look at."""
    if isinstance(node, PfsInput):
        if node.join_on and not in_join:
            ctx.warnings.append(f"{ctx.source}: {path}.pfs.join_on has no effect outside a join")
        if node.group_by and not in_group:
            ctx.warnings.append(f"{ctx.source}: {path}.pfs.group_by has no effect outside a "
                                "group")
        return
    kind = _kind(node)
    for i, child in enumerate(node.children):
        _warn_keys_outside(child, ctx, f"{path}.{kind}[{i}]", in_join or kind == "join",
                           in_group or kind == "group")

"""Kubernetes manifests for one pipeline: an Indexed Job whose pods are the job's shards, and
a ConfigMap holding the spec (`pfsmount k8s render`). Pure: a raw spec document and options
in, manifests (plain dicts) out.

Decisions, each with its reason:
- **Pods are shards.** `completions` = `parallelism` = N (`--shards`, else Pachyderm's
  `parallelism_spec.constant`, which counts workers = pods); each pod runs
  `pfsmount run --shard auto/N`, its index from `JOB_COMPLETION_INDEX`, and its job name from
  the pod label `batch.kubernetes.io/job-name` (downward API), so all pods share one job id.
- **Datum failures are not retried by Kubernetes.** pfsmount already gave each datum
  `datum_tries` attempts inside the pod; exit 1 says "a datum failed" and fails the index
  (`FailIndex`). A crash (OOM, node loss, exit 137) is retried, up to
  `backoffLimitPerIndex` = `datum_tries` - 1 times per index, and the retry resumes. Exit 2 is
  a start-up error every pod would hit: it fails the whole Job (`FailJob`). Pods evicted or
  preempted (`DisruptionTarget`) are not counted (`Ignore`). `podReplacementPolicy: Failed`:
  a replacement starts only after its predecessor is gone, so two pods of one index never
  run at once (pfsmount's shard lock would refuse the second anyway).
- **FUSE spelled out.** `/dev/fuse` from the node (hostPath `CharDevice`, or a device
  plugin's resource with `--fuse-resource`), `CAP_SYS_ADMIN` (mount, and the namespaces
  pfsmount gives user code), AppArmor unconfined (its default profile denies mount).
- `terminationGracePeriodSeconds` leaves pfsmount time to stop user code (10 s grace) and
  commit what finished after the kubelet's SIGTERM.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pfsmount.spec import _snake

# The exit codes `pfsmount run` documents (cli.py, README "Exit codes").
EXIT_DATUM_FAILED = 1
EXIT_USAGE = 2
EXIT_JOB_TIMEOUT = 124
SPEC_DIR = "/etc/pfsmount"
SPEC_FILE = "pipeline.yaml"
CONTAINER = "pipeline"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
GRACE_SECONDS = 60


class RenderError(Exception):
    """The spec or options cannot become manifests; the message says what to change."""


@dataclass(frozen=True)
class RenderOptions:
    data: str  # s3://BUCKET[/PREFIX], or a directory on the ReadWriteMany volume `pvc`
    image: str | None = None  # default: transform.image
    shards: int | None = None  # default: parallelism_spec.constant
    workers: int = 1  # pfsmount workers per pod (--parallelism)
    name: str | None = None  # the Job's name; default: from the pipeline's name
    namespace: str | None = None
    pvc: str | None = None  # claim holding `data` when it is a directory
    env_secret: str | None = None  # a Secret whose keys all become env (AWS credentials...)
    fuse_resource: str | None = None  # a device plugin's resource for /dev/fuse
    extra_args: Sequence[str] = field(default_factory=tuple)


def k8s_name(text: str) -> str:
    """A DNS-1123 label from a pipeline name (`edges_v2` -> `edges-v2`), at most 52
    characters: a Job's pods add `-<index>-<random>` and must stay within 63."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:52].strip("-")
    if not name:
        raise RenderError(f"cannot make a Kubernetes name from {text!r}; pass --name")
    return name


def render(document: Mapping[str, Any], spec_text: str, opts: RenderOptions) -> list[dict]:
    """The ConfigMap and the Indexed Job for one pipeline spec `document` (snake_case keys,
    as `normalize` gives), whose text `spec_text` the ConfigMap holds."""
    pipeline = document.get("pipeline") or {}
    transform = document.get("transform") or {}
    name = k8s_name(opts.name or pipeline.get("name", ""))
    shards = opts.shards or _constant(document)
    image = opts.image or transform.get("image")
    if not image:
        raise RenderError("no image: pass --image IMAGE (the user code's image with pfsmount "
                          "added), or set transform.image in the spec")
    tries = int(document.get("datum_tries") or 3)
    labels = {"app.kubernetes.io/name": "pfsmount", "app.kubernetes.io/instance": name}
    meta: dict[str, Any] = {"name": f"{name}-spec", "labels": labels}
    if opts.namespace:
        meta["namespace"] = opts.namespace
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                  "data": {SPEC_FILE: spec_text}}
    job_meta = {**meta, "name": name}
    container = _container(document, transform, opts, image, shards)
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": f"{name}-spec"}},
    ]
    if not opts.fuse_resource:
        volumes.append({"name": "fuse", "hostPath": {"path": "/dev/fuse", "type": "CharDevice"}})
    if opts.pvc:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": opts.pvc}})
    volumes += _secret_volumes(transform)
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": job_meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": shards,
            "parallelism": shards,
            "backoffLimitPerIndex": max(tries - 1, 0),
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {
                    "containerName": CONTAINER, "operator": "In", "values": [EXIT_USAGE]}},
                {"action": "FailIndex", "onExitCodes": {
                    "containerName": CONTAINER, "operator": "In",
                    "values": [EXIT_DATUM_FAILED, EXIT_JOB_TIMEOUT]}},
                {"action": "Ignore", "onPodConditions": [
                    {"type": "DisruptionTarget", "status": "True"}]},
            ]},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    return [config_map, job]


def _constant(document: Mapping[str, Any]) -> int:
    spec = document.get("parallelism_spec") or {}
    if spec.get("coefficient"):
        raise RenderError("parallelism_spec.coefficient scales with the cluster's nodes, which "
                          "a rendered Job cannot know; pass --shards N")
    return max(int(spec.get("constant") or 1), 1)


def _container(document: Mapping[str, Any], transform: Mapping[str, Any],
               opts: RenderOptions, image: str, shards: int) -> dict[str, Any]:
    args = ["run", f"{SPEC_DIR}/{SPEC_FILE}", "--shard", f"auto/{shards}", "--data", opts.data,
            "--mountpoint", "/pfs", "--parallelism", str(opts.workers), *opts.extra_args]
    env: list[dict[str, Any]] = [
        # All pods of the Job share its name, and so one pfsmount job id.
        {"name": "PFSMOUNT_JOB", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.labels['{JOB_NAME_LABEL}']"}}},
    ]
    env += [{"name": k, "value": str(v)} for k, v in (transform.get("env") or {}).items()]
    for secret in transform.get("secrets") or []:
        if secret.get("env_var"):
            env.append({"name": secret["env_var"], "valueFrom": {"secretKeyRef": {
                "name": secret["name"], "key": secret["key"]}}})
    mounts: list[dict[str, Any]] = [
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
    ]
    if not opts.fuse_resource:
        mounts.append({"name": "fuse", "mountPath": "/dev/fuse"})
    if opts.pvc:
        mounts.append({"name": "data", "mountPath": opts.data})
    mounts += [{"name": v["name"], "mountPath": s["mount_path"], "readOnly": True}
               for s, v in zip(_mounted_secrets(transform), _secret_volumes(transform),
                               strict=True)]
    container: dict[str, Any] = {
        # pfsmount is the entrypoint of the user's image, as Pachyderm's worker binary is.
        "name": CONTAINER, "image": image, "command": ["pfsmount"], "args": args, "env": env,
        "volumeMounts": mounts,
        "securityContext": {
            "capabilities": {"add": ["SYS_ADMIN"]},
            "appArmorProfile": {"type": "Unconfined"},
        },
    }
    if opts.env_secret:
        container["envFrom"] = [{"secretRef": {"name": opts.env_secret}}]
    if transform.get("working_dir"):
        container["workingDir"] = transform["working_dir"]
    resources = _resources(document, opts)
    if resources:
        container["resources"] = resources
    return container


def _mounted_secrets(transform: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [s for s in transform.get("secrets") or [] if s.get("mount_path")]


def _secret_volumes(transform: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"name": f"secret-{i}", "secret": {"secretName": s["name"]}}
            for i, s in enumerate(_mounted_secrets(transform))]


def _resources(document: Mapping[str, Any], opts: RenderOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field_name, key in (("resource_requests", "requests"), ("resource_limits", "limits")):
        spec = document.get(field_name) or {}
        res: dict[str, str] = {}
        if spec.get("cpu") is not None:
            res["cpu"] = _quantity(spec["cpu"])
        if spec.get("memory") is not None:
            res["memory"] = _quantity(spec["memory"])
        if spec.get("disk") is not None:
            res["ephemeral-storage"] = _quantity(spec["disk"])
        gpu = spec.get("gpu") or {}
        if gpu.get("type") and gpu.get("number"):
            res[gpu["type"]] = str(gpu["number"])
        if res:
            out[key] = res
    if opts.fuse_resource:
        limits = out.setdefault("limits", {})
        limits[opts.fuse_resource] = "1"
    if "limits" in out:
        # Extended resources (GPUs, /dev/fuse plugins) must be requested as they are limited.
        requests = out.setdefault("requests", {})
        for res_name, value in out["limits"].items():
            if "/" in res_name:
                requests[res_name] = value
    return out


def _quantity(value: Any) -> str:
    """Pachyderm writes cpu as a number (0.5) and memory as "1G": Kubernetes quantities."""
    if isinstance(value, float):
        return f"{round(value * 1000)}m" if value < 1 or not value.is_integer() else str(
            int(value))
    return str(value)


def normalize(value: Any) -> Any:
    """A raw spec document with snake_case keys (Pachyderm accepts lowerCamelCase too), but
    the user's own keys (transform.env) untouched."""
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        snake = _snake(key) if isinstance(key, str) else key
        out[snake] = v if snake == "env" else normalize(v)
    return out


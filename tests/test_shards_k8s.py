"""`pfsmount k8s render`: every manifest it prints validates against Kubernetes' own schemas
(kubernetes-validate, strict), and the spec's fields land where Kubernetes reads them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pfsmount.k8s import RenderError, RenderOptions, k8s_name, normalize, render
from support import PY, ROOT, write_spec

K8S_VERSION = "1.33.0"  # backoffLimitPerIndex and podFailurePolicy's FailIndex are GA here

FULL = {
    "pipeline": {"name": "edges_v2"},
    "input": {"pfs": {"repo": "images", "glob": "/*"}},
    "transform": {
        "cmd": ["python3", "edges.py"], "image": "registry.example/edges:1.2",
        "working_dir": "/app", "datum_batching": True,
        "env": {"MODE": "fast", "camelKey": "kept"},
        "secrets": [{"name": "db", "env_var": "DB_PASSWORD", "key": "password"},
                    {"name": "certs", "mount_path": "/etc/certs"}],
    },
    "parallelismSpec": {"constant": 4},
    "resource_requests": {"cpu": 0.5, "memory": "1G", "disk": "10Gi"},
    "resource_limits": {"cpu": 2, "memory": "2G", "gpu": {"type": "nvidia.com/gpu",
                                                         "number": 1}},
    "datum_tries": 5,
}


def _validate(manifests: list[dict]) -> None:
    for manifest in manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def _render(doc: dict, **opts: object) -> tuple[dict, dict]:
    options = RenderOptions(**{"data": "s3://bucket/repos", **opts})  # type: ignore[arg-type]
    config_map, job = render(normalize(doc), yaml.safe_dump(doc), options)
    _validate([config_map, job])
    return config_map, job


def test_the_spec_fields_land_where_kubernetes_reads_them() -> None:
    config_map, job = _render(FULL)
    spec = job["spec"]
    assert job["metadata"]["name"] == "edges-v2"
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4  # parallelism_spec.constant
    assert spec["backoffLimitPerIndex"] == 4  # datum_tries 5: four retries of a crashed pod
    assert spec["podReplacementPolicy"] == "Failed"
    rules = {r["action"]: r for r in spec["podFailurePolicy"]["rules"]}
    assert rules["FailIndex"]["onExitCodes"]["values"] == [1, 124]
    assert rules["FailJob"]["onExitCodes"]["values"] == [2]
    assert rules["Ignore"]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    assert c["image"] == "registry.example/edges:1.2"
    assert c["command"] == ["pfsmount"]
    assert c["args"][:4] == ["run", "/etc/pfsmount/pipeline.yaml", "--shard", "auto/4"]
    assert c["workingDir"] == "/app"
    env = {e["name"]: e for e in c["env"]}
    assert env["PFSMOUNT_JOB"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    assert env["MODE"]["value"] == "fast" and env["camelKey"]["value"] == "kept"
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "password"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/certs"]]["secret"]["secretName"] == "certs"
    assert volumes[mounts["/dev/fuse"]]["hostPath"] == {"path": "/dev/fuse",
                                                       "type": "CharDevice"}
    assert volumes[mounts["/etc/pfsmount"]]["configMap"]["name"] == "edges-v2-spec"
    assert c["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]
    assert c["resources"] == {
        "requests": {"cpu": "500m", "memory": "1G", "ephemeral-storage": "10Gi",
                     "nvidia.com/gpu": "1"},
        "limits": {"cpu": "2", "memory": "2G", "nvidia.com/gpu": "1"}}
    assert yaml.safe_load(config_map["data"]["pipeline.yaml"]) == FULL


def test_shards_option_and_a_shared_volume_and_a_fuse_device_plugin() -> None:
    doc = {"pipeline": {"name": "wc"}, "input": {"pfs": {"repo": "in", "glob": "/*"}},
           "transform": {"cmd": ["sh"], "datum_batching": True}}
    _, job = _render(doc, data="/data", pvc="shared-data", image="me/wc:1", shards=7,
                     workers=2, namespace="jobs", env_secret="aws",
                     fuse_resource="smarter-devices/fuse")
    spec = job["spec"]
    assert spec["completions"] == spec["parallelism"] == 7
    assert spec["backoffLimitPerIndex"] == 2  # datum_tries defaults to 3
    assert job["metadata"]["namespace"] == "jobs"
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert "--parallelism" in c["args"] and c["args"][c["args"].index("--parallelism") + 1] == "2"
    assert {"name": "data", "mountPath": "/data"} in c["volumeMounts"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "shared-data"}} in \
        pod["volumes"]
    assert c["envFrom"] == [{"secretRef": {"name": "aws"}}]
    assert c["resources"]["limits"]["smarter-devices/fuse"] == "1"
    assert not any(v["name"] == "fuse" for v in pod["volumes"])


def test_what_cannot_be_rendered_is_refused_with_the_fix() -> None:
    doc = {"pipeline": {"name": "x"}, "input": {"pfs": {"repo": "in", "glob": "/*"}},
           "transform": {"cmd": ["sh"]}}
    with pytest.raises(RenderError, match="pass --image IMAGE"):
        render(doc, "", RenderOptions(data="s3://b"))
    with pytest.raises(RenderError, match=r"coefficient.*pass --shards N"):
        render({**doc, "parallelism_spec": {"coefficient": 1.0}}, "",
               RenderOptions(data="s3://b", image="i"))
    assert k8s_name("@proj/My_Pipe") == "proj-my-pipe"
    with pytest.raises(RenderError, match="pass --name"):
        k8s_name("___")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "pfsmount", "k8s", "render", *args], capture_output=True,
                          text=True, timeout=60)


def test_the_command_prints_valid_yaml_and_refuses_a_local_dir_without_a_volume(
        tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "p.yaml", {
        "pipeline": {"name": "wc"}, "input": {"pfs": {"repo": "in", "glob": "/*"}},
        "transform": {"cmd": ["sh"], "image": "me/wc:1", "working_dir": "/app"}})
    done = _cli(str(spec), "--data", "s3://b/p", "--shards", "3")
    assert done.returncode == 0, done.stderr
    manifests = list(yaml.safe_load_all(done.stdout))
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Job"]
    _validate(manifests)
    refused = _cli(str(spec), "--data", "data")
    assert refused.returncode == 2 and "--pvc CLAIM" in refused.stderr, refused.stderr
    bad = _cli(str(tmp_path / "missing.yaml"), "--data", "s3://b")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr


def test_the_deploy_example_is_what_render_prints() -> None:
    """deploy/kubernetes/ holds a generated example: regenerate it when render changes
    (the command is in its first lines)."""
    example = ROOT / "deploy" / "kubernetes" / "edges-job.yaml"
    text = example.read_text()
    command = next(line for line in text.splitlines() if line.startswith("#   pfsmount k8s"))
    args = command.split("pfsmount k8s render ", 1)[1].split()
    done = subprocess.run([PY, "-m", "pfsmount", "k8s", "render", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    generated = "\n".join(line for line in done.stdout.splitlines()
                          if not line.lstrip().startswith("#"))
    assert list(yaml.safe_load_all(body)) == list(yaml.safe_load_all(generated))
    _validate(list(yaml.safe_load_all(body)))

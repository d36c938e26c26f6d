"""`pfsmount k8s render`: the console side of `k8s.py` (read the spec, print manifests)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import yaml

from pfsmount.console import Console

EXIT_OK = 0
EXIT_USAGE = 2


def add_k8s_parser(sub: Any) -> None:
    k8s = sub.add_parser("k8s", help="Kubernetes manifests for a pipeline")
    k8s_sub = k8s.add_subparsers(dest="k8s_command", metavar="COMMAND", required=True)
    r = k8s_sub.add_parser(
        "render", help="print an Indexed Job (one pod per shard) and a ConfigMap holding the spec")
    r.add_argument("spec", help="pipeline spec file (one pipeline)")
    r.add_argument("--image", default=None,
                   help="the user code's image with pfsmount in it (default: transform.image)")
    r.add_argument("--data", required=True, metavar="s3://BUCKET[/PREFIX] | DIR",
                   help="where the repos live, as the pods see it: a bucket, or a directory "
                        "on the ReadWriteMany volume given with --pvc")
    r.add_argument("--shards", type=_count, default=None, metavar="N",
                   help="pods (shards) of the job (default: parallelism_spec.constant)")
    r.add_argument("--workers", type=_count, default=1, metavar="W",
                   help="pfsmount workers inside each pod (default 1)")
    r.add_argument("--name", default=None, help="the Job's name (default: the pipeline's)")
    r.add_argument("--namespace", default=None)
    r.add_argument("--pvc", default=None, metavar="CLAIM",
                   help="a ReadWriteMany PersistentVolumeClaim mounted at --data DIR")
    r.add_argument("--env-secret", default=None, metavar="SECRET",
                   help="a Secret whose keys become env vars (e.g. AWS_ACCESS_KEY_ID, "
                        "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)")
    r.add_argument("--fuse-resource", default=None, metavar="RESOURCE",
                   help="take /dev/fuse from this device plugin resource (e.g. "
                        "smarter-devices/fuse) instead of a hostPath")


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 100_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count from 1 to 100000")
    return int(text)


def cmd_k8s(args: argparse.Namespace, console: Console) -> int:
    from pfsmount.k8s import RenderError, RenderOptions, normalize, render
    from pfsmount.spec import SpecError, load_specs

    try:
        docs = load_specs([args.spec])  # every refusal of `pfsmount run`, before rendering
    except SpecError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    if len(docs) != 1:
        console.error(f"{args.spec} holds {len(docs)} pipelines; a Job runs one: put each in "
                      "a file of its own and render them one by one")
        return EXIT_USAGE
    data = args.data
    if not data.startswith("s3://") and (not os.path.isabs(data) or not args.pvc):
        console.error(f"--data {data}: the pods need the repos in a bucket (s3://BUCKET"
                      "[/PREFIX]) or on a shared volume: an absolute DIR with --pvc CLAIM, "
                      "a ReadWriteMany claim mounted there")
        return EXIT_USAGE
    with open(args.spec, encoding="utf-8") as f:
        text = f.read()
    raw = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    opts = RenderOptions(data=data, image=args.image, shards=args.shards, workers=args.workers,
                         name=args.name, namespace=args.namespace, pvc=args.pvc,
                         env_secret=args.env_secret, fuse_resource=args.fuse_resource)
    try:
        manifests = render(normalize(raw), text, opts)
    except RenderError as exc:
        console.error(str(exc))
        return EXIT_USAGE
    working_dir = docs[0].spec.transform.working_dir
    if not working_dir or not os.path.isabs(working_dir):
        # pfsmount starts user code relative to the spec's directory: the ConfigMap's mount.
        console.warn("transform.working_dir is not an absolute path, so in the pod user code "
                     "starts below the spec's directory (/etc/pfsmount); set it to where the "
                     "image keeps the code (its WORKDIR)")
    sys.stdout.write(dump(manifests))
    return EXIT_OK


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people and kubectl: no &anchors for shared dicts, multi-line strings
    (the spec in the ConfigMap) as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(manifests: list[dict]) -> str:
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, width=100)

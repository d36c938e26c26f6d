"""The bundled examples, run end to end at the real /pfs path in a private mount namespace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from support import ROOT, needs_fuse, read_tree, run_pfsmount

pytestmark = needs_fuse


def _copy_example(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(ROOT / "examples" / name, dest,
                    ignore=shutil.ignore_patterns(".pfsmount", "wordcount", "sentiment"))
    return dest


def test_shell_example_with_pachctl_next_datum(tmp_path: Path) -> None:
    ex = _copy_example("shell-wordcount", tmp_path)
    result = run_pfsmount(ex / "pipeline.yaml", ex / "data", "/pfs", namespace=True)
    assert result.returncode == 0, result
    assert "transform.image" in result.stderr  # the Kubernetes-only field was warned about
    out = read_tree(ex / "data" / "wordcount")
    assert out == {
        "raven.txt.count": b"21\n",
        "sonnet18.txt.count": b"33\n",
        "ozymandias.txt.count": b"21\n",
    }
    assert "sonnet18.txt: 33 words" in result.stdout


def test_python_example_loads_its_model_once(tmp_path: Path) -> None:
    ex = _copy_example("python-sentiment", tmp_path)
    result = run_pfsmount(ex / "pipeline.yaml", ex / "data", "/pfs", namespace=True)
    assert result.returncode == 0, result
    out = read_tree(ex / "data" / "sentiment")
    assert sorted(out) == [
        "2024/phone.json", "2024/router.json",
        "2025/headphones.json", "2025/keyboard.json", "2025/tablet.json",
    ]
    phone = json.loads(out["2024/phone.json"])
    router = json.loads(out["2024/router.json"])
    assert phone["score"] > 0 > router["score"]
    assert len({json.loads(v)["datum"] for v in out.values()}) == 5
    assert "5 datums processed, 0 failed" in result.stderr
    assert result.stdout.count("model loaded") == 1  # one process served every datum

"""`pfsmount run --parallelism N`: refused unless N is a number of workers."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_parallelism_must_be_one_or_more(value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pfsmount", "run", "p.yaml", "--parallelism", value],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert f"{value!r} is not a number of workers: use 1 or more" in result.stderr

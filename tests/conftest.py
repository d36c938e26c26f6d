from __future__ import annotations

from pathlib import Path

import pytest

from support import is_mounted, unmount


@pytest.fixture
def mnt(tmp_path: Path):
    """A private mountpoint that is unmounted even when the test fails."""
    path = tmp_path / "pfs"
    yield path
    if is_mounted(path):
        unmount(path)

from __future__ import annotations

from pathlib import Path

import pytest

from support import is_mounted, unmount

# The S3 server fixture (issue 15), session-scoped: one weed for the whole run.
pytest_plugins = ["s3server"]


@pytest.fixture
def mnt(tmp_path: Path):
    """A private mountpoint that is unmounted even when the test fails."""
    path = tmp_path / "pfs"
    yield path
    if is_mounted(path):
        unmount(path)

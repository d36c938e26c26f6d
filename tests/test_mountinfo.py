"""mountinfo.fstype: mount points as bytes, octal escapes, non-UTF-8 lines elsewhere."""

from __future__ import annotations

from pathlib import Path

from pfsmount import mountinfo


def _line(n: int, point: bytes, kind: bytes) -> bytes:
    return b"%d 1 0:%d / %s rw,relatime shared:1 - %s src rw\n" % (n, n, point, kind)


def test_fstype_reads_escaped_and_non_utf8_mount_points(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_bytes(
        _line(1, b"/", b"ext4")
        + _line(2, b"/data/caf\xe9", b"tmpfs")  # not UTF-8: must not break the others
        + _line(3, b"/mnt/with\\040space", b"fuse.pfsmount")
        + _line(4, "/mnt/ü".encode(), b"fuse.pfsmount")
        + _line(5, b"/stacked", b"tmpfs")
        + _line(6, b"/stacked", b"fuse.pfsmount")
    )
    src = str(table)
    assert mountinfo.fstype("/mnt/with space", src) == "fuse.pfsmount"
    assert mountinfo.fstype(b"/data/caf\xe9", src) == "tmpfs"
    assert mountinfo.fstype("/mnt/ü", src) == "fuse.pfsmount"
    assert mountinfo.fstype("/stacked", src) == "fuse.pfsmount"  # the top-most mount counts
    assert mountinfo.fstype("/mnt", src) is None


def test_fstype_on_this_machine_sees_root() -> None:
    assert mountinfo.fstype("/") is not None

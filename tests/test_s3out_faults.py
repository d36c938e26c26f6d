"""S3 output faults (issue 15): an output repo that cannot be written is refused with one
clear line before anything mounts or is recorded."""

from __future__ import annotations

import http.client
import http.server
import os
import subprocess
import threading
from pathlib import Path

from s3server import S3Server
from support import PY, batching_spec, write_spec

DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
          b"<Message>Access Denied</Message></Error>")


class ReadOnlyProxy(http.server.ThreadingHTTPServer):
    """Forwards reads to the S3 server and answers every write 403 AccessDenied, as a
    bucket policy granting only s3:GetObject and s3:ListBucket would."""

    def __init__(self, upstream_port: int) -> None:
        upstream = upstream_port

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command in ("PUT", "POST", "DELETE"):
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(DENIED)))
                    self.end_headers()
                    self.wfile.write(DENIED)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=30)
                # The Host header stays as signed: the request's SigV4 signature covers it.
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for name, value in self.headers.items():
                    conn.putheader(name, value)
                conn.endheaders(body)
                reply = conn.getresponse()
                data = reply.read()
                self.send_response(reply.status)
                for name, value in reply.getheaders():
                    if name.lower() not in ("content-length", "transfer-encoding",
                                            "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_s3out_unwritable_output_bucket_is_one_line_before_mounting(
        tmp_path: Path, s3server: S3Server) -> None:
    url = s3server.bucket("s3out-denied", {"in/a": b"a"})
    proxy = ReadOnlyProxy(int(s3server.endpoint.rsplit(":", 1)[1]))
    spec = write_spec(tmp_path / "p.yaml", batching_spec("p", {"pfs": {"repo": "in",
                                                                        "glob": "/*"}},
                                                         ["true"]))
    never = tmp_path / "never"
    try:
        proc = subprocess.run(
            [PY, "-m", "pfsmount", "run", str(spec), "--data", url, "--mountpoint", str(never),
             "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, **s3server.env(proxy.endpoint)})
    finally:
        proxy.shutdown()
    assert proc.returncode == 2, proc
    err = proc.stderr
    assert "the output repo cannot be written at s3://s3out-denied/.pfsmount/p/probe/" in err, err
    assert "access denied" in err and "s3:PutObject" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not never.exists() or not os.listdir(never)
    # Nothing was recorded: no job, nothing in the bucket.
    listed = s3server.client.list_objects_v2(Bucket="s3out-denied")  # type: ignore[attr-defined]
    assert [o["Key"] for o in listed["Contents"]] == ["in/a"], listed

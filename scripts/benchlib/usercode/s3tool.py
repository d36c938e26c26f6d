"""S3 helpers of the benchmark's s3 section, run by .venv's Python (they need obstore/boto3).

- `upload BUCKET BIG_BYTES SMALL_N SMALL_BYTES`: a bucket holding big/blob and small/NNNN,
  and for the cache rows model/weights (64 MiB) and items/N (8 tiny objects).
- `floor BUCKET KEY`: read one object with plain parallel 8 MiB ranged GETs (the floor).
- `floor-small BUCKET PREFIX`: list a prefix and GET every object, 16 in parallel.
- `read MODE ...` (under pfsmount run): `seq PATH`, `walk DIR`, `at PATH OFFSET SIZE`,
  `chunks DIR` (with BENCH_DIRECT: every file below DIR in chunk order);
  `shared PATH` and `datums DIR WORK_SECONDS` record every datum (a list of records).

Endpoint and credentials come from the standard AWS env vars. Each writes one JSON object to
$BENCH_RESULT.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

MIB = 1 << 20
PART = 8 * MIB
THREADS = 16
SHARED_BYTES = 64 * MIB
ITEMS = 8


def _store(bucket: str):  # type: ignore[no-untyped-def]
    from obstore.store import S3Store

    return S3Store(bucket, endpoint=os.environ["AWS_ENDPOINT_URL"],
                   region=os.environ.get("AWS_REGION", "us-east-1"),
                   access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                   secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                   client_options={"allow_http": True})


def _write(result: dict | list) -> None:
    with open(os.environ["BENCH_RESULT"], "w") as f:
        json.dump(result, f)


def upload(bucket: str, big: int, n: int, size: int) -> None:
    import boto3
    import obstore

    client = boto3.client("s3")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    store = _store(bucket)
    block = os.urandom(MIB)
    obstore.put(store, "big/blob", block * (big // MIB) + block[:big % MIB],
                chunk_size=PART, max_concurrency=THREADS)
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda i: obstore.put(store, f"small/{i // 100:02d}/{i:05d}",
                                            os.urandom(size)), range(n)))
    obstore.put(store, "model/weights", os.urandom(MIB) * (SHARED_BYTES // MIB),
                chunk_size=PART, max_concurrency=THREADS)
    for i in range(ITEMS):
        obstore.put(store, f"items/{i}", b"item %d" % i)
    _write({"uploaded": True})


def floor(bucket: str, key: str) -> None:
    import obstore

    store = _store(bucket)
    t0 = time.perf_counter()
    size = obstore.head(store, key)["size"]
    with ThreadPoolExecutor(THREADS) as pool:
        got = sum(pool.map(lambda off: len(obstore.get_range(
            store, key, start=off, end=min(off + PART, size))), range(0, size, PART)))
    _write({"bytes": got, "seconds": time.perf_counter() - t0})


def floor_small(bucket: str, prefix: str) -> None:
    import obstore

    store = _store(bucket)
    t0 = time.perf_counter()
    keys = [o["path"] for batch in obstore.list(store, prefix=prefix) for o in batch]
    with ThreadPoolExecutor(THREADS) as pool:
        got = sum(pool.map(lambda k: len(obstore.get(store, k).bytes()), keys))
    _write({"files": len(keys), "bytes": got, "seconds": time.perf_counter() - t0})


def read(mode: str, args: list[str]) -> None:
    if os.environ.get("BENCH_DIRECT"):
        datums: object = [None]  # another FUSE client's mount: read once, no datums
    else:
        from pfsmount import iter_datums

        datums = iter_datums()
    if mode in ("shared", "datums"):
        _read_datums(mode, args, datums)
        return
    for _ in datums:  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        total = files = 0
        if mode == "seq":
            with open(args[0], "rb", buffering=0) as f:
                while chunk := f.read(MIB):
                    total += len(chunk)
            files = 1
        elif mode == "walk":
            for dirpath, _dirs, names in os.walk(args[0]):
                for name in names:
                    with open(os.path.join(dirpath, name), "rb") as f:
                        total += len(f.read())
                    files += 1
        elif mode == "chunks":  # pfsmount's --cache-dir read directly: the floor of a re-read
            chunks = [os.path.join(d, n) for d, _dirs, names in os.walk(args[0]) for n in names]
            chunks.sort(key=lambda p: (p.rsplit(".", 1)[0], int(p.rsplit(".", 1)[1])))
            for path in chunks:
                with open(path, "rb", buffering=0) as f:
                    while chunk := f.read(MIB):
                        total += len(chunk)
            files = len(chunks)
        elif mode == "at":
            with open(args[0], "rb", buffering=0) as f:
                f.seek(int(args[1]))
                total = len(f.read(int(args[2])))
            files = 1
        _write({"bytes": total, "files": files, "seconds": time.perf_counter() - t0})


def _read_datums(mode: str, args: list[str], datums: object) -> None:
    """Per datum: `shared` reads one file whole; `datums` "works" WORK_SECONDS (while pfsmount
    may fetch the next datum's files), then walks and reads DIR."""
    records = []
    for _ in datums:  # type: ignore[attr-defined]
        if mode == "datums":
            time.sleep(float(args[1]))
        t0 = time.perf_counter()
        total = files = 0
        if mode == "shared":
            with open(args[0], "rb", buffering=0) as f:
                while chunk := f.read(MIB):
                    total += len(chunk)
            files = 1
        else:
            for dirpath, _dirs, names in os.walk(args[0]):
                for name in names:
                    with open(os.path.join(dirpath, name), "rb") as f:
                        total += len(f.read())
                    files += 1
        records.append({"bytes": total, "files": files, "seconds": time.perf_counter() - t0})
        _write(records)


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "upload":
        upload(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "floor":
        floor(args[0], args[1])
    elif cmd == "floor-small":
        floor_small(args[0], args[1])
    elif cmd == "read":
        read(args[0], args[1:])
    else:
        sys.exit(f"s3tool: unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])

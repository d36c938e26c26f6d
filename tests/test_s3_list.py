"""The ListObjectsV2 pages pfsmount parses itself equal botocore's, against the real server."""

from __future__ import annotations

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

from pfsmount.store.s3list import PageLister
from s3server import S3Server
from test_s3_faults import FlakyProxy

ODD = ["r/plain", "r/with space", "r/plus+sign", "r/per%cent", "r/amp&lt<gt>", "r/ünï/cödé",
       "r/dir/", "r/dir/a", "r/dir/b/c", "r/a.txt", "r/a b", "r/a/x"]


def _lister(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> PageLister:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = botocore.config.Config(retries={"max_attempts": 4, "mode": "standard"})
    return PageLister(boto3.session.Session(), config, 4)


def _botocore(s3server: S3Server, bucket: str, prefix: str, delimiter: str | None) -> list:
    args = {"Bucket": bucket, "Prefix": prefix, **({"Delimiter": delimiter} if delimiter else {})}
    pages = s3server.client.get_paginator("list_objects_v2").paginate(**args)  # type: ignore[attr-defined]
    return [([(o["Key"], o["Size"], o["ETag"], o["LastModified"]) for o in p.get("Contents", ())],
             [c["Prefix"] for c in p.get("CommonPrefixes", ())]) for p in pages]


def _ours(lister: PageLister, bucket: str, prefix: str, delimiter: str | None) -> list:
    return [([(o["Key"], o["Size"], o["ETag"], o["LastModified"]) for o in p["Contents"]],
             [c["Prefix"] for c in p["CommonPrefixes"]])
            for p in lister.pages(bucket, prefix, delimiter)]


def test_pages_equal_botocores_for_odd_keys_and_many_pages(
        s3server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {k: k.encode() * (i + 1) for i, k in enumerate(ODD)}
    files.update({f"big/{i:05d}": b"" for i in range(1100)})  # more than one page of 1,000
    s3server.bucket("listing", files)
    lister = _lister(monkeypatch, s3server.env())
    for prefix, delimiter in (("r/", None), ("r/", "/"), ("r/dir/", "/"), ("big/", "/")):
        assert _ours(lister, "listing", prefix, delimiter) == \
            _botocore(s3server, "listing", prefix, delimiter), (prefix, delimiter)
    assert len(list(lister.pages("listing", "big/"))) == 2


def test_throttling_is_retried_and_errors_keep_botocores_codes(
        s3server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    s3server.bucket("listing-faults", {"r/a": b"a"})
    proxy = FlakyProxy(int(s3server.endpoint.rsplit(":", 1)[1]))
    lister = _lister(monkeypatch, s3server.env(proxy.endpoint))
    proxy.fail = 2
    (page,) = lister.pages("listing-faults", "r/")
    assert [o["Key"] for o in page["Contents"]] == ["r/a"] and proxy.failed == 2
    with pytest.raises(ClientError) as missing:
        list(lister.pages("no-such-bucket-here", "r/"))
    assert missing.value.response["Error"]["Code"] == "NoSuchBucket"
    proxy.fail = 1000  # only new connections fail: a fresh lister has none pooled
    with pytest.raises(ClientError) as throttled:
        list(_lister(monkeypatch, s3server.env(proxy.endpoint)).pages("listing-faults", "r/"))
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503

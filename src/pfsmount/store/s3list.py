"""ListObjectsV2 pages without botocore's response parser.

botocore turns each listed object into a dict through its generic shape parser, at ~150 µs an
object here: a flat prefix of 100,000 objects took 16.5 s to list, 2.8 s when the same
requests are signed by botocore (a presigned URL: credentials, session tokens and SigV4 stay
botocore's) and the XML is read with ElementTree. Pages come out shaped like botocore's, so
callers keep one way of reading them; errors come out as botocore's exceptions, so the
messages that explain them stay the same.
"""

from __future__ import annotations

import logging
import random
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

log = logging.getLogger(__name__)

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
ATTEMPTS = 4  # like the botocore client's retry config: 5xx and throttling back off
_RETRY_STATUS = {429, 500, 502, 503, 504}


class PageLister:
    """Signs ListObjectsV2 requests with a botocore client and parses the XML itself."""

    def __init__(self, session: Any, config: Any, pool_size: int) -> None:
        import urllib3

        # A presigned URL carries the SigV4 signature (and any session token) in its query.
        self._signer = session.client("s3", config=config.merge(
            type(config)(signature_version="s3v4")))
        self._http = urllib3.PoolManager(maxsize=pool_size, retries=False,
                                         timeout=urllib3.Timeout(connect=5, read=30))

    def pages(self, bucket: str, prefix: str, delimiter: str | None = None
              ) -> Iterator[dict[str, Any]]:
        """Every page of `prefix`, as botocore's paginator would give it."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if delimiter:
                params["Delimiter"] = delimiter
            if token:
                params["ContinuationToken"] = token
            root = self._get(params)
            yield _page(root)
            if root.findtext(_NS + "IsTruncated") != "true":
                return
            token = root.findtext(_NS + "NextContinuationToken")
            if not token:
                return

    def _get(self, params: dict[str, Any]) -> ET.Element:
        from botocore import exceptions as bex

        for attempt in range(ATTEMPTS):
            url = self._signer.generate_presigned_url("list_objects_v2", Params=params,
                                                      ExpiresIn=900)
            try:
                response = self._http.request("GET", url, preload_content=True)
            except Exception as exc:  # urllib3's connection errors, in botocore's words
                if attempt + 1 < ATTEMPTS:
                    _back_off(attempt)
                    continue
                raise bex.EndpointConnectionError(endpoint_url=url.split("?")[0],
                                                  error=exc) from None
            if response.status == 200:
                return ET.fromstring(response.data)
            if response.status in _RETRY_STATUS and attempt + 1 < ATTEMPTS:
                log.debug("listing %s: HTTP %d, retrying", params["Prefix"], response.status)
                _back_off(attempt)
                continue
            raise _client_error(response.status, response.data)
        raise AssertionError("unreachable")


def _page(root: ET.Element) -> dict[str, Any]:
    # encoding-type=url (botocore asks for it) form-encodes keys and prefixes (space as +).
    contents = [{"Key": unquote_plus(el.findtext(_NS + "Key") or ""),
                 "Size": int(el.findtext(_NS + "Size") or 0),
                 "ETag": el.findtext(_NS + "ETag") or "",
                 "LastModified": _when(el.findtext(_NS + "LastModified") or "")}
                for el in root.iter(_NS + "Contents")]
    prefixes = [{"Prefix": unquote_plus(el.findtext(_NS + "Prefix") or "")}
                for el in root.iter(_NS + "CommonPrefixes")]
    return {"Contents": contents, "CommonPrefixes": prefixes}


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _client_error(status: int, body: bytes) -> Exception:
    from botocore import exceptions as bex

    code, message = str(status), ""
    try:
        root = ET.fromstring(body)
        code = root.findtext("Code") or code
        message = root.findtext("Message") or ""
    except ET.ParseError:
        pass
    return bex.ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "ListObjectsV2")


def _back_off(attempt: int) -> None:
    time.sleep(min(2.0, 0.1 * 2 ** attempt) * (0.5 + random.random()))

"""Where input bytes live: a local directory of repos, or an S3 bucket prefix of them.

`open_repo` picks the store from the data location: `s3://BUCKET[/PREFIX]` is a bucket,
anything else a local directory. Both return a `RepoSource` (see store/base.py): a local
directory or an S3 prefix is streamed (`LocalRepo`, `S3Stream`: listed in the same order while
datums are produced).
"""

from __future__ import annotations

from pfsmount.store.base import RepoSource
from pfsmount.store.local import DEFAULT_PROJECT

__all__ = ["is_remote", "open_repo"]

S3_SCHEME = "s3://"


def is_remote(data: str) -> bool:
    """True for a data location in object storage (its repos are not local directories)."""
    return data.startswith(S3_SCHEME)


def open_repo(data: str, repo: str, project: str = DEFAULT_PROJECT) -> RepoSource:
    """Open repo `repo` of `project` at the data location `data`; `StoreError` if unusable."""
    if is_remote(data):
        # Imported here: the S3 clients cost ~0.3 s to import, and local runs never need them.
        from pfsmount.store import s3

        return s3.bucket_for(data).open_stream(repo, project)
    from pfsmount.store import local

    return local.open_stream(data, repo, project)

"""`S3OutputRepo` without a mount (issue 15): conflicts as in the local output repo, and the
conditional PUT that keeps a second writer from overwriting a datum's commit record."""

from __future__ import annotations

from pathlib import Path

import pytest

from pfsmount.ledger import Ledger
from pfsmount.output import OutputConflict
from pfsmount.s3output import S3OutputRepo
from s3server import S3Server
from test_s3out_run import s3out_tree


def _repo(root: Path, url: str) -> S3OutputRepo:
    root.mkdir(parents=True)
    repo = S3OutputRepo(str(root), "p", Ledger(str(root / "ledger.sqlite")), location=url)
    repo.recover()
    repo.clear_staging()
    repo.load_index()
    repo.job_id = "job-" + root.name
    repo.register_later([(d, "", "[]", "pending") for d in ("d1", "d2")])
    return repo


def _stage(repo: S3OutputRepo, datum: str, files: dict[str, bytes]) -> None:
    staging = Path(repo.new_staging())
    for name, body in files.items():
        (staging / name).write_bytes(body)
    repo.stage_success(datum, str(staging), attempts=1, seconds=0.1)


def test_s3out_repo_conflicts_and_a_second_writer(tmp_path: Path, s3server: S3Server,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3server.env().items():
        monkeypatch.setenv(name, value)
    url = s3server.bucket("s3out-unit", {"in/x": b"x"})
    a = _repo(tmp_path / "a", url)
    _stage(a, "d1", {"f": b"one", "g": b"gee"})
    assert a.flush() == []
    assert s3out_tree(s3server, "s3out-unit", "p/") == {"f": b"one", "g": b"gee"}
    # Another datum writing a committed path is refused before anything is queued.
    with pytest.raises(OutputConflict, match="was written by datum d1 and datum d2"):
        _stage(a, "d2", {"f": b"two"})
    # A second writer whose view of the records is stale: its record for d1 would take a
    # sequence number the first writer has used meanwhile; the conditional PUT refuses it.
    b = _repo(tmp_path / "b", url)
    _stage(a, "d1", {"f": b"one again"})
    assert a.flush() == []
    _stage(b, "d1", {"f": b"stale"})
    failures = b.flush()
    assert len(failures) == 1 and failures[0][0] == "d1", failures
    assert "written by someone else meanwhile" in failures[0][1], failures
    # d1's newest commit stands: "g" is no longer an output of it, "f" is the new content.
    assert s3out_tree(s3server, "s3out-unit", "p/") == {"f": b"one again"}
    commits = s3out_tree(s3server, "s3out-unit", ".pfsmount/p/commits/")
    assert sorted(commits) == ["d1/000000000001.json"], sorted(commits)
    assert not s3out_tree(s3server, "s3out-unit", ".pfsmount/p/blobs/")


def test_s3out_repo_mirror_fetches_only_records_it_has_not_seen(
        tmp_path: Path, s3server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3server.env().items():
        monkeypatch.setenv(name, value)
    url = s3server.bucket("s3out-cache", {"in/x": b"x"})
    a = _repo(tmp_path / "a", url)
    _stage(a, "d1", {"f": b"one"})
    _stage(a, "d2", {"g": b"two"})
    assert a.flush() == []
    gets: list[str] = []
    real_get = a.bucket.get
    monkeypatch.setattr(a.bucket, "get", lambda key: gets.append(key) or real_get(key))
    a.records.mirror(a.ledger)
    assert not [k for k in gets if "/commits/" in k], gets  # its own commits are cached
    # A record deleted and written again under the same key (a datum forgotten, then back)
    # is fetched again: the cache is good for one ETag only.
    key = ".pfsmount/p/commits/d1/000000000000.json"
    body = s3server.client.get_object(Bucket="s3out-cache", Key=key)["Body"].read()  # type: ignore[attr-defined]
    s3server.client.put_object(Bucket="s3out-cache", Key=key,  # type: ignore[attr-defined]
                               Body=body.replace(b'"attempts": 1', b'"attempts": 7'))
    a.records.mirror(a.ledger)
    assert [k for k in gets if "/commits/" in k] == [key], gets

"""The object store on a local directory and on a real S3 server (moto)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cloudcontainer.config import Settings
from cloudcontainer.storage import ObjectMissing, ObjectStorage, StorageError, open_storage
from tests.support.s3 import S3Server


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStorage:
    if request.param == "local":
        return open_storage(Settings(data_dir=tmp_path / "data"))
    s3: S3Server = request.getfixturevalue("s3")
    bucket: str = request.getfixturevalue("s3_bucket")
    return open_storage(Settings(data_dir=tmp_path / "data", **s3.settings(bucket)))  # type: ignore[arg-type]


async def test_blobs_are_named_by_their_hash(storage: ObjectStorage) -> None:
    await storage.check()
    sha = await storage.put_blob("p1", b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    assert await storage.has_blob("p1", sha)
    assert not await storage.has_blob("p2", sha)  # prefixes are separate owners
    assert await storage.get_blob("p1", sha) == b"hello"
    assert await storage.put_blob("p1", b"hello") == sha  # idempotent
    other = await storage.put_blob("p1", b"")
    assert await storage.list_blobs("p1") == {sha, other}
    await storage.delete_blob("p1", sha)
    assert not await storage.has_blob("p1", sha)
    await storage.delete_blob("p1", sha)  # deleting a missing blob is fine
    with pytest.raises(ObjectMissing):
        await storage.get_blob("p1", sha)


async def test_named_objects_and_prefix_delete(storage: ObjectStorage) -> None:
    await storage.put_object("projects/a/snapshots/1.json", b"{}")
    await storage.put_blob("projects/a", b"x")
    await storage.put_object("projects/ab/snapshots/1.json", b"[]")
    assert await storage.get_object("projects/a/snapshots/1.json") == b"{}"
    assert await storage.delete_prefix("projects/a") == 2
    with pytest.raises(ObjectMissing):
        await storage.get_object("projects/a/snapshots/1.json")
    # A sibling whose name starts the same is not under the prefix.
    assert await storage.get_object("projects/ab/snapshots/1.json") == b"[]"


async def test_bad_names_are_refused(storage: ObjectStorage) -> None:
    for name in ("../x", "a//b", "/abs", "a/./b", ""):
        with pytest.raises(ValueError, match="not an object name"):
            await storage.put_object(name, b"")
    with pytest.raises(ValueError, match="SHA-256"):
        await storage.has_blob("p", "ABC")


async def test_an_unreachable_or_missing_bucket_is_a_storage_error(
    s3: S3Server, tmp_path: Path
) -> None:
    missing = open_storage(Settings(data_dir=tmp_path, **s3.settings("no-such-bucket")))  # type: ignore[arg-type]
    with pytest.raises(StorageError) as caught:
        await missing.put_blob("p", b"x")
    assert caught.value.code == "storage_unavailable"
    assert "Object storage failed" in caught.value.message
    closed = Settings(
        data_dir=tmp_path,
        **{**s3.settings("b"), "storage_endpoint": "http://127.0.0.1:9"},  # type: ignore[arg-type]
    )
    with pytest.raises(StorageError):
        await open_storage(closed).check()


def test_storage_url_must_be_known(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="storage_url"):
        open_storage(Settings(data_dir=tmp_path, storage_url="ftp://x"))

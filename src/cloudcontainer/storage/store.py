"""A small blob store on obstore.

Blobs are named by the SHA-256 of their bytes under a caller's prefix (`<prefix>/blobs/ab/cdef…`),
so storing the same content twice costs nothing and a blob never changes once written. Named
objects (manifests) live beside them under names the caller chooses. The store knows nothing of
containers or projects: callers pick prefixes so that deleting one prefix forgets one owner.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
import structlog
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import LocalStore, ObjectStore, S3Store

from cloudcontainer.config import Settings
from cloudcontainer.errors import Unavailable

__all__ = ["ObjectMissing", "ObjectStorage", "StorageError", "open_storage"]

log = structlog.get_logger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
PROBE = "_cloudcontainer/probe"


class ObjectMissing(LookupError):
    """The object or blob is not in the store."""


class StorageError(Unavailable):
    """The object store failed or cannot be reached (503 storage_unavailable)."""

    def __init__(self, message: str, *, code: str = "storage_unavailable") -> None:
        super().__init__(message, code=code)


def _check_name(name: str) -> str:
    if not _NAME.match(name) or any(part in (".", "..") for part in name.split("/")):
        raise ValueError(f"not an object name: {name!r}")
    return name


def blob_key(prefix: str, sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"not a SHA-256: {sha256!r}")
    return f"{_check_name(prefix)}/blobs/{sha256[:2]}/{sha256[2:]}"


def _failure(what: str, exc: BaseException) -> StorageError:
    # obstore errors carry multi-line debug text; the first line says what happened.
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StorageError(f"Object storage failed to {what}: {detail}")


class ObjectStorage:
    """Blobs by SHA-256 and named objects; every failure is a StorageError (never a 500)."""

    def __init__(self, store: ObjectStore, description: str) -> None:
        self.store = store
        self.description = description

    # -- blobs -----------------------------------------------------------------------------

    async def put_blob(self, prefix: str, data: bytes, *, check: bool = True) -> str:
        """Store `data` and return its SHA-256. With `check`, a blob already stored is not
        sent again (one HEAD); without, it is simply written again (same name, same bytes),
        which is cheaper for small blobs."""
        sha256 = hashlib.sha256(data).hexdigest()
        if not check or not await self.has_blob(prefix, sha256):
            await self._put(blob_key(prefix, sha256), data)
        return sha256

    async def get_blob(self, prefix: str, sha256: str) -> bytes:
        """The blob's bytes; ObjectMissing when it is not stored."""
        data = await self._get(blob_key(prefix, sha256))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StorageError(
                f"Blob {sha256} is corrupt in the object store.", code="blob_corrupt"
            )
        return data

    async def has_blob(self, prefix: str, sha256: str) -> bool:
        return await self._exists(blob_key(prefix, sha256))

    async def delete_blob(self, prefix: str, sha256: str) -> None:
        await self._delete(blob_key(prefix, sha256))

    async def list_blobs(self, prefix: str) -> set[str]:
        """The SHA-256 of every blob under `prefix`."""
        base = f"{_check_name(prefix)}/blobs/"
        return {key[len(base) :].replace("/", "") for key in await self._list(base)}

    # -- named objects ---------------------------------------------------------------------

    async def put_object(self, name: str, data: bytes) -> None:
        await self._put(_check_name(name), data)

    async def get_object(self, name: str) -> bytes:
        return await self._get(_check_name(name))

    async def delete_object(self, name: str) -> None:
        await self._delete(_check_name(name))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix/` (blobs and named objects); returns how many."""
        keys = await self._list(_check_name(prefix) + "/")
        for key in keys:
            await self._delete(key)
        return len(keys)

    async def check(self) -> None:
        """Raise StorageError unless the store answers: a listing of an empty prefix (a HEAD
        would not do: S3 answers 404 for a missing key and for a missing bucket alike)."""
        await self._list(PROBE + "/")

    # -- obstore calls, errors translated --------------------------------------------------

    async def _put(self, key: str, data: bytes) -> None:
        try:
            await obstore.put_async(self.store, key, data)
        except (BaseError, OSError) as exc:
            raise _failure(f"store {key}", exc) from exc

    async def _get(self, key: str) -> bytes:
        try:
            result = await obstore.get_async(self.store, key)
            return bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError) as exc:
            raise ObjectMissing(key) from exc
        except (BaseError, OSError) as exc:
            raise _failure(f"read {key}", exc) from exc

    async def _exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self.store, key)
        except (NotFoundError, FileNotFoundError):
            return False
        except (BaseError, OSError) as exc:
            raise _failure("answer", exc) from exc
        return True

    async def _delete(self, key: str) -> None:
        try:
            await obstore.delete_async(self.store, key)
        except (NotFoundError, FileNotFoundError):
            return
        except (BaseError, OSError) as exc:
            raise _failure(f"delete {key}", exc) from exc

    async def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            async for batch in obstore.list(self.store, prefix):
                keys.extend(meta["path"] for meta in batch)
        except (NotFoundError, FileNotFoundError):
            return keys
        except (BaseError, OSError) as exc:
            raise _failure(f"list {prefix}", exc) from exc
        return keys


def open_storage(settings: Settings) -> ObjectStorage:
    """The configured store: `storage_url` (s3://bucket/prefix) or DATA_DIR/objects."""
    url = settings.storage_url
    if not url:
        root = settings.data_dir / "objects"
        root.mkdir(parents=True, exist_ok=True)
        return ObjectStorage(LocalStore(prefix=root), f"local:{root}")
    if url.startswith("file://"):
        root = Path(url.removeprefix("file://"))
        root.mkdir(parents=True, exist_ok=True)
        return ObjectStorage(LocalStore(prefix=root), f"local:{root}")
    if not url.startswith("s3://"):
        raise ValueError("storage_url must be empty, file:///path or s3://bucket[/prefix]")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    config: dict[str, Any] = {}
    if settings.storage_endpoint:
        config["endpoint"] = settings.storage_endpoint
    if settings.storage_region:
        config["region"] = settings.storage_region
    if settings.storage_access_key_id:
        config["access_key_id"] = settings.storage_access_key_id
    secret = settings.storage_secret_access_key.get_secret_value()
    if secret:
        config["secret_access_key"] = secret
    store = S3Store(
        bucket,
        prefix=prefix.strip("/") or None,
        config=config,  # type: ignore[arg-type]
        client_options={"allow_http": settings.storage_allow_http, "timeout": "30s"},
        retry_config={
            "max_retries": 2,
            "backoff": {"max_backoff": timedelta(seconds=2)},
            "retry_timeout": timedelta(seconds=10),
        },
    )
    return ObjectStorage(store, f"s3://{bucket}/{prefix}")

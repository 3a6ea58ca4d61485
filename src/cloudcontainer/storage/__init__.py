"""Object storage: content-addressed blobs and named objects on obstore (a local directory by
default, S3 or anything obstore speaks in production)."""

from cloudcontainer.storage.store import ObjectMissing, ObjectStorage, StorageError, open_storage

__all__ = ["ObjectMissing", "ObjectStorage", "StorageError", "open_storage"]

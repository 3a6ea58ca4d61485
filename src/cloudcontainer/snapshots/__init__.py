"""Workspace snapshots in object storage: a project's files survive losing its sandbox."""

from cloudcontainer.snapshots.service import SnapshotService

__all__ = ["SnapshotService"]

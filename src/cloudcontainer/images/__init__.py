"""The sandbox root filesystem and image, built from Debian and the npm registry without a
container registry.

`build_rootfs(BuildOptions(rootfs_dir=...), progress)` builds the tree every runtime starts
sandboxes from (images/store.py keeps the builds); `load_into_docker` makes it the docker
runtime's image. The CLI's `cloudcontainer image build|list|prune` drives them with rich.
"""

from cloudcontainer.images.build import BuildOptions, BuildResult, build_rootfs
from cloudcontainer.images.docker import DEFAULT_TAG, ImageResult, load_into_docker, prune_images
from cloudcontainer.images.errors import CommandFailed, ImageBuildError, InvalidTag
from cloudcontainer.images.progress import Progress, SilentProgress, Task
from cloudcontainer.images.store import Build, RootfsStore, StoreError

__all__ = [
    "DEFAULT_TAG",
    "Build",
    "BuildOptions",
    "BuildResult",
    "CommandFailed",
    "ImageBuildError",
    "ImageResult",
    "InvalidTag",
    "Progress",
    "RootfsStore",
    "SilentProgress",
    "StoreError",
    "Task",
    "build_rootfs",
    "load_into_docker",
    "prune_images",
]

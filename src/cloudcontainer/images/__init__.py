"""The sandbox base image, built from Debian and the npm registry without a container registry.

`build_sandbox_image(BuildOptions(cache_dir=...), progress)` is the whole API; the CLI's
`cloudcontainer image build` draws its progress with rich.
"""

from cloudcontainer.images.build import (
    DEFAULT_TAG,
    BuildOptions,
    BuildResult,
    build_sandbox_image,
)
from cloudcontainer.images.errors import CommandFailed, ImageBuildError, InvalidTag
from cloudcontainer.images.progress import Progress, SilentProgress, Task

__all__ = [
    "DEFAULT_TAG",
    "BuildOptions",
    "BuildResult",
    "CommandFailed",
    "ImageBuildError",
    "InvalidTag",
    "Progress",
    "SilentProgress",
    "Task",
    "build_sandbox_image",
]

"""Why an image build stopped.

Every failure of `build_rootfs` or `load_into_docker` is an `ImageBuildError` whose `message` is
written for the operator who ran `cloudcontainer image build`; the CLI prints it and exits
non-zero.

    ImageBuildError          anything that stops a build
    ├── InvalidTag           --tag is not a valid Docker image reference
    ├── HostNotSupported     not root, or a CPU without an official Node.js build
    ├── DockerUnavailable    the engine does not answer, or refused a request
    ├── CommandFailed        a host command exited non-zero (carries argv, exit code, output)
    ├── DownloadFailed       the npm registry did not deliver a package, or it was corrupt
    └── VerificationFailed   the imported image lacks a tool or has the wrong version of it

Lower-layer errors (aiodocker, httpx, OSError) are mapped where they are raised, `from exc`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "CommandFailed",
    "DockerUnavailable",
    "DownloadFailed",
    "HostNotSupported",
    "ImageBuildError",
    "InvalidTag",
    "VerificationFailed",
]


class ImageBuildError(Exception):
    """Root of every image build failure."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidTag(ImageBuildError):
    pass


class HostNotSupported(ImageBuildError):
    pass


class DockerUnavailable(ImageBuildError):
    pass


class CommandFailed(ImageBuildError):
    """A host command failed; `output` is the tail of what it printed (stdout and stderr)."""

    def __init__(self, argv: Sequence[str], exit_code: int, output: str) -> None:
        program = f"{argv[2]} (in the new rootfs)" if argv[0] == "chroot" else argv[0]
        super().__init__(f"{program} exited with status {exit_code}")
        self.argv = tuple(argv)
        self.exit_code = exit_code
        self.output = output


class DownloadFailed(ImageBuildError):
    pass


class VerificationFailed(ImageBuildError):
    pass

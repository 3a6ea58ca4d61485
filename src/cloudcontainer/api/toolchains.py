"""`GET /api/toolchains`: what the sandbox root filesystem carries, from its build manifest."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.errors import Unavailable
from cloudcontainer.images import toolchains
from cloudcontainer.images.store import Build, RootfsStore, StoreError

router = APIRouter(prefix="/api", tags=["toolchains"])


class NodeToolchain(BaseModel):
    major: str = Field(description="What `toolchain.node` of a new container names.")
    version: str
    npm: str
    corepack: str
    default: bool


class Toolchains(BaseModel):
    rootfs: str = Field(description="The build new sandboxes start from (`image list`).")
    created: str
    node: list[NodeToolchain]
    tools: dict[str, str] = Field(description="Each tool's own answer to its version flag.")
    debian: dict[str, Any] = Field(
        description="Suite, mirrors and Release dates (not the package list: see the manifest)."
    )


@router.get("/toolchains")
async def list_toolchains(_: CurrentPrincipal, services: ServicesDep) -> Toolchains:
    """The Node.js majors a container may choose, and every tool's version in the current
    root filesystem; the same on every runtime (docs/runtimes.md)."""
    store = RootfsStore(services.settings.rootfs_path)
    try:
        build = await asyncio.to_thread(store.current)
    except StoreError as exc:
        raise Unavailable(f"The sandbox root filesystem is damaged: {exc.message}") from None
    if build is None:
        raise Unavailable(
            "No sandbox root filesystem is built yet: run `cloudcontainer image build`.",
            code="rootfs_missing",
        )
    return _describe(build)


def _describe(build: Build) -> Toolchains:
    manifest = build.manifest
    majors = manifest["node"]["majors"]
    node = [
        NodeToolchain(
            major=major,
            version=majors[major]["node"]["version"],
            npm=majors[major]["npm"]["version"],
            corepack=majors[major]["corepack"]["version"],
            default=major == toolchains.DEFAULT_NODE,
        )
        for major in toolchains.NODE_MAJORS
        if major in majors
    ]
    debian = {key: value for key, value in manifest["debian"].items() if key != "packages"}
    return Toolchains(
        rootfs=build.id, created=manifest["created"], node=node,
        tools={name: str(value) for name, value in manifest["tools"].items()}, debian=debian,
    )  # fmt: skip

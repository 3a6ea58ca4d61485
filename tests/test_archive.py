"""Archive download and upload on real sandboxes: round trips, zip slip, bombs, links, limits."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import Api, TestUser
from tests.sandbox_helpers import new_container, sh

FORMATS = ["zip", "tar.gz"]
# sha256 and octal mode of every file below a folder, and every link's target.
INVENTORY = (
    "cd \"$1\" && find . -type f ! -path '*/node_modules/*' -exec sha256sum {} + | sort && "
    "find . -type f -exec stat -c '%n %a' {} + | sort && "
    'find . -type l -exec sh -c \'echo "$0 -> $(readlink "$0")"\' {} \\; | sort'
)


async def setup(api: Api, script: str = "") -> tuple[TestUser, str]:
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    if script:
        result = await sh(api, user, cid, "set -e; cd /home/project; " + script)
        assert result.code == 0, result.stderr
    return user, cid


async def inventory(api: Api, user: TestUser, cid: str, folder: str) -> str:
    result = await sh(api, user, cid, f"set -- {folder}; {INVENTORY}")
    assert result.code == 0, result.stderr
    return result.stdout


async def workspace_listing(api: Api, user: TestUser, cid: str) -> str:
    """Everything in the workspace and /home with size and mode, to show nothing changed."""
    result = await sh(api, user, cid, "find /home /tmp -printf '%p %s %m %l\\n' | sort")
    return result.stdout


async def upload(
    api: Api, user: TestUser, cid: str, data: Any, path: str = "/copy", fmt: str = "zip"
) -> Any:
    return await api.client.post(
        f"/api/containers/{cid}/archive",
        params={"path": path, "format": fmt},
        content=data,
        headers=user.headers,
        timeout=120,
    )


def zip_of(entries: list[tuple[str, bytes, int]]) -> bytes:
    """A zip of (name, content, unix mode) entries, names taken as given."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    return buffer.getvalue()


def tar_of(entries: list[tarfile.TarInfo], contents: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info in entries:
            data = (contents or {}).get(info.name)
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return archive.getnames()


def tar_entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


PROJECT = (
    "rm -rf ./* ./.[!.]*; mkdir -p src/deep/er bin node_modules/pkg empty; printf 'export {}\\n' > src/App.tsx; "
    "head -c 300000 /dev/urandom > src/deep/er/blob.bin; printf '#!/bin/sh\\necho hi\\n' > bin/run; "
    "chmod 755 bin/run; chmod 600 src/App.tsx; echo dep > node_modules/pkg/index.js; "
    "printf 'é ünïcode\\n' > 'src/naïve name.txt'; ln -s src/App.tsx app-link"
)


@pytest.mark.parametrize("fmt", FORMATS)
async def test_round_trip_keeps_bytes_modes_and_links(sandbox_api: Api, fmt: str) -> None:
    user, cid = await setup(sandbox_api, PROJECT)
    before = await inventory(sandbox_api, user, cid, "/home/project")
    response = await sandbox_api.client.get(
        f"/api/containers/{cid}/archive",
        params={"path": "/", "format": fmt, "exclude": ["node_modules"]},
        headers=user.headers,
    )
    assert response.status_code == 200, response.text
    assert f'filename="project.{fmt}"' in response.headers["content-disposition"]
    data = response.content
    names = zipfile.ZipFile(io.BytesIO(data)).namelist() if fmt == "zip" else tar_names(data)
    assert "src/App.tsx" in names
    assert "empty/" in names or "empty" in names
    assert not [name for name in names if name.startswith("node_modules")]
    uploaded = await upload(sandbox_api, user, cid, data, path="/restored/here", fmt=fmt)
    assert uploaded.status_code == 200, uploaded.text
    result = uploaded.json()
    assert "/restored/here/src/App.tsx" in result["files"]
    assert "/restored/here/app-link" in result["files"]
    assert result["count"] == len(result["files"]) == 5
    assert result["skipped"] == []
    after = await inventory(sandbox_api, user, cid, "/home/project/restored/here")
    assert after == before.replace("./node_modules/pkg/index.js 644\n", "")
    assert "./bin/run 755" in after
    assert "./app-link -> src/App.tsx" in after
    empty = await sh(sandbox_api, user, cid, "test -d restored/here/empty && ls -a | grep -c cc-")
    assert empty.stdout.strip() == "0"  # the folder is there, no staging folder is left


async def test_download_of_a_subfolder_is_named_after_it(sandbox_api: Api) -> None:
    user, cid = await setup(sandbox_api, "mkdir -p 'my app/src'; echo x > 'my app/src/a.txt'")
    response = await sandbox_api.client.get(
        f"/api/containers/{cid}/archive",
        params={"path": "/my app", "format": "tar.gz"},
        headers=user.headers,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    assert 'filename="my app.tar.gz"' in response.headers["content-disposition"]
    names = tar_names(response.content)
    assert names == ["src", "src/a.txt"]
    for path, status in (("/nope", 404), ("/my app/src/a.txt", 409)):
        missing = await sandbox_api.client.get(
            f"/api/containers/{cid}/archive", params={"path": path}, headers=user.headers
        )
        assert missing.status_code == status, missing.text
    bad = await sandbox_api.client.get(
        f"/api/containers/{cid}/archive", params={"format": "rar"}, headers=user.headers
    )
    assert bad.status_code == 422
    # Past these bounds a URL could outgrow the HTTP server's request line (a plain-text 400).
    for params in ({"exclude": ["x"] * 17}, {"exclude": "x" * 129}, {"exclude": "a\x00"}):
        refused = await sandbox_api.client.get(
            f"/api/containers/{cid}/archive", params=params, headers=user.headers
        )
        assert refused.status_code in (400, 422), refused.text
        assert refused.json()["error"]["code"] in ("validation_error", "bad_request")


async def test_links_leaving_the_workspace_are_stored_but_never_extracted(
    sandbox_api: Api,
) -> None:
    user, cid = await setup(
        sandbox_api, "mkdir sub; echo in > sub/t.txt; ln -s /etc/passwd passwd; ln -s ../sub sub/up"
    )
    response = await sandbox_api.client.get(
        f"/api/containers/{cid}/archive", params={"format": "tar.gz"}, headers=user.headers
    )
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        members = {member.name: member for member in archive}
    assert members["passwd"].issym()
    assert members["passwd"].linkname == "/etc/passwd"  # stored as a link, not the file
    crafted = tar_of(
        [tar_entry("ok.txt"), tar_entry("escape", tarfile.SYMTYPE, "../../../etc"),
         tar_entry("abs", tarfile.SYMTYPE, "/etc/shadow"),
         tar_entry("inside", tarfile.SYMTYPE, "../x/ok.txt"),
         tar_entry("hard", tarfile.LNKTYPE, "/etc/passwd"),
         tar_entry("dev", tarfile.CHRTYPE)],
        {"ok.txt": b"fine\n"},
    )  # fmt: skip
    uploaded = await upload(sandbox_api, user, cid, crafted, path="/x", fmt="tar.gz")
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["files"] == ["/x/inside", "/x/ok.txt"]
    assert {s["path"] for s in uploaded.json()["skipped"]} == {"/x/escape", "/x/abs",
                                                              "/x/hard", "/x/dev"}  # fmt: skip
    listing = await sh(sandbox_api, user, cid, "ls -A x; readlink x/inside")
    assert listing.stdout.split() == ["inside", "ok.txt", "../x/ok.txt"]
    round_trip = await upload(sandbox_api, user, cid, response.content, path="/y", fmt="tar.gz")
    assert round_trip.json()["skipped"] == [
        {"path": "/y/passwd", "reason": "link points outside the workspace"}
    ]
    assert (await sh(sandbox_api, user, cid, "readlink y/sub/up")).stdout == "../sub\n"


@pytest.mark.parametrize("fmt", FORMATS)
async def test_zip_slip_and_absolute_names_write_nothing(sandbox_api: Api, fmt: str) -> None:
    user, cid = await setup(sandbox_api, "echo keep > keep.txt")
    before = await workspace_listing(sandbox_api, user, cid)
    for evil in ("../evil.txt", "a/../../evil.txt", "/tmp/evil.txt", "/home/project/evil.txt"):
        if fmt == "zip":
            data = zip_of([("good.txt", b"good", 0o644), (evil, b"evil", 0o644)])
        else:
            data = tar_of([tar_entry("good.txt"), tar_entry(evil)],
                          {"good.txt": b"good", evil: b"evil"})  # fmt: skip
        response = await upload(sandbox_api, user, cid, data, path="/", fmt=fmt)
        assert response.status_code == 400, (evil, response.text)
        assert response.json()["error"]["code"] == "unsafe_archive_entry"
    assert await workspace_listing(sandbox_api, user, cid) == before


@pytest.mark.parametrize("fmt", FORMATS)
async def test_corrupt_archives_are_400_and_change_nothing(sandbox_api: Api, fmt: str) -> None:
    user, cid = await setup(sandbox_api, "mkdir copy; echo old > copy/a.txt")
    before = await workspace_listing(sandbox_api, user, cid)
    contents = {"a.txt": b"new" * 1000, "b.txt": b"b" * 5000}
    if fmt == "zip":
        good = zip_of([(name, data, 0o644) for name, data in contents.items()])
    else:
        good = tar_of([tar_entry(name) for name in contents], contents)
    for data in (b"", b"not an archive at all", good[: len(good) // 2], good[:-30]):
        response = await upload(sandbox_api, user, cid, data, fmt=fmt)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_archive"
    assert await workspace_listing(sandbox_api, user, cid) == before
    assert (await upload(sandbox_api, user, cid, good, fmt=fmt)).status_code == 200
    assert (await sh(sandbox_api, user, cid, "head -c 6 copy/a.txt")).stdout == "newnew"


async def test_type_clash_refuses_the_whole_archive(sandbox_api: Api) -> None:
    user, cid = await setup(sandbox_api, "mkdir -p copy/src; echo old > copy/src/a.txt")
    before = await workspace_listing(sandbox_api, user, cid)
    data = zip_of([("new.txt", b"n", 0o644), ("src/a.txt/inner", b"x", 0o644)])
    response = await upload(sandbox_api, user, cid, data)
    assert response.status_code == 409, response.text
    assert await workspace_listing(sandbox_api, user, cid) == before


async def test_bombs_and_oversized_bodies_are_refused(
    sandbox_api_factory: Callable[..., Awaitable[Api]],
) -> None:
    api = await sandbox_api_factory(
        max_file_bytes=64 * 1024, archive_max_uncompressed_bytes=1_000_000,
        archive_max_entries=10,
    )  # fmt: skip
    user, cid = await setup(api, "echo keep > keep.txt")
    before = await workspace_listing(api, user, cid)
    bomb = zip_of([("zeros.bin", bytes(2_000_000), 0o644)])  # ~2 KiB compressed
    many = zip_of([(f"f{i}.txt", b"x", 0o644) for i in range(11)])
    tar_bomb = tar_of([tar_entry("zeros.bin")], {"zeros.bin": bytes(2_000_000)})
    for data, fmt in ((bomb, "zip"), (many, "zip"), (tar_bomb, "tar.gz")):
        response = await upload(api, user, cid, data, fmt=fmt)
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "archive_too_large"
    declared = await upload(api, user, cid, bytes(70 * 1024))
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "payload_too_large"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield zip_of([("early.txt", b"e", 0o644)])
        for _ in range(20):
            yield bytes(8 * 1024)

    streamed = await upload(api, user, cid, chunked())
    assert streamed.status_code == 413
    assert await workspace_listing(api, user, cid) == before


async def test_another_users_container_is_404(sandbox_api: Api) -> None:
    user, cid = await setup(sandbox_api, "echo x > a.txt")
    other = await sandbox_api.user()
    download = await sandbox_api.client.get(f"/api/containers/{cid}/archive", headers=other.headers)
    assert download.status_code == 404
    assert download.json()["error"]["code"] == "container_not_found"
    uploaded = await upload(sandbox_api, other, cid, zip_of([("b.txt", b"b", 0o644)]))
    assert uploaded.status_code == 404
    assert (await sh(sandbox_api, user, cid, "test -e /home/project/copy")).code == 1

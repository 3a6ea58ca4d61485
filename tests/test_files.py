"""The file API on real sandboxes: WebContainer path semantics, ETags, atomic writes, errors."""

from __future__ import annotations

import base64
import os

import pytest

from tests.conftest import Api, TestUser
from tests.sandbox_helpers import new_container, sh


async def setup(api: Api) -> tuple[TestUser, str, str]:
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    return user, cid, f"/api/containers/{cid}/files"


async def test_write_read_list_delete_round_trip(sandbox_api: Api) -> None:
    user, cid, files = await setup(sandbox_api)
    client = sandbox_api.client
    written = await client.put(
        f"{files}/src/App.tsx?mkdirs=true", content=b"export default 1;\n", headers=user.headers
    )
    assert written.status_code == 200, written.text
    assert written.json()["path"] == "/src/App.tsx"
    raw = await client.get(f"{files}/src/App.tsx", headers=user.headers)
    assert raw.content == b"export default 1;\n"
    assert raw.headers["etag"] == written.json()["etag"]
    as_json = (await client.get(f"{files}/src/App.tsx?format=json", headers=user.headers)).json()
    assert (as_json["content"], as_json["encoding"], as_json["size"]) == (
        "export default 1;\n",
        "utf-8",
        18,
    )
    listing = (await client.get(f"{files}?path=/&recursive=true", headers=user.headers)).json()
    paths = {entry["path"]: entry["type"] for entry in listing["entries"]}
    assert paths["/src"] == "directory"
    assert paths["/src/App.tsx"] == "file"
    assert "/package.json" in paths  # the template
    # Processes see the same files at once, and the other way round.
    assert (await sh(sandbox_api, user, cid, "cat src/App.tsx")).stdout == "export default 1;\n"
    await sh(sandbox_api, user, cid, "echo from-shell > shell.txt")
    assert (await client.get(f"{files}/shell.txt", headers=user.headers)).content == b"from-shell\n"
    assert (
        await client.delete(f"{files}/src?recursive=true", headers=user.headers)
    ).status_code == 204
    gone = await client.get(f"{files}/src/App.tsx", headers=user.headers)
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "file_not_found"


async def test_paths_are_clamped_at_the_workspace_root(sandbox_api: Api) -> None:
    """bolt writes AI files as `../../src/App.tsx`: `..` stops at /home/project, `x` is `/x`."""
    user, cid, files = await setup(sandbox_api)
    for path in (
        "../../x.txt",
        "a/../../../x.txt",
        "/x.txt",
        "x.txt",
        "/home/project/x.txt",
        "//x.txt",
    ):
        response = await sandbox_api.client.post(
            files, json={"path": path, "content": path}, headers=user.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["path"] == "/x.txt"
        assert (await sh(sandbox_api, user, cid, "cat /home/project/x.txt")).stdout == path
    # In URLs clients drop literal dot segments; encoded ones reach the server and are clamped too.
    for path in ("%2e%2e/%2e%2e/y.txt", "%2E%2E%2F%2E%2E%2Fy.txt"):
        response = await sandbox_api.client.put(
            f"{files}/{path}", content=b"y", headers=user.headers
        )
        assert response.status_code == 200, (path, response.text)
        assert response.json()["path"] == "/y.txt"


async def test_traversal_never_reads_outside_the_workspace(sandbox_api: Api) -> None:
    user, cid, files = await setup(sandbox_api)
    for path in ("../../etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2F..%2Fetc%2Fpasswd"):
        response = await sandbox_api.client.get(f"{files}/{path}", headers=user.headers)
        assert response.status_code == 404, (path, response.text)
    # A symlink made inside points inside the sandbox's own filesystem, never the host's.
    await sh(sandbox_api, user, cid, "ln -s /etc/hostname link")
    through = await sandbox_api.client.get(f"{files}/link", headers=user.headers)
    assert through.content == b"sandbox\n"


async def test_if_match_guards_against_lost_updates(sandbox_api: Api) -> None:
    user, _, files = await setup(sandbox_api)
    client = sandbox_api.client
    first = (await client.put(f"{files}/doc.md", content=b"v1", headers=user.headers)).json()
    second = await client.put(
        f"{files}/doc.md", content=b"v2", headers={**user.headers, "If-Match": first["etag"]}
    )
    assert second.status_code == 200
    stale = await client.put(
        f"{files}/doc.md", content=b"v3", headers={**user.headers, "If-Match": first["etag"]}
    )
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "etag_mismatch"
    assert (await client.get(f"{files}/doc.md", headers=user.headers)).content == b"v2"


async def test_json_writes_utf8_and_base64_and_makes_folders(sandbox_api: Api) -> None:
    user, cid, files = await setup(sandbox_api)
    client = sandbox_api.client
    binary = bytes(range(256))
    for body in (
        {"path": "notes/ü.txt", "content": "héllo ✓", "mkdirs": True},
        {
            "path": "bin/blob",
            "content": base64.b64encode(binary).decode(),
            "encoding": "base64",
            "mkdirs": True,
        },
        {"path": "empty/dir/deep", "type": "directory", "mkdirs": True},
    ):
        response = await client.post(files, json=body, headers=user.headers)
        assert response.status_code == 200, response.text
    assert (await client.get(f"{files}/notes/ü.txt", headers=user.headers)).text == "héllo ✓"
    blob = (await client.get(f"{files}/bin/blob?format=json", headers=user.headers)).json()
    assert blob["encoding"] == "base64"
    assert base64.b64decode(blob["content"]) == binary
    assert blob["mime"] == "application/octet-stream"
    assert (
        await sh(sandbox_api, user, cid, "test -d empty/dir/deep && echo yes")
    ).stdout == "yes\n"


async def test_move_renames_and_refuses_moving_a_folder_into_itself(sandbox_api: Api) -> None:
    user, _, files = await setup(sandbox_api)
    client = sandbox_api.client
    await client.put(f"{files}/a/b.txt?mkdirs=true", content=b"b", headers=user.headers)
    moved = await client.post(
        f"{files}:move", json={"from": "a/b.txt", "to": "c.txt"}, headers=user.headers
    )
    assert moved.status_code == 200
    assert moved.json()["path"] == "/c.txt"
    into_itself = await client.post(
        f"{files}:move", json={"from": "a", "to": "a/inner"}, headers=user.headers
    )
    assert into_itself.status_code == 400
    assert (await client.get(f"{files}/a", headers=user.headers)).status_code == 409  # a folder


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        pytest.param(
            "PUT",
            "missing/parent.txt",
            {"content": b"x"},
            404,
            "file_not_found",
            id="missing-parent",
        ),
        pytest.param(
            "PUT", "src", {"content": b"x"}, 409, "is_a_directory", id="write-to-directory"
        ),
        pytest.param("DELETE", "", {}, 403, "operation_not_permitted", id="delete-root"),
        pytest.param(
            "DELETE", "src", {}, 409, "is_a_directory", id="delete-folder-without-recursive"
        ),
        pytest.param("GET", "nope.txt", {}, 404, "file_not_found", id="read-missing"),
        pytest.param(
            "POST",
            None,
            {"json": {"path": "x", "content": "%%%", "encoding": "base64"}},
            422,
            "validation_error",
            id="bad-base64",
        ),
        pytest.param(
            "POST",
            None,
            {"json": {"path": "x", "content": "äöü", "encoding": "base64"}},
            422,
            "validation_error",
            id="non-ascii-base64",
        ),
        pytest.param(
            "POST",
            None,
            {"json": {"path": "a\u0000b", "content": "x"}},
            422,
            "validation_error",
            id="nul-in-path",
        ),
        pytest.param(
            "POST",
            None,
            {"json": {"path": "x", "content": "a", "extra": 1}},
            422,
            "validation_error",
            id="unknown-field",
        ),
    ],
)
async def test_bad_file_requests_change_nothing(
    sandbox_api: Api, method: str, path: str | None, kwargs: dict, status: int, code: str
) -> None:
    user, cid, files = await setup(sandbox_api)
    await sandbox_api.client.put(
        f"{files}/src/keep.txt?mkdirs=true", content=b"keep", headers=user.headers
    )
    before = (await sh(sandbox_api, user, cid, "find . | sort; cat src/keep.txt")).stdout
    url = files if path is None else f"{files}/{path}"
    response = await sandbox_api.client.request(method, url, headers=user.headers, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert (await sh(sandbox_api, user, cid, "find . | sort; cat src/keep.txt")).stdout == before


async def test_nul_bytes_in_paths_are_refused(sandbox_api: Api) -> None:
    user, _, files = await setup(sandbox_api)
    response = await sandbox_api.client.put(f"{files}/a%00b", content=b"x", headers=user.headers)
    assert response.status_code == 400


async def test_another_users_files_do_not_exist_for_them(sandbox_api: Api) -> None:
    _, _, files = await setup(sandbox_api)
    intruder = await sandbox_api.user()
    for method in ("GET", "PUT", "DELETE"):
        response = await sandbox_api.client.request(
            method, f"{files}/package.json", headers=intruder.headers
        )
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "container_not_found"


async def test_large_uploads_use_the_file_limit_not_the_json_limit(sandbox_api_factory) -> None:  # type: ignore[no-untyped-def]
    api = await sandbox_api_factory(max_body_bytes=1024, max_file_bytes=4 * 1024 * 1024)
    user, _, files = await setup(api)
    big = b"x" * (2 * 1024 * 1024)
    assert (
        await api.client.put(f"{files}/big.bin", content=big, headers=user.headers)
    ).status_code == 200
    assert (await api.client.get(f"{files}/big.bin", headers=user.headers)).content == big
    too_big = await api.client.put(
        f"{files}/huge.bin", content=b"x" * (5 * 1024 * 1024), headers=user.headers
    )
    assert too_big.status_code == 413


async def test_the_hot_routes_answer_as_the_rest_of_the_api(sandbox_api: Api) -> None:
    """Reading and saving one file skip FastAPI's solver and inner stack (api/hotroutes.py);
    their edge cases must still answer exactly as every other route does."""
    user, _, files = await setup(sandbox_api)
    client = sandbox_api.client
    url = f"{files}/hot.txt"
    assert (await client.put(url, content=b"hot", headers=user.headers)).status_code == 200
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
        refused = await client.get(url, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "not_authenticated"
        assert refused.headers["www-authenticate"] == "Bearer"
    bad_token = await client.put(url, content=b"x", headers={"Authorization": "Bearer nope"})
    assert bad_token.status_code == 401
    for method, query in (("GET", "format=xml"), ("PUT", "mkdirs=maybe")):
        invalid = await client.request(method, f"{url}?{query}", content=b"x", headers=user.headers)
        assert invalid.status_code == 422, invalid.text
        error = invalid.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"][0]["loc"] == ["query", query.split("=")[0]]
    assert (await client.get(url, headers=user.headers)).content == b"hot"  # nothing changed
    # Values FastAPI would accept are accepted: repeated (the last wins), and bool spellings.
    as_json = await client.get(f"{url}?format=raw&format=json", headers=user.headers)
    assert as_json.json()["content"] == "hot"
    made = await client.put(f"{files}/new/dir/a.txt?mkdirs=yes", content=b"a", headers=user.headers)
    assert made.status_code == 200, made.text
    assert made.json()["path"] == "/new/dir/a.txt"
    # The gateway's own middlewares still see these requests: request id, body limit, metrics.
    read = await client.get(url, headers={**user.headers, "X-Request-ID": "hot-1"})
    assert read.headers["x-request-id"] == "hot-1"
    assert read.headers["etag"].startswith('"')
    other = await client.patch(url, content=b"x", headers=user.headers)
    assert other.status_code == 405
    assert other.json()["error"]["code"] == "method_not_allowed"
    metrics = (await client.get("/metrics")).text
    route = 'route="/api/containers/{container_id}/files/{path:path}"'
    assert f'cloudcontainer_http_requests_total{{method="GET",{route},status="200"}}' in metrics


async def test_a_file_larger_than_one_agent_message_round_trips(sandbox_api: Api) -> None:
    """Past 8 MiB a file travels to and from the agent in chunks (issue 9: the link takes
    16 MiB a message); past max_file_bytes a read is refused, not buffered."""
    user, cid, files = await setup(sandbox_api)
    client = sandbox_api.client
    data = os.urandom(17 * 1024 * 1024 + 3)
    written = await client.put(f"{files}/big.bin", content=data, headers=user.headers)
    assert written.status_code == 200, written.text
    read = await client.get(f"{files}/big.bin", headers=user.headers)
    assert read.content == data
    assert read.headers["etag"] == written.json()["etag"]
    await sh(sandbox_api, user, cid, "head -c 52428801 /dev/zero > huge.bin")
    huge = await client.get(f"{files}/huge.bin", headers=user.headers)
    assert huge.status_code == 413, huge.text
    assert huge.json()["error"]["code"] == "file_too_large"

"""File batches on real sandboxes: atomic all-or-nothing, non-atomic partial results, limits."""

from __future__ import annotations

import base64
from typing import Any

from tests.conftest import Api, TestUser
from tests.sandbox_helpers import new_container, sh

# Type, mode and path of every entry, then the checksum of every file: equal snapshots mean
# every file is byte-identical, with the same mode, and nothing appeared or vanished.
SNAPSHOT = (
    "find . -name node_modules -prune -o -printf '%y %m %p\\n' | sort; "
    "find . -name node_modules -prune -o -type f -print | sort | xargs -r md5sum"
)


async def setup(api: Api) -> tuple[TestUser, str, str]:
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    return user, cid, f"/api/containers/{cid}/files"


async def snapshot(api: Api, user: TestUser, cid: str) -> str:
    return (await sh(api, user, cid, SNAPSHOT)).stdout


async def batch(api: Api, user: TestUser, files: str, **body: Any) -> Any:
    return await api.client.post(files, json=body, headers=user.headers)


async def test_a_mixed_batch_applies_every_operation(sandbox_api: Api) -> None:
    user, cid, files = await setup(sandbox_api)
    await sh(sandbox_api, user, cid, "mkdir -p old/tree && echo x > old/tree/f && echo m > m.txt")
    operations = [
        {"op": "write", "path": "src/App.tsx", "content": "export {}\n", "mkdirs": True},
        {"op": "write", "path": "bin/blob", "content": base64.b64encode(b"\0\1").decode(),
         "encoding": "base64", "mkdirs": True},
        {"op": "mkdir", "path": "empty/deep", "recursive": True},
        {"op": "move", "from": "m.txt", "to": "src/m.txt"},
        {"op": "delete", "path": "old", "recursive": True},
        {"op": "delete", "path": "never-was", "force": True},
    ]  # fmt: skip
    response = await batch(sandbox_api, user, files, operations=operations)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["atomic"] is True
    assert [r["ok"] for r in answer["results"]] == [True] * 6
    entries = [r["entry"] for r in answer["results"]]
    assert entries[0]["path"] == "/src/App.tsx"
    assert entries[0]["etag"].startswith('"')
    assert (entries[2]["path"], entries[2]["type"]) == ("/empty/deep", "directory")
    assert entries[3]["path"] == "/src/m.txt"
    assert entries[4] is None
    assert entries[5] is None
    state = await sh(
        sandbox_api, user, cid,
        "cat src/App.tsx src/m.txt; od -An -tx1 bin/blob; test -d empty/deep && echo d; "
        "test -e old || echo gone; ls -A | grep -c '^.cc-' || true",
    )  # fmt: skip
    assert state.stdout == "export {}\nm\n 00 01\nd\ngone\n0\n"


FIFTH_FAILS: list[tuple[dict[str, Any], int, str]] = [
    ({"op": "write", "path": "missing/parent.txt", "content": "x"}, 404, "file_not_found"),
    ({"op": "write", "path": "src", "content": "x"}, 409, "is_a_directory"),
    ({"op": "delete", "path": "/", "recursive": True}, 403, "operation_not_permitted"),
    ({"op": "move", "from": "src", "to": "src/deep/inner"}, 400, "invalid_request"),
    ({"op": "mkdir", "path": "src"}, 409, "already_exists"),
    ({"op": "delete", "path": "src"}, 409, "is_a_directory"),
]


async def test_an_atomic_batch_failing_at_its_fifth_operation_changes_nothing(
    sandbox_api: Api,
) -> None:
    """The first four change things (overwrite an executable, create with mkdirs, delete a
    tree, move over an existing file); each way the fifth can fail undoes all four."""
    user, cid, files = await setup(sandbox_api)
    await sh(
        sandbox_api, user, cid,
        "mkdir -p src/deep && printf a > src/a.txt && printf b > src/deep/b.txt && "
        "printf '#!/bin/sh\\n' > run.sh && chmod 751 run.sh && printf t > target.txt && "
        "chmod 600 target.txt",
    )  # fmt: skip
    before = await snapshot(sandbox_api, user, cid)
    assert "f 751 ./run.sh" in before
    assert "f 600 ./target.txt" in before
    assert "./src/deep/b.txt" in before.split("f 644 ./src/deep/b.txt")[1]  # its checksum too
    first_four = [
        {"op": "write", "path": "run.sh", "content": "echo replaced\n"},
        {"op": "write", "path": "made/new/file.txt", "content": "new", "mkdirs": True},
        {"op": "delete", "path": "src/deep", "recursive": True},
        {"op": "move", "from": "src/a.txt", "to": "target.txt"},
    ]
    for fifth, status, code in FIFTH_FAILS:
        response = await batch(sandbox_api, user, files, operations=[*first_four, fifth])
        assert response.status_code == status, (fifth, response.text)
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["operation"] == 4
        assert await snapshot(sandbox_api, user, cid) == before, fifth
    # Invalid base64 is refused by the schema before anything runs.
    bad = {"op": "write", "path": "x", "content": "%%%", "encoding": "base64"}
    response = await batch(sandbox_api, user, files, operations=[*first_four, bad])
    assert response.status_code == 422
    assert await snapshot(sandbox_api, user, cid) == before


async def test_a_non_atomic_batch_goes_past_failures(sandbox_api: Api) -> None:
    user, cid, files = await setup(sandbox_api)
    operations = [
        {"op": "write", "path": "one.txt", "content": "1"},
        {"op": "write", "path": "missing/two.txt", "content": "2"},
        {"op": "delete", "path": "/"},
        {"op": "write", "path": "three.txt", "content": "3"},
    ]
    response = await batch(sandbox_api, user, files, operations=operations, atomic=False)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["ok"] for r in results] == [True, False, False, True]
    assert (results[1]["error"]["code"], results[1]["error"]["status"]) == ("file_not_found", 404)
    assert results[2]["error"]["code"] == "operation_not_permitted"
    assert (await sh(sandbox_api, user, cid, "cat one.txt three.txt")).stdout == "13"


async def test_batch_limits_and_ownership(sandbox_api: Api) -> None:
    user, cid, files = await setup(sandbox_api)
    before = await snapshot(sandbox_api, user, cid)
    write = {"op": "write", "path": "x.txt", "content": "x"}
    for body, status in (
        ({"operations": [write] * 1001}, 422),
        ({"operations": []}, 422),
        ({"operations": [{"op": "chmod", "path": "x"}]}, 422),
        ({"operations": [{**write, "encoding": "latin-1"}]}, 422),
        ({"operations": [write], "atomic": "yes"}, 422),
    ):
        response = await sandbox_api.client.post(files, json=body, headers=user.headers)
        assert response.status_code == status, (body, response.text)
    with_if_match = await sandbox_api.client.post(
        files, json={"operations": [write]}, headers={**user.headers, "If-Match": '"x"'}
    )
    assert with_if_match.status_code == 400
    intruder = await sandbox_api.user()
    foreign = await sandbox_api.client.post(
        files, json={"operations": [write]}, headers=intruder.headers
    )
    assert foreign.status_code == 404
    assert foreign.json()["error"]["code"] == "container_not_found"
    assert await snapshot(sandbox_api, user, cid) == before

"""Text search on real sandboxes: ripgrep in the sandbox, WebContainer's textSearch shape."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Api, TestUser
from tests.sandbox_helpers import new_container, sh

WORKSPACE = "/home/project"


async def setup(api: Api, script: str) -> tuple[TestUser, str]:
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    result = await sh(api, user, cid, "set -e; cd /home/project; rm -rf ./* ./.[!.]*; " + script)
    assert result.code == 0, result.stderr
    return user, cid


async def search(api: Api, user: TestUser, cid: str, **body: Any) -> list[dict[str, Any]]:
    response = await api.client.post(
        f"/api/containers/{cid}/search", json=body, headers=user.headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["type"] == "done", lines
    assert all(line["type"] == "file" for line in lines[:-1]), lines
    return lines


def found(lines: list[dict[str, Any]]) -> dict[str, list[tuple[int, int, int]]]:
    """path -> [(line, start column, end column)] of every range."""
    return {
        line["path"]: [
            (r["startLineNumber"], r["startColumn"], r["endColumn"])
            for match in line["matches"]
            for r in match["ranges"]
        ]
        for line in lines[:-1]
    }


async def test_literal_and_regex_results_have_webcontainer_shape(sandbox_api: Api) -> None:
    user, cid = await setup(
        sandbox_api, "mkdir src; printf 'one\\nfoo.bar and fooXbar\\n' > src/App.tsx"
    )
    lines = await search(sandbox_api, user, cid, query="foo.bar")
    assert lines == [
        {
            "type": "file",
            "path": f"{WORKSPACE}/src/App.tsx",
            "matches": [
                {
                    "preview": {
                        "text": "foo.bar and fooXbar",
                        "matches": [
                            {"startLineNumber": 2, "startColumn": 0, "endLineNumber": 2,
                             "endColumn": 7},
                        ],
                    },
                    "ranges": [
                        {"startLineNumber": 2, "startColumn": 0, "endLineNumber": 2,
                         "endColumn": 7},
                    ],
                }
            ],
        },
        {"type": "done", "files": 1, "matches": 1, "truncated": False, "timed_out": False},
    ]  # fmt: skip
    regex = await search(sandbox_api, user, cid, query="foo.bar", regex=True)
    assert found(regex) == {f"{WORKSPACE}/src/App.tsx": [(2, 0, 7), (2, 12, 19)]}
    assert regex[-1]["matches"] == 2


async def test_case_and_whole_word(sandbox_api: Api) -> None:
    user, cid = await setup(sandbox_api, "printf 'Food food\\nFOO\\n' > a.txt")
    path = f"{WORKSPACE}/a.txt"
    assert found(await search(sandbox_api, user, cid, query="foo")) == {
        path: [(1, 0, 3), (1, 5, 8), (2, 0, 3)]
    }
    assert found(await search(sandbox_api, user, cid, query="foo", case_sensitive=True)) == {
        path: [(1, 5, 8)]
    }
    assert found(await search(sandbox_api, user, cid, query="foo", whole_word=True)) == {
        path: [(2, 0, 3)]
    }
    both = await search(sandbox_api, user, cid, query="FOO", case_sensitive=True, whole_word=True)
    assert found(both) == {path: [(2, 0, 3)]}


async def test_include_exclude_and_node_modules(sandbox_api: Api) -> None:
    user, cid = await setup(
        sandbox_api,
        "mkdir -p src/lib node_modules/pkg dist; for f in src/a.ts src/lib/b.ts src/c.css "
        "node_modules/pkg/index.js dist/out.js; do echo needle > $f; done",
    )
    everything = set(found(await search(sandbox_api, user, cid, query="needle")))
    assert f"{WORKSPACE}/node_modules/pkg/index.js" in everything
    assert len(everything) == 5
    bolt = await search(
        sandbox_api, user, cid, query="needle", include=["**/*.*"],
        exclude=["**/node_modules/**", "**/dist/**"],
    )  # fmt: skip
    assert set(found(bolt)) == {f"{WORKSPACE}/src/a.ts", f"{WORKSPACE}/src/lib/b.ts",
                                f"{WORKSPACE}/src/c.css"}  # fmt: skip
    only_ts = await search(sandbox_api, user, cid, query="needle", include=["src/**/*.ts"])
    assert set(found(only_ts)) == {f"{WORKSPACE}/src/a.ts", f"{WORKSPACE}/src/lib/b.ts"}
    folder = await search(sandbox_api, user, cid, query="needle", path="src/lib")
    assert set(found(folder)) == {f"{WORKSPACE}/src/lib/b.ts"}


async def test_gitignore_is_respected_unless_disabled(sandbox_api: Api) -> None:
    user, cid = await setup(
        sandbox_api,
        "mkdir build; echo needle > build/x.js; echo needle > kept.js; echo needle > .env; "
        "printf 'build/\\n' > .gitignore",
    )
    default = set(found(await search(sandbox_api, user, cid, query="needle")))
    assert default == {f"{WORKSPACE}/kept.js"}  # no .git needed; hidden files skipped as rg does
    everything = set(found(await search(sandbox_api, user, cid, query="needle", gitignore=False)))
    assert everything == {f"{WORKSPACE}/kept.js", f"{WORKSPACE}/build/x.js"}


async def test_result_limit_truncates(sandbox_api: Api) -> None:
    user, cid = await setup(
        sandbox_api, "for i in 1 2 3 4 5; do printf 'hit hit\\nhit\\n' > f$i.txt; done"
    )
    lines = await search(sandbox_api, user, cid, query="hit", max_results=4)
    assert lines[-1] == {"type": "done", "files": 2, "matches": 4, "truncated": True,
                         "timed_out": False}  # fmt: skip
    assert sum(len(ranges) for ranges in found(lines).values()) == 4
    exact = await search(sandbox_api, user, cid, query="hit", max_results=15)
    assert exact[-1]["matches"] == 15
    assert exact[-1]["truncated"] is False
    for max_results in (0, 10_001):
        response = await sandbox_api.client.post(
            f"/api/containers/{cid}/search",
            json={"query": "hit", "max_results": max_results},
            headers=user.headers,
        )
        assert response.status_code == 422


async def test_columns_count_characters_not_bytes(sandbox_api: Api) -> None:
    # é and 日本 are one UTF-16 unit each (2 and 3 bytes in UTF-8); 😀 is two units (4 bytes).
    user, cid = await setup(sandbox_api, "printf 'é日本 needle 😀 needle\\n' > u.txt")
    lines = await search(sandbox_api, user, cid, query="needle")
    assert found(lines) == {f"{WORKSPACE}/u.txt": [(1, 4, 10), (1, 14, 20)]}
    preview = lines[0]["matches"][0]["preview"]
    assert preview["text"] == "é日本 needle 😀 needle"
    assert [(m["startColumn"], m["endColumn"]) for m in preview["matches"]] == [(4, 10), (14, 20)]


async def test_long_lines_get_a_short_preview(sandbox_api: Api) -> None:
    user, cid = await setup(
        sandbox_api, "python3 -c \"print('x' * 5000 + 'needle' + 'y' * 5000)\" > min.js"
    )
    match = (await search(sandbox_api, user, cid, query="needle"))[0]["matches"][0]
    assert match["ranges"][0]["startColumn"] == 5000
    preview = match["preview"]
    assert len(preview["text"]) <= 250
    start, end = preview["matches"][0]["startColumn"], preview["matches"][0]["endColumn"]
    assert preview["text"][start:end] == "needle"


async def test_query_is_never_a_flag_and_bad_regex_is_400(sandbox_api: Api) -> None:
    user, cid = await setup(sandbox_api, "printf 'a --files b\\n-e x\\n' > flags.txt")
    path = f"{WORKSPACE}/flags.txt"
    assert found(await search(sandbox_api, user, cid, query="--files")) == {path: [(1, 2, 9)]}
    assert found(await search(sandbox_api, user, cid, query="-e")) == {path: [(2, 0, 2)]}
    bad = await sandbox_api.client.post(
        f"/api/containers/{cid}/search", json={"query": "(unclosed", "regex": True},
        headers=user.headers,
    )  # fmt: skip
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["code"] == "invalid_regex"
    assert "unclosed group" in bad.json()["error"]["message"]
    for body in ({"query": ""}, {}, {"query": "x", "regex": "yes"}, {"query": "x", "extra": 1},
                 {"query": "x", "include": "*.ts"}):  # fmt: skip
        response = await sandbox_api.client.post(
            f"/api/containers/{cid}/search", json=body, headers=user.headers
        )
        assert response.status_code == 422, (body, response.text)
    missing = await sandbox_api.client.post(
        f"/api/containers/{cid}/search", json={"query": "x", "path": "/nope"},
        headers=user.headers,
    )  # fmt: skip
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "file_not_found"


async def test_symlinks_out_of_the_workspace_are_never_searched(sandbox_api: Api) -> None:
    user, cid = await setup(
        sandbox_api,
        "mkdir -p /tmp/outside; echo secret-needle > /tmp/outside/s.txt; "
        "ln -s /tmp/outside dirlink; ln -s /tmp/outside/s.txt filelink; "
        "echo secret-needle > inside.txt",
    )
    lines = await search(sandbox_api, user, cid, query="secret-needle")
    assert set(found(lines)) == {f"{WORKSPACE}/inside.txt"}
    for path in ("/dirlink", "/filelink", "dirlink/"):
        response = await sandbox_api.client.post(
            f"/api/containers/{cid}/search", json={"query": "secret", "path": path},
            headers=user.headers,
        )  # fmt: skip
        assert response.status_code == 403, (path, response.text)
        assert "secret-needle" not in response.text


async def test_another_users_container_is_404(sandbox_api: Api) -> None:
    _, cid = await setup(sandbox_api, "echo needle > a.txt")
    other = await sandbox_api.user()
    response = await sandbox_api.client.post(
        f"/api/containers/{cid}/search", json={"query": "needle"}, headers=other.headers
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "container_not_found"

"""Projects: CRUD, per-owner names, owner scoping, admin listing, pagination."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from cloudcontainer.db import Project
from tests.conftest import Api, TestUser


async def create(api: Api, user: TestUser, name: str, description: str = "") -> httpx.Response:
    return await api.client.post(
        "/api/projects", json={"name": name, "description": description}, headers=user.headers
    )


async def made(api: Api, user: TestUser, name: str, description: str = "") -> dict[str, Any]:
    response = await create(api, user, name, description)
    assert response.status_code == 201, response.text
    project: dict[str, Any] = response.json()
    return project


async def listing(api: Api, user: TestUser, **params: Any) -> dict[str, Any]:
    response = await api.client.get("/api/projects", params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def stored_names(api: Api, owner_id: str) -> list[str]:
    async with api.services.database.session() as session:
        rows = await session.scalars(
            select(Project.name).where(Project.owner_id == owner_id).order_by(Project.name)
        )
        return list(rows)


def at(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp)


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


# -- CRUD -------------------------------------------------------------------------------------


async def test_create_project_answers_201_with_every_field(api: Api) -> None:
    user = await api.user()
    response = await create(api, user, "app", "My first app.\nTwo lines.")
    assert response.status_code == 201
    project = response.json()
    assert set(project) == {"id", "owner_id", "name", "description", "created_at", "updated_at"}
    assert project["id"].startswith("prj_")
    assert project["owner_id"] == user.id
    assert project["name"] == "app"
    assert project["description"] == "My first app.\nTwo lines."
    assert datetime.fromisoformat(project["created_at"]).tzinfo is not None
    assert datetime.fromisoformat(project["updated_at"]).tzinfo is not None


async def test_create_project_description_defaults_to_empty(api: Api) -> None:
    user = await api.user()
    response = await api.client.post("/api/projects", json={"name": "app"}, headers=user.headers)
    assert response.status_code == 201
    assert response.json()["description"] == ""


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "a" * 101},
        {"name": "line\nbreak"},
        {"name": 5},
        {"name": "app", "description": "d" * 2001},
        {"name": "app", "owner_id": "usr_someone"},
    ],
)
async def test_create_project_refuses_invalid_bodies(api: Api, body: dict[str, Any]) -> None:
    user = await api.user()
    response = await api.client.post("/api/projects", json=body, headers=user.headers)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert await stored_names(api, user.id) == []


async def test_get_project_answers_what_create_answered(api: Api) -> None:
    user = await api.user()
    project = await made(api, user, "app", "desc")
    response = await api.client.get(f"/api/projects/{project['id']}", headers=user.headers)
    assert response.status_code == 200
    assert response.json() == project


async def test_list_projects_newest_first_with_paging_fields(api: Api) -> None:
    user = await api.user()
    ids = [(await made(api, user, name))["id"] for name in ("one", "two", "three")]
    page = await listing(api, user)
    assert [p["id"] for p in page["items"]] == ids[::-1]
    assert (page["total"], page["limit"], page["offset"]) == (3, 50, 0)


async def test_list_projects_pages_with_limit_and_offset(api: Api) -> None:
    user = await api.user()
    ids = [(await made(api, user, f"p{index}"))["id"] for index in range(5)]
    newest_first = ids[::-1]
    first = await listing(api, user, limit=2)
    second = await listing(api, user, limit=2, offset=2)
    last = await listing(api, user, limit=2, offset=4)
    beyond = await listing(api, user, limit=2, offset=10)
    assert [p["id"] for p in first["items"]] == newest_first[0:2]
    assert [p["id"] for p in second["items"]] == newest_first[2:4]
    assert [p["id"] for p in last["items"]] == newest_first[4:]
    assert beyond["items"] == []
    assert {page["total"] for page in (first, second, last, beyond)} == {5}
    assert (second["limit"], second["offset"]) == (2, 2)


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 201}, {"offset": -1}, {"limit": "many"}]
)
async def test_list_projects_refuses_out_of_range_paging(api: Api, params: dict[str, Any]) -> None:
    user = await api.user()
    response = await api.client.get("/api/projects", params=params, headers=user.headers)
    assert response.status_code == 422
    assert error_code(response) == "validation_error"


async def test_list_projects_accepts_the_largest_limit(api: Api) -> None:
    user = await api.user()
    await made(api, user, "app")
    page = await listing(api, user, limit=200)
    assert page["limit"] == 200
    assert page["total"] == 1


async def test_patch_project_changes_name_and_description(api: Api) -> None:
    user = await api.user()
    project = await made(api, user, "app", "old")
    url = f"/api/projects/{project['id']}"

    renamed = await api.client.patch(url, json={"name": "renamed"}, headers=user.headers)
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "renamed"
    assert renamed.json()["description"] == "old"
    assert at(renamed.json()["updated_at"]) > at(project["updated_at"])

    described = await api.client.patch(url, json={"description": "new"}, headers=user.headers)
    assert described.status_code == 200
    assert (described.json()["name"], described.json()["description"]) == ("renamed", "new")
    assert described.json()["created_at"] == project["created_at"]

    fetched = (await api.client.get(url, headers=user.headers)).json()
    assert (fetched["name"], fetched["description"]) == ("renamed", "new")


@pytest.mark.parametrize("body", [{}, {"name": None}, {"name": None, "description": None}])
async def test_patch_project_with_nothing_to_change_is_422(api: Api, body: dict[str, Any]) -> None:
    user = await api.user()
    project = await made(api, user, "app")
    response = await api.client.patch(
        f"/api/projects/{project['id']}", json=body, headers=user.headers
    )
    assert response.status_code == 422
    assert error_code(response) == "validation_error"


async def test_delete_project_answers_204_then_404(api: Api) -> None:
    user = await api.user()
    project = await made(api, user, "app")
    url = f"/api/projects/{project['id']}"
    deleted = await api.client.delete(url, headers=user.headers)
    assert deleted.status_code == 204
    assert deleted.content == b""
    for method in ("GET", "DELETE"):
        response = await api.client.request(method, url, headers=user.headers)
        assert response.status_code == 404, method
        assert error_code(response) == "project_not_found"
    assert (await listing(api, user))["total"] == 0


async def test_missing_project_is_404(api: Api) -> None:
    user = await api.user()
    url = "/api/projects/prj_0000000000000000"
    for method, body in (("GET", None), ("PATCH", {"name": "x"}), ("DELETE", None)):
        response = await api.client.request(method, url, json=body, headers=user.headers)
        assert response.status_code == 404, method
        assert error_code(response) == "project_not_found"


# -- names ------------------------------------------------------------------------------------


async def test_duplicate_project_name_for_one_owner_is_409(api: Api) -> None:
    user = await api.user()
    first = await made(api, user, "app")
    response = await create(api, user, "app", "another")
    assert response.status_code == 409
    assert error_code(response) == "project_name_taken"
    # The database is consistent afterwards: one "app", and the owner can go on working.
    assert await stored_names(api, user.id) == ["app"]
    page = await listing(api, user)
    assert [p["id"] for p in page["items"]] == [first["id"]]
    assert page["total"] == 1
    await made(api, user, "other")
    assert await stored_names(api, user.id) == ["app", "other"]


async def test_two_owners_may_use_the_same_project_name(api: Api) -> None:
    alice = await api.user()
    bob = await api.user()
    mine = await made(api, alice, "app")
    theirs = await made(api, bob, "app")
    assert mine["id"] != theirs["id"]
    assert (mine["owner_id"], theirs["owner_id"]) == (alice.id, bob.id)


async def test_renaming_onto_a_taken_name_is_409_and_changes_nothing(api: Api) -> None:
    user = await api.user()
    await made(api, user, "app")
    other = await made(api, user, "other", "keep me")
    url = f"/api/projects/{other['id']}"
    response = await api.client.patch(
        url, json={"name": "app", "description": "changed"}, headers=user.headers
    )
    assert response.status_code == 409
    assert error_code(response) == "project_name_taken"
    fetched = (await api.client.get(url, headers=user.headers)).json()
    assert (fetched["name"], fetched["description"]) == ("other", "keep me")
    assert await stored_names(api, user.id) == ["app", "other"]
    # The session that failed left nothing behind: the next change works.
    renamed = await api.client.patch(url, json={"name": "third"}, headers=user.headers)
    assert renamed.status_code == 200


async def test_a_name_freed_by_rename_or_delete_can_be_reused(api: Api) -> None:
    user = await api.user()
    first = await made(api, user, "app")
    await api.client.patch(
        f"/api/projects/{first['id']}", json={"name": "old-app"}, headers=user.headers
    )
    second = await made(api, user, "app")
    await api.client.delete(f"/api/projects/{second['id']}", headers=user.headers)
    await made(api, user, "app")
    assert await stored_names(api, user.id) == ["app", "old-app"]


# -- owner scoping ----------------------------------------------------------------------------


async def test_another_users_project_is_404_never_403(api: Api) -> None:
    alice = await api.user()
    bob = await api.user()
    project = await made(api, alice, "app", "alice's")
    url = f"/api/projects/{project['id']}"
    missing = await api.client.get("/api/projects/prj_0000000000000000", headers=bob.headers)
    for method, body in (("GET", None), ("PATCH", {"name": "mine now"}), ("DELETE", None)):
        response = await api.client.request(method, url, json=body, headers=bob.headers)
        assert response.status_code == 404, method
        assert response.json() == missing.json(), method
    # Alice's project is untouched.
    fetched = await api.client.get(url, headers=alice.headers)
    assert fetched.status_code == 200
    assert fetched.json() == project


async def test_lists_show_only_the_callers_projects(api: Api) -> None:
    alice = await api.user()
    bob = await api.user()
    await made(api, alice, "a1")
    await made(api, alice, "a2")
    bobs = await made(api, bob, "b1")
    page = await listing(api, bob)
    assert [p["id"] for p in page["items"]] == [bobs["id"]]
    assert page["total"] == 1
    assert {p["owner_id"] for p in (await listing(api, alice))["items"]} == {alice.id}


async def test_listing_every_project_needs_an_admin(api: Api) -> None:
    user = await api.user()
    await made(api, user, "app")
    response = await api.client.get("/api/projects", params={"all": "true"}, headers=user.headers)
    assert response.status_code == 403
    assert error_code(response) == "admin_required"


async def test_admin_lists_everyones_projects_with_all(api: Api) -> None:
    alice = await api.user()
    admin = await api.user(admin=True)
    alices = await made(api, alice, "app")
    admins = await made(api, admin, "tools")
    everyone = await listing(api, admin, all="true")
    assert [p["id"] for p in everyone["items"]] == [admins["id"], alices["id"]]
    assert everyone["total"] == 2
    # Without `all` an admin sees only their own.
    own = await listing(api, admin)
    assert [p["id"] for p in own["items"]] == [admins["id"]]
    async with api.services.database.session() as session:
        assert await session.scalar(select(func.count()).select_from(Project)) == 2


# -- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/projects"),
        ("POST", "/api/projects"),
        ("GET", "/api/projects/prj_0000000000000000"),
        ("PATCH", "/api/projects/prj_0000000000000000"),
        ("DELETE", "/api/projects/prj_0000000000000000"),
    ],
)
async def test_projects_without_credentials_are_401_with_the_error_shape(
    api: Api, method: str, path: str
) -> None:
    body = {"name": "app"} if method in ("POST", "PATCH") else None
    response = await api.client.request(method, path, json=body)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "not_authenticated"
    assert isinstance(error["message"], str)
    assert error["message"]
    assert set(response.json()) == {"error"}


async def test_projects_with_a_bad_token_are_401(api: Api) -> None:
    response = await api.client.get(
        "/api/projects", headers={"Authorization": "Bearer not-a-token"}
    )
    assert response.status_code == 401
    assert error_code(response) == "invalid_token"

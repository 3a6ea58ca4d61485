"""Health, readiness, metrics, OpenAPI and request ids."""

from __future__ import annotations

from tests.conftest import Api


async def test_healthz_answers_ok(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_the_database(api: Api) -> None:
    response = await api.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_readyz_answers_503_when_the_database_is_gone(api: Api) -> None:
    # The audit log's writer and pruner stop first: none of their sessions may be left on the
    # engine swapped out below.
    await api.services.audit.aclose()
    await api.services.database.engine.dispose()
    database = api.services.database
    original = database.url
    # Point the engine at a database that cannot be reached.
    from sqlalchemy.ext.asyncio import create_async_engine

    if database.is_sqlite:
        database.engine = create_async_engine("sqlite+aiosqlite:////nonexistent/dir/x.db")
    else:
        database.engine = create_async_engine(
            "postgresql+asyncpg://nobody@127.0.0.1:1/none", connect_args={"timeout": 2}
        )
    try:
        response = await api.client.get("/readyz")
    finally:
        await database.engine.dispose()
    assert original
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"


async def test_metrics_count_requests_by_route_template(api: Api) -> None:
    user = await api.user()
    for _ in range(3):
        await api.client.get("/api/projects/prj_missing", headers=user.headers)
    body = (await api.client.get("/metrics")).text
    assert (
        'cloudcontainer_http_requests_total{method="GET",route="/api/projects/{project_id}",'
        'status="404"} 3.0' in body
    )
    assert "cloudcontainer_http_request_duration_seconds_bucket" in body


async def test_unknown_routes_share_one_metrics_label(api: Api) -> None:
    await api.client.get("/no/such/path/1")
    await api.client.get("/no/such/path/2")
    body = (await api.client.get("/metrics")).text
    assert 'route="<unmatched>",status="404"} 2.0' in body


async def test_request_id_is_generated_or_kept(api: Api) -> None:
    generated = await api.client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    kept = await api.client.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert kept.headers["x-request-id"] == "trace-123"
    unsafe = await api.client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


async def test_openapi_documents_the_contract_paths(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    for path in [
        "/api/auth/register", "/api/auth/login", "/api/auth/refresh", "/api/auth/logout",
        "/api/auth/verify-email", "/api/auth/password-reset/request",
        "/api/auth/password-reset/confirm", "/api/auth/me", "/api/auth/keys",
        "/api/auth/ws-ticket", "/api/projects", "/api/projects/{project_id}",
        "/healthz", "/readyz", "/metrics",
    ]:  # fmt: skip
        assert path in spec["paths"], path
    docs = await api.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_api_explorer_assets_are_served_locally(api: Api) -> None:
    """No CDN: the explorer works on machines without internet access."""
    page = (await api.client.get("/docs")).text
    assert "cdn." not in page
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        response = await api.client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200
        assert len(response.content) > 10_000

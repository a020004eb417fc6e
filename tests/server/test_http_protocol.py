"""HTTP details, over real HTTP against the real server: the Allow list of a 405, HEAD,
paths with a trailing slash, and a request with more than one Authorization header.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from tests.server.conftest import ADMIN, NEW_SESSION, Api, bearer, launch_server

from llmsession.server import ServerSettings, create_app

PROBLEM = "application/problem+json"


@dataclass
class World:
    client: httpx.Client
    auth: dict[str, str]
    session_id: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One real server on a SQLite file, with tenant acme and one active session with a round."""
    directory = tmp_path_factory.mktemp("http")
    server = launch_server(f"sqlite:///{directory / 'sessions.db'}", directory)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            created = client.post("/v1/admin/tenants", json={"tenant_id": "acme"}, headers=ADMIN)
            assert created.status_code == 201, created.text
            auth = bearer(created.json()["api_key"])
            session = client.post("/v1/sessions", json=NEW_SESSION, headers=auth)
            session_id = session.json()["session_id"]
            client.post(f"/v1/sessions/{session_id}/activate", headers=auth)
            recorded = client.post(
                f"/v1/sessions/{session_id}/rounds", json={"delta_tokens": 7}, headers=auth
            )
            assert recorded.status_code == 201, recorded.text
            yield World(client, auth, session_id)
    finally:
        code = server.stop()
    assert code == 0, server.output()
    assert "Traceback" not in server.output(), server.output()


def _problem(response: httpx.Response, status: int, kind: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["type"] == f"urn:llmsession:problem:{kind}"
    assert body["status"] == status
    return body


def _auth_for(world: World, path: str) -> dict[str, str]:
    if path.startswith("/v1/admin"):
        return ADMIN
    return world.auth if path.startswith("/v1") else {}


def _served_get_paths(world: World) -> list[str]:
    """Every path the app serves GET on, with its parameters filled in with real values."""
    app = create_app(ServerSettings(store_url="memory://"))
    paths = sorted(
        {
            context.path
            for context in iter_route_contexts(app.routes)
            if context.path is not None and "GET" in (context.methods or ())
        }
    )
    assert {"/healthz", "/readyz", "/v1/sessions", "/v1/admin/tenants"} <= set(paths)
    return [
        path.replace("{path:path}", "dashboard.js").format(
            session_id=world.session_id, tenant_id="acme"
        )
        + REQUIRED_QUERY.get(path, "")
        for path in paths
    ]


# The query a GET path cannot answer without.
REQUIRED_QUERY = {
    "/v1/stats/timeseries": "?bucket=day&start=2026-01-01T00:00:00Z&end=2026-02-01T00:00:00Z",
}


def _get_status(path: str) -> int:
    """What a GET without a key gets: 200, or for a dashboard page, the way to sign in."""
    public = path == "/ui/sign-in" or path.startswith("/ui/static/")
    return 303 if path.startswith("/ui") and not public else 200


# -- 405: Allow lists every method of the path ---------------------------------------

MIXED_PATHS = [
    "/v1/sessions",
    "/v1/sessions/{session_id}/rounds",
    "/v1/admin/tenants",
    "/v1/admin/tenants/acme/keys",
    "/ui/sign-in",
    "/ui/tenants",
    "/ui/sessions/{session_id}/close",
]


@pytest.mark.parametrize("template", MIXED_PATHS)
def test_a_405_lists_every_method_the_path_serves(world: World, template: str) -> None:
    path = template.format(session_id=world.session_id)
    response = world.client.delete(path, headers=_auth_for(world, path))
    body = _problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET, HEAD, POST"
    assert body["detail"] == f"DELETE is not allowed on {path!r}; allowed: GET, HEAD, POST"


@pytest.mark.parametrize(
    ("method", "template", "allowed"),
    [
        ("PUT", "/v1/sessions/{session_id}", "GET, HEAD"),
        ("GET", "/v1/sessions/{session_id}/activate", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
        ("PATCH", "/v1/admin/keys/abc123/revoke", "POST"),
    ],
)
def test_a_405_on_a_single_method_path(
    world: World, method: str, template: str, allowed: str
) -> None:
    path = template.format(session_id=world.session_id)
    response = world.client.request(method, path, headers=_auth_for(world, path))
    body = _problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == allowed
    assert str(body["detail"]).endswith(f"; allowed: {allowed}")


# -- trailing slashes and unknown paths: 404, never a redirect ---------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    "template",
    [
        "/v1/sessions/",
        "/v1/sessions/{session_id}/",
        "/v1/sessions/{session_id}/rounds/",
        "/v1/stats/",
        "/v1/admin/tenants/",
        "/healthz/",
        "/docs/",
        "/v1/nothing-here",
        "/v1/nothing-here/",
    ],
)
def test_unknown_paths_and_trailing_slashes_are_404_problems_not_redirects(
    world: World, method: str, template: str
) -> None:
    path = template.format(session_id=world.session_id)
    response = world.client.request(
        method, path, headers={**_auth_for(world, path), "Host": "evil.example"}
    )
    body = _problem(response, 404, "not-found")
    assert "location" not in response.headers
    assert "evil.example" not in response.text
    assert str(body["detail"]).startswith(f"no route {path!r}")


def test_a_trailing_slash_404_says_paths_take_none(world: World) -> None:
    body = _problem(world.client.get("/v1/sessions/", headers=world.auth), 404, "not-found")
    assert (
        body["detail"] == "no route '/v1/sessions/'; paths take no trailing slash: '/v1/sessions'"
    )


# -- HEAD wherever GET --------------------------------------------------------------------


def test_head_answers_as_get_without_the_body_on_every_get_route(world: World) -> None:
    for path in _served_get_paths(world):
        headers = _auth_for(world, path)
        got = world.client.get(path, headers=headers)
        head = world.client.head(path, headers=headers)
        assert got.status_code == _get_status(path), (path, got.text)
        assert head.status_code == got.status_code, (path, head.text)
        assert head.content == b"", path
        assert head.headers.get("content-type") == got.headers.get("content-type"), path
        if path != "/metrics":  # its figures change between two scrapes
            assert head.headers["content-length"] == got.headers["content-length"], path


def test_head_gets_the_same_errors_as_get(world: World) -> None:
    missing_key = world.client.head("/v1/sessions")
    assert missing_key.status_code == 401
    assert missing_key.headers["www-authenticate"] == "Bearer"
    assert missing_key.headers["content-type"] == PROBLEM
    assert missing_key.content == b""
    unknown = world.client.head(
        "/v1/sessions/00000000-0000-7000-8000-000000000000", headers=world.auth
    )
    assert unknown.status_code == 404
    assert unknown.content == b""
    bad_query = world.client.head("/healthz", params={"verbose": "1"})
    assert bad_query.status_code == 422


def test_head_where_get_is_not_served_is_405_or_404(world: World) -> None:
    path = f"/v1/sessions/{world.session_id}/activate"
    post_only = world.client.head(path, headers=world.auth)
    assert post_only.status_code == 405
    assert post_only.headers["allow"] == "POST"
    assert post_only.content == b""
    assert world.client.head("/v1/nothing-here").status_code == 404


def test_the_openapi_schema_does_not_list_head(world: World) -> None:
    schema = world.client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        assert "head" not in operations, path


async def test_the_app_itself_drops_the_body_of_a_head_answer(api: Api) -> None:
    # Over the in-process transport no server strips it: the app must send none.
    auth = await api.tenant("acme")
    await api.session(auth)
    got = await api.client.get("/v1/sessions", headers=auth)
    head = await api.client.head("/v1/sessions", headers=auth)
    assert head.status_code == 200
    assert head.content == b""
    assert got.content != b""
    assert head.headers["content-length"] == got.headers["content-length"]


def test_served_routes_take_head_only_through_get() -> None:
    # HEAD is served by the app, not declared on routes: the OpenAPI schema and the
    # route list stay one operation per declared method.
    app = create_app(ServerSettings(store_url="memory://"))
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            assert "HEAD" not in (context.methods or ()), context.path


# -- ambiguous credentials -----------------------------------------------------------


def _two_keys(first: str, second: str) -> list[tuple[str, str]]:
    return [("Authorization", first), ("Authorization", second)]


@pytest.mark.parametrize(
    ("method", "template", "body"),
    [
        ("GET", "/v1/sessions", None),
        ("GET", "/v1/sessions/{session_id}", None),
        ("POST", "/v1/sessions", NEW_SESSION),
        ("POST", "/v1/sessions/{session_id}/rounds", {"delta_tokens": 5}),
        ("POST", "/v1/sessions/{session_id}/close", None),
        ("GET", "/v1/admin/tenants", None),
        ("POST", "/v1/admin/tenants", {"tenant_id": "globex"}),
    ],
)
def test_two_authorization_headers_are_refused_and_change_nothing(
    world: World, method: str, template: str, body: dict[str, object] | None
) -> None:
    path = template.format(session_id=world.session_id)
    valid = _auth_for(world, path)["Authorization"]
    before = world.client.get(f"/v1/sessions/{world.session_id}", headers=world.auth).json()
    count_before = len(world.client.get("/v1/sessions", headers=world.auth).json()["items"])
    for first, second in [(valid, "Bearer lls_unknown_key"), (valid, valid)]:
        response = world.client.request(method, path, json=body, headers=_two_keys(first, second))
        problem = _problem(response, 400, "ambiguous-credentials")
        assert "exactly one Authorization header" in str(problem["detail"])
        assert first.removeprefix("Bearer ") not in response.text
    after = world.client.get(f"/v1/sessions/{world.session_id}", headers=world.auth).json()
    assert after == before
    assert len(world.client.get("/v1/sessions", headers=world.auth).json()["items"]) == (
        count_before
    )
    tenants = world.client.get("/v1/admin/tenants", headers=ADMIN).json()["items"]
    assert [tenant["tenant_id"] for tenant in tenants] == ["acme"]


def test_one_authorization_header_is_still_enough(world: World) -> None:
    assert world.client.get("/v1/sessions", headers=world.auth).status_code == 200
    unknown = world.client.get("/v1/sessions", headers=bearer("lls_unknown_key"))
    _problem(unknown, 401, "unauthorized")


def test_the_route_list_of_this_module_is_the_apps() -> None:
    # The mixed paths above are exactly the paths served by both GET and POST.
    app = create_app(ServerSettings(store_url="memory://"))
    methods: dict[str, set[str]] = {}
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.path is not None:
            methods.setdefault(context.path, set()).update(context.methods or ())
    mixed = {path for path, served in methods.items() if {"GET", "POST"} <= served}
    expected = {re.sub(r"/acme/", "/{tenant_id}/", path) for path in MIXED_PATHS}
    assert mixed == expected

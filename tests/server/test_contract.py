"""The server, docs/http-api.md and /openapi.json say the same thing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from tests.server.conftest import Api

from llmsession import errors
from llmsession.errors import LLMSessionError
from llmsession.ids import TenantId
from llmsession.server import ServerSettings, create_app
from llmsession.server.problems import PROBLEM_TYPES, problem_for
from llmsession.server.schemas import TENANT_ID_PATTERN, StateName
from llmsession.states import ALL_STATES

DOC = (Path(__file__).parents[2] / "docs" / "http-api.md").read_text()


def _served() -> set[tuple[str, str]]:
    app = create_app(ServerSettings(store_url="memory://"))
    served: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.path is not None:
            # A path parameter that takes slashes ({target:path}) is documented as {target}.
            path = re.sub(r"\{(\w+):path\}", r"{\1}", context.path)
            served |= {(method, path) for method in context.methods or ()}
    return served


def test_the_doc_lists_exactly_the_served_routes() -> None:
    documented = {
        (method, re.sub(r"\{id\}", "{session_id}", path))
        for method, path in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^` ]*)`", DOC)
    }
    assert documented == _served()


def test_the_doc_lists_exactly_the_problem_types() -> None:
    rows = re.findall(r"^\| (\d{3}) \| `urn:llmsession:problem:([a-z-]+)` \|", DOC, re.MULTILINE)
    documented = {(int(status), kind) for status, kind in rows}
    assert documented == {(status, kind) for kind, (status, _) in PROBLEM_TYPES.items()}


def _all_error_classes() -> set[type[LLMSessionError]]:
    found: set[type[LLMSessionError]] = set()
    pending: list[type[LLMSessionError]] = [LLMSessionError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending.extend(cls.__subclasses__())
    return {cls for cls in found if cls.__module__ == errors.__name__}


EXPECTED_PROBLEM = {
    "LLMSessionError": "internal",
    "InvalidInput": "invalid-input",
    "InvalidTokenCount": "invalid-input",
    "TokenOverflow": "invalid-input",
    "InvalidTimestamp": "invalid-input",
    "TransitionOrderError": "invalid-input",
    "InvalidIdentifier": "invalid-input",
    "InvalidRecord": "invalid-input",
    "StateError": "internal",
    "WrongStateError": "wrong-state",
    "SessionExpiredError": "session-expired",
    "ConsumedSessionError": "internal",
    "NotFoundError": "not-found",
    "ConflictError": "conflict",
    "IdempotencyConflict": "idempotency-conflict",
    "ConcurrentUpdateError": "conflict",
    "StoreError": "store-unavailable",
    "SchemaVersionError": "store-unavailable",
    "AuthenticationError": "unauthorized",
}


def _instance(cls: type[LLMSessionError]) -> LLMSessionError:
    if issubclass(cls, errors.WrongStateError):
        return cls("close", "active", "closed")
    if issubclass(cls, errors.ConsumedSessionError):
        return cls("close", "activate")
    return cls("something went wrong")


def test_every_error_class_maps_to_its_problem() -> None:
    classes = _all_error_classes()
    assert {cls.__name__ for cls in classes} == set(EXPECTED_PROBLEM), (
        "a new error class needs a problem type here and in problems.problem_for"
    )
    for cls in classes:
        problem = problem_for(_instance(cls))
        assert problem.kind == EXPECTED_PROBLEM[cls.__name__], cls
        if issubclass(cls, errors.WrongStateError):
            assert problem.extra == {
                "method": "close",
                "required_state": "active",
                "current_state": "closed",
            }
        if problem.kind in ("internal", "store-unavailable"):
            # Internal messages may name hosts or code: they are logged, not sent.
            assert "something went wrong" not in problem.detail


def test_state_names_match_the_core() -> None:
    assert set(StateName.__args__) == {state.name for state in ALL_STATES}


async def test_openapi_documents_problems_auth_and_operation_ids(api: Api) -> None:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "RecordRoundIn" in schema["components"]["schemas"]
    assert set(schema["components"]["securitySchemes"]) == {"TenantKey", "AdminKey"}
    operation_ids = set()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            operation_ids.add(operation["operationId"])
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    assert set(answer["content"]) == {"application/problem+json"}, (
                        method,
                        path,
                        status,
                    )
            if path.startswith("/v1/admin"):
                assert operation["security"] == [{"AdminKey": []}]
                assert {"400", "401", "403", "503"} <= set(operation["responses"])
            elif path.startswith("/v1"):
                assert operation["security"] == [{"TenantKey": []}]
                assert {"400", "401", "403", "503"} <= set(operation["responses"])
    assert {"create_session", "record_round", "list_sessions", "revoke_key"} <= operation_ids
    rounds = schema["paths"]["/v1/sessions/{session_id}/rounds"]["post"]
    assert [p["name"] for p in rounds["parameters"]] == ["session_id", "Idempotency-Key"]
    assert rounds["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RecordRoundIn"
    }
    assert {"200", "201", "404", "409", "422"} <= set(rounds["responses"])


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
async def test_interactive_docs_are_served(api: Api, path: str) -> None:
    assert (await api.client.get(path)).status_code == 200


TENANT_SAMPLES = [
    "acme",
    "a",
    "A.b_c:d-e",
    "9lives",
    "x" * 128,
    "x" * 129,
    "",
    "-acme",
    ".acme",
    "ac me",
    "acmé",
    "acme\n",
    "acme/1",
    "_acme",
]


@pytest.mark.parametrize("text", TENANT_SAMPLES)
def test_the_documented_tenant_pattern_is_the_cores_rule(text: str) -> None:
    documented = re.fullmatch(TENANT_ID_PATTERN, text) is not None
    try:
        TenantId(text)
        accepted = True
    except errors.InvalidIdentifier:
        accepted = False
    assert documented == accepted

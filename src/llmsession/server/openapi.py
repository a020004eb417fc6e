"""The app's FastAPI class: its OpenAPI document, with every error response as
application/problem+json, and the fast path served ahead of its middleware."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from llmsession.server.problems import PROBLEM_CONTENT_TYPE

if TYPE_CHECKING:
    from llmsession.server.fast_gateway import FastGateway

__all__ = ["ServiceAPI"]

_PROBLEM_REF = {"$ref": "#/components/schemas/ProblemOut"}
# FastAPI's own 422 body, replaced here by the problem body the app really sends.
_UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _problem_only(schema: dict[str, Any]) -> dict[str, Any]:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = {PROBLEM_CONTENT_TYPE: {"schema": _PROBLEM_REF}}
    schemas = schema.get("components", {}).get("schemas", {})
    for name in _UNUSED_SCHEMAS:
        schemas.pop(name, None)
    return schema


class ServiceAPI(FastAPI):
    """FastAPI whose /openapi.json documents error bodies as the app really sends them,
    and which hands the requests its ``front`` serves to it before anything else.

    ``extra_schemas``: models that routes reference by hand (``openapi_extra``)
    rather than through their signature, added to the components.
    """

    def __init__(self, *, extra_schemas: Sequence[type[BaseModel]] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._extra_schemas = tuple(extra_schemas)
        #: Serves plain gateway requests ahead of FastAPI and every middleware
        #: (see :mod:`llmsession.server.fast_gateway`); None: FastAPI serves all.
        self.front: FastGateway | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self.front
        if front is not None:
            route = front.match(scope)
            if route is not None:
                await front.serve(route, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = super().openapi()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in self._extra_schemas:
                schemas[model.__name__] = model.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
            self.openapi_schema = _problem_only(schema)
        return self.openapi_schema

"""The OpenAPI document, with every error response as application/problem+json."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from llmsession.server.problems import PROBLEM_CONTENT_TYPE

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
    """FastAPI whose /openapi.json documents error bodies as the app really sends them."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = _problem_only(super().openapi())
        return self.openapi_schema

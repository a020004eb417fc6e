"""BodyLimit: refuse request bodies over a size limit before anything reads them.

Every body this API takes is a small JSON object; without a limit, one request
could make the server hold any amount of memory. The body is read here (up to
the limit) and handed on whole, so the answer is the same 413 problem whether
the client sent a Content-Length or streamed chunks.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmsession.server.problems import problem_response

__all__ = ["MAX_BODY_BYTES", "BodyLimit", "BodyLimits"]

#: The largest request body accepted, in bytes.
MAX_BODY_BYTES = 64 * 1024


class BodyLimits:
    """The body size limit of each path, and the reading that enforces it."""

    def __init__(
        self,
        max_bytes: int = MAX_BODY_BYTES,
        path_limits: Mapping[str, int] | None = None,
        prefix_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        #: Paths that take larger bodies (the gateway's conversations), and their limits.
        self.path_limits = dict(path_limits or {})
        #: The same for paths under a prefix (Gemini's, which name the model).
        self.prefix_limits = dict(prefix_limits or {})

    def limit(self, path: str) -> int:
        """The largest body ``path`` takes, in bytes."""
        limit = self.path_limits.get(path)
        if limit is not None:
            return limit
        for prefix, limit in self.prefix_limits.items():
            if path.startswith(prefix):
                return limit
        return self.max_bytes

    async def read(self, scope: Scope, receive: Receive) -> bytes | Response | None:
        """The request's whole body; or the 413 problem to answer instead when it is
        over the path's limit; or None when the client went away before its body
        arrived (nobody to answer)."""
        limit = self.limit(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return self._refusal(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return self._refusal(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _refusal(self, limit: int) -> Response:
        what = (
            "this server's gateway limit (history_limit_bytes)"
            if limit != self.max_bytes
            else "this API takes small JSON objects"
        )
        return problem_response("too-large", f"the request body is over {limit} bytes; {what}")


class BodyLimit:
    """Pure ASGI middleware answering 413 (problem ``too-large``) to oversized bodies."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await self.limits.read(scope, receive)
        if body is None:
            return
        if isinstance(body, Response):
            await body(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the buffered body once, then the client's later messages."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay

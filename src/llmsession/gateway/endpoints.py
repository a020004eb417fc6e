"""The gateway's endpoints, each a wire format behind one small interface.

Forwarding is the same for every endpoint: parse the client's request, build
the upstream body from the history, read the answer or translate the stream.
:class:`Endpoint` is what differs, and each implementation only delegates to
its sans-IO wire module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from llmsession.gateway import anthropic_messages, gemini, openai_chat, openai_responses
from llmsession.gateway.config import ProviderKind
from llmsession.gateway.wire import Answer, GatewayInputError, JSONObject, StreamTranslator

__all__ = ["ENDPOINTS", "Endpoint", "ParsedRequest", "StreamFailure"]


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """What forwarding needs to know of a client's request, whatever its wire format."""

    model: str
    stream: bool
    #: The new items the request adds to the conversation.
    items: tuple[JSONObject, ...]
    #: The provider may chain this request to the session's last stored response.
    may_chain: bool
    #: The wire module's own view of the request.
    wire: object


#: Why a stream ends in an error: the provider cut it, the provider sent nothing
#: for its ``timeout_seconds``, its round could not be recorded, or the gateway failed.
StreamFailure = Literal["cut", "timeout", "unrecorded", "internal"]

# How each wire format names those: OpenAI's error codes, Gemini's status.
_OPENAI_CODES: Final[dict[StreamFailure, str]] = {
    "cut": "upstream_stream_cut",
    "timeout": "upstream_timeout",
    "unrecorded": "round_not_recorded",
    "internal": "gateway_error",
}
_GEMINI_STATUS: Final[dict[StreamFailure, dict[str, Any]]] = {
    "cut": {"code": 502, "status": "UNAVAILABLE"},
    "timeout": {"code": 504, "status": "DEADLINE_EXCEEDED"},
    "unrecorded": {"code": 503, "status": "UNAVAILABLE"},
    "internal": {"code": 500, "status": "INTERNAL"},
}


class Endpoint(Protocol):
    """One gateway endpoint: its name, the providers it reaches, and its wire format."""

    @property
    def name(self) -> str:
        """As stored with each turn: a session keeps the endpoint it started on."""
        ...

    @property
    def kind(self) -> ProviderKind:
        """The kind of provider this endpoint's wire format reaches."""
        ...

    def parse(
        self, body: bytes, *, path_model: str | None, headers: Mapping[str, str]
    ) -> ParsedRequest:
        """The client's request; ``path_model`` is the model named in the URL path, if the
        wire format puts it there, and ``headers`` the client's (lower-case names)."""
        ...

    def upstream_path(self, request: ParsedRequest, model: str) -> str:
        """Appended to the provider's base_url."""
        ...

    def upstream_headers(self, request: ParsedRequest, api_key: str) -> list[tuple[str, str]]:
        """The headers that carry the operator's key (and any the wire format needs)."""
        ...

    def upstream_body(
        self,
        request: ParsedRequest,
        history: Sequence[JSONObject],
        *,
        model: str,
        cache_key: str,
        previous_response_id: str | None,
        session_ttl_seconds: int,
    ) -> bytes:
        """``session_ttl_seconds``: how long the session may stay idle, for wire formats
        whose provider cache has a TTL to choose."""
        ...

    def parse_answer(self, body: bytes) -> Answer: ...

    def translator(self, request: ParsedRequest) -> StreamTranslator: ...

    def error_event(self, message: str, cause: StreamFailure = "cut") -> bytes:
        """The event that ends a client's stream as an error, for ``cause``."""
        ...

    def previous_response_missing(self, status: int, body: bytes) -> bool:
        """Whether an upstream error says the chained response is gone."""
        ...


class ChatCompletions:
    """``POST /v1/chat/completions``: the history is replayed every round."""

    name = "chat/completions"
    kind: ProviderKind = "openai"

    def parse(
        self, body: bytes, *, path_model: str | None, headers: Mapping[str, str]
    ) -> ParsedRequest:
        request = openai_chat.parse_chat_request(body)
        return ParsedRequest(request.model, request.stream, request.messages, False, request)

    def upstream_path(self, request: ParsedRequest, model: str) -> str:
        return "/chat/completions"

    def upstream_headers(self, request: ParsedRequest, api_key: str) -> list[tuple[str, str]]:
        return _bearer(api_key)

    def upstream_body(
        self,
        request: ParsedRequest,
        history: Sequence[JSONObject],
        *,
        model: str,
        cache_key: str,
        previous_response_id: str | None,
        session_ttl_seconds: int,
    ) -> bytes:
        assert isinstance(request.wire, openai_chat.ChatRequest)
        return openai_chat.chat_upstream_body(
            request.wire, history, model=model, cache_key=cache_key
        )

    def parse_answer(self, body: bytes) -> Answer:
        return openai_chat.parse_chat_response(body)

    def translator(self, request: ParsedRequest) -> StreamTranslator:
        assert isinstance(request.wire, openai_chat.ChatRequest)
        return openai_chat.ChatStream(client_wants_usage=request.wire.client_wants_usage)

    def error_event(self, message: str, cause: StreamFailure = "cut") -> bytes:
        return openai_chat.stream_error_event(message, code=_OPENAI_CODES[cause])

    def previous_response_missing(self, status: int, body: bytes) -> bool:
        return False


class Responses:
    """``POST /v1/responses``: chained to the provider's stored response where it can be."""

    name = "responses"
    kind: ProviderKind = "openai"

    def parse(
        self, body: bytes, *, path_model: str | None, headers: Mapping[str, str]
    ) -> ParsedRequest:
        request = openai_responses.parse_responses_request(body)
        return ParsedRequest(
            request.model, request.stream, request.input_items, request.store, request
        )

    def upstream_path(self, request: ParsedRequest, model: str) -> str:
        return "/responses"

    def upstream_headers(self, request: ParsedRequest, api_key: str) -> list[tuple[str, str]]:
        return _bearer(api_key)

    def upstream_body(
        self,
        request: ParsedRequest,
        history: Sequence[JSONObject],
        *,
        model: str,
        cache_key: str,
        previous_response_id: str | None,
        session_ttl_seconds: int,
    ) -> bytes:
        assert isinstance(request.wire, openai_responses.ResponsesRequest)
        return openai_responses.responses_upstream_body(
            request.wire,
            history,
            model=model,
            cache_key=cache_key,
            previous_response_id=previous_response_id,
        )

    def parse_answer(self, body: bytes) -> Answer:
        return openai_responses.parse_responses_response(body)

    def translator(self, request: ParsedRequest) -> StreamTranslator:
        return openai_responses.ResponsesStream()

    def error_event(self, message: str, cause: StreamFailure = "cut") -> bytes:
        return openai_responses.responses_stream_error_event(message, code=_OPENAI_CODES[cause])

    def previous_response_missing(self, status: int, body: bytes) -> bool:
        return openai_responses.previous_response_missing(status, body)


class Messages:
    """``POST /v1/messages`` (Anthropic): replayed every round, read from Anthropic's cache."""

    name = "messages"
    kind: ProviderKind = "anthropic"

    def parse(
        self, body: bytes, *, path_model: str | None, headers: Mapping[str, str]
    ) -> ParsedRequest:
        request = anthropic_messages.parse_messages_request(body, headers)
        return ParsedRequest(request.model, request.stream, request.items, False, request)

    def upstream_path(self, request: ParsedRequest, model: str) -> str:
        return "/v1/messages"

    def upstream_headers(self, request: ParsedRequest, api_key: str) -> list[tuple[str, str]]:
        assert isinstance(request.wire, anthropic_messages.MessagesRequest)
        return [("x-api-key", api_key), *request.wire.headers]

    def upstream_body(
        self,
        request: ParsedRequest,
        history: Sequence[JSONObject],
        *,
        model: str,
        cache_key: str,
        previous_response_id: str | None,
        session_ttl_seconds: int,
    ) -> bytes:
        assert isinstance(request.wire, anthropic_messages.MessagesRequest)
        return anthropic_messages.messages_upstream_body(
            request.wire,
            history,
            model=model,
            cache_key=cache_key,
            session_ttl_seconds=session_ttl_seconds,
        )

    def parse_answer(self, body: bytes) -> Answer:
        return anthropic_messages.parse_messages_response(body)

    def translator(self, request: ParsedRequest) -> StreamTranslator:
        return anthropic_messages.MessagesStream()

    def error_event(self, message: str, cause: StreamFailure = "cut") -> bytes:
        # Anthropic's own streams end such failures as an api_error; a timeout has its
        # own documented type (the 504's), which the SDKs and clients tell apart.
        kind = "timeout_error" if cause == "timeout" else "api_error"
        return anthropic_messages.stream_error_event(message, kind=kind)

    def previous_response_missing(self, status: int, body: bytes) -> bool:
        return False


class GenerateContent:
    """Gemini's ``models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``:
    the history is replayed, or held in a cached content entry of the session's."""

    name = "gemini/generateContent"
    kind: ProviderKind = "gemini"

    def parse(
        self, body: bytes, *, path_model: str | None, headers: Mapping[str, str]
    ) -> ParsedRequest:
        """``path_model`` is the URL's ``{model}:{method}``: Gemini names both there."""
        model, _, method = (path_model or "").rpartition(":")
        if method not in ("generateContent", "streamGenerateContent"):
            raise GatewayInputError(
                f"the URL must end in models/{{model}}:generateContent or "
                f"models/{{model}}:streamGenerateContent, got {path_model!r}"
            )
        request = gemini.parse_gemini_request(
            body, model=model, stream=method == "streamGenerateContent"
        )
        return ParsedRequest(request.model, request.stream, request.contents, True, request)

    def upstream_path(self, request: ParsedRequest, model: str) -> str:
        return gemini.gemini_upstream_path(model, stream=request.stream)

    def upstream_headers(self, request: ParsedRequest, api_key: str) -> list[tuple[str, str]]:
        return [("x-goog-api-key", api_key)]

    def upstream_body(
        self,
        request: ParsedRequest,
        history: Sequence[JSONObject],
        *,
        model: str,
        cache_key: str,
        previous_response_id: str | None,
        session_ttl_seconds: int,
    ) -> bytes:
        # The session's cache entry (and its TTL) is gemini_cache's: it comes in as
        # previous_response_id.
        assert isinstance(request.wire, gemini.GeminiRequest)
        return gemini.gemini_upstream_body(
            request.wire, history, gemini.CacheRef.decode(previous_response_id)
        )

    def parse_answer(self, body: bytes) -> Answer:
        return gemini.parse_gemini_response(body)

    def translator(self, request: ParsedRequest) -> StreamTranslator:
        return gemini.GeminiStream()

    def error_event(self, message: str, cause: StreamFailure = "cut") -> bytes:
        return gemini.gemini_stream_error_event(message, **_GEMINI_STATUS[cause])

    def previous_response_missing(self, status: int, body: bytes) -> bool:
        return gemini.cached_content_missing(status, body)


def _bearer(api_key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {api_key}")]


#: Every gateway endpoint, by name.
ENDPOINTS: Final[dict[str, Endpoint]] = {
    endpoint.name: endpoint
    for endpoint in (ChatCompletions(), Responses(), Messages(), GenerateContent())
}

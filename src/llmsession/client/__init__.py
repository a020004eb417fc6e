"""The Python client of the llmsession HTTP API: :class:`Client` and :class:`AsyncClient`.

Both return the core's types (:class:`~llmsession.SessionRecord` inside a
:class:`SessionView`, the store's ``Round``, ``Totals``, ``Tenant`` and ``Page``)
and raise the core's errors, so code written against a local store reads the
same against the service.
"""

from llmsession.client.async_client import AsyncClient
from llmsession.client.problems import ApiError, ServiceUnreachable
from llmsession.client.sync_client import DEFAULT_BASE_URL, DEFAULT_TIMEOUT, Client
from llmsession.client.views import (
    ApiKeyView,
    IssuedApiKey,
    NewTenant,
    RecordedRound,
    SessionView,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "ApiError",
    "ApiKeyView",
    "AsyncClient",
    "Client",
    "IssuedApiKey",
    "NewTenant",
    "RecordedRound",
    "ServiceUnreachable",
    "SessionView",
]

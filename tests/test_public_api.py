"""What ``import llmsession`` offers: exactly the intended names, each one importable."""

from __future__ import annotations

import subprocess
import sys

import pytest

import llmsession

EXPECTED = {
    # constants
    "MAX_TOKENS",
    "RECORD_VERSION",
    # the typed session and its states
    "Session",
    "AnySession",
    "SessionState",
    "Created",
    "Active",
    "Closed",
    "SessionExpired",
    "is_created",
    "is_active",
    "is_closed",
    "is_expired",
    "require_state",
    "restore",
    # values
    "SessionRecord",
    "SessionId",
    "TenantId",
    "Timestamp",
    "compute_tokens_saved",
    # errors
    "LLMSessionError",
    "InvalidInput",
    "InvalidTokenCount",
    "TokenOverflow",
    "InvalidTimestamp",
    "TransitionOrderError",
    "InvalidIdentifier",
    "InvalidRecord",
    "StateError",
    "WrongStateError",
    "SessionExpiredError",
    "ConsumedSessionError",
    "NotFoundError",
    "ConflictError",
    "IdempotencyConflict",
    "ConcurrentUpdateError",
    "StoreError",
    "SchemaVersionError",
    "AuthenticationError",
    # the HTTP clients
    "Client",
    "AsyncClient",
}


def test_all_is_exactly_the_intended_names() -> None:
    assert set(llmsession.__all__) == EXPECTED
    assert len(llmsession.__all__) == len(EXPECTED), "a name is listed twice"


def test_every_listed_name_resolves() -> None:
    for name in llmsession.__all__:
        assert getattr(llmsession, name) is not None, name
    assert set(llmsession.__all__) <= set(dir(llmsession))


def test_the_clients_are_the_client_package_classes() -> None:
    from llmsession.client import AsyncClient, Client

    assert llmsession.Client is Client
    assert llmsession.AsyncClient is AsyncClient


def test_importing_the_core_does_not_load_the_http_client() -> None:
    # The core is pure; httpx is loaded only when a client is asked for.
    code = (
        "import sys, llmsession; assert 'httpx' not in sys.modules, 'httpx loaded'; "
        "llmsession.Client; assert 'httpx' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_unknown_attributes_still_raise() -> None:
    missing = "NoSuchThing"
    with pytest.raises(AttributeError, match=missing):
        getattr(llmsession, missing)

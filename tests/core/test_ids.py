"""The checks of ids and names that every layer shares (llmsession.ids)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from llmsession import InvalidIdentifier, SessionId, TenantId, Timestamp
from llmsession.ids import check_label, check_name, check_session_id, check_tenant_id
from llmsession.store.models import MAX_IDEMPOTENCY_KEY, check_idempotency_key

SAMPLES: list[object] = [
    "k",
    "gpt-4o",
    "retry 1",
    "\u00e9t\u00e9",
    "x" * 200,
    "",
    " ",
    " k",
    "k ",
    "\tk",
    "a\nb",
    "\x00",
    "\u3000",
    7,
    None,
    b"k",
]


@pytest.mark.parametrize("value", SAMPLES)
def test_labels_and_idempotency_keys_follow_one_rule(value: object) -> None:
    def accepted(check: Callable[[object], object]) -> bool:
        try:
            check(value)
        except InvalidIdentifier:
            return False
        return True

    label = accepted(lambda v: check_label("model", v))
    key = accepted(check_idempotency_key)
    # Keys are ASCII besides: they travel as HTTP header values.
    assert key == (label and isinstance(value, str) and value.isascii())
    assert label == accepted(lambda v: check_name("name", v, MAX_IDEMPOTENCY_KEY))


def test_only_the_longest_length_differs() -> None:
    check_idempotency_key("k" * MAX_IDEMPOTENCY_KEY)
    with pytest.raises(InvalidIdentifier, match="at most 255 characters, got 256"):
        check_idempotency_key("k" * (MAX_IDEMPOTENCY_KEY + 1))
    with pytest.raises(InvalidIdentifier, match="model must be at most 200 characters, got 201"):
        check_label("model", "k" * 201)


def test_an_idempotency_key_must_be_ascii() -> None:
    with pytest.raises(InvalidIdentifier, match=r"'r\u00e9try' must be ASCII .* got '\u00e9'"):
        check_idempotency_key("r\u00e9try")
    assert check_label("model", "r\u00e9try") == "r\u00e9try"


def test_a_character_that_is_not_printable_is_named() -> None:
    with pytest.raises(InvalidIdentifier, match="got U\\+D800 at position 1"):
        check_label("provider id", "a\ud800")
    with pytest.raises(InvalidIdentifier, match="got U\\+200B at position 0"):
        check_idempotency_key("\u200bk")


def test_a_lone_space_is_refused_as_edge_white_space() -> None:
    with pytest.raises(InvalidIdentifier, match=r"idempotency key ' ' must not start or end"):
        check_idempotency_key(" ")


def test_ids_pass_through_their_checks_unchanged() -> None:
    tenant = TenantId("acme")
    session = SessionId.generate(Timestamp(0))
    assert check_tenant_id("tenant_id", tenant) is tenant
    assert check_session_id("session_id", session) is session


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("acme", "owner must be a TenantId, got str 'acme'; wrap it: TenantId('acme')"),
        (7, "owner must be a TenantId, got int 7"),
        ("x" * 100, "got str '" + "x" * 79 + "...; wrap it: TenantId('" + "x" * 80 + "')"),
    ],
)
def test_a_tenant_id_of_another_type_is_named(value: object, says: str) -> None:
    with pytest.raises(InvalidIdentifier) as refused:
        check_tenant_id("owner", value)
    assert says in str(refused.value)


def test_a_session_id_of_another_type_says_how_to_make_one() -> None:
    raw = uuid.UUID(int=5)
    with pytest.raises(
        InvalidIdentifier, match=r"got UUID UUID\('.*'\); wrap it: SessionId\(value\)"
    ):
        check_session_id("session_id", raw)
    with pytest.raises(InvalidIdentifier, match=r"parse it: SessionId\.parse\('abc'\)"):
        check_session_id("session_id", "abc")

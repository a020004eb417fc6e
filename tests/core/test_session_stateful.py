"""Random sequences of operations, wrong ones included, against a simple model.

The model is a dictionary per handle: its state name (or "consumed"), rounds,
delta tokens and the time of its last transition. Every call's outcome (value or
exact error class) and every count must agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from llmsession import (
    MAX_TOKENS,
    ConsumedSessionError,
    InvalidTimestamp,
    InvalidTokenCount,
    LLMSessionError,
    Session,
    SessionId,
    SessionRecord,
    TenantId,
    Timestamp,
    TokenOverflow,
    TransitionOrderError,
    WrongStateError,
)

T0 = Timestamp(1_764_000_000_000_000)

token_counts = st.one_of(
    st.integers(0, 10_000),
    st.integers(0, MAX_TOKENS),
    st.sampled_from([MAX_TOKENS, MAX_TOKENS - 1, 0]),
)
bad_counts = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=MAX_TOKENS + 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)
offsets = st.integers(-5_000_000, 50_000_000)  # microseconds; negative goes back in time


@dataclass
class Model:
    state: str
    initial: int
    rounds: int = 0
    delta: int = 0
    last_time: int = T0.epoch_micros
    consumed_by: str = ""


@dataclass
class Handle:
    session: Any  # Session in some state; the model says which
    model: Model


class SessionMachine(RuleBasedStateMachine):
    handles = Bundle("handles")

    def __init__(self) -> None:
        super().__init__()
        self.alive: list[Handle] = []

    def expect(self, handle: Handle, method: str, needs: str, call: Any) -> Any:
        model = handle.model
        if model.state == "consumed":
            try:
                call()
            except ConsumedSessionError as error:
                assert error.method == method
                assert error.consumed_by == model.consumed_by
                return None
            raise AssertionError(f"{method} on a consumed handle did not raise")
        if model.state != needs:
            try:
                call()
            except WrongStateError as error:
                assert (error.method, error.required, error.actual) == (method, needs, model.state)
                return None
            raise AssertionError(f"{method} in state {model.state} did not raise")
        return call

    @rule(target=handles, initial=token_counts)
    def new(self, initial: int) -> Handle:
        record = SessionRecord.new(
            session_id=SessionId.generate(T0),
            tenant_id=TenantId("t"),
            provider_id="p",
            model="m",
            initial_tokens=initial,
            created_at=T0,
        )
        handle = Handle(Session.new(record), Model("created", initial))
        self.alive.append(handle)
        return handle

    def transition(self, handle: Handle, method: str, needs: str, to: str, offset: int) -> Any:
        when = Timestamp(handle.model.last_time + offset)
        call = self.expect(handle, method, needs, lambda: getattr(handle.session, method)(when))
        if call is None:
            return None
        if offset < 0:
            try:
                call()
            except TransitionOrderError:
                return None
            raise AssertionError(f"{method} dated before the last transition did not raise")
        successor = call()
        model = handle.model
        successor_model = Model(to, model.initial, model.rounds, model.delta, when.epoch_micros)
        model.state, model.consumed_by = "consumed", method
        new_handle = Handle(successor, successor_model)
        self.alive.append(new_handle)
        return new_handle

    @rule(target=handles, handle=handles, offset=offsets)
    def activate(self, handle: Handle, offset: int) -> Any:
        return self.transition(handle, "activate", "created", "active", offset) or handle

    @rule(target=handles, handle=handles, offset=offsets)
    def close(self, handle: Handle, offset: int) -> Any:
        return self.transition(handle, "close", "active", "closed", offset) or handle

    @rule(target=handles, handle=handles, offset=offsets)
    def expire(self, handle: Handle, offset: int) -> Any:
        return self.transition(handle, "expire", "active", "expired", offset) or handle

    @rule(handle=handles, delta=token_counts)
    def record_delta(self, handle: Handle, delta: int) -> None:
        call = self.expect(
            handle, "record_delta", "active", lambda: handle.session.record_delta(delta)
        )
        if call is None:
            return
        model = handle.model
        rounds, total = model.rounds + 1, model.delta + delta
        if total > MAX_TOKENS or rounds * model.initial > MAX_TOKENS:
            try:
                call()
            except TokenOverflow:
                return
            raise AssertionError("an overflowing record_delta did not raise")
        call()
        model.rounds, model.delta = rounds, total

    @rule(handle=handles, delta=bad_counts)
    def record_bad_delta(self, handle: Handle, delta: object) -> None:
        call = self.expect(
            handle, "record_delta", "active", lambda: handle.session.record_delta(delta)
        )
        if call is not None:
            try:
                call()
            except InvalidTokenCount:
                return
            raise AssertionError(f"record_delta({delta!r}) did not raise")

    @rule(handle=handles)
    def record_a_datetime_transition(self, handle: Handle) -> None:
        if handle.model.state == "active":
            try:
                handle.session.close(T0.to_datetime())
            except InvalidTimestamp:
                return
            raise AssertionError("close(datetime) did not raise")

    @rule(handle=handles)
    def tokens_saved(self, handle: Handle) -> None:
        call = self.expect(handle, "tokens_saved", "active", handle.session.tokens_saved)
        if call is not None:
            model = handle.model
            assert call() == max(0, model.rounds * model.initial - model.delta)

    @rule(target=handles, handle=handles)
    def copy(self, handle: Handle) -> Any:
        if handle.model.state == "consumed":
            try:
                handle.session.copy()
            except ConsumedSessionError:
                return handle
            raise AssertionError("copy of a consumed handle did not raise")
        model = handle.model
        twin = Handle(handle.session.copy(), Model(**vars(model)))
        self.alive.append(twin)
        return twin

    @rule(handle=consumes(handles))
    def into_data(self, handle: Handle) -> None:
        model = handle.model
        if model.state == "consumed":
            try:
                handle.session.into_data()
            except ConsumedSessionError:
                return
            raise AssertionError("into_data of a consumed handle did not raise")
        record = handle.session.into_data()
        assert record.state.name == model.state
        assert (record.round_count, record.delta_tokens) == (model.rounds, model.delta)
        assert SessionRecord.from_dict(record.to_dict()) == record
        model.state, model.consumed_by = "consumed", "into_data"

    @invariant()
    def counts_match_the_model(self) -> None:
        for handle in self.alive:
            model = handle.model
            if model.state == "consumed":
                try:
                    handle.session.round_count()
                except ConsumedSessionError:
                    continue
                raise AssertionError("a consumed handle still answered")
            record = handle.session.data()
            # Transitions build records without validating them again
            # (record.derive); the validating constructor must agree.
            assert (
                SessionRecord(**{f.name: getattr(record, f.name) for f in fields(record)}) == record
            )
            assert record.state.name == model.state
            assert handle.session.round_count() == model.rounds
            assert record.delta_tokens == model.delta
            assert record.tokens_saved == max(0, model.rounds * model.initial - model.delta)

    @invariant()
    def errors_are_all_ours(self) -> None:
        assert issubclass(WrongStateError, LLMSessionError)


SessionMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestSessionMachine = SessionMachine.TestCase

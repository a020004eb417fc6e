"""Usage: the normalized fields, their checks, and the round's delta."""

from __future__ import annotations

import pytest

from llmsession.errors import InvalidInput, InvalidTokenCount
from llmsession.gateway import Usage


def test_delta_is_what_the_provider_processed_anew() -> None:
    usage = Usage(input_tokens=2000, cached_input_tokens=1792, output_tokens=40, raw={"a": 1})
    assert usage.delta_tokens == 208
    assert usage.to_dict()["raw"] == {"a": 1}


def test_cached_and_written_input_cannot_exceed_all_input() -> None:
    with pytest.raises(InvalidInput, match="input_tokens must count all input"):
        Usage(input_tokens=10, cached_input_tokens=8, cache_write_tokens=3)


@pytest.mark.parametrize("bad", [-1, 1.5, True, 2**63, "3"])
def test_counts_are_token_counts(bad: object) -> None:
    with pytest.raises(InvalidTokenCount, match="output_tokens"):
        Usage(input_tokens=1, output_tokens=bad)  # type: ignore[arg-type]

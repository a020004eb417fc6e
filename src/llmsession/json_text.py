"""JSON that ``json`` reads but no Unicode text holds: a lone UTF-16 surrogate.

JSON may escape half a surrogate pair (``"\\ud83d"`` alone, as a client that cuts a
string inside an emoji writes it); ``json`` reads it into a str that cannot be
written as UTF-8, so neither an upstream body, nor a stored item, nor an answer
could hold it. The gateway and the fake provider refuse such a request before
anything writes it.
"""

from __future__ import annotations

import json
import re
from typing import Final

__all__ = ["holds_lone_surrogate"]

#: A JSON escape of a UTF-16 surrogate (\\ud800 to \\udfff), paired or not.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")


def holds_lone_surrogate(raw: bytes, value: object) -> bool:
    """Whether ``value``, read from the JSON ``raw``, holds a lone surrogate.

    Only a body that holds a surrogate escape (or is not UTF-8, where the escape
    could not be seen in the bytes) is written again to find out; a RecursionError
    from that writing goes to the caller.
    """
    if _SURROGATE_ESCAPE.search(raw) is None and json.detect_encoding(raw) in (
        "utf-8",
        "utf-8-sig",
    ):
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False

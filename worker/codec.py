"""JSON in and out of the hot path: orjson, with the standard library behind it for what orjson refuses.

Every poll reads a 50-task upstream answer and writes records and events; orjson does both in well
under half the time of ``json``. Its output is compact UTF-8 bytes (Redis and aiohttp take bytes).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON.

    orjson refuses a dict key that is not a string (a Python caller's ``meta`` may hold one), an
    integer past 64 bits and a lone surrogate in a string (``\\ud83d``, from text cut between the
    halves of an emoji); ``json`` writes those, the last one escaped, so nothing that ``json`` can
    write is refused here.
    """
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":")).encode()


def loads(data: bytes | str) -> Any:
    """JSON text as Python values.

    What orjson refuses but ``json`` reads (NaN and Infinity, which are not JSON) is read by
    ``json``, as null, so an answer with one odd number in a field acetrack ignores still counts.

    Raises:
        ValueError: the text is not JSON at all.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data, parse_constant=lambda _: None, parse_int=_int64)


def _int64(text: str) -> int | float:
    # as orjson reads a larger integer (a float): the same answer reads the same either way. Intake
    # refuses a larger integer in ``meta``, so no stored value changes on its way back
    number = int(text)
    return number if -(2**63) <= number < 2**64 else float(number)

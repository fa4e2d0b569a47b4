"""``codec``: orjson's speed without refusing what the standard library's ``json`` reads or writes."""

from __future__ import annotations

import json

import pytest

from worker import codec
from worker.api import UpstreamClient
from worker.errors import UpstreamUnavailable


def test_ordinary_values_read_and_write_as_json_does() -> None:
    value = {"id": "t1", "n": [1, 2.5, None, True], "s": "héllo ✓", "nested": {"a": {}}}
    assert codec.loads(codec.dumps(value)) == value == json.loads(json.dumps(value))
    assert codec.dumps({"a": [1, 2]}) == b'{"a":[1,2]}'  # compact, as stored


def test_nan_and_infinity_read_as_null_and_the_rest_is_kept() -> None:
    body = b'{"items": [{"id": "t1", "duration": NaN, "progress": Infinity, "big": 123456789012345678901234567890}]}'
    item = codec.loads(body)["items"][0]
    assert item["id"] == "t1" and item["duration"] is None and item["progress"] is None
    assert item["big"] == pytest.approx(1.2345678901234568e29)
    codec.dumps(item)  # what was read can be written back


def test_what_orjson_cannot_write_is_written_by_json() -> None:
    assert json.loads(codec.dumps({"big": 2**70, "keys": {1: "a"}})) == {"big": 2**70, "keys": {"1": "a"}}
    # half an emoji (text cut between UTF-16 halves upstream): orjson refuses it both ways
    half = {"title": "song \ud83d", "n": 1}
    assert codec.loads(codec.dumps(half)) == half
    assert codec.loads(b'{"title": "song \\ud83d"}') == {"title": "song \ud83d"}


@pytest.mark.parametrize("body", [b"{", b"not json", b"\xff\xfe", b"[1,]"])
def test_text_that_is_not_json_is_an_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        codec.loads(body)


def test_an_upstream_answer_with_an_odd_number_is_still_an_answer_and_garbage_is_an_outage() -> None:
    assert UpstreamClient._decode(b'{"items": [], "x": NaN}', 200, "suno retrieve_batch") == {"items": [], "x": None}
    assert UpstreamClient._decode(b"", 200, "suno retrieve_batch") == {}
    with pytest.raises(UpstreamUnavailable, match="unreadable JSON"):
        UpstreamClient._decode(b"<html>", 200, "suno retrieve_batch")
    assert UpstreamClient._decode(b"<html>", 502, "suno retrieve_batch") == {}

"""The intake rules of DESIGN.md §2 (``worker.intake.build_request``): good and bad, row by row."""

from __future__ import annotations

import json
from typing import Any

import pytest

from worker.errors import InvalidInput
from worker.intake import DEFAULT_TOKEN, MAX_META_BYTES, EnqueueRequest, build_request

Json = dict[str, Any]

SUNO_ID = "eae26f89-b64b-404d-a80c-761996660b1c"
BASE: Json = {"service": "suno", "id": SUNO_ID}
HOOK = "https://hooks.example.com/acetrack"
TOKENS = frozenset({"default", "fast"})
SERVICES = frozenset({"suno", "producer"})


def fields(**extra: Any) -> Json:
    """The minimal good request plus (or overriding) ``extra``."""
    return {**BASE, **extra}


def long_url(length: int) -> str:
    """An https URL of exactly ``length`` characters."""
    head = "https://hooks.example.com/"
    return head + "a" * (length - len(head))


def meta_of_size(size: int) -> str:
    """A compact JSON object of exactly ``size`` bytes."""
    return json.dumps({"k": "x" * (size - len('{"k":""}'))}, separators=(",", ":"))


GOOD_CASES = [
    # fields, build_request kwargs, the expected request (as a partial dict over the defaults)
    pytest.param(fields(), {}, {}, id="minimal"),
    pytest.param({"service": "producer", "id": "a"}, {}, {"service": "producer", "id": "a"}, id="one-char-id"),
    pytest.param(fields(id="x" * 128), {}, {"id": "x" * 128}, id="128-char-id"),
    pytest.param(fields(id="A.b_c:d-9"), {}, {"id": "A.b_c:d-9"}, id="every-id-char-class"),
    pytest.param(fields(service="k" * 32), {}, {"service": "k" * 32}, id="32-char-service"),
    pytest.param(fields(service="0-luma"), {}, {"service": "0-luma"}, id="digit-first-and-dash"),
    pytest.param(fields(service="luma"), {}, {"service": "luma"}, id="any-valid-service-without-allow-list"),
    pytest.param(fields(service="producer"), {"services": SERVICES}, {"service": "producer"}, id="in-allow-list"),
    pytest.param(fields(callback_url=HOOK), {}, {"callback_url": HOOK}, id="https-callback"),
    pytest.param(fields(callback_url="http://h.example"), {}, {"callback_url": "http://h.example"}, id="http-cb"),
    pytest.param(fields(callback_url=long_url(2048)), {}, {"callback_url": long_url(2048)}, id="2048-char-callback"),
    pytest.param(fields(callback_url=""), {}, {}, id="empty-callback-is-none"),
    pytest.param(fields(deadline_s="1"), {}, {"deadline_s": 1.0}, id="deadline-min"),
    pytest.param(fields(deadline_s="604800"), {}, {"deadline_s": 604800.0}, id="deadline-max"),
    pytest.param(fields(deadline_s="90.5"), {}, {"deadline_s": 90.5}, id="deadline-fraction"),
    pytest.param(fields(deadline_s="1e3"), {}, {"deadline_s": 1000.0}, id="deadline-exponent"),
    pytest.param(fields(deadline_s=30), {}, {"deadline_s": 30.0}, id="deadline-native-number"),
    pytest.param(fields(deadline_s=""), {}, {}, id="deadline-empty-is-none"),
    pytest.param(fields(token=""), {"tokens": TOKENS}, {}, id="token-empty-is-default"),
    pytest.param(fields(token="fast"), {"tokens": TOKENS}, {"token": "fast"}, id="token-known"),
    pytest.param(fields(token="anything"), {"tokens": None}, {"token": "anything"}, id="token-unchecked"),
    pytest.param(fields(meta='{"song": "intro"}'), {}, {"meta": {"song": "intro"}}, id="meta-json-text"),
    pytest.param(fields(meta={"n": [1, 2]}), {}, {"meta": {"n": [1, 2]}}, id="meta-native-object"),
    pytest.param(fields(meta="{}"), {}, {"meta": {}}, id="meta-empty-object"),
    pytest.param(fields(meta=""), {}, {}, id="meta-empty-is-none"),
    pytest.param(
        fields(meta=meta_of_size(MAX_META_BYTES)),
        {},
        {"meta": json.loads(meta_of_size(MAX_META_BYTES))},
        id="meta-4096-bytes",
    ),
    *[
        pytest.param(fields(reopen=value), {}, {"reopen": expected}, id=f"reopen-{value!r}")
        for value, expected in [("1", True), ("0", False), ("", False), (1, True), (0, False), (True, True)]
    ],
    pytest.param(
        {
            "service": "producer",
            "id": "1a6ac2ad-10f2-4e2b-b500-66ec27fe82ad",
            "callback_url": HOOK,
            "deadline_s": "600",
            "token": "fast",
            "meta": '{"a": 1}',
            "reopen": "1",
        },
        {"services": SERVICES, "tokens": TOKENS},
        {
            "service": "producer",
            "id": "1a6ac2ad-10f2-4e2b-b500-66ec27fe82ad",
            "callback_url": HOOK,
            "deadline_s": 600.0,
            "token": "fast",
            "meta": {"a": 1},
            "reopen": True,
        },
        id="every-field",
    ),
]


@pytest.mark.parametrize(("given", "kwargs", "expected"), GOOD_CASES)
def test_build_request_good(given: Json, kwargs: Json, expected: Json) -> None:
    defaults = {"callback_url": None, "deadline_s": None, "token": DEFAULT_TOKEN, "meta": None, "reopen": False}
    assert build_request(given, **kwargs) == EnqueueRequest(**{**BASE, **defaults, **expected})


BAD_CASES = [
    # fields, build_request kwargs, the field named, words the message must contain
    pytest.param({}, {}, "service", "service is required", id="empty-request"),
    pytest.param({"id": SUNO_ID}, {}, "service", "service is required", id="service-missing"),
    pytest.param(fields(service=""), {}, "service", "service is required", id="service-empty"),
    pytest.param(fields(service=None), {}, "service", "service is required", id="service-null"),
    pytest.param({"service": "suno"}, {}, "id", "id is required", id="id-missing"),
    pytest.param(fields(id=""), {}, "id", "id is required", id="id-empty"),
    pytest.param(fields(id="x" * 129), {}, "id", "1-128 characters", id="id-129-chars"),
    *[
        pytest.param(fields(id=bad), {}, "id", "1-128 characters", id=f"id-bad-char-{i}")
        for i, bad in enumerate(["a b", "a/b", "héllo", "a*b", "a\tb", "a?b", "täsk"])
    ],
    pytest.param(fields(id=123), {}, "id", "1-128 characters", id="id-not-a-string"),
    *[
        pytest.param(fields(service=bad), {}, "service", "must match", id=f"service-bad-{i}")
        for i, bad in enumerate(["Suno", "-suno", "suno_x", "s" * 33, "su no", "suno/../x", "sunö", 5])
    ],
    pytest.param(
        fields(service="luma"), {"services": SERVICES}, "service", "not in ACETRACK_SERVICES", id="service-not-allowed"
    ),
    pytest.param(fields(priority="1"), {}, "priority", "unknown field", id="unknown-field"),
    pytest.param(fields(b="1", a="2"), {}, "a", "unknown field(s) ['a', 'b']", id="unknown-fields-sorted"),
    pytest.param({"service": "Bad!", "zzz": "1"}, {}, "zzz", "unknown field", id="unknown-field-checked-first"),
    pytest.param(fields(callback_url="ftp://hooks.example.com/x"), {}, "callback_url", "http://", id="cb-ftp"),
    pytest.param(fields(callback_url="javascript:alert(1)"), {}, "callback_url", "https://", id="cb-javascript"),
    pytest.param(fields(callback_url="hooks.example.com/x"), {}, "callback_url", "http://", id="cb-no-scheme"),
    pytest.param(fields(callback_url="https://"), {}, "callback_url", "with a host", id="cb-no-host"),
    pytest.param(fields(callback_url=long_url(2049)), {}, "callback_url", "at most 2048", id="cb-2049-chars"),
    pytest.param(fields(callback_url=42), {}, "callback_url", "must be a string", id="cb-not-a-string"),
    *[
        pytest.param(fields(deadline_s=bad), {}, "deadline_s", "from 1 to 604800", id=f"deadline-{bad!r}")
        for bad in [0, "0", 604801, "604801", "abc", -1, 0.5, "nan", "inf", True, [60]]
    ],
    # as typed: the CLI hands --deadline-s 0 over as 0.0
    pytest.param(fields(deadline_s=0.0), {}, "deadline_s", "deadline_s 0 must be", id="deadline-float-shown-as-typed"),
    pytest.param(
        fields(deadline_s=604800.4), {}, "deadline_s", "deadline_s 604800.4 must", id="deadline-float-unrounded"
    ),
    pytest.param(fields(token="other"), {"tokens": TOKENS}, "token", "not a configured token name", id="token-unknown"),
    pytest.param(fields(token=5), {}, "token", "not a configured token name", id="token-not-a-string"),
    pytest.param(fields(meta="not json"), {}, "meta", "not valid JSON", id="meta-not-json"),
    pytest.param(fields(meta="{'a': 1}"), {}, "meta", "not valid JSON", id="meta-python-repr"),
    pytest.param(fields(meta="[1, 2]"), {}, "meta", "must be a JSON object", id="meta-json-list"),
    pytest.param(fields(meta=[1, 2]), {}, "meta", "must be a JSON object", id="meta-native-list"),
    pytest.param(fields(meta="42"), {}, "meta", "must be a JSON object", id="meta-number"),
    pytest.param(fields(meta='{"n": 123456789012345678901}'), {}, "meta", "beyond 64 bits", id="meta-huge-int-text"),
    pytest.param(fields(meta={"n": [1, -(2**64)]}), {}, "meta", "send it as a string", id="meta-huge-int-native"),
    pytest.param(fields(meta="null"), {}, "meta", "must be a JSON object", id="meta-null-text"),
    pytest.param(fields(meta=meta_of_size(MAX_META_BYTES + 1)), {}, "meta", "4097 bytes", id="meta-4097-bytes"),
    pytest.param(fields(meta={"k": "x" * 5000}), {}, "meta", "bytes", id="meta-large-object"),
    *[
        pytest.param(fields(reopen=bad), {}, "reopen", "must be 1 or 0", id=f"reopen-{bad!r}")
        for bad in ["2", "true", "yes", 2, -1, "01"]
    ],
]


@pytest.mark.parametrize(("given", "kwargs", "field", "words"), BAD_CASES)
def test_build_request_bad(given: Json, kwargs: Json, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_request(given, **kwargs)
    assert caught.value.field == field
    assert words in caught.value.message
    assert str(caught.value) == caught.value.message
    assert repr(field) in repr(caught.value)


SHOWN_CASES = [
    pytest.param(fields(service="Suno"), "'Suno'", id="service-value-shown"),
    pytest.param(fields(id="a b"), "'a b'", id="id-value-shown"),
    pytest.param(fields(id="y" * 200), "'" + "y" * 40 + "...'", id="long-id-shortened"),
    pytest.param(fields(deadline_s="abc"), "'abc'", id="deadline-value-shown"),
    pytest.param(fields(reopen="2"), "'2'", id="reopen-value-shown"),
]


@pytest.mark.parametrize(("given", "shown"), SHOWN_CASES)
def test_message_quotes_the_bad_value(given: Json, shown: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_request(given)
    assert shown in caught.value.message
    assert len(caught.value.message) < 300


NEWLINE_CASES = [
    pytest.param(fields(id=SUNO_ID + "\n"), "id", id="id-trailing-newline"),
    pytest.param(fields(id="x" * 128 + "\n"), "id", id="id-129-chars-with-newline"),
    pytest.param(fields(service="suno\n"), "service", id="service-trailing-newline"),
]


@pytest.mark.parametrize(("given", "field"), NEWLINE_CASES)
def test_trailing_newline_is_rejected(given: Json, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_request(given)
    assert caught.value.field == field

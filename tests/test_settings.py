"""``config.settings.Settings`` (DESIGN.md §6): kwargs and ``ACETRACK_*`` variables, good and bad."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from config.settings import Settings, misspelt_settings, parse_redis_url
from worker.arq_settings import settings_error
from worker.parts import cadence_for

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SCHEDULE = [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
SENTINEL = "redis+sentinel://s1:26379,s2:26379/mymaster/0"

MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(monkeypatch: pytest.MonkeyPatch) -> MakeSettings:
    """``make_settings(env={...}, **kwargs)``: a ``Settings`` from a clean environment plus ``env``."""
    for name in list(os.environ):
        if name.upper().startswith("ACETRACK_"):
            monkeypatch.delenv(name)

    def make(env: dict[str, str] | None = None, **kwargs: Any) -> Settings:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        # _env_file=None: never read a stray .env; passed via ** as mypy has no pydantic plugin here
        return Settings(**{"_env_file": None, **kwargs})

    return make


def test_defaults(make_settings: MakeSettings) -> None:
    s = make_settings()
    assert s.redis_url is None
    assert s.api_base_url == "https://api.acedata.cloud"
    assert (s.key_prefix, s.batch_size, s.poll_s, s.max_poll_s, s.deadline_s) == ("acetrack", 50, 3.0, 60.0, 1800.0)
    assert s.services == [] and s.hooks == [] and s.webhook_urls == [] and s.webhook_allow_hosts == []
    assert s.hook_events == s.webhook_events == ["task.succeeded", "task.failed"]
    assert s.webhook_schedule_s == DEFAULT_SCHEDULE
    assert (s.http_port, s.worker_metrics_port, s.log_level, s.log_json) == (8080, 0, "INFO", False)
    assert s.rate_limit_rps < 60  # under the documented per-token limit
    assert s.tokens() == {}


ENV_CASES = [
    # environment, attribute, expected value
    pytest.param({"ACETRACK_SERVICES": "suno, producer"}, "services", ["suno", "producer"], id="services"),
    pytest.param({"ACETRACK_SERVICES": "suno,,producer,"}, "services", ["suno", "producer"], id="services-blanks"),
    pytest.param({"ACETRACK_SERVICES": ""}, "services", [], id="services-empty-means-any"),
    pytest.param(
        {"ACETRACK_HOOKS": "pkg.mod:fn, other.mod:hook"}, "hooks", ["pkg.mod:fn", "other.mod:hook"], id="hooks"
    ),
    pytest.param(
        {"ACETRACK_HOOK_EVENTS": "task.succeeded,clip.succeeded,task.progress"},
        "hook_events",
        ["task.succeeded", "clip.succeeded", "task.progress"],
        id="hook-events",
    ),
    pytest.param(
        {"ACETRACK_WEBHOOK_EVENTS": "task.failed, clip.succeeded"},
        "webhook_events",
        ["task.failed", "clip.succeeded"],
        id="webhook-events",
    ),
    pytest.param(
        {"ACETRACK_WEBHOOK_SCHEDULE_S": "0, 1.5,300"}, "webhook_schedule_s", [0.0, 1.5, 300.0], id="schedule-floats"
    ),
    pytest.param(
        {"ACETRACK_WEBHOOK_URLS": "https://a.example/h,https://b.example/h"},
        "webhook_urls",
        ["https://a.example/h", "https://b.example/h"],
        id="webhook-urls",
    ),
    pytest.param(
        {"ACETRACK_WEBHOOK_ALLOW_HOSTS": "localhost, hooks.internal"},
        "webhook_allow_hosts",
        ["localhost", "hooks.internal"],
        id="allow-hosts",
    ),
    pytest.param({"ACETRACK_BATCH_SIZE": "10"}, "batch_size", 10, id="batch-size"),
    pytest.param({"acetrack_batch_size": "11"}, "batch_size", 11, id="prefix-case-insensitive"),
    pytest.param({"BATCH_SIZE": "7"}, "batch_size", 50, id="no-prefix-ignored"),
    pytest.param({"REDIS_URL": "redis://elsewhere:6379"}, "redis_url", None, id="no-prefix-redis-ignored"),
    pytest.param({"ACETRACK_POLL_S": "0.5", "ACETRACK_MAX_POLL_S": "2"}, "max_poll_s", 2.0, id="scaled-cadence"),
    pytest.param({"ACETRACK_KEY_PREFIX": "bench"}, "key_prefix", "bench", id="key-prefix"),
    pytest.param({"ACETRACK_DEADLINE_S": "60"}, "deadline_s", 60.0, id="deadline"),
    pytest.param({"ACETRACK_NOT_FOUND_GRACE_S": "5"}, "not_found_grace_s", 5.0, id="grace"),
    pytest.param(
        {"ACETRACK_API_BASE_URL": "http://127.0.0.1:8081"}, "api_base_url", "http://127.0.0.1:8081", id="base"
    ),
    pytest.param({"ACETRACK_HTTP_PORT": "9090"}, "http_port", 9090, id="http-port"),
    pytest.param({"ACETRACK_WORKER_METRICS_PORT": "9100"}, "worker_metrics_port", 9100, id="metrics-port"),
    pytest.param({"ACETRACK_LOG_LEVEL": "debug"}, "log_level", "DEBUG", id="log-level-upper-cased"),
    pytest.param({"ACETRACK_LOG_LEVEL": "Warning"}, "log_level", "WARNING", id="log-level-mixed-case"),
    pytest.param({"ACETRACK_LOG_JSON": "true"}, "log_json", True, id="log-json-true"),
    pytest.param({"ACETRACK_LOG_JSON": "0"}, "log_json", False, id="log-json-0"),
    pytest.param({"ACETRACK_REDIS_URL": "redis://localhost:6379/0"}, "redis_url", "redis://localhost:6379/0", id="r"),
    pytest.param({"ACETRACK_REDIS_URL": SENTINEL}, "redis_url", SENTINEL, id="redis-sentinel"),
    pytest.param({"ACETRACK_REDIS_URL": ""}, "redis_url", None, id="redis-empty-is-unset"),
]


@pytest.mark.parametrize(("env", "attr", "expected"), ENV_CASES)
def test_from_env(make_settings: MakeSettings, env: dict[str, str], attr: str, expected: Any) -> None:
    assert getattr(make_settings(env), attr) == expected


KWARG_CASES = [
    pytest.param({"services": "suno,producer"}, "services", ["suno", "producer"], id="services-csv"),
    pytest.param({"services": ["suno"]}, "services", ["suno"], id="services-list"),
    pytest.param({"webhook_schedule_s": "1, 2.5"}, "webhook_schedule_s", [1.0, 2.5], id="schedule-csv"),
    pytest.param({"webhook_schedule_s": [0, 10]}, "webhook_schedule_s", [0.0, 10.0], id="schedule-list"),
    pytest.param({"poll_s": 0.1, "max_poll_s": 0.1}, "max_poll_s", 0.1, id="max-equals-poll"),
    pytest.param({"log_level": "error"}, "log_level", "ERROR", id="log-level"),
    pytest.param({"redis_url": "rediss://:pw@redis.example:6380/1"}, "redis_url", "rediss://:pw@redis.example:6380/1"),
]


@pytest.mark.parametrize(("kwargs", "attr", "expected"), KWARG_CASES)
def test_from_kwargs(make_settings: MakeSettings, kwargs: dict[str, Any], attr: str, expected: Any) -> None:
    assert getattr(make_settings(**kwargs), attr) == expected


def test_kwargs_beat_env(make_settings: MakeSettings) -> None:
    assert make_settings({"ACETRACK_BATCH_SIZE": "10"}, batch_size=20).batch_size == 20


TOKEN_CASES = [
    # environment, kwargs, tokens()
    pytest.param({}, {}, {}, id="none"),
    pytest.param({"ACETRACK_API_TOKEN": "tok-d"}, {}, {"default": "tok-d"}, id="default-from-env"),
    pytest.param(
        {"ACETRACK_API_TOKENS": '{"fast": "tok-f", "slow": "tok-s"}'},
        {},
        {"fast": "tok-f", "slow": "tok-s"},
        id="named-json",
    ),
    pytest.param(
        {"ACETRACK_API_TOKEN": "tok-d", "ACETRACK_API_TOKENS": '{"fast": "tok-f"}'},
        {},
        {"default": "tok-d", "fast": "tok-f"},
        id="default-and-named",
    ),
    pytest.param({"ACETRACK_API_TOKENS": '{"default": "tok-x"}'}, {}, {"default": "tok-x"}, id="default-in-json"),
    pytest.param(
        {"ACETRACK_API_TOKEN": "tok-d", "ACETRACK_API_TOKENS": '{"default": "tok-x"}'},
        {},
        {"default": "tok-d"},
        id="api-token-is-the-default",
    ),
    pytest.param({}, {"api_tokens": '{"a": "tok-a"}'}, {"a": "tok-a"}, id="kwargs-json-text"),
    pytest.param({}, {"api_tokens": {"a": "tok-a"}, "api_token": "tok-d"}, {"a": "tok-a", "default": "tok-d"}, id="kw"),
    pytest.param({}, {"api_tokens": "  "}, {}, id="kwargs-blank"),
]


@pytest.mark.parametrize(("env", "kwargs", "expected"), TOKEN_CASES)
def test_tokens(make_settings: MakeSettings, env: dict[str, str], kwargs: dict[str, Any], expected: Any) -> None:
    s = make_settings(env, **kwargs)
    assert s.tokens() == expected
    for secret in expected.values():
        assert secret not in repr(s) and secret not in str(s.model_dump())


def test_empty_api_tokens_env_means_none(make_settings: MakeSettings) -> None:
    assert make_settings({"ACETRACK_API_TOKENS": ""}).tokens() == {}


def test_bad_api_tokens_env_gets_the_friendly_message(make_settings: MakeSettings) -> None:
    with pytest.raises(ValidationError, match="api_tokens must be a JSON object"):
        make_settings({"ACETRACK_API_TOKENS": "fast=tok-f"})


def test_bad_api_tokens_env_is_refused(make_settings: MakeSettings) -> None:
    with pytest.raises((ValidationError, SettingsError), match="api_tokens"):
        make_settings({"ACETRACK_API_TOKENS": "fast=tok-f"})


BAD_CASES = [
    # environment, kwargs, words in the error
    pytest.param({"ACETRACK_REDIS_URL": "http://localhost:6379"}, {}, "'http://localhost:6379' must start", id="http"),
    pytest.param({"ACETRACK_REDIS_URL": "localhost:6379"}, {}, "'localhost:6379' must start with", id="no-scheme"),
    pytest.param({}, {"redis_url": "mongodb://db:27017"}, "'mongodb://db:27017' must start with", id="mongodb"),
    pytest.param({}, {"redis_url": "redis://"}, "'redis://' has no host", id="no-host"),
    pytest.param({}, {"redis_url": "redis+sentinel://s1:26379"}, "needs a service name", id="sentinel-no-service"),
    pytest.param({}, {"redis_url": "redis+sentinel://s1:26379/"}, "needs a service name", id="sentinel-slash"),
    pytest.param(
        {"ACETRACK_POLL_S": "3", "ACETRACK_MAX_POLL_S": "2"}, {}, "must be at least ACETRACK_POLL_S", id="max<poll"
    ),
    pytest.param(
        {},
        {"poll_s": 10, "max_poll_s": 9.5},
        "ACETRACK_MAX_POLL_S (9.5) must be at least ACETRACK_POLL_S (10.0)",
        id="kw",
    ),
    pytest.param({"ACETRACK_HOOK_EVENTS": "task.succeeded,task.done"}, {}, "unknown event types ['task.done']"),
    pytest.param({"ACETRACK_WEBHOOK_EVENTS": "clip.failed"}, {}, "unknown event types ['clip.failed']", id="wh-ev"),
    pytest.param({"ACETRACK_SERVICES": "suno,Producer"}, {}, "service names ['Producer'] must match", id="service"),
    pytest.param({"ACETRACK_SERVICES": "suno_v2"}, {}, "must match", id="service-underscore"),
    pytest.param({"ACETRACK_LOG_LEVEL": "verbose"}, {}, "log level 'verbose'", id="log-level"),
    pytest.param({}, {"api_tokens": "fast=tok-f"}, "api_tokens must be a JSON object", id="tokens-not-json-kwarg"),
    pytest.param({"ACETRACK_API_TOKENS": '["tok"]'}, {}, "api_tokens", id="tokens-list"),
    pytest.param({"ACETRACK_WEBHOOK_SCHEDULE_S": "0,soon"}, {}, "webhook_schedule_s", id="schedule-not-number"),
    pytest.param({"ACETRACK_BATCH_SIZE": "0"}, {}, "batch_size", id="batch-0"),
    pytest.param({"ACETRACK_BATCH_SIZE": "501"}, {}, "batch_size", id="batch-501"),
    pytest.param({"ACETRACK_POLL_S": "0"}, {}, "poll_s", id="poll-0"),
    pytest.param({"ACETRACK_DEADLINE_S": "0"}, {}, "deadline_s", id="deadline-0"),
    pytest.param({"ACETRACK_DEADLINE_S": "604801"}, {}, "deadline_s", id="deadline-over-7-days"),
    pytest.param({"ACETRACK_HTTP_PORT": "70000"}, {}, "http_port", id="port"),
    pytest.param({"ACETRACK_LOG_JSON": "maybe"}, {}, "log_json", id="log-json"),
    pytest.param({"ACETRACK_API_BASE_URL": "127.0.0.1:8090"}, {}, "must be an http:// or https:// URL", id="base"),
    pytest.param({"ACETRACK_API_BASE_URL": "http://h:70000"}, {}, "port '70000' must be", id="base-port"),
    pytest.param({"ACETRACK_WEBHOOK_URLS": "https://ok,ftp://x"}, {}, "'ftp://x' must be an http://", id="wh-url"),
    pytest.param({"ACETRACK_WEBHOOK_SECRET": "short"}, {}, "whsec_ followed by the base64", id="wh-secret"),
    pytest.param({"ACETRACK_WEBHOOK_SECRET": "whsec_hunter2"}, {}, "at least 24 random bytes", id="wh-loose-base64"),
    pytest.param(
        {"ACETRACK_WEBHOOK_SECRET": "ZGVhZGJlZWZkZWFkYmVlZmRlYWRiZWVmZGVhZGJlZWY="}, {}, "whsec_", id="wh-no-prefix"
    ),
    pytest.param({"ACETRACK_WEBHOOK_SECRET": "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="}, {}, "at least 24", id="wh-16-bytes"),
    pytest.param({"ACETRACK_REDIS_URL": "redis://h:6379/abc"}, {}, "database 'abc' must be a number", id="db"),
    pytest.param(
        {"ACETRACK_REDIS_URL": "redis+sentinel://s1:26379/mymaster/abc"}, {}, "database 'abc'", id="sentinel-db"
    ),
    pytest.param({"ACETRACK_REDIS_URL": "redis://u:pw@h:99999"}, {}, "'redis://u:***@h:99999': port", id="redis-port"),
]


@pytest.mark.parametrize(("env", "kwargs", "words"), BAD_CASES)
def test_rejected(make_settings: MakeSettings, env: dict[str, str], kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make_settings(env, **kwargs)
    assert words in str(caught.value)


REDIS_URLS = [
    pytest.param("redis://localhost:6379/0", id="redis"),
    pytest.param("redis://:secret@localhost", id="redis-password"),
    pytest.param("rediss://redis.example:6380/1", id="rediss"),
    pytest.param("redis+sentinel://s1:26379/mymaster", id="sentinel-one-host"),
    pytest.param(SENTINEL, id="sentinel-hosts-and-db"),
    pytest.param("unix:///var/run/redis.sock", id="unix-socket"),
    pytest.param("redis://[::1]:6379/2", id="ipv6"),
]


@pytest.mark.parametrize("url", REDIS_URLS)
def test_redis_url_accepted_unchanged(make_settings: MakeSettings, url: str) -> None:
    assert parse_redis_url(url) == url
    assert make_settings({"ACETRACK_REDIS_URL": url}).redis_url == url


def test_service_with_trailing_newline_rejected(make_settings: MakeSettings) -> None:
    with pytest.raises(ValidationError):
        make_settings(services=["suno\n"])


def test_settings_module_imports_nothing_from_worker() -> None:
    script = "import sys, config.settings; bad = sorted(m for m in sys.modules if m.split('.')[0] == 'worker'); "
    script += "assert not bad, bad"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_coalesce_window_follows_the_poll_grid_unless_set(make_settings: MakeSettings) -> None:
    # apart, a coalesce window off the grid left batches a third smaller (issue 22): one knob moves both
    assert cadence_for(make_settings()).coalesce_ms == 1500  # the default grid: half of 3 s
    assert cadence_for(make_settings({"ACETRACK_POLL_S": "8"})).coalesce_ms == 4000
    assert cadence_for(make_settings({"ACETRACK_POLL_S": "8", "ACETRACK_COALESCE_S": "1"})).coalesce_ms == 1000


def test_a_misspelt_setting_is_named_with_the_one_it_nearly_is() -> None:
    environ = {
        "ACETRACK_POL_S": "2",  # a letter missing
        "ACETRACK_WEBHOOK_SECRT": "x",
        "ACETRACK_POLL_S": "2",  # a setting
        "ACETRACK_IMAGE": "acetrack:1",  # compose's, nothing like a setting
        "ACETRACK_TEST_REDIS_URL": "redis://x",  # the tests'
        "ACETRACK_TEST_SERVER": "valkey",
        "ACETRACK_HTTP_TOKEn": "x",  # read as ACETRACK_HTTP_TOKEN: names are read in any case
        "ACETRACK_KEY_PREFX": "team-a",
        "PATH": "/bin",
    }
    assert misspelt_settings(environ) == [
        ("ACETRACK_KEY_PREFX", "ACETRACK_KEY_PREFIX"),
        ("ACETRACK_POL_S", "ACETRACK_POLL_S"),
        ("ACETRACK_WEBHOOK_SECRT", "ACETRACK_WEBHOOK_SECRET"),
    ]


@pytest.mark.parametrize(
    "url", ["redis://u:hunter2@h:6379/abc", "mongodb://u:hunter2@h", "redis+sentinel://u:hunter2@s1:26379"]
)
def test_a_refused_redis_url_is_shown_without_its_password(make_settings: MakeSettings, url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make_settings({"ACETRACK_REDIS_URL": url})
    said = settings_error(caught.value)  # the line acetrack prints
    assert "hunter2" not in said and "u:***@" in said, said


def test_an_empty_api_base_url_is_the_default(make_settings: MakeSettings) -> None:
    assert make_settings({"ACETRACK_API_BASE_URL": ""}).api_base_url == "https://api.acedata.cloud"

"""``proactive_async.settings``: the environment and overrides read once, and the builders."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

import proactive_async.settings as settings_module
from proactive_async import Limits, Timeout
from proactive_async.ratelimit import RateLimit, SharedRateLimit
from proactive_async.settings import (
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_VISIBILITY_TIMEOUT,
    VARIABLES,
    Settings,
    SettingsError,
    build_client,
    build_rate_limit,
    build_sync_client,
)
from proactive_async.simulator import Simulator, SimulatorConfig

TOKEN = "settings-test-token-1234"

# One good value per variable, and what the field holds once converted.
_GOOD: dict[str, tuple[str, object]] = {
    "base_url": ("https://api.example.com", "https://api.example.com"),
    "token": (f"  {TOKEN}\n", TOKEN),
    "ca_file": ("/etc/ssl/private-ca.pem", "/etc/ssl/private-ca.pem"),
    "proxy": ("http://proxy:3128", "http://proxy:3128"),
    "connect_timeout": ("2.5", 2.5),
    "read_timeout": ("20", 20.0),
    "total_timeout": ("45", 45.0),
    "journal": ("postgresql://app@db/campaigns", "postgresql://app@db/campaigns"),
    "redis_url": ("redis://redis:6379/1", "redis://redis:6379/1"),
    "broker_url": ("amqp://rabbit//", "amqp://rabbit//"),
    "concurrency": ("64", 64),
    "worker_concurrency": ("8", 8),
    "job_timeout": ("600", 600.0),
    "visibility_timeout": ("120", 120),
    "loop": ("uvloop", "uvloop"),
    "log": ("DEBUG", "DEBUG"),
}


def test_every_field_has_a_variable_and_a_sample() -> None:
    assert set(VARIABLES) == set(Settings.__struct_fields__) == set(_GOOD)


@pytest.mark.parametrize("field", sorted(_GOOD))
def test_each_variable_is_read_and_converted(field: str) -> None:
    text, expected = _GOOD[field]
    settings = Settings.from_env({VARIABLES[field]: text})
    assert getattr(settings, field) == expected


def test_the_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROACTIVE_READ_TIMEOUT", "7")
    assert Settings.from_env().read_timeout == 7.0


def test_unset_and_empty_variables_leave_the_defaults() -> None:
    settings = Settings.from_env({"PROACTIVE_PROXY": "", "PROACTIVE_TOKEN": "   "})
    assert settings == Settings()
    assert settings.job_timeout == DEFAULT_JOB_TIMEOUT
    assert settings.visibility_timeout == DEFAULT_VISIBILITY_TIMEOUT


def test_overrides_win_over_the_environment_unless_none() -> None:
    env = {"PROACTIVE_BASE_URL": "https://env.example", "PROACTIVE_CONCURRENCY": "4"}
    settings = Settings.from_env(env, base_url="https://flag.example", concurrency=None)
    assert settings.base_url == "https://flag.example"
    assert settings.concurrency == 4


def test_overrides_are_converted_like_the_environment() -> None:
    assert Settings.from_env({}, concurrency="12").concurrency == 12


def test_an_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="'tokn'"):
        Settings.from_env({}, tokn="x")


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("PROACTIVE_CONNECT_TIMEOUT", "soon", "must be a positive number of seconds, not 'soon'"),
        ("PROACTIVE_TIMEOUT", "0", "must be a positive number of seconds"),
        ("PROACTIVE_READ_TIMEOUT", "inf", "must be a positive number of seconds"),
        ("PROACTIVE_CONCURRENCY", "0", "must be a whole number of at least 1"),
        ("PROACTIVE_WORKER_CONCURRENCY", "2.5", "must be a whole number of at least 1"),
        ("PROACTIVE_BASE_URL", "api.example.com", "must be an http:// or https:// URL"),
        ("PROACTIVE_REDIS_URL", "http://redis", "must start with redis://, rediss:// or unix://"),
    ],
)
def test_a_bad_value_is_refused_naming_its_variable(variable: str, value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: value})
    assert str(refused.value).startswith(f"{variable} {reason}")
    assert refused.value.variable == variable


def test_a_bad_override_names_the_setting_and_never_echoes_a_url() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({}, proxy="socks5://user:hunter2@proxy:1080")
    assert str(refused.value) == "proxy must be an http:// or https:// URL"
    assert refused.value.variable is None and refused.value.field == "proxy"
    assert "hunter2" not in str(refused.value)


def test_a_settings_error_is_a_proactive_error_and_a_value_error() -> None:
    from proactive_async import ProactiveError

    assert issubclass(SettingsError, ProactiveError) and issubclass(SettingsError, ValueError)


def test_a_settings_error_can_be_caught_from_the_package() -> None:
    import proactive_async

    assert proactive_async.SettingsError is SettingsError


def test_no_proactive_env_clears_every_variable_the_settings_read(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    for variable in VARIABLES.values():
        monkeypatch.setenv(variable, "from the developer's shell")
    request.getfixturevalue("no_proactive_env")
    assert Settings.from_env() == Settings()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:redis-pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("postgresql://app:s3cret@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("amqp://guest@rabbit//", "amqp://guest@rabbit//"),
        ("redis://h:6379/0?password=redis-pw&db=1", "redis://h:6379/0?password=***&db=1"),
        (
            "postgresql://db/x?sslmode=require&password=pw",
            "postgresql://db/x?sslmode=require&password=***",
        ),
        ("http://[::1", "***"),  # not a URL that can be taken apart: none of it is shown
    ],
)
def test_display_url_is_the_one_rule_for_hiding_a_password(url: str, shown: str) -> None:
    from proactive_async.journal._pg_database import display_dsn

    assert settings_module.display_url(url) == shown
    assert display_dsn is settings_module.display_url  # the journal's messages use it too


def _secretive() -> Settings:
    return Settings.from_env(
        {
            "PROACTIVE_TOKEN": TOKEN,
            "PROACTIVE_PROXY": "http://user:proxy-pw@proxy:3128",
            "PROACTIVE_JOURNAL": "postgresql://app:journal-pw@db/campaigns",
            "PROACTIVE_REDIS_URL": "redis://:redis-pw@redis:6379/0",
            "PROACTIVE_BROKER_URL": "amqp://guest:broker-pw@rabbit//",
            "PROACTIVE_BASE_URL": "https://api.example.com",
        }
    )


def test_repr_str_and_rich_hide_the_token_and_every_password() -> None:
    settings = _secretive()
    console = Console(record=True, width=200)
    console.print(settings)
    for shown in (repr(settings), str(settings), console.export_text()):
        for secret in (TOKEN, "proxy-pw", "journal-pw", "redis-pw", "broker-pw"):
            assert secret not in shown
        assert "redis://:***@redis:6379/0" in shown and "token='***'" in shown


def test_repr_shows_only_what_is_set() -> None:
    assert repr(Settings(read_timeout=5.0)) == "Settings(read_timeout=5.0)"


def test_the_timeout_takes_each_part_set_and_the_client_default_for_the_rest() -> None:
    assert Settings().timeout == Timeout()
    assert Settings(read_timeout=5.0).timeout == Timeout(read=5.0)
    both = Settings(connect_timeout=1.0, total_timeout=9.0).timeout
    assert both == Timeout(connect=1.0, total=9.0)


def test_the_pool_has_a_connection_for_each_call_in_flight() -> None:
    assert Settings().limits == Limits()
    assert Settings(concurrency=16).limits == Limits()  # never smaller than the default
    assert Settings(concurrency=500).limits.max_connections == 500


# -- builders ----------------------------------------------------------------------


class _Recorder:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs


def test_build_client_passes_the_api_tls_proxy_timeouts_and_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings_module, "AsyncClient", _Recorder)
    settings = Settings(
        base_url="https://api.example.com",
        token=TOKEN,
        ca_file="ca.pem",
        proxy="http://proxy:3128",
        read_timeout=5.0,
        concurrency=300,
    )
    made: Any = build_client(settings, retry=None)
    assert made.args == ("https://api.example.com", TOKEN)
    assert made.kwargs == {
        "timeout": Timeout(read=5.0),
        "limits": Limits(max_connections=300),
        "verify": "ca.pem",
        "proxy": "http://proxy:3128",
        "retry": None,
    }


def test_build_client_verifies_with_the_system_store_without_a_ca_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings_module, "AsyncClient", _Recorder)
    made: Any = build_client(Settings(), timeout=None)
    assert made.kwargs["verify"] is True
    assert made.kwargs["timeout"] is None  # an option given wins over the settings


async def test_a_built_client_calls_the_api_it_was_given() -> None:
    async with Simulator(SimulatorConfig(token=TOKEN)) as sim:
        settings = Settings.from_env(
            {"PROACTIVE_BASE_URL": sim.url, "PROACTIVE_TOKEN": TOKEN, "PROACTIVE_TIMEOUT": "5"}
        )
        async with build_client(settings) as client:
            created = await client.create_proactive_conversation(
                channel_id=1, bot_id=2, conversation_template_id=3, recipient=["+5511970000000"]
            )
    assert len(created) == 1


def test_build_sync_client_passes_the_same_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import proactive_async._sync as sync_module

    monkeypatch.setattr(sync_module, "Client", _Recorder)
    made: Any = build_sync_client(Settings(base_url="https://api.example.com", token=TOKEN))
    assert made.args == ("https://api.example.com", TOKEN)
    assert made.kwargs["timeout"] == Timeout() and made.kwargs["verify"] is True


def test_without_redis_the_rate_limit_is_local() -> None:
    limit = build_rate_limit(Settings(), rate=100.0, burst=10.0)
    assert isinstance(limit, RateLimit) and limit.rate == 100.0 and not limit.adaptive


def test_processes_sharing_a_local_rate_each_pace_at_their_part() -> None:
    limit = build_rate_limit(Settings(), rate=100.0, processes=4)
    assert isinstance(limit, RateLimit) and limit.rate == 25.0


def test_no_limit_at_all_is_local_even_with_redis() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    limit = build_rate_limit(settings, adaptive=False)
    assert isinstance(limit, RateLimit) and limit.rate is None


async def test_with_redis_the_limit_is_shared_under_the_channel_key() -> None:
    settings = Settings(base_url="https://api.example.com", redis_url="redis://127.0.0.1:1/0")
    limit = build_rate_limit(settings, rate=50.0, channel_id=7)
    try:
        assert isinstance(limit, SharedRateLimit)
        assert limit.key == "proactive-async:limit:api.example.com:channel:7"
    finally:
        await limit.aclose()


@pytest.mark.parametrize(
    ("processes", "on_redis_error", "share"), [(None, "wait", 1), (3, "local", 3)]
)
def test_processes_choose_what_a_shared_limit_does_while_redis_is_down(
    monkeypatch: pytest.MonkeyPatch, processes: int | None, on_redis_error: str, share: int
) -> None:
    monkeypatch.setattr(settings_module, "SharedRateLimit", _Recorder)
    made: Any = build_rate_limit(
        Settings(redis_url="redis://settings:6379/0"),
        rate=90.0,
        key="k",
        redis_url="redis://given:6379/0",
        processes=processes,
    )
    assert made.args == ("redis://given:6379/0",)  # the URL given wins over the settings'
    assert made.kwargs["on_redis_error"] == on_redis_error
    assert made.kwargs["processes"] == share and made.kwargs["rate"] == 90.0  # the total


def test_calls_per_second_is_not_shared_through_redis() -> None:
    with pytest.raises(ValueError, match="calls-per-second"):
        build_rate_limit(
            Settings(redis_url="redis://127.0.0.1:1/0"), rate=10.0, calls_per_second=2.0
        )


def test_a_shared_limit_needs_a_key_or_a_base_url_to_name_it() -> None:
    with pytest.raises(ValueError, match="needs a key"):
        build_rate_limit(Settings(redis_url="redis://127.0.0.1:1/0"), rate=10.0)


def test_processes_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="processes"):
        build_rate_limit(Settings(), rate=10.0, processes=0)


# -- PROACTIVE_LOG (issue 20 §3) ----------------------------------------------------------

_LOGGING_SCRIPT = """
import asyncio, logging, sys
if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.INFO, format="app: %(message)s")
from proactive_async import AsyncClient, RetryPolicy
from proactive_async.testing import MockTransport, TransportResponse, problem_response
TOKEN = "tok-S3CRET-logging-0123456789"
answers = [
    problem_response(503, "Busy: Bearer " + TOKEN, headers={"Retry-After": "0"}),
    TransportResponse.json([{"id": 1}]),
]

async def main():
    transport = MockTransport(lambda request: answers.pop(0))
    async with AsyncClient("https://api.test", TOKEN, transport=transport) as client:
        await client.create_proactive_conversation(channel_id=1, recipient=["+5511999990000"])

asyncio.run(main())
print(TOKEN)  # the script knows it: the test checks stderr only
"""


def _run_logged(level: str | None, mode: str = "plain") -> tuple[str, str]:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
    if level is not None:
        env["PROACTIVE_LOG"] = level
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", _LOGGING_SCRIPT, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def test_proactive_log_debug_puts_the_packages_lines_on_stderr_without_the_token() -> None:
    out, err = _run_logged("debug")
    assert "DEBUG proactive_async: POST /api/Conversation/proactive-conversation -> 503" in err
    assert "-> 200 in" in err and "WARNING proactive_async: attempt 1 failed" in err
    assert "tok-S3CRET" in out and "tok-S3CRET" not in err


def test_proactive_log_info_or_warning_leaves_debug_lines_out_and_unset_prints_nothing() -> None:
    _, warning = _run_logged("WARNING")
    assert "attempt 1 failed" in warning and "DEBUG" not in warning
    assert _run_logged(None)[1] == ""


def test_an_application_that_configured_logging_gets_each_line_once_through_its_handler() -> None:
    _, err = _run_logged("debug", "configured")
    lines = [line for line in err.splitlines() if "-> 200" in line]
    assert len(lines) == 1 and lines[0].startswith("app: POST")


def test_a_proactive_log_it_cannot_use_is_a_warning_never_an_import_error() -> None:
    _, err = _run_logged("loud")
    assert "RuntimeWarning: PROACTIVE_LOG must be debug, info or warning" in err
    assert "proactive_async:" not in err  # nothing else was turned on


def test_settings_refuse_a_bad_log_level_naming_its_variable() -> None:
    with pytest.raises(SettingsError, match="PROACTIVE_LOG must be debug, info or warning"):
        Settings.from_env({"PROACTIVE_LOG": "loud"})


def test_a_client_built_from_settings_applies_their_log_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import logging

    logger = logging.getLogger("proactive_async")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    settings = Settings.from_env(
        {"PROACTIVE_LOG": "info", "PROACTIVE_TOKEN": TOKEN, "PROACTIVE_BASE_URL": "https://a.test"}
    )
    build_client(settings)
    assert logger.level == logging.INFO

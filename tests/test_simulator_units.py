"""The simulator's pieces without a server: bucket, Retry-After, validation, rendering, config."""

from __future__ import annotations

import email.utils
import json
from collections.abc import Callable

import pytest

import proactive_async.simulator as simulator
from proactive_async.simulator import Audit, Faults, SimulatorConfig
from proactive_async.simulator._bucket import TokenBucket, format_retry_after
from proactive_async.simulator._render import format_timespan, phone_of_contact, render_template
from proactive_async.simulator._validation import Call, parse_call


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_all_lists_the_public_api_once_each() -> None:
    assert sorted(simulator.__all__) == sorted(
        [
            "Audit",
            "ENDPOINT_PATH",
            "Faults",
            "Simulator",
            "SimulatorConfig",
            "ThreadedSimulator",
            "main",
        ]
    )
    assert all(hasattr(simulator, name) for name in simulator.__all__)


# --- token bucket and Retry-After ------------------------------------------------------


def test_bucket_admits_a_burst_then_says_how_long_until_enough_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, burst=5.0, clock=clock)
    assert bucket.acquire(5) == 0.0
    assert bucket.acquire(2) == pytest.approx(0.2)
    clock.now += 0.2
    assert bucket.acquire(2) == 0.0


def test_bucket_refused_call_takes_no_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, burst=3.0, clock=clock)
    bucket.acquire(3)
    clock.now += 0.1
    assert bucket.acquire(3) == pytest.approx(0.2)
    assert bucket.acquire(1) == 0.0


def test_bucket_admits_an_oversized_call_only_when_full_and_then_owes_tokens() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, burst=2.0, clock=clock)
    bucket.acquire(1)
    assert bucket.acquire(6) == pytest.approx(0.1)  # waits for a full bucket, not for 6
    clock.now += 0.1
    assert bucket.acquire(6) == 0.0
    assert bucket.acquire(1) == pytest.approx(0.5)  # (1 - (2 - 6)) / 10


def test_bucket_never_holds_more_than_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10.0, burst=2.0, clock=clock)
    clock.now += 3600
    assert bucket.acquire(2) == 0.0
    assert bucket.acquire(1) > 0.0


@pytest.mark.parametrize(("seconds", "expected"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (0.0, "0")])
def test_retry_after_seconds_rounds_up_to_an_integer(seconds: float, expected: str) -> None:
    assert format_retry_after(seconds, "seconds") == expected


@pytest.mark.parametrize(
    ("seconds", "expected"), [(0.25, "0.25"), (0.0101, "0.011"), (2.0, "2"), (1.5, "1.5")]
)
def test_retry_after_fractional_rounds_up_to_milliseconds(seconds: float, expected: str) -> None:
    assert format_retry_after(seconds, "fractional") == expected


def test_retry_after_http_date_rounds_the_instant_up_to_a_whole_second() -> None:
    text = format_retry_after(0.3, "http-date", wall_clock=lambda: 1_700_000_000.9)
    assert text == "Tue, 14 Nov 2023 22:13:22 GMT"
    assert email.utils.parsedate_to_datetime(text).timestamp() == 1_700_000_002


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "recipient", ["12345678", "+123456789012345", "5511999990000", "+5511999990000"]
)
def test_recipient_that_is_a_whatsapp_id_or_e164_number_is_valid(recipient: str) -> None:
    assert isinstance(parse_call(b'{"recipient": ["%s"]}' % recipient.encode(), None), Call)


@pytest.mark.parametrize(
    "recipient",
    [
        "1234567",
        "+1234567890123456",
        "+0123456789",
        "",
        "++5511999990000",
        "551199999000a",
        "5511 99999 0000",
        "\u0665\u0665\u0661\u0661\u0669\u0669\u0669\u0669\u0669",
        "5511999990000\n",
    ],
)
def test_recipient_that_is_not_a_phone_number_is_refused(recipient: str) -> None:
    body = json.dumps({"recipient": ["+5511999990000", recipient]}).encode()
    errors = parse_call(body, None)
    assert errors == {"recipient[1]": [f"'{recipient}' is not a valid phone number."]}


@pytest.mark.parametrize("value", ["-2147483648", "2147483647", "0"])
def test_int32_bounds_are_accepted(value: str) -> None:
    assert isinstance(
        parse_call(b'{"channelId": %s, "contactIds": [1]}' % value.encode(), None), Call
    )


@pytest.mark.parametrize("value", ["-2147483649", "2147483648", "1.0", "true", "null", '"1"'])
def test_int32_field_out_of_range_or_of_another_type_is_refused(value: str) -> None:
    errors = parse_call(b'{"queueId": %s, "contactIds": [1]}' % value.encode(), None)
    assert isinstance(errors, dict)
    assert list(errors) == ["queueId"]


def test_nullable_lists_may_be_null_when_another_target_exists() -> None:
    call = parse_call(b'{"recipient": null, "accountIds": null, "contactIds": [4]}', None)
    assert isinstance(call, Call)
    assert call.target_keys() == ["contact:4"]


def test_a_call_without_any_target_is_refused() -> None:
    errors = parse_call(b'{"recipient": [], "contactIds": null}', None)
    assert isinstance(errors, dict)
    assert list(errors) == ["recipient"]


def test_a_wrongly_typed_target_list_is_not_also_reported_as_missing() -> None:
    assert parse_call(b'{"recipient": "+5511999990000"}', None) == {
        "recipient": [
            "The JSON value could not be converted to "
            "System.Collections.Generic.List`1[System.String]."
        ]
    }


def test_missing_fields_bind_to_their_defaults() -> None:
    call = parse_call(b'{"recipient": ["+5511999990000"]}', None)
    assert isinstance(call, Call)
    assert (call.channel_id, call.live_agent, call.content_variables) == (0, False, {})


# --- rendering -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ticks", "expected"),
    [
        (0, "00:00:00"),
        (330 * 10_000_000, "00:05:30"),
        (((1 * 24 + 2) * 3600 + 3 * 60 + 4) * 10_000_000 + 5_670_000, "1.02:03:04.5670000"),
        (-10_000_000, "-00:00:01"),
        (1, "00:00:00.0000001"),
    ],
)
def test_timespan_is_written_like_dotnet(ticks: int, expected: str) -> None:
    assert format_timespan(ticks) == expected


def test_template_fills_known_placeholders_and_leaves_unknown_ones() -> None:
    text = "Hi {{name}}, {{ n }} items, {{missing}}, {{none}}."
    assert render_template(text, {"name": "Ana", "n": 3, "none": None}) == (
        "Hi Ana, 3 items, {{missing}}, ."
    )


def test_contact_phone_is_a_plausible_e164_number() -> None:
    assert phone_of_contact(77) == "+10000000077"
    assert phone_of_contact(-1) == "+19999999999"


# --- config and audit ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Faults(rate_429=1.5),
        lambda: Faults(rate_500=-0.1),
        lambda: Faults(rate_503=0.6, drop_after=0.6),
        lambda: Faults(latency=-1.0),
        lambda: SimulatorConfig(rate_limit=0),
        lambda: SimulatorConfig(burst=5),
        lambda: SimulatorConfig(retry_after_style="minutes"),
        lambda: SimulatorConfig(max_targets_per_call=0),
    ],
)
def test_invalid_configuration_is_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_fault_thresholds_are_cumulative_in_draw_order() -> None:
    faults = Faults(rate_500=0.2, drop_before=0.1, truncate_after=0.3)
    steps = faults.thresholds()
    assert [kind for _, kind in steps] == ["drop_before", "rate_500", "truncate_after"]
    assert [limit for limit, _ in steps] == pytest.approx([0.1, 0.3, 0.6])


def test_burst_defaults_to_one_second_of_rate() -> None:
    assert SimulatorConfig(rate_limit=50).bucket_size == 50
    assert SimulatorConfig(rate_limit=50, burst=5).bucket_size == 5
    assert SimulatorConfig().bucket_size is None


def test_audit_counts_each_target_and_lists_duplicates() -> None:
    audit = Audit()
    audit.record(["a", "contact:1"])
    audit.record(["a"])
    assert (audit.count("a"), audit.count("contact:1"), audit.count("b")) == (2, 1, 0)
    assert audit.duplicates() == {"a": 2}
    assert audit.total_processed == 3
    assert audit.summary() == "calls=0 processed=3 duplicates=1"


def test_wrongly_typed_list_and_enum_fields_are_named() -> None:
    body = b'{"recipient": ["+5511999990000"], "contactIds": 5, "conversationIntegrationType": "1"}'
    errors = parse_call(body, None)
    assert isinstance(errors, dict)
    assert set(errors) == {"contactIds", "conversationIntegrationType"}

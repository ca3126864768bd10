"""Phone numbers to E.164: the fast paths held equal to phonenumbers, vanity and extensions."""

from __future__ import annotations

import re

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proactive_async._phone import normalize_phone

# --- normalize_phone ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "(11) 98765-4321",
        "11 98765 4321",
        "11987654321",
        "+55 11 98765-4321",
        "+5511987654321",
        " +5511987654321 ",
        "011 98765-4321",  # with the national prefix
    ],
)
def test_normalize_phone_reads_br_numbers_as_e164(raw: str) -> None:
    assert normalize_phone(raw, "BR") == "+5511987654321"


def test_normalize_phone_with_plus_prefix_needs_no_region() -> None:
    assert normalize_phone("+1 (202) 555-0123", None) == "+12025550123"
    assert normalize_phone("+5511987654321", None) == "+5511987654321"


def test_normalize_phone_plus_prefix_overrides_default_region() -> None:
    assert normalize_phone("+44 20 7946 0958", "BR") == "+442079460958"


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", "BR", "empty phone number"),
        ("   ", "BR", "empty phone number"),
        ("11987654321", None, "has no country code"),
        ("+5511123", "BR", "is not a valid BR number"),
        ("1198765", "BR", "is not a valid BR number"),
        ("hello", "BR", "not a phone number"),
        ("+999 1234567", None, "unknown country code"),
        ("+55 1" + "2" * 20, None, "too long"),
    ],
)
def test_normalize_phone_raises_value_error_with_reason(
    raw: str, region: str | None, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        normalize_phone(raw, region)


_LETTERS = "has letters; write it in digits, or allow vanity numbers"
_EXTENSION = "has an extension, which cannot be sent; write the number without it"


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("+1-800-FLOWERS", None),
        ("1-800-FLOWERS", "US"),
        ("+1 800 TAXI 123", None),
        ("+55 11 98765-43a21", None),  # parse() alone would drop the "a"
        ("Tel: +5511987654321", None),
    ],
)
def test_normalize_phone_rejects_letters_by_default(raw: str, region: str | None) -> None:
    with pytest.raises(ValueError, match=f"^phone number {re.escape(repr(raw))} {_LETTERS}"):
        normalize_phone(raw, region)


@pytest.mark.parametrize(
    "raw",
    [
        "+55 11 98765-4321 ext. 12",
        "+55 11 98765-4321 x12",
        "+55 11 98765-4321 X 12",
        "+55 11 98765-4321 #12",
        "+55 11 98765-4321#",
        "+5511987654321;ext=12",
        "tel:+5511987654321;ext=12",
        "+55 11 98765-4321,12",
        "+55 11 98765-4321 extension 12",
        "+5511987654321x",
        "+1 800 FLOWERS x 12",
    ],
)
@pytest.mark.parametrize("allow_vanity_numbers", [False, True])
def test_normalize_phone_rejects_an_extension_even_with_vanity_numbers(
    raw: str, allow_vanity_numbers: bool
) -> None:
    with pytest.raises(ValueError, match=f"^phone number {re.escape(repr(raw))} {_EXTENSION}$"):
        normalize_phone(raw, "BR", allow_vanity_numbers=allow_vanity_numbers)


@pytest.mark.parametrize(
    ("raw", "region", "e164"),
    [
        ("+1-800-FLOWERS", None, "+18003569377"),
        ("1-800-flowers", "US", "+18003569377"),
        ("+1 800 TAXI 123", None, "+18008294123"),
        ("+5511987654321", None, "+5511987654321"),  # digits still take the fast path
    ],
)
def test_normalize_phone_reads_vanity_letters_as_keypad_digits_when_allowed(
    raw: str, region: str | None, e164: str
) -> None:
    assert normalize_phone(raw, region, allow_vanity_numbers=True) == e164


def test_normalize_phone_with_vanity_numbers_converts_every_letter_never_drops_one() -> None:
    """phonenumbers.parse drops one or two letters; read as digits, this number is too long."""
    with pytest.raises(ValueError, match="is not a valid BR number"):
        normalize_phone("+55 11 98765-43a21", None, allow_vanity_numbers=True)
    with pytest.raises(ValueError, match=r"^phone number 'Tel: \+5511987654321': not a phone"):
        normalize_phone("Tel: +5511987654321", None, allow_vanity_numbers=True)


def reference_e164(text: str, region: str | None) -> str | None:
    """The unoptimised answer: parse, is_valid_number, format."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def planned_e164(text: str, region: str | None) -> str | None:
    try:
        return normalize_phone(text, region)
    except ValueError:
        return None


_NUMBER_TYPES = [
    phonenumbers.PhoneNumberType.FIXED_LINE,
    phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.TOLL_FREE,
    phonenumbers.PhoneNumberType.VOIP,
]
_FORMATS = [
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.NATIONAL,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
]


def test_normalize_phone_fast_paths_match_phonenumbers_for_every_region_example() -> None:
    """The fast paths give parse+is_valid+format's answer on every region's examples."""
    checked = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for number_type in _NUMBER_TYPES:
            example = phonenumbers.example_number_for_type(region, number_type)
            if example is None:
                continue
            texts = [phonenumbers.format_number(example, fmt) for fmt in _FORMATS]
            texts.append(phonenumbers.national_significant_number(example))
            for text in texts:
                for default in (region, "BR", None):
                    assert planned_e164(text, default) == reference_e164(text, default), (
                        text,
                        default,
                    )
                    checked += 1
    assert checked > 2000


_REGIONS = ["BR", "US", "GB", "IT", "DE", "AR", "MX", "IN", "RU", "HU", "CA", "AU"]


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(
        st.from_regex(r"\+[1-9][0-9]{6,15}", fullmatch=True),
        st.from_regex(r"[0-9 ()\-.]{6,20}", fullmatch=True),
        st.from_regex(r"(55|0|00|1|39|7|8)[0-9]{6,12}", fullmatch=True),
    ),
    region=st.sampled_from([*_REGIONS, None]),
)
def test_normalize_phone_matches_phonenumbers_on_random_digits(
    text: str, region: str | None
) -> None:
    assert planned_e164(text, region) == reference_e164(text, region)


def test_compiled_validity_check_agrees_with_phonenumbers_on_every_region() -> None:
    """The fast validity check equals phonenumbers.is_valid_number (examples and mutations)."""
    import random

    import phonenumbers as pn

    from proactive_async._phone import _is_valid

    rnd = random.Random(3)
    checked = 0
    for region in sorted(pn.SUPPORTED_REGIONS):
        for kind in (pn.PhoneNumberType.FIXED_LINE, pn.PhoneNumberType.MOBILE):
            example = pn.example_number_for_type(region, kind)
            if example is None:
                continue
            national = str(example.national_number)
            for attempt in range(15):
                digits = list(national)
                digits[rnd.randrange(len(digits))] = str(rnd.randrange(1, 10))
                if attempt >= 10:  # a digit fewer or more: each length has its own pattern
                    del digits[rnd.randrange(len(digits))]
                    if attempt % 2:
                        digits += [str(rnd.randrange(10)), str(rnd.randrange(10))]
                candidate = "".join(digits).lstrip("0") or "1"
                number = pn.PhoneNumber(
                    country_code=example.country_code, national_number=int(candidate)
                )
                assert _is_valid(example.country_code, candidate) == pn.is_valid_number(number), (
                    region,
                    candidate,
                )
                checked += 1
    assert checked > 4500

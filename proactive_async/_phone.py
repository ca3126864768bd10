"""Phone numbers to E.164: ``phonenumbers`` with fast paths for the shapes campaigns use.

``normalize_phone`` is the one entry. Plain ``+digits`` and national numbers with the usual
separators skip ``phonenumbers.parse``: validity is checked against each country code's
patterns, compiled once from phonenumbers' own metadata (5.5 -> 3.1 us a number), and
``tests/test_phone.py`` holds the fast paths equal to ``phonenumbers`` on every region's
examples and on random digits. Anything else (letters, extensions, odd punctuation) takes
the slow path, where vanity letters and extensions are refused unless allowed.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec
import phonenumbers

__all__ = ["normalize_phone"]


def normalize_phone(
    raw: str, default_region: str | None, *, allow_vanity_numbers: bool = False
) -> str:
    """The E.164 form of a phone number, e.g. ``"(11) 98765-4321"`` in BR -> ``"+5511987654321"``.

    Raises ``ValueError`` saying why when the number cannot be parsed, is not a valid
    number (``phonenumbers.is_valid_number``), has an extension (``ext. 12``, ``x12``,
    ``#12``, ``;ext=12``: a target has no field for one) or has letters. With
    ``allow_vanity_numbers`` letters are read as keypad digits (``"+1-800-FLOWERS"`` ->
    ``"+18003569377"``).
    """
    text = raw.strip()
    if not text:
        raise ValueError("empty phone number")
    # The fast paths take digits and separators only: letters and extensions go the slow way.
    fast = _fast_e164(text) if text[0] == "+" else _fast_national(text, default_region)
    if fast is not None:
        return fast
    return _parsed_e164(text, default_region, allow_vanity_numbers)


_PARSE_REASONS: Final = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the "
    "international prefix",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


# An extension marker phonenumbers may leave unread: "#", ";" (";ext=", ";isub="), or
# "x", "ext", "extn", "extension" as a word of its own (not inside a vanity word).
_EXTENSION_MARK: Final = re.compile(
    r"[#;]|(?<![^\W\d_])(?:x|ext(?:n|ension)?)(?![^\W\d_])", re.IGNORECASE
)
# A letter, "#" or ";": the cheap test before _EXTENSION_MARK's slower one (ASCII: 4x faster).
_LETTER_OR_MARK: Final = re.compile(r"[^\W\d_]|[#;]")
_ASCII_LETTER_OR_MARK: Final = re.compile(r"[A-Za-z#;]")


def _parsed_e164(text: str, default_region: str | None, allow_vanity_numbers: bool) -> str:
    number = _parse(text, default_region)
    letter_or_mark = _ASCII_LETTER_OR_MARK if text.isascii() else _LETTER_OR_MARK
    if number.extension or letter_or_mark.search(text) is not None:
        number = _read_letters(text, number, default_region, allow_vanity_numbers)
    if not phonenumbers.is_valid_number(number):
        region = phonenumbers.region_code_for_country_code(number.country_code or 0)
        where = f"a valid {region} number" if region != "ZZ" else "a valid number"
        raise ValueError(f"phone number {text!r} is not {where}")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _read_letters(
    text: str,
    number: phonenumbers.PhoneNumber,
    default_region: str | None,
    allow_vanity_numbers: bool,
) -> phonenumbers.PhoneNumber:
    """The number of a ``text`` with letters, ``#`` or ``;``, or raise ``ValueError`` why not."""
    if number.extension or _EXTENSION_MARK.search(text) is not None:
        raise ValueError(
            f"phone number {text!r} has an extension, which cannot be sent; "
            "write the number without it"
        )
    if not allow_vanity_numbers:
        raise ValueError(
            f"phone number {text!r} has letters; write it in digits, or allow vanity "
            "numbers to read letters as keypad digits"
        )
    # Every letter becomes its keypad digit: parse() alone drops one or two letters.
    digits = phonenumbers.convert_alpha_characters_in_number(text)
    return _parse(digits, default_region, shown=text)


def _parse(
    text: str, default_region: str | None, *, shown: str | None = None
) -> phonenumbers.PhoneNumber:
    """``phonenumbers.parse``, raising ``ValueError`` about ``shown`` (default: ``text``)."""
    try:
        return phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(_parse_failure(shown or text, default_region, exc)) from None


def _parse_failure(
    text: str, default_region: str | None, exc: phonenumbers.NumberParseException
) -> str:
    if (
        exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE
        and default_region is None
        and not text.startswith("+")
    ):
        return (
            f"phone number {text!r} has no country code (write it as +<country code>..., "
            "or set a default region)"
        )
    reason = _PARSE_REASONS.get(exc.error_type, "cannot be parsed")
    return f"phone number {text!r}: {reason}"


# "+" and digits only: the shape most campaign files use, and the only one the fast path takes.
_E164_SHAPE: Final = re.compile(r"\+([1-9][0-9]{6,16})")
# Per country code, its national-prefix-for-parsing pattern; one that never matches when it
# has none, and one that always matches (always the slow path) when it has no metadata.
_NATIONAL_PREFIX: dict[int, re.Pattern[str]] = {}
_NEVER: Final = re.compile(r"(?!)")
_ALWAYS: Final = re.compile(r"")
# Each country calling code by its digits ("55" -> 55).
_COUNTRY_CODES: Final = {str(code): code for code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE}


def _fast_e164(text: str) -> str | None:
    """E.164 for a "+digits" number, without ``phonenumbers.parse``; ``None``: take the slow path.

    ``parse`` would only split the country code off and, when the national-prefix pattern
    matches or a leading zero is kept, rewrite the national number: those cases go the slow
    way, so every answer here equals ``parse`` + ``format_number(E164)``.
    """
    match = _E164_SHAPE.fullmatch(text)
    if match is None:
        return None
    digits = match.group(1)
    for size in (1, 2, 3):
        country_code = _COUNTRY_CODES.get(digits[:size])
        if country_code is not None:
            break
    else:
        return None
    national = digits[size:]
    if national[0] == "0" or _may_strip_national_prefix(country_code, national):
        return None
    if not _is_valid(country_code, national):
        return None  # the slow path says why
    return text


def _may_strip_national_prefix(country_code: int, national: str) -> bool:
    pattern = _NATIONAL_PREFIX.get(country_code)
    if pattern is None:
        pattern = _NATIONAL_PREFIX[country_code] = _national_prefix(country_code)
    return pattern.match(national) is not None


def _national_prefix(country_code: int) -> re.Pattern[str]:
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    if metadata is None:
        return _ALWAYS
    if metadata.national_prefix_for_parsing:
        return re.compile(metadata.national_prefix_for_parsing)
    return _NEVER


# Per single-region country code, per national number length: one pattern matching exactly
# the valid numbers of that length (a length missing: none is valid). None: a code shared
# by several regions, left to phonenumbers.
_VALIDATORS: dict[int, dict[int, re.Pattern[str]] | None] = {}
_TYPE_DESCS: Final = (
    "mobile",
    "fixed_line",
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)
# The longest national number the fast paths take.
_MAX_NATIONAL: Final = 17


def _is_valid(country_code: int, national: str) -> bool:
    """``phonenumbers.is_valid_number`` for a number with no leading zero, without its overhead.

    Valid means: the general description matches and some number type does (what
    ``_number_type_helper`` != UNKNOWN comes to), each only at its possible lengths. That
    is one pattern per country code and length, compiled once. Codes shared by several
    regions (+1, +7, +44, ...) take phonenumbers' own path, which first works out the region.
    """
    if country_code not in _VALIDATORS:
        _VALIDATORS[country_code] = _validator(country_code)
    by_length = _VALIDATORS[country_code]
    if by_length is None:
        number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(national))
        return bool(phonenumbers.is_valid_number(number))
    pattern = by_length.get(len(national))
    return pattern is not None and pattern.fullmatch(national) is not None


_Desc = tuple[frozenset[int], str]


def _validator(country_code: int) -> dict[int, re.Pattern[str]] | None:
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ())
    if len(regions) != 1 or regions[0] == "001":
        return None
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(regions[0])
    if metadata is None or metadata.general_desc is None:
        return None
    general = _desc(metadata.general_desc)
    if general is None:
        return None
    types = [d for name in _TYPE_DESCS if (d := _desc(getattr(metadata, name, None))) is not None]
    by_length: dict[int, re.Pattern[str]] = {}
    for length in range(1, _MAX_NATIONAL + 1):
        if general[0] and length not in general[0]:
            continue
        fitting = [
            f"(?:{pattern})" for lengths, pattern in types if not lengths or length in lengths
        ]
        if fitting:
            # The general description as a lookahead over the whole number, then any type.
            by_length[length] = re.compile(f"(?=(?:{general[1]})\\Z)(?:{'|'.join(fitting)})")
    return by_length


def _desc(desc: object) -> _Desc | None:
    pattern = getattr(desc, "national_number_pattern", None)
    if not pattern:
        return None  # phonenumbers: no pattern never matches
    return frozenset(getattr(desc, "possible_length", None) or ()), pattern


# Digits with the usual separators: the only national shape the fast path takes.
_NATIONAL_SHAPE: Final = re.compile(r"[0-9 ()\-.]{6,30}")
_SEPARATORS: Final = str.maketrans("", "", " ()-.")


class _RegionRules(msgspec.Struct, frozen=True, gc=False):
    """What ``parse`` looks at before it keeps a national number of a region as it is."""

    country_code: int
    country_prefix: str
    international_prefix: re.Pattern[str]
    national_prefix: re.Pattern[str]


_REGION_RULES: dict[str, _RegionRules | None] = {}


def _fast_national(text: str, default_region: str | None) -> str | None:
    """E.164 for a national number of ``default_region`` without ``phonenumbers.parse``.

    Digits that could start an international prefix, the region's own country code, a
    national prefix or a leading zero go the slow way, where ``parse`` may rewrite them.
    """
    if default_region is None or _NATIONAL_SHAPE.fullmatch(text) is None:
        return None
    rules = _region_rules(default_region)
    if rules is None:
        return None
    digits = text.translate(_SEPARATORS)
    if (
        not 6 <= len(digits) <= 17
        or digits[0] == "0"
        or digits.startswith(rules.country_prefix)
        or rules.international_prefix.match(digits) is not None
        or rules.national_prefix.match(digits) is not None
    ):
        return None
    if not _is_valid(rules.country_code, digits):
        return None
    return f"+{rules.country_code}{digits}"


def _region_rules(region: str) -> _RegionRules | None:
    if region in _REGION_RULES:
        return _REGION_RULES[region]
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    rules = None
    if metadata is not None and metadata.country_code:
        rules = _RegionRules(
            country_code=metadata.country_code,
            country_prefix=str(metadata.country_code),
            # No international prefix: "always matches" keeps every number on the slow path.
            international_prefix=re.compile(metadata.international_prefix or ""),
            national_prefix=(
                re.compile(metadata.national_prefix_for_parsing)
                if metadata.national_prefix_for_parsing
                else _NEVER
            ),
        )
    _REGION_RULES[region] = rules
    return rules

"""The one access-token parser, shared by Slack, the CLI and the client."""

from __future__ import annotations

import pytest

from bot.mypreferences.tokens import (
    POSITIVE,
    TOO_LONG,
    WHOLE_NUMBER,
    InvalidAccessToken,
    check_access_token,
    parse_access_token,
)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("1", 1),
        ("12345", 12345),
        ("0042", 42),  # leading zeros are harmless
        ("0" * 40 + "7", 7),  # even many of them: only significant digits count
        ("9" * 18, 10**18 - 1),
        (str(2**63 - 1), 2**63 - 1),  # the largest accepted: the API keeps a signed 64-bit int
        ("1" * 19, 1_111_111_111_111_111_111),
        ("0", POSITIVE),
        ("000", POSITIVE),
        ("-5", POSITIVE),
        ("-abc", WHOLE_NUMBER),
        ("+5", WHOLE_NUMBER),
        ("12.5", WHOLE_NUMBER),
        ("1e3", WHOLE_NUMBER),
        ("1_000", WHOLE_NUMBER),
        ("1,000", WHOLE_NUMBER),
        ("0x1F", WHOLE_NUMBER),
        ("٤٢", WHOLE_NUMBER),  # Arabic-Indic digits
        ("४२", WHOLE_NUMBER),  # Devanagari digits
        ("１２", WHOLE_NUMBER),  # full-width digits
        ("²", WHOLE_NUMBER),  # a superscript is a digit to str.isdigit
        ("12\u200b", WHOLE_NUMBER),  # zero-width space
        ("", WHOLE_NUMBER),
        (str(2**63), TOO_LONG),
        ("9" * 19, TOO_LONG),
        ("1" * 30, TOO_LONG),
        ("9" * 5000, TOO_LONG),  # never reaches int(), which refuses > 4300 digits
    ],
)
def test_access_token_parsing(word: str, expected: int | str) -> None:
    if isinstance(expected, int):
        assert parse_access_token(word) == expected
    else:
        with pytest.raises(InvalidAccessToken) as raised:
            parse_access_token(word)
        assert str(raised.value) == expected


@pytest.mark.parametrize("value", [0, -1, 2**63, True, 1.0, "12"])
def test_the_client_refuses_anything_but_a_valid_token(value: object) -> None:
    with pytest.raises(ValueError, match="positive whole number"):
        check_access_token(value)  # type: ignore[arg-type]


def test_the_largest_token_passes_the_client_check() -> None:
    check_access_token(2**63 - 1)

"""What an access token is: the one parser, used by Slack, the CLI and the client.

An access token is the integer Initiate returned; the API keeps it in a signed
64-bit integer, so anything larger cannot be one, and refusing it saves a
request against the account's daily quota.
"""

from __future__ import annotations

MAX_ACCESS_TOKEN = 2**63 - 1
_MAX_DIGITS = len(str(MAX_ACCESS_TOKEN))

WHOLE_NUMBER = "An access token is a whole number, like 12345."
POSITIVE = "An access token is a positive number."
TOO_LONG = "That access token is too long to be real."


class InvalidAccessToken(ValueError):
    """Text that is not an access token; ``str(error)`` says why, in words for a person."""


def parse_access_token(text: str) -> int:
    """The access token written in ``text``. Raises ``InvalidAccessToken``.

    Only ASCII digits count (``str.isdigit`` also accepts other scripts' digits
    and superscripts); leading zeros and surrounding spaces are harmless.
    """
    word = text.strip()
    digits = word[1:] if word.startswith("-") else word
    if not (digits.isascii() and digits.isdigit()):
        raise InvalidAccessToken(WHOLE_NUMBER)
    if word.startswith("-"):
        raise InvalidAccessToken(POSITIVE)
    significant = digits.lstrip("0")
    # The length check keeps int() away from absurdly long digit strings.
    if len(significant) > _MAX_DIGITS or int(significant or "0") > MAX_ACCESS_TOKEN:
        raise InvalidAccessToken(TOO_LONG)
    token = int(significant or "0")
    if token == 0:
        raise InvalidAccessToken(POSITIVE)
    return token


def check_access_token(access_token: int) -> None:
    """Raise ValueError unless ``access_token`` is a valid token (an int, bool excluded)."""
    if (
        isinstance(access_token, bool)
        or not isinstance(access_token, int)
        or not 0 < access_token <= MAX_ACCESS_TOKEN
    ):
        raise ValueError("the access token must be a positive whole number")

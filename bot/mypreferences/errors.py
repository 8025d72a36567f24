"""Typed MyPreferences API errors, each carrying the sentence a user should read.

One decision, one place: the wording for every error lives here.
"""

from __future__ import annotations

from bot.exit_codes import ExitCode


class ApiError(Exception):
    """Base class. ``user_message`` is safe to show in Slack or a terminal."""

    user_message = "The MyPreferences API request failed."
    exit_code = ExitCode.UNAVAILABLE
    #: True when trying again later may succeed (the watcher backs off and retries).
    transient = False

    def __init__(self, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(detail or self.user_message)
        self.detail = detail
        self.retry_after = retry_after


class BadRequest(ApiError):
    user_message = (
        "MyPreferences rejected the request as malformed (HTTP 400). "
        "This is likely a bug in the bot or a bad access token; please report it."
    )
    exit_code = ExitCode.CONFIG


class TokenRejected(ApiError):
    user_message = (
        "MyPreferences does not recognise this access token, or it has expired (HTTP 401). "
        "Check the number; if it is right, the bot's API credentials may be wrong."
    )
    exit_code = ExitCode.NOT_FOUND


class PermissionDenied(ApiError):
    user_message = (
        "The bot's MyPreferences API user lacks permission to read import status (HTTP 403). "
        "Ask your MyPreferences administrator to grant it."
    )
    exit_code = ExitCode.CONFIG


class AccountNotFound(ApiError):
    user_message = (
        "MyPreferences does not know the configured account id (HTTP 404). "
        "Check MYPREFERENCES_CLIENT_ID in the bot's settings."
    )
    exit_code = ExitCode.CONFIG


class RateLimited(ApiError):
    user_message = (
        "MyPreferences is asking the bot to slow down (HTTP 429). Try again in a few minutes."
    )
    exit_code = ExitCode.UNAVAILABLE
    transient = True


class Unavailable(ApiError):
    user_message = (
        "MyPreferences is temporarily unavailable (server error). "
        "The bot retried; try again in a few minutes."
    )
    exit_code = ExitCode.UNAVAILABLE
    transient = True


class Unreachable(Unavailable):
    """No answer at all: the connection was refused, broke, or timed out before it opened.

    An ``Unavailable`` (transient, the same exit code), but not a server error.
    """

    user_message = (
        "The bot could not reach MyPreferences (the connection was refused, broke or timed "
        "out). The bot retried; try again in a few minutes."
    )


class Timeout(ApiError):
    user_message = (
        "MyPreferences did not answer in time. The bot retried; try again in a few minutes."
    )
    exit_code = ExitCode.UNAVAILABLE
    transient = True


class MalformedResponse(ApiError):
    user_message = (
        "MyPreferences sent an answer the bot could not read (not valid status JSON). "
        "Try again later; if it persists, please report it."
    )
    exit_code = ExitCode.UNAVAILABLE
    transient = True


class AuthFailed(ApiError):
    """The OAuth token endpoint refused the bot's client credentials."""

    user_message = (
        "The bot could not sign in to MyPreferences (OAuth token request refused). "
        "Check the MYPREFERENCES_OAUTH_* settings."
    )
    exit_code = ExitCode.CONFIG


def error_for_status(code: int, retry_after: float | None = None) -> ApiError:
    """The typed error for an HTTP status code the API answered with."""
    detail = f"HTTP {code}"
    if code == 400:
        return BadRequest(detail)
    if code == 401:
        return TokenRejected(detail)
    if code == 403:
        return PermissionDenied(detail)
    if code == 404:
        return AccountNotFound(detail)
    if code == 429:
        return RateLimited(detail, retry_after)
    if code >= 500:
        return Unavailable(detail, retry_after)
    return BadRequest(detail)

"""Secrets never reach a log line.

These tests drive ``bot.logs.setup_logging`` with every secret the settings
know, in both formats, and put each secret everywhere a log record can carry
it. tests/integration/test_secrets.py runs a real bot with recognisable
secrets and searches its whole log file and database byte for byte.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest

from bot.config import Settings, load_settings
from bot.logs import REDACTED, setup_logging

# --------------------------------------------------------------------------- unit

UNIT_ENV = {
    "SLACK_BOT_TOKEN": "xoxb-unit-bot-token-7f3a91",
    "SLACK_SIGNING_SECRET": "unit-signing-secret-9c1d44",
    "SLACK_APP_TOKEN": "xapp-unit-app-token-4b2e08",
    "MYPREFERENCES_AUTHORIZATION": "PNAUTHINFO3-HMAC-SHA256 Credential=unit Signature=dW5pdA==",
    "MYPREFERENCES_OAUTH_TOKEN_URL": "https://auth.example.com/oauth/token",
    "MYPREFERENCES_OAUTH_CLIENT_ID": "unit-oauth-client-id-5d6e",
    "MYPREFERENCES_OAUTH_CLIENT_SECRET": "unit-oauth-client-secret-3a8f",
    "MYPREFERENCES_OAUTH_SCOPE": "ACME/unit.user",
}
SETTINGS: Settings = load_settings(UNIT_ENV)  # no needs: both auth modes may be set here
SECRETS = SETTINGS.secrets()


class _Carrier:
    """An object whose str() shows a secret, as a request or header dict would."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __str__(self) -> str:
        return f"<Carrier Authorization={self.secret}>"


def _raise_and_log(log: logging.Logger, secret: str) -> None:
    try:
        raise RuntimeError(f"the API refused credential {secret}")
    except RuntimeError:
        log.exception("lookup failed")


def _raise_chained_and_log(log: logging.Logger, secret: str) -> None:
    try:
        try:
            raise ValueError(f"bad header {secret}")
        except ValueError as inner:
            raise RuntimeError("the request failed") from inner
    except RuntimeError as exc:
        log.error("request failed", exc_info=exc)


# Every place a record can carry a secret: name -> how to log it.
PLACES: dict[str, Callable[[logging.Logger, str], None]] = {
    "message": lambda log, s: log.info(f"token is {s}"),
    "args": lambda log, s: log.warning("token is %s (again: %r)", s, s),
    "dict_args": lambda log, s: log.info("header %(auth)s", {"auth": s}),
    "extra_context_field": lambda log, s: log.info("watch", extra={"token": s, "team": s}),
    "extra_other_field": lambda log, s: log.info("call", extra={"authorization": s}),
    "extra_object": lambda log, s: log.info("call", extra={"event": _Carrier(s)}),
    "extra_dict": lambda log, s: log.info("call", extra={"headers": {"Authorization": s}}),
    "object_message": lambda log, s: log.info(_Carrier(s)),
    "exception_with_traceback": _raise_and_log,
    "chained_exception": _raise_chained_and_log,
    "stack_info": lambda log, s: log.info("where %s", s, stack_info=True),
    "bad_format_call": lambda log, s: log.info("count %d", s),
}
# The text format shows only the known context fields of ``extra``; these are not shown.
HIDDEN_IN_TEXT = {"extra_other_field", "extra_dict"}


@pytest.fixture
def log_output() -> Iterator[Callable[..., io.StringIO]]:
    """Configure logging like the bot does, writing to a buffer; restore the root afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    quiet = ("httpx", "httpcore", "apscheduler", "bot.startup")
    saved_levels = {name: logging.getLogger(name).level for name in quiet}

    def configure(fmt: str, secrets: list[str] = SECRETS) -> io.StringIO:
        setup_logging("DEBUG", fmt, secrets)
        buffer = io.StringIO()
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(buffer)
        return buffer

    yield configure
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in saved_levels.items():
        logging.getLogger(name).setLevel(level)


def test_settings_name_every_configured_secret() -> None:
    # The redaction below is only as good as this list.
    expected = {
        UNIT_ENV[name]
        for name in (
            "SLACK_BOT_TOKEN",
            "SLACK_SIGNING_SECRET",
            "SLACK_APP_TOKEN",
            "MYPREFERENCES_AUTHORIZATION",
            "MYPREFERENCES_OAUTH_CLIENT_ID",
            "MYPREFERENCES_OAUTH_CLIENT_SECRET",
        )
    }
    assert set(SECRETS) == expected


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("place", sorted(PLACES))
def test_no_secret_reaches_a_log_line(
    log_output: Callable[..., io.StringIO], fmt: str, place: str
) -> None:
    buffer = log_output(fmt)
    log = logging.getLogger("bot.test_logs")
    for secret in SECRETS:
        PLACES[place](log, secret)  # must not raise into the caller, whatever the call
    written = buffer.getvalue()
    if fmt == "json" or place not in HIDDEN_IN_TEXT:
        # The secret was replaced, not the record dropped.
        assert written.count(REDACTED) >= len(SECRETS), written
    for secret in SECRETS:
        assert secret not in written, f"{secret!r} leaked via {place} ({fmt}):\n{written}"
    if fmt == "json":
        lines = written.splitlines()
        assert len(lines) == len(SECRETS), "one JSON line per record, tracebacks included"
        for line in lines:
            record = json.loads(line)
            assert record["level"] in ("INFO", "WARNING", "ERROR")
            assert isinstance(record["message"], str)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_secret_inside_another_secret_is_replaced_whole(
    log_output: Callable[..., io.StringIO], fmt: str
) -> None:
    # A client id that is also part of a longer secret (an Authorization value built on it).
    short, long = "client-7c1e", "Basic client-7c1e:s3cr3t-value"
    buffer = log_output(fmt, [short, long])
    logging.getLogger("bot.test_logs").info("sent %s for %s", long, short)
    written = buffer.getvalue()
    assert short not in written and "s3cr3t-value" not in written
    assert written.count(REDACTED) == 2


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_records_without_secrets_keep_their_context_fields(
    log_output: Callable[..., io.StringIO], fmt: str
) -> None:
    buffer = log_output(fmt)
    logging.getLogger("bot.test_logs").info(
        "notification sent", extra={"token": 4242, "team": "T0001", "channel": "C0001"}
    )
    written = buffer.getvalue()
    assert REDACTED not in written
    if fmt == "json":
        record = json.loads(written)
        assert record["message"] == "notification sent"
        assert (record["token"], record["team"], record["channel"]) == (4242, "T0001", "C0001")
    else:
        assert "notification sent token=4242 team=T0001 channel=C0001" in written

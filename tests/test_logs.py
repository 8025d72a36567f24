"""Secrets never reach a log line or the database.

Unit tests drive ``bot.logs.setup_logging`` with every secret the settings
know, in both formats, and put each secret everywhere a log record can carry
it. The integration test runs a real bot with recognisable secrets through
lookups, a watch and a handful of errors, then searches its whole log file and
the database files byte for byte.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot.config import Settings, load_settings
from bot.logs import REDACTED, setup_logging
from bot.sandbox.harness import Harness
from bot.sandbox.slack_emulator import SlackUser, message_text, sign_request, slash_command_body

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


# --------------------------------------------------------------------------- a real bot

RUN = secrets.token_hex(4)
BOT_TOKEN = f"xoxb-LEAKCHECK-bot-{RUN}"
SIGNING_SECRET = f"LEAKCHECK-signing-{RUN}"
AUTHORIZATION = f"PNAUTHINFO3-HMAC-SHA256 Credential=LEAKCHECK/{RUN} Signature=bGVha2NoZWNr"
OAUTH_CLIENT_ID = f"LEAKCHECK-oauth-id-{RUN}"
OAUTH_CLIENT_SECRET = f"LEAKCHECK-oauth-secret-{RUN}"


def _answer(user: SlackUser, text: str, channel_id: str = "C0001") -> str:
    """What the user reads in the end: the ack, or the respond() after "Looking up…"."""
    result = user.command(text, channel_id=channel_id)
    assert result.status_code == 200
    body = result.ack_body
    assert isinstance(body, dict), body
    if body.get("text", "").startswith(("Looking up", "Checking import", "Stopping")):
        body = user.wait_response(result, timeout=15)
    return message_text(body)


def _exercise(harness: Harness, user: SlackUser, token: int, channel: str) -> list[str]:
    """Lookups, a watch with a transition, and every kind of error we can provoke.

    Returns the OAuth bearer tokens the simulator issued (secrets no setting names).
    """
    sim, emulator = harness.sim, harness.emulator
    sim.add_import(token, name="Leak check", status="Queued", TotalRecordsReceived=10)
    assert "Leak check" in _answer(user, str(token))
    assert "does not recognise" in _answer(user, str(token + 1))  # 401
    sim.inject_fault(403, token=token)
    assert "lacks permission" in _answer(user, str(token))
    # Transient trouble, retried within the lookup: a server error, then an unreadable body.
    sim.inject_fault(500, token=token)
    sim.inject_fault(token=token, malformed=True)
    assert "Leak check" in _answer(user, str(token))
    issued = list(sim._oauth_tokens)
    sim.revoke_oauth_tokens()  # OAuth mode fetches a new token after the 401
    assert "Leak check" in _answer(user, str(token))
    assert "not understand" in _answer(user, "what is this")
    # Someone pastes a secret into Slack: it must not be echoed, logged or stored.
    pasted = _answer(user, f"watch {BOT_TOKEN}")
    assert "whole number" in pasted and BOT_TOKEN not in pasted
    pasted = _answer(user, f"{AUTHORIZATION} {SIGNING_SECRET}")
    assert "Usage" in pasted and SIGNING_SECRET not in pasted
    # A watch, a transition posted in the thread, a Slack failure on the way.
    emulator.invite_bot(channel)
    assert "Watching import" in _answer(user, f"watch {token}", channel_id=channel)
    card = emulator.wait_for_message(channel, "Leak check", timeout=10)
    emulator.inject_error("chat.postMessage", "internal_error", channel=channel, times=1)
    sim.update(token, Status="Processing", ValidationSuccessful=10, Processed=5)
    deadline = time.monotonic() + 15
    while not emulator.thread(channel, card.ts) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert emulator.thread(channel, card.ts), "the transition was never posted"
    # A request with a forged signature, and one signed with the real secret but stale.
    body = slash_command_body(str(token), response_url=emulator.new_response_url())
    forged = user._http.post(
        user.bot_url,
        content=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            **sign_request("not-the-secret", body),
        },
    )
    assert forged.status_code == 401
    stale = user.send(body, "application/x-www-form-urlencoded", timestamp=int(time.time()) - 900)
    assert stale.status_code == 401
    assert "Stopped watching" in _answer(user, f"unwatch {token}", channel_id=channel)
    return issued + list(sim._oauth_tokens)


def _leaks(paths: list[Path], needles: list[str]) -> list[str]:
    found = []
    for path in paths:
        data = path.read_bytes()
        for needle in needles:
            # The database stores text as UTF-8; JSON columns could escape it, so look for both.
            forms = {needle.encode(), json.dumps(needle).strip('"').encode()}
            if any(form in data for form in forms):
                found.append(f"{needle!r} in {path.name}")
    return found


@pytest.fixture(scope="module")
def leak_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with Harness(tmp_path_factory.mktemp("leaks")) as h:
        h.sim.authorization = AUTHORIZATION
        h.sim.oauth_client_id = OAUTH_CLIENT_ID
        h.sim.oauth_client_secret = OAUTH_CLIENT_SECRET
        h.emulator.add_token(BOT_TOKEN)
        yield h


@pytest.mark.parametrize("auth_mode", ["authorization", "oauth"])
def test_a_running_bot_never_writes_a_secret_to_its_log_or_database(
    leak_harness: Harness, auth_mode: str
) -> None:
    from bot.sandbox.mypreferences_simulator import oauth_token_url

    harness = leak_harness
    database = harness.workdir / f"leaks-{auth_mode}.db"
    env: dict[str, str] = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "DATABASE_URL": f"sqlite:///{database}",
        "LOG_LEVEL": "DEBUG",  # the most a log can ever say
    }
    if auth_mode == "oauth":
        env |= {
            "MYPREFERENCES_AUTHORIZATION": "",
            "MYPREFERENCES_OAUTH_TOKEN_URL": oauth_token_url(harness.sim_server.url),
            "MYPREFERENCES_OAUTH_CLIENT_ID": OAUTH_CLIENT_ID,
            "MYPREFERENCES_OAUTH_CLIENT_SECRET": OAUTH_CLIENT_SECRET,
            "MYPREFERENCES_OAUTH_SCOPE": "ACME/sim.user",
        }
    else:
        env["MYPREFERENCES_AUTHORIZATION"] = AUTHORIZATION
    bot = harness.start_bot(**env)
    token = 7_100 if auth_mode == "authorization" else 7_200
    with SlackUser(bot.events_url, SIGNING_SECRET, harness.emulator) as user:
        bearer_tokens = _exercise(harness, user, token, channel=f"C0LEAK{token}")
    bot.terminate()  # the database and the log are complete once it has stopped
    if auth_mode == "oauth":
        assert len(bearer_tokens) >= 2, "the bot never fetched (and refreshed) an OAuth token"

    needles = [BOT_TOKEN, SIGNING_SECRET, AUTHORIZATION, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET]
    # The bearer tokens the simulator issued are secrets too, though no setting names them.
    needles += bearer_tokens
    # The log is not empty talk: it covered the watch, the retry and the refusals.
    log_text = bot.log_text()
    assert "notification sent" in log_text and "internal_error" in log_text
    files = [bot.log_path, *sorted(database.parent.glob(f"{database.name}*"))]
    assert database in files
    assert _leaks(files, needles) == []

"""A running bot never writes a secret to its log or its database.

A real bot with recognisable secrets goes through lookups, a watch and a handful
of errors (in both ways of authenticating to MyPreferences); then its whole log
file and the database files are searched byte for byte. The redaction itself is
unit-tested in tests/test_logs.py.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import pytest

from bot.sandbox.harness import Harness
from bot.sandbox.mypreferences_simulator import oauth_token_url
from bot.sandbox.slack_emulator import SlackUser, message_text, sign_request, slash_command_body
from tests.integration.helpers import PATIENCE, final_reply

RUN = secrets.token_hex(4)
BOT_TOKEN = f"xoxb-LEAKCHECK-bot-{RUN}"
SIGNING_SECRET = f"LEAKCHECK-signing-{RUN}"
AUTHORIZATION = f"PNAUTHINFO3-HMAC-SHA256 Credential=LEAKCHECK/{RUN} Signature=bGVha2NoZWNr"
OAUTH_CLIENT_ID = f"LEAKCHECK-oauth-id-{RUN}"
OAUTH_CLIENT_SECRET = f"LEAKCHECK-oauth-secret-{RUN}"


def _answer(user: SlackUser, text: str, channel_id: str = "C0001") -> str:
    """What the user reads in the end: the ack, or the respond() after "Looking up…"."""
    return message_text(final_reply(user, user.command(text, channel_id=channel_id)))


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
    card = emulator.wait_for_message(channel, "Leak check", timeout=PATIENCE)
    emulator.inject_error("chat.postMessage", "internal_error", channel=channel, times=1)
    sim.update(token, Status="Processing", ValidationSuccessful=10, Processed=5)
    deadline = time.monotonic() + PATIENCE
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


@pytest.fixture
def leak_harness(fresh_harness: Harness) -> Harness:
    """A harness whose simulator and emulator accept this module's recognisable secrets."""
    fresh_harness.sim.authorization = AUTHORIZATION
    fresh_harness.sim.oauth_client_id = OAUTH_CLIENT_ID
    fresh_harness.sim.oauth_client_secret = OAUTH_CLIENT_SECRET
    fresh_harness.emulator.add_token(BOT_TOKEN)
    return fresh_harness


@pytest.mark.parametrize("auth_mode", ["authorization", "oauth"])
def test_a_running_bot_never_writes_a_secret_to_its_log_or_database(
    leak_harness: Harness, auth_mode: str
) -> None:
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

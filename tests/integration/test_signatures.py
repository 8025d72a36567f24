"""Requests that are not from Slack are refused before anything happens.

Each refusal is checked the way an operator would: the HTTP status the sender
got, no call to MyPreferences (the simulator's counter), and nothing posted in
Slack (the emulator's response_url and chat calls). A correctly signed command
in the same module proves that the same request *would* have reached the API.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest

from bot.sandbox.harness import SIGNING_SECRET, BotProcess, Harness
from bot.sandbox.slack_emulator import SlackUser, sign_request, slash_command_body
from bot.server import MAX_BODY_BYTES
from tests.integration.helpers import final_reply

TOKEN = 4242
FORM = "application/x-www-form-urlencoded"


HARNESS_ENV = {"LOOKUP_RATE_LIMIT": "100000"}


@pytest.fixture(scope="module", autouse=True)
def _guarded_import(harness: Harness) -> None:
    harness.sim.add_import(TOKEN, name="Guarded import", status="Processing")


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def command_body(harness: Harness, text: str = str(TOKEN)) -> tuple[bytes, str]:
    """A genuine slash-command body and its response_url."""
    response_url = harness.emulator.new_response_url(channel="C0001", user="U0001")
    return slash_command_body(text, response_url=response_url), response_url


def assert_nothing_happened(harness: Harness, status_calls: int, response_url: str) -> None:
    """No API call, and nothing posted to Slack, even a moment later."""
    time.sleep(0.2)  # a listener that wrongly ran would have called out by now
    assert harness.sim.status_calls() == status_calls
    assert harness.emulator.responses(response_url) == []
    assert harness.emulator.calls("chat.postMessage") == []
    assert harness.emulator.calls("chat.postEphemeral") == []


def test_a_correctly_signed_command_reaches_the_api(harness: Harness, user: SlackUser) -> None:
    calls = harness.sim.status_calls()

    result = user.command(str(TOKEN))

    assert result.status_code == 200
    assert "Guarded import" in json.dumps(final_reply(user, result))
    assert harness.sim.status_calls() == calls + 1


def test_forged_signature_is_refused(harness: Harness, bot: BotProcess, http: httpx.Client) -> None:
    body, response_url = command_body(harness)
    calls = harness.sim.status_calls()
    headers = {
        "Content-Type": FORM,
        "X-Slack-Request-Timestamp": str(int(time.time())),
        "X-Slack-Signature": "v0=" + "ab" * 32,
    }

    answer = http.post(bot.events_url, content=body, headers=headers)

    assert answer.status_code == 401
    assert "Guarded import" not in answer.text
    assert_nothing_happened(harness, calls, response_url)


def test_signature_made_with_the_wrong_secret_is_refused(harness: Harness, bot: BotProcess) -> None:
    calls = harness.sim.status_calls()
    with SlackUser(bot.events_url, "not-the-" + SIGNING_SECRET, harness.emulator) as impostor:
        result = impostor.command(str(TOKEN))

    assert result.status_code == 401
    assert_nothing_happened(harness, calls, result.response_url or "")


def test_body_changed_after_signing_is_refused(
    harness: Harness, bot: BotProcess, http: httpx.Client
) -> None:
    body, response_url = command_body(harness)
    headers = {"Content-Type": FORM, **sign_request(SIGNING_SECRET, body)}
    tampered = body.replace(b"text=4242", b"text=4243")
    calls = harness.sim.status_calls()

    answer = http.post(bot.events_url, content=tampered, headers=headers)

    assert answer.status_code == 401
    assert_nothing_happened(harness, calls, response_url)


@pytest.mark.parametrize("skew_seconds", [-6 * 60, -3600, 6 * 60])
def test_timestamp_more_than_five_minutes_off_is_refused(
    harness: Harness, user: SlackUser, skew_seconds: int
) -> None:
    calls = harness.sim.status_calls()

    # Correctly signed, but for a moment too far from now: a replayed request.
    result = user.command(str(TOKEN), timestamp=int(time.time()) + skew_seconds)

    assert result.status_code == 401
    assert_nothing_happened(harness, calls, result.response_url or "")


@pytest.mark.parametrize(
    "missing",
    [
        ("X-Slack-Signature",),
        ("X-Slack-Request-Timestamp",),
        ("X-Slack-Signature", "X-Slack-Request-Timestamp"),
    ],
)
def test_missing_signature_headers_are_refused(
    harness: Harness, bot: BotProcess, http: httpx.Client, missing: tuple[str, ...]
) -> None:
    body, response_url = command_body(harness)
    headers = {"Content-Type": FORM, **sign_request(SIGNING_SECRET, body)}
    for name in missing:
        del headers[name]
    calls = harness.sim.status_calls()

    answer = http.post(bot.events_url, content=body, headers=headers)

    assert answer.status_code == 401
    assert_nothing_happened(harness, calls, response_url)


def test_oversized_body_is_refused_with_413(
    harness: Harness, bot: BotProcess, http: httpx.Client
) -> None:
    response_url = harness.emulator.new_response_url(channel="C0001", user="U0001")
    padding = "x" * (MAX_BODY_BYTES + 1)
    body = slash_command_body(str(TOKEN), response_url=response_url) + b"&pad=" + padding.encode()
    headers = {"Content-Type": FORM, **sign_request(SIGNING_SECRET, body)}
    calls = harness.sim.status_calls()

    answer = http.post(bot.events_url, content=body, headers=headers)

    assert answer.status_code == 413
    assert_nothing_happened(harness, calls, response_url)


def test_oversized_chunked_body_without_length_is_refused_with_413(
    harness: Harness, bot: BotProcess, http: httpx.Client
) -> None:
    response_url = harness.emulator.new_response_url(channel="C0001", user="U0001")
    body = (
        slash_command_body(str(TOKEN), response_url=response_url)
        + b"&pad="
        + b"x" * (MAX_BODY_BYTES + 1)
    )
    headers = {"Content-Type": FORM, **sign_request(SIGNING_SECRET, body)}
    calls = harness.sim.status_calls()

    def chunks() -> Iterator[bytes]:  # a generator makes httpx send it chunked
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    answer = http.post(bot.events_url, content=chunks(), headers=headers)

    assert "content-length" not in answer.request.headers
    assert answer.status_code == 413
    assert_nothing_happened(harness, calls, response_url)
    # The bot is still fine afterwards.
    assert http.get(bot.url + "/healthz").status_code == 200


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", json.dumps({"text": "4242", "channel": "C0001"}).encode()),
        ("text/plain", b"/import-status 4242"),
        ("application/xml", b"<command>/import-status 4242</command>"),
    ],
)
def test_signed_body_that_is_not_a_slack_form_is_unhandled(
    harness: Harness, bot: BotProcess, http: httpx.Client, content_type: str, body: bytes
) -> None:
    headers = {"Content-Type": content_type, **sign_request(SIGNING_SECRET, body)}
    response_url = harness.emulator.new_response_url(channel="C0001", user="U0001")
    calls = harness.sim.status_calls()

    answer = http.post(bot.events_url, content=body, headers=headers)

    # Bolt finds no listener for it: 404 {"error": "unhandled request"}, nothing runs.
    assert answer.status_code == 404
    assert answer.json() == {"error": "unhandled request"}
    assert_nothing_happened(harness, calls, response_url)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00 not utf-8",
        urlencode({"payload": "{not json"}).encode(),
    ],
    ids=["invalid-utf8", "payload-not-json"],
)
def test_undecodable_body_is_a_400_not_a_server_error(
    harness: Harness, bot: BotProcess, http: httpx.Client, body: bytes, signed: bool
) -> None:
    headers = {"Content-Type": FORM}
    if signed:
        headers.update(sign_request(SIGNING_SECRET, body))
    response_url = harness.emulator.new_response_url(channel="C0001", user="U0001")
    calls = harness.sim.status_calls()

    answer = http.post(bot.events_url, content=body, headers=headers)

    # The signature is checked before the body is read: unsigned is 401 whatever it holds.
    assert answer.status_code == (400 if signed else 401)
    assert answer.text == ("malformed request body" if signed else "invalid request signature")
    assert_nothing_happened(harness, calls, response_url)
    assert "Traceback" not in bot.log_text()


def test_a_retried_command_is_answered_but_not_run_twice(harness: Harness, user: SlackUser) -> None:
    calls = harness.sim.status_calls()

    result = user.command(
        str(TOKEN), headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    )

    assert result.status_code == 200
    assert result.ack_body is None
    assert_nothing_happened(harness, calls, result.response_url or "")


def test_healthz_answers_json_with_the_database_ok(bot: BotProcess, http: httpx.Client) -> None:
    answer = http.get(bot.url + "/healthz")

    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    health = answer.json()
    assert health["database"] == "ok"
    assert health["status"] == "ok"

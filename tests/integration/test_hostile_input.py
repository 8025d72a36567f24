"""Hostile input of every kind, at the real bot process: command text, requests, API bodies.

Whatever arrives, the bot answers with a clear sentence or a 4xx, never a 5xx
or a traceback, and stores nothing it should not. One bot serves the module
(the lookup limit is lifted, so the property test is never rate limited).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bot.sandbox.harness import SIGNING_SECRET, BotProcess, Harness
from bot.sandbox.slack_emulator import (
    CommandResult,
    SlackUser,
    event_body,
    message_text,
    sign_request,
    slash_command_body,
    wait_for,
)
from bot.server import MAX_BODY_BYTES
from bot.slack.render import USAGE_LINE
from tests.integration.helpers import PATIENCE, db_rows, final_reply, log_since

# 30 s or so in all (150 commands of the property test, unreadable answers retried).
pytestmark = pytest.mark.slow

FORM = "application/x-www-form-urlencoded"
PROPERTY_CHANNEL = "C0HOSTILE"  # nobody watches anything here
MAX_EXAMPLES = 150
UNKNOWN_TOKEN = "does not recognise this access token"
COULD_NOT_READ = "MyPreferences sent an answer the bot could not read"
# Sentences an answer to arbitrary text may consist of; anything else is not helpful.
HELPFUL = (
    USAGE_LINE,
    UNKNOWN_TOKEN,
    "This channel is not watching import",
    "This channel is not watching any import",
)
# Raw Slack markup that would ping people or make a link if it reached a message unescaped.
INJECTED_MARKUP = ("<!channel>", "<!here>", "<!everyone>", "<http://evil", "<@U123>", "<#C123>")
HOSTILE_NAME = (
    "<!channel> <!here> <!everyone> *bold* _it_ ~gone~ `code` <http://evil.example|click here> "
    "<@U123> <#C123> @channel &amp; &lt;b&gt; \u202eevil\u202c\x00\x07"
)


# Unreadable answers are retried (they may be transient) and each case below waits for
# the bot to give up: after 4 attempts, within 4 s. The budget is longer so that a busy
# machine cannot end a lookup with "did not answer in time" first. The lookup limit is
# lifted.
HARNESS_ENV = {"LOOKUP_RATE_LIMIT": "1000000", "LOOKUP_BUDGET_SECONDS": "10"}
USER_CHANNEL = PROPERTY_CHANNEL


def stored(harness: Harness) -> dict[str, list[dict[str, Any]]]:
    """What the bot has stored: the identity and state of every row that matters."""
    return {
        "imports": db_rows(
            harness, "SELECT id, client_id, access_token, name FROM imports ORDER BY id"
        ),
        "subscriptions": db_rows(
            harness,
            "SELECT id, team_id, channel_id, import_id, state FROM subscriptions ORDER BY id",
        ),
        "notifications": db_rows(
            harness, "SELECT id, subscription_id, event_key, state FROM notifications ORDER BY id"
        ),
    }


def final_text(user: SlackUser, result: CommandResult) -> str:
    """What the user reads: the ack, or the respond() that follows a "…" placeholder."""
    assert isinstance(result.ack_body, dict), result.ack_body
    assert result.ack_body.get("response_type") == "ephemeral", result.ack_body
    body = final_reply(user, result)
    assert body.get("response_type") == "ephemeral", body
    return message_text(body)


# --------------------------------------------------------------------------- (a) command text

FRAGMENTS = [
    "1; DROP TABLE imports",
    "watch 1; DROP TABLE subscriptions;--",
    "' OR '1'='1",
    "unwatch 1 OR 1=1",
    "<!channel>",
    "<!here>",
    "*bold*",
    "<http://x|y>",
    "<@U123>",
    "watch ${jndi:ldap://x/a}",
    "watch ${...}",
    "{{7*7}}",
    "%s%s%s%n",
    "99999999999999999999999999999999999999",
    "9223372036854775808",
    "999999999999999999",
    "000000000000000000000000000042",
    "-1",
    "0",
    "1e9",
    "0x2A",
    "١٢٣",  # Arabic-Indic digits: not an access token
    "１２３",  # full-width digits
    "12\u200b34",
    "watch",
    "WATCH 12 34",
    "Subscribe 0",
    "unsubscribe -5",
    "list",
    "LIST all",
    "help",
    "help me",
    "\u202ewatch 5",
    "\x00",
    "\t\n\r",
    " " * 300,
]
TEXTS = st.one_of(
    st.text(max_size=10_000),
    # Long texts (Hypothesis draws at most a few thousand characters itself, so a piece
    # is repeated), some of 4-byte characters: 12 bytes each once form-encoded.
    st.builds(
        lambda piece, times: (piece * times)[:10_000],
        st.text(min_size=1, max_size=64)
        | st.text(st.characters(min_codepoint=0x10000), min_size=1, max_size=8),
        st.integers(min_value=100, max_value=10_000),
    ),
    st.sampled_from(FRAGMENTS),
    st.lists(
        st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=30)), min_size=1, max_size=6
    ).map(" ".join),
    st.tuples(
        st.sampled_from(["", "watch ", "unwatch ", "subscribe ", "unsubscribe ", "list "]),
        st.integers(min_value=-(10**40), max_value=10**40),
    ).map(lambda pair: f"{pair[0]}{pair[1]}"),
)
EXAMPLES_RUN = 0


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # the count below must be this run's examples, nothing replayed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(text=TEXTS)
def test_any_command_text_gets_a_helpful_private_answer_and_changes_nothing(
    harness: Harness, bot: BotProcess, user: SlackUser, text: str
) -> None:
    global EXAMPLES_RUN
    EXAMPLES_RUN += 1
    before = stored(harness)
    calls_before = harness.sim.status_calls()
    offset = len(bot.log_text())
    response_url = harness.emulator.new_response_url(channel=PROPERTY_CHANNEL, user="U0001")
    body = slash_command_body(text, channel_id=PROPERTY_CHANNEL, response_url=response_url)
    result = user.send(body, FORM, response_url)

    if len(body) > MAX_BODY_BYTES:
        # Thousands of 4-byte characters form-encode to more than the server reads at all
        # (12 bytes each): refused with 413, never a crash. Whether Slack can send such a
        # command is open; if it can, the user sees Slack's error, not our usage line.
        event("refused: the form-encoded body is over MAX_BODY_BYTES")
        assert result.status_code == 413
    else:
        assert result.status_code == 200, (result.status_code, result.ack_body)
        reply = final_text(user, result)
        answered = next((s for s in HELPFUL if s in reply), None)
        event(f"answered: {answered}")
        assert answered is not None, reply
        if USAGE_LINE in reply:
            # Help, or text that is not a command: the API is never asked.
            assert harness.sim.status_calls() == calls_before
        for markup in INJECTED_MARKUP:
            assert markup not in reply
    assert stored(harness) == before
    log = log_since(bot, offset)
    assert "Traceback" not in log and " ERROR " not in log, log


def test_the_property_test_ran_every_example(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    property_test = test_any_command_text_gets_a_helpful_private_answer_and_changes_nothing
    if not any(item.name == property_test.__name__ for item in request.session.items):
        pytest.skip("the property test was not selected")
    with capsys.disabled():  # shown in the run's output, for the record
        print(f"\nhostile command text: {EXAMPLES_RUN} hypothesis examples sent over real HTTP")
    assert EXAMPLES_RUN == MAX_EXAMPLES


# --------------------------------------------------------------------------- (b) requests

WATCH_TOKEN = 64_001  # a real import: a request that got through would watch it


def _post(bot: BotProcess, body: Any, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(bot.events_url, content=body, headers=headers, timeout=30)


def _watch_body(harness: Harness) -> bytes:
    url = harness.emulator.new_response_url(channel="C0FORGED", user="U0001")
    return slash_command_body(f"watch {WATCH_TOKEN}", channel_id="C0FORGED", response_url=url)


def _signed(body: bytes, content_type: str = FORM, **sign: Any) -> dict[str, str]:
    return {"Content-Type": content_type, **sign_request(SIGNING_SECRET, body, **sign)}


def _bodies(harness: Harness) -> list[tuple[str, bytes | Iterator[bytes], dict[str, str]]]:
    """(what, body, headers) for every request that must be refused."""
    watch = _watch_body(harness)
    now = int(time.time())
    huge = b"text=" + b"9" * (1024 * 1024)
    not_form = [
        ("json sent as a form", json.dumps({"text": f"watch {WATCH_TOKEN}"}).encode()),
        ("binary", bytes(range(256)) * 4),
        ("invalid utf-8 form", b"command=%2Fimport-status&text=\xff\xfe\xfd"),
        ("payload that is not json", b"payload=not%20json"),
        ("payload that is a json list", b"payload=%5B1%2C2%5D"),
        ("empty", b""),
    ]
    cases: list[tuple[str, bytes | Iterator[bytes], dict[str, str]]] = [
        ("no signature", watch, {"Content-Type": FORM}),
        ("forged signature", watch, {"Content-Type": FORM, **sign_request("guess", watch)}),
        (
            "signature of another body",
            watch,
            {"Content-Type": FORM, **sign_request(SIGNING_SECRET, watch + b"&x=1")},
        ),
        (
            "signature without its timestamp",
            watch,
            {"Content-Type": FORM, "X-Slack-Signature": _signed(watch)["X-Slack-Signature"]},
        ),
        ("stale timestamp", watch, _signed(watch, timestamp=now - 600)),
        ("future timestamp", watch, _signed(watch, timestamp=now + 600)),
        ("garbage timestamp", watch, {**_signed(watch), "X-Slack-Request-Timestamp": "soon"}),
        (
            "5,000-digit timestamp",
            watch,
            {**_signed(watch), "X-Slack-Request-Timestamp": "9" * 5000},
        ),
        ("empty timestamp", watch, {**_signed(watch), "X-Slack-Request-Timestamp": ""}),
        # Bolt reads these bodies before it checks any signature: unsigned ones must fail too.
        ("unsigned json list", b"[1, 2]", {"Content-Type": "application/json"}),
        ("unsigned json null", b"null", {"Content-Type": "application/json"}),
        (
            "unsigned odd authorizations",
            b'{"authorizations": 5}',
            {"Content-Type": "application/json"},
        ),
        ("unsigned payload null", b"payload=null", {"Content-Type": FORM}),
        ("1 MiB body", huge, _signed(huge)),
        (
            "1 MiB body, chunked",
            iter([huge[i : i + 65536] for i in range(0, len(huge), 65536)]),
            _signed(huge),
        ),
        ("text/plain", b"watch 64001", _signed(b"watch 64001", "text/plain")),
        ("json list", b"[1, 2]", _signed(b"[1, 2]", "application/json")),
        ("truncated json", b'{"type": "event_', _signed(b'{"type": "event_', "application/json")),
    ]
    cases += [(what, body, _signed(body)) for what, body in not_form]
    return cases


def test_unsigned_stale_malformed_and_oversized_requests_are_refused_and_change_nothing(
    harness: Harness, bot: BotProcess
) -> None:
    harness.sim.add_import(WATCH_TOKEN, name="Must not be watched", status="Staging")
    before = stored(harness)
    offset = len(bot.log_text())
    refused = {}
    for what, body, headers in _bodies(harness):
        answer = _post(bot, body, headers)
        refused[what] = answer.status_code
    assert {w: c for w, c in refused.items() if not 400 <= c < 500} == {}, refused
    assert refused["forged signature"] == 401 and refused["stale timestamp"] == 401
    assert refused["1 MiB body"] == 413 and refused["1 MiB body, chunked"] == 413
    assert harness.sim.status_calls(WATCH_TOKEN) == 0, "a refused request reached the API"
    assert stored(harness) == before
    assert harness.emulator.messages("C0FORGED") == []
    assert harness.emulator.ephemerals("C0FORGED") == []
    log = log_since(bot, offset)
    assert "Traceback" not in log and " ERROR " not in log, log
    # The bot still works for a properly signed request.
    with harness.user(bot, channel_id="C0SIGNED") as person:
        result = person.command(str(WATCH_TOKEN))
    assert "Must not be watched" in final_text(person, result)


def test_a_signed_event_of_an_unknown_kind_changes_nothing(
    harness: Harness, bot: BotProcess
) -> None:
    before = stored(harness)
    with harness.user(bot) as person:
        for event in ({"type": "app_uninstalled_not"}, {"type": None}, {"tokens": "bot"}):
            assert person.event(event).status_code < 500
        # A revocation naming no bot token ends nothing.
        odd = {"type": "tokens_revoked", "tokens": {"bot": [], "oauth": "x"}}
        assert person.send(event_body(odd), "application/json").status_code == 200
    time.sleep(0.5)
    assert stored(harness) == before


# --------------------------------------------------------------------------- (c) API bodies


def lookup_reply(harness: Harness, bot: BotProcess, token: int, channel: str = "C0API") -> str:
    with harness.user(bot, channel_id=channel) as person:
        result = person.command(str(token))
        assert result.status_code == 200
        assert result.ack_seconds < 3
        return final_text(person, result)


def assert_no_injected_markup(text: str) -> None:
    for markup in INJECTED_MARKUP:
        assert markup not in text, f"raw {markup!r} reached Slack:\n{text}"


@pytest.mark.parametrize(
    ("what", "fields", "expect"),
    [
        (
            "counts as strings, lists, objects and null",
            {
                "TotalRecordsReceived": "1,234",
                "ValidationSuccessful": [100],
                "ValidationFailed": {"n": 1},
                "Processed": None,
                "Pending": "12",
                "Exceptions": True,
                "NotHonored": 1.5,
            },
            {"Received": "unknown", "Validated OK": "unknown", "Pending": "12"},
        ),
        (
            "negative and enormous counts",
            {
                "TotalRecordsReceived": -1,
                "ValidationSuccessful": 10**30,
                "Processed": -(10**30),
                "Pending": 1e308,
                "Exceptions": "9" * 5000,
                "NotHonored": 4_000,
            },
            {"Received": "unknown", "Validated OK": "unknown", "Not honoured": "4,000"},
        ),
        (
            "status as a number, name as a list, expiry as an object",
            {"Status": 3, "Name": ["a"], "Expires": {"at": "tomorrow"}},
            {"Status:": "Unknown"},
        ),
        (
            "status of another type of text",
            {"Status": "<!channel> Processing?", "Expires": "<!here> never"},
            {"Status:": "Unknown"},
        ),
    ],
)
def test_odd_field_values_are_shown_as_unknown_without_a_crash(
    harness: Harness, bot: BotProcess, what: str, fields: dict[str, Any], expect: dict[str, str]
) -> None:
    token = 64_100 + len(what)
    body = {"AccessToken": token, "Status": "Processing", "Name": "Odd fields", **fields}
    offset = len(bot.log_text())
    harness.sim.inject_fault(token=token, body=json.dumps(body), times=None)
    reply = lookup_reply(harness, bot, token)
    lines = reply.splitlines()
    for label, shown in expect.items():
        if label.endswith(":"):
            assert any(line.startswith(f"*{label}*") and shown in line for line in lines), reply
        else:
            assert lines[lines.index(f"*{label}*") + 1] == shown, reply
    assert_no_injected_markup(reply)
    log = log_since(bot, offset)
    assert "Traceback" not in log and " ERROR " not in log, log


def test_an_import_name_full_of_slack_markup_is_shown_escaped(
    harness: Harness, bot: BotProcess
) -> None:
    token = 64_200
    harness.sim.add_import(token, name=HOSTILE_NAME, status="Processing")
    reply = lookup_reply(harness, bot, token)
    assert_no_injected_markup(reply)
    # Shown, escaped the way Slack displays literal angle brackets.
    assert "&lt;!channel&gt;" in reply and "&lt;http://evil.example|click here&gt;" in reply
    assert "\u202e" not in reply and "\x00" not in reply


@pytest.mark.parametrize(
    ("what", "body"),
    [
        ("100,000 nested lists", "[" * 100_000 + "]" * 100_000),
        ("nesting inside a field", '{"Name": ' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "}"),
        ("not json", "<html><body>Service Unavailable</body></html>"),
        ("a json list", "[]"),
        ("a json string", '"Processing"'),
    ],
)
def test_unreadable_bodies_get_the_could_not_read_sentence(
    harness: Harness, bot: BotProcess, what: str, body: str
) -> None:
    token = 64_300 + len(what)
    offset = len(bot.log_text())
    harness.sim.inject_fault(token=token, body=body, times=None)
    reply = lookup_reply(harness, bot, token)
    assert COULD_NOT_READ in reply, reply
    log = log_since(bot, offset)
    assert "Traceback" not in log and " ERROR " not in log, log


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_a_50_mb_answer_is_refused_without_reading_it_into_memory(
    harness: Harness, bot: BotProcess
) -> None:
    token = 64_400
    peak_before = _peak_rss_kib(bot.pid)
    fifty_mb = b'{"Name": "' + b"x" * (50 * 1024 * 1024) + b'"}'
    harness.sim.inject_fault(token=token, body=fifty_mb, times=None)
    reply = lookup_reply(harness, bot, token)
    assert COULD_NOT_READ in reply, reply
    peak_after = _peak_rss_kib(bot.pid)
    assert peak_after < 300 * 1024, f"the bot's peak RSS reached {peak_after // 1024} MiB"
    assert peak_after - peak_before < 20 * 1024, "the body was read into memory"


def test_a_hostile_name_arriving_in_a_later_poll_keeps_the_card_working(
    harness: Harness, bot: BotProcess
) -> None:
    token, channel = 64_500, "C0CARD"
    sim, emulator = harness.sim, harness.emulator
    sim.add_import(token, name="Harmless at first", status="Processing", ValidationSuccessful=100)
    with harness.user(bot, channel_id=channel) as person:
        result = person.command(f"watch {token}")
        assert f"Watching import {token}" in message_text(final_reply(person, result))
        card = emulator.wait_for_message(channel, "Harmless at first", timeout=PATIENCE)
        sim.update(token, Name=HOSTILE_NAME + " " + "\U0001f600" * 200, Processed=30)

        def edited() -> str | None:
            text = message_text(emulator.message(channel, card.ts) or {})
            return text if "&lt;!channel&gt;" in text else None

        text = wait_for(edited, timeout=PATIENCE, description="the card edited with the new name")
        assert_no_injected_markup(text)
        sim.update(token, Status="Completed", Processed=100)
        final = emulator.wait_for_message(channel, "finished", timeout=PATIENCE)
        assert_no_injected_markup(message_text(final))
        assert "&lt;!channel&gt;" in message_text(final)
    # Slack accepted every card edit and every post: nothing the bot sent was refused.
    refused = [
        (r.method, r.error)
        for r in emulator.requests
        if r.params.get("channel") == channel and not r.ok
    ]
    assert refused == []
    assert len(emulator.messages(channel)) == 2  # the card and the broadcast final message

"""The access policy for every verb and button, and what ids and statuses may not do.

Policy (README, "Who may use it"): ALLOWED_CHANNEL_IDS and ALLOWED_USER_IDS
gate every verb and every button; outside them the bot only says so. Lookups
(a lookup, a watch, a Watch or Refresh click) share one per-user limit, and a
failed one costs two slots whatever the entry point. Two real bots: one with
allow-lists, one open (for the ids and statuses an allow-list would refuse).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import Message, SlackUser, message_text, wait_for
from bot.slack.render import ACTION_REFRESH, ACTION_UNWATCH, ACTION_WATCH

pytestmark = pytest.mark.slow

LIMIT = 4
GUARDED_ENV = {
    "ALLOWED_CHANNEL_IDS": "C0001,C0002,C0003",
    "ALLOWED_USER_IDS": "U0001,U0002,U0003,U0004,U0005",
    "LOOKUP_RATE_LIMIT": str(LIMIT),
    "LOOKUP_RATE_WINDOW_SECONDS": "600",
}
SECRET_NAME = "Secret payroll import"
NOT_ENABLED = "not enabled in this channel"
NOT_ON_LIST = "not on the list of people"
UNKNOWN_TOKEN = "does not recognise this access token"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, BotProcess]]:
    with Harness(tmp_path_factory.mktemp("guarded"), env=GUARDED_ENV, preloaded=True) as harness:
        yield harness, harness.start_bot()


@pytest.fixture(scope="module")
def open_bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, BotProcess]]:
    env = {"LOOKUP_RATE_LIMIT": "100000"}
    with Harness(tmp_path_factory.mktemp("open"), env=env, preloaded=True) as harness:
        yield harness, harness.start_bot()


def person(harness: Harness, bot: BotProcess, user: str, channel: str) -> SlackUser:
    """Someone in ``channel``, where the bot was invited (as the README says to)."""
    return harness.user(bot, channel_id=channel, user_id=user)


def final(user: SlackUser, result: Any) -> str:
    """What the person reads: the ack, or what was posted to the response_url after it."""
    assert result.status_code == 200, result
    body = result.ack_body
    if not isinstance(body, dict) or not body.get("text") or body["text"].endswith("…"):
        body = user.wait_response(result, timeout=15)
    return message_text(body)


def click_answer(user: SlackUser, action: str, token: int, message_ts: str) -> str:
    result = user.click(action, str(token), message_ts)
    assert result.status_code == 200, result
    return message_text(user.wait_response(result, timeout=15))


def rows(harness: Harness, sql: str) -> list[tuple[Any, ...]]:
    path = harness.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


def watch(harness: Harness, bot: BotProcess, token: int, channel: str, user: str) -> Message:
    with person(harness, bot, user, channel) as subscriber:
        reply = final(subscriber, subscriber.command(f"watch {token}"))
    assert f"Watching import {token}" in reply, reply
    return harness.emulator.wait_for_message(channel, str(token), timeout=15)


# --------------------------------------------------------------------------- allow-lists


@pytest.mark.parametrize(
    ("user", "channel", "refusal"),
    [("U0STRANGER", "C0001", NOT_ON_LIST), ("U0001", "C0OTHER", NOT_ENABLED)],
    ids=["user-not-on-the-list", "channel-not-on-the-list"],
)
def test_an_outsider_cannot_read_a_channels_watch_list(
    guarded: tuple[Harness, BotProcess], user: str, channel: str, refusal: str
) -> None:
    harness, bot = guarded
    harness.sim.add_import(5001, name=SECRET_NAME, status="Processing")
    if not rows(harness, "SELECT id FROM subscriptions WHERE channel_id = 'C0001'"):
        watch(harness, bot, 5001, "C0001", "U0001")

    with person(harness, bot, user, channel) as outsider:
        reply = final(outsider, outsider.command("list"))

    assert refusal in reply
    assert SECRET_NAME not in reply and "5001" not in reply


@pytest.mark.parametrize("verb", ["help", "list", "unwatch 5002", "nonsense words"])
def test_every_verb_is_refused_to_someone_not_on_the_list(
    guarded: tuple[Harness, BotProcess], verb: str
) -> None:
    harness, bot = guarded
    with person(harness, bot, "U0STRANGER", "C0002") as stranger:
        reply = final(stranger, stranger.command(verb))

    assert NOT_ON_LIST in reply and "ALLOWED_USER_IDS" in reply


def test_an_outsider_cannot_stop_a_watch_by_command_or_button(
    guarded: tuple[Harness, BotProcess],
) -> None:
    harness, bot = guarded
    token = 5003
    harness.sim.add_import(token, name="Stop check", status="Processing")
    card = watch(harness, bot, token, "C0002", "U0002")

    with person(harness, bot, "U0STRANGER", "C0002") as stranger:
        by_command = final(stranger, stranger.command(f"unwatch {token}"))
        by_button = click_answer(stranger, ACTION_UNWATCH, token, card.ts)

    assert NOT_ON_LIST in by_command and NOT_ON_LIST in by_button
    [(state,)] = rows(
        harness,
        "SELECT s.state FROM subscriptions s JOIN imports i ON i.id = s.import_id "
        f"WHERE i.access_token = {token}",
    )
    assert state == "active"
    # Someone on the list may still stop it, with the button.
    with person(harness, bot, "U0003", "C0002") as colleague:
        reply = click_answer(colleague, ACTION_UNWATCH, token, card.ts)
    assert f"Stopped watching import {token}" in reply


def test_an_outsiders_refresh_and_watch_clicks_are_refused_without_calling_the_api(
    guarded: tuple[Harness, BotProcess],
) -> None:
    harness, bot = guarded
    token = 5004
    harness.sim.add_import(token, name="Click check", status="Processing")
    card = watch(harness, bot, token, "C0003", "U0003")
    calls = harness.sim.status_calls(token)

    with person(harness, bot, "U0STRANGER", "C0003") as stranger:
        refresh = click_answer(stranger, ACTION_REFRESH, token, card.ts)
        watch_click = click_answer(stranger, ACTION_WATCH, token, card.ts)

    assert NOT_ON_LIST in refresh and NOT_ON_LIST in watch_click
    assert "Click check" not in refresh
    time.sleep(0.5)
    # Only the watcher's own polls (every second) reached the API meanwhile.
    assert harness.sim.status_calls(token) - calls <= 3


# --------------------------------------------------------------------------- failed lookups


@pytest.mark.parametrize(
    ("action", "user", "known", "guesses"),
    [
        (ACTION_REFRESH, "U0004", 5005, [5905, 5906]),
        (ACTION_WATCH, "U0005", 5008, [5915, 5916]),
    ],
    ids=["refresh", "watch"],
)
def test_failed_button_lookups_use_up_the_limit_twice_as_fast(
    guarded: tuple[Harness, BotProcess], action: str, user: str, known: int, guesses: list[int]
) -> None:
    harness, bot = guarded
    harness.sim.add_import(known, name="Button guess check", status="Staging")
    with person(harness, bot, user, "C0001") as guesser:
        # Limit 4: two failed clicks cost 2 each, so nothing more is allowed.
        for guess in guesses:
            reply = click_answer(guesser, action, guess, "1.1")
            assert UNKNOWN_TOKEN in reply, reply
        reply = final(guesser, guesser.command(str(known)))

    assert "too many lookups recently" in reply, reply
    assert harness.sim.status_calls(known) == 0


# --------------------------------------------------------------------------- ids and statuses


def test_a_hostile_user_id_in_the_unwatch_reason_pings_no_one(
    open_bot: tuple[Harness, BotProcess],
) -> None:
    harness, bot = open_bot
    token, channel = 5006, "C0009"
    harness.sim.add_import(token, name="Mention check", status="Processing")
    card = watch(harness, bot, token, channel, "U0009")
    hostile = "U1> <!channel> *everyone* <https://evil.example|click"

    with person(harness, bot, hostile, channel) as mallory:
        reply = final(mallory, mallory.command(f"unwatch {token}"))
    assert f"Stopped watching import {token}" in reply

    def card_says_who() -> str | None:
        edited = harness.emulator.message(channel, card.ts)
        text = message_text(edited) if edited else ""
        return text if "No longer watching" in text else None

    edited = wait_for(card_says_who, timeout=15, description="the card edited")
    assert "<!channel>" not in edited and "<https://evil.example" not in edited
    assert "&lt;!channel&gt;" in edited


def test_a_status_flapping_to_unknown_and_back_writes_no_thread_replies(
    open_bot: tuple[Harness, BotProcess],
) -> None:
    harness, bot = open_bot
    token, channel = 5007, "C0010"
    harness.sim.add_import(token, name="Flapping import", status="Processing")
    card = watch(harness, bot, token, channel, "U0010")

    # 8 s of a status that flips between Processing and garbage, at a 1 s poll interval.
    flips_until = time.monotonic() + 8
    garbage = False
    while time.monotonic() < flips_until:
        garbage = not garbage
        harness.sim.update(token, Status="Zorglub" if garbage else "Processing")
        time.sleep(0.3)
    harness.sim.update(token, Status="Processing")
    time.sleep(2)

    assert harness.sim.status_calls(token) >= 5, "the watcher did not poll during the flapping"
    assert harness.emulator.thread(channel, card.ts) == [], [
        message_text(m) for m in harness.emulator.thread(channel, card.ts)
    ]
    assert "Processing" in message_text(harness.emulator.message(channel, card.ts) or card)
    # A real change is still told, once.
    harness.sim.update(token, Status="Completed", Processed=1000)
    wait_for(lambda: harness.emulator.thread(channel, card.ts), timeout=15, description="Completed")
    replies = [message_text(m) for m in harness.emulator.thread(channel, card.ts)]
    assert len(replies) == 1 and "Completed" in replies[0], replies

"""Watching an import: the tracking card, its thread, and each notification sent once.

Everything runs for real: the bot is an ``import-status-bot serve`` process, the
MyPreferences simulator and the Slack emulator are HTTP servers, and the tests
read back what a channel would show (the card, its edits, the thread replies,
the broadcasts) plus the rows the bot keeps in its database.

One bot serves the whole module (starting one takes a second or two); every
test has a channel, a user and an access token of its own, so no test can see
another's messages or rows. The harness polls active imports every second and
idle ones every 3 s: a transition must reach its thread within that interval
plus SLACK.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import Message, SlackUser, message_text, wait_for
from bot.slack import render
from bot.store.tables import ImportRow, NotificationRow, SubscriptionRow
from tests.integration.helpers import (
    PATIENCE,
    Place,
    cards,
    db_rows,
    final_reply,
    replies,
    subscriptions,
    wait_card,
    wait_polls,
    wait_replies,
    watch,
)

ACTIVE_INTERVAL = 1.0  # POLL_INTERVAL_SECONDS in the harness
IDLE_INTERVAL = 3.0  # IDLE_POLL_INTERVAL_SECONDS in the harness
# What a transition may take beyond its poll interval: a tick, the poll, the post, and
# room for a busy machine (the tests run beside others; the bot shares two cores).
SLACK = 3.0

# Many commands from one module: keep the per-user lookup limit out of the way.
HARNESS_ENV = {"EXPIRY_WARNING_MINUTES": "60", "LOOKUP_RATE_LIMIT": "1000"}


@pytest.fixture
def user(harness: Harness, bot: BotProcess, place: Place) -> Iterator[SlackUser]:
    """Each test's user types in the test's own channel."""
    with harness.user(bot, channel_id=place.channel, user_id=place.user_id) as slack_user:
        yield slack_user


# --------------------------------------------------------------------------- helpers


def card_now(harness: Harness, card: Message) -> Message:
    current = harness.emulator.message(card.channel, card.ts)
    assert current is not None
    return current


def wait_card_text(
    harness: Harness, card: Message, words: str, timeout: float = PATIENCE
) -> Message:
    def showing() -> Message | None:
        current = card_now(harness, card)
        return current if words in message_text(current) else None

    return wait_for(showing, timeout, description=f"the card showing {words!r}")


def ack_text(user: SlackUser, text: str, **overrides: Any) -> str:
    """The answer to a command: in the acknowledgement, or posted later if it was slow."""
    result = user.command(text, **overrides)
    assert result.status_code == 200
    assert result.ack_seconds < 3
    return message_text(final_reply(user, result))


def list_text(user: SlackUser, channel: str | None = None) -> str:
    return ack_text(user, "list", channel_id=channel or user.channel_id)


def notifications(harness: Harness, channel: str) -> list[dict[str, Any]]:
    query = (
        select(NotificationRow.__table__)
        .join(SubscriptionRow, SubscriptionRow.id == NotificationRow.subscription_id)
        .where(SubscriptionRow.channel_id == channel)
    )
    return db_rows(harness, query)


def imports(harness: Harness, token: int) -> list[dict[str, Any]]:
    return db_rows(harness, select(ImportRow.__table__).where(ImportRow.access_token == token))


def in_future(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


# --------------------------------------------------------------------------- the story


@pytest.mark.slow
def test_import_lifecycle_posts_each_transition_once_in_the_card_thread(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    sim, token = harness.sim, place.token
    sim.add_import(token, name="Spring list", status="Initiated")
    card = watch(harness, user, token)
    assert "Spring list" in message_text(card) and "Initiated" in message_text(card)
    assert f"Watched by <@{place.user_id}>" in message_text(card), "the card names the subscriber"
    assert f"{token} (Initiated)" in list_text(user)

    # (changes, poll interval of the state being left, what the new reply says)
    steps: list[tuple[dict[str, Any], float, str]] = [
        ({"Status": "Staging"}, IDLE_INTERVAL, "Initiated → :inbox_tray: Staging"),
        ({"Status": "Queued"}, IDLE_INTERVAL, "Staging → :hourglass_flowing_sand: Queued"),
        (
            {"Status": "Processing", "ValidationSuccessful": 1000, "Processed": 100},
            ACTIVE_INTERVAL,
            "Queued → :gear: Processing",
        ),
        ({"Processed": 300}, ACTIVE_INTERVAL, "Progress: 25% (300 of 1,000 records)"),
        ({"Processed": 550}, ACTIVE_INTERVAL, "Progress: 50% (550 of 1,000 records)"),
        ({"Processed": 800}, ACTIVE_INTERVAL, "Progress: 75% (800 of 1,000 records)"),
        (
            {"Status": "Completed", "Processed": 1000},
            ACTIVE_INTERVAL,
            "Processing → :white_check_mark: Completed",
        ),
    ]
    edits = card_now(harness, card).edits
    for number, (changes, interval, expected) in enumerate(steps, start=1):
        sim.update(token, **changes)
        changed_at = time.monotonic()
        thread = wait_replies(harness, card, number)
        took = time.monotonic() - changed_at
        assert expected in thread[-1].text, f"reply {number}: {thread[-1].text!r}"
        assert took <= interval + SLACK, f"{expected!r} took {took:.1f} s"

        def edited(seen: int = edits) -> int | None:
            now_edits = card_now(harness, card).edits
            return now_edits if now_edits > seen else None

        edits = wait_for(edited, PATIENCE, description=f"the card edited after {expected!r}")
        if number == 2:
            assert f"{token} (Queued)" in list_text(user)
        if number == 4:
            # Processing at a measured rate: the card estimates the time left.
            assert wait_card_text(harness, card, " left")
            assert "300 of 1,000 records" in message_text(card_now(harness, card))
            assert f"{token} (Processing)" in list_text(user)

    thread = replies(harness, card)
    for reply, (_, _, expected) in zip(thread, steps, strict=True):
        assert expected in reply.text  # each step once, in order
    assert [m.reply_broadcast for m in thread] == [False] * 6 + [True]
    completed = thread[-1]
    assert completed.text.startswith(f"<@{place.user_id}>"), "the result mentions the subscriber"
    assert "1,000 processed" in completed.text
    assert completed.ts in [m.ts for m in harness.emulator.messages(place.channel)], "broadcast"

    final = wait_card_text(harness, card, "No longer watching")
    assert ":white_check_mark: Completed" in message_text(final)
    assert "Stop watching" not in message_text(final)
    assert "not watching any import" in list_text(user)
    (subscription,) = subscriptions(harness, place.channel)
    assert subscription["state"] == "ended" and subscription["ended_reason"] == "Completed"

    # Finished: no more polling (even at the idle interval), nothing more posted.
    calls = sim.status_calls(token)
    time.sleep(IDLE_INTERVAL + 0.5)
    assert sim.status_calls(token) == calls
    assert len(replies(harness, card)) == len(steps)
    assert len(cards(harness, place.channel)) == 1


def test_watching_twice_says_already_watching_and_posts_nothing(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    harness.sim.add_import(place.token, status="Queued")
    watch(harness, user, place.token)
    posted = len(harness.emulator.calls("chat.postMessage"))

    assert f"already watching import {place.token}" in ack_text(user, f"watch {place.token}")
    time.sleep(0.5)
    assert len(harness.emulator.calls("chat.postMessage")) == posted
    assert len(cards(harness, place.channel)) == 1
    assert len(subscriptions(harness, place.channel)) == 1


def test_unwatch_stops_every_further_message(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    token = place.token
    harness.sim.add_import(token, status="Queued", ValidationSuccessful=1000)
    card = watch(harness, user, token)
    harness.sim.update(token, Status="Processing")
    wait_replies(harness, card, 1)

    assert f"Stopped watching import {token}" in ack_text(user, f"unwatch {token}")
    wait_card_text(harness, card, "No longer watching")
    assert f"unwatched by <@{place.user_id}>" in message_text(card_now(harness, card))
    assert "not watching any import" in list_text(user)

    edits = card_now(harness, card).edits
    calls = harness.sim.status_calls(token)
    harness.sim.update(token, Status="Completed", Processed=1000)
    time.sleep(2 * ACTIVE_INTERVAL)  # it was active: polled every second if at all
    assert [m.text for m in replies(harness, card)] == [replies(harness, card)[0].text]
    assert len(harness.emulator.messages(place.channel)) == 1
    assert card_now(harness, card).edits == edits
    assert harness.sim.status_calls(token) == calls, "an unwatched import is not polled"
    assert f"not watching import {token}" in ack_text(user, f"unwatch {token}")


def test_watching_a_token_the_api_rejects_is_refused_and_stores_nothing(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    answer = ack_text(user, f"watch {place.token}")  # the simulator does not know it: 401
    assert "does not recognise this access token" in answer
    assert "Watching" not in answer
    time.sleep(0.3)
    assert harness.emulator.messages(place.channel) == []
    assert subscriptions(harness, place.channel) == []
    assert imports(harness, place.token) == []
    assert "not watching any import" in list_text(user)


def test_watching_a_completed_import_shows_it_and_does_not_subscribe(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    harness.sim.add_import(
        place.token, name="Done list", status="Completed", ValidationSuccessful=10, Processed=10
    )
    answer = ack_text(user, f"watch {place.token}")
    assert "already finished (Completed)" in answer
    assert "Done list" in answer and ":white_check_mark: Completed" in answer
    time.sleep(0.3)
    assert harness.emulator.messages(place.channel) == []
    assert subscriptions(harness, place.channel) == []
    assert "not watching any import" in list_text(user)


def test_watch_refresh_and_stop_buttons_do_what_they_say(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    token = place.token
    harness.sim.add_import(token, name="Button list", status="Staging")
    lookup = final_reply(user, user.command(str(token)))
    buttons = [
        element["action_id"]
        for block in lookup["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
    ]
    assert buttons == [render.ACTION_WATCH, render.ACTION_REFRESH]

    # Watch, from the private status message.
    click = user.click(render.ACTION_WATCH, str(token), "1790000000.000001", is_ephemeral=True)
    assert click.status_code == 200 and click.ack_seconds < 3
    assert f"Watching import {token}" in message_text(user.wait_response(click, PATIENCE))
    card = wait_card(harness, place.channel)
    assert "Button list" in message_text(card)
    assert f"{token} (Staging)" in list_text(user)

    # Refresh, on the card: a private, fresh answer; the card stays the watcher's.
    harness.sim.update(token, Status="Queued")
    click = user.click(render.ACTION_REFRESH, str(token), card.ts)
    fresh = user.wait_response(click, PATIENCE)
    assert ":hourglass_flowing_sand: Queued" in message_text(fresh)
    assert "Stop watching" in message_text(fresh), "the channel watches it: offer to stop"
    assert not fresh.get("replace_original")
    assert len(cards(harness, place.channel)) == 1

    # Stop watching, on the card.
    click = user.click(render.ACTION_UNWATCH, str(token), card.ts)
    assert f"Stopped watching import {token}" in message_text(user.wait_response(click, PATIENCE))
    wait_card_text(harness, card, "No longer watching")
    assert "not watching any import" in list_text(user)
    (subscription,) = subscriptions(harness, place.channel)
    assert subscription["state"] == "ended"


def test_two_channels_share_one_status_call_per_cycle_and_both_hear_the_transition(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    token = place.token
    harness.sim.add_import(token, status="Processing", ValidationSuccessful=1000)
    first = watch(harness, user, token)
    second = watch(harness, user, token, channel=place.other_channel)

    before, started = harness.sim.status_calls(token), time.monotonic()
    time.sleep(3.5)
    calls = harness.sim.status_calls(token) - before
    cycles = (time.monotonic() - started) / ACTIVE_INTERVAL
    # One call per cycle (plus one for where the window's edges fall), not one per channel.
    assert calls <= cycles + 1, f"{calls} status calls in {cycles:.1f} cycles"
    assert calls >= cycles / 2, f"only {calls} calls in {cycles:.1f} cycles: is it polled?"

    harness.sim.update(token, Status="Completed", Processed=1000)
    for card in (first, second):
        (reply,) = wait_replies(harness, card, 1)
        assert "Completed" in reply.text and reply.reply_broadcast
    time.sleep(ACTIVE_INTERVAL)
    assert len(replies(harness, first)) == len(replies(harness, second)) == 1


def test_expiry_warning_is_posted_once_and_broadcast(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    token = place.token
    harness.sim.add_import(
        token, status="Processing", ValidationSuccessful=1000, expires=in_future(30 * 60)
    )
    card = watch(harness, user, token)
    (warning,) = wait_replies(harness, card, 1)
    assert ":warning: The access token expires in 29 min" in warning.text, warning.text
    assert warning.text.startswith(f"<@{place.user_id}>") and warning.reply_broadcast

    wait_polls(harness, token, 2)
    time.sleep(0.3)
    assert len(replies(harness, card)) == 1, [m.text for m in replies(harness, card)]
    warnings = [n for n in notifications(harness, place.channel) if n["kind"] == "expiry_warning"]
    assert [n["state"] for n in warnings] == ["sent"]


def test_token_expiring_unfinished_warns_then_expires_and_stops_polling(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    token = place.token
    expires = in_future(4)
    harness.sim.add_import(token, status="Processing", ValidationSuccessful=1000, expires=expires)
    card = watch(harness, user, token)
    (warning,) = wait_replies(harness, card, 1)
    assert ":warning: The access token expires" in warning.text and warning.reply_broadcast

    expired = wait_replies(harness, card, 2)[1]
    assert "The access token expired before the import finished" in expired.text
    assert "last status: :gear: Processing" in expired.text
    assert expired.text.startswith(f"<@{place.user_id}>") and expired.reply_broadcast
    assert datetime.now(UTC) >= expires.replace(microsecond=0)
    final = wait_card_text(harness, card, "No longer watching")
    assert "token expired" in message_text(final)
    assert "not watching any import" in list_text(user)

    calls = harness.sim.status_calls(token)
    time.sleep(2 * ACTIVE_INTERVAL)  # it was active: polled every second if at all
    assert harness.sim.status_calls(token) == calls
    # The bot knew the token had expired: it never asked about it and got a 401.
    assert not [c for c in harness.sim.calls if c.access_token == token and c.status_code == 401]
    assert len(replies(harness, card)) == 2

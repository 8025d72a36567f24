"""The watcher through bad weather: API outages, slow and garbled answers, Slack refusing.

Each fault is injected into the real simulator or emulator while a real bot
process watches. What is checked is what the channel ends up with: the
transition made during an outage arrives once after recovery (late, never
lost, never twice), other imports and channels carry on, and polling slows
down for what fails or idles.

One bot serves most of the module (HTTP_TIMEOUT_SECONDS=1 so that timeouts
are quick, MAX_BACKOFF_SECONDS=4 so that recovery is seen within seconds);
tests that need other settings start their own. Faults are always aimed at
one access token or one channel, so tests cannot disturb each other.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.mypreferences_simulator import Call
from bot.sandbox.slack_emulator import Message, SlackUser, message_text, wait_for
from bot.store.tables import SubscriptionRow
from tests.integration.helpers import (
    PATIENCE,
    Place,
    db_rows,
    replies,
    wait_polls,
    wait_replies,
    watch,
)

ACTIVE_INTERVAL = 1.0  # POLL_INTERVAL_SECONDS in the harness
IDLE_INTERVAL = 3.0  # IDLE_POLL_INTERVAL_SECONDS in the harness
MAX_BACKOFF = 4.0
HTTP_TIMEOUT = 1.0
# What a transition may take beyond its poll interval: a tick, the poll, the post, and
# room for a busy machine (the tests run beside others; the bot shares two cores).
SLACK = 3.0

HARNESS_ENV = {
    "HTTP_TIMEOUT_SECONDS": str(HTTP_TIMEOUT),
    "MAX_BACKOFF_SECONDS": str(MAX_BACKOFF),
    "LOOKUP_RATE_LIMIT": "1000",
}


@pytest.fixture
def user(harness: Harness, bot: BotProcess, place: Place) -> Iterator[SlackUser]:
    """Each test's user types in the test's own channel."""
    with harness.user(bot, channel_id=place.channel, user_id=place.user_id) as slack_user:
        yield slack_user


# --------------------------------------------------------------------------- helpers


def card_text(harness: Harness, card: Message) -> str:
    current = harness.emulator.message(card.channel, card.ts)
    assert current is not None
    return message_text(current)


def status_calls(harness: Harness, token: int, since: float) -> list[Call]:
    return [
        c
        for c in harness.sim.calls
        if c.access_token == token and c.at >= since and c.path.endswith("/Status")
    ]


def subscription_rows(harness: Harness, channel: str) -> list[dict[str, Any]]:
    return db_rows(
        harness, select(SubscriptionRow.__table__).where(SubscriptionRow.channel_id == channel)
    )


def healthy(bot: BotProcess) -> bool:
    return bot.running() and httpx.get(bot.url + "/healthz", timeout=3).status_code == 200


# --------------------------------------------------------------------------- API faults

OUTAGES: dict[str, dict[str, Any]] = {
    "http-503": {"status": 503},
    "timeout": {"delay": HTTP_TIMEOUT + 0.5},
    "malformed-json": {"malformed": True},
}


@pytest.mark.parametrize("fault", list(OUTAGES), ids=list(OUTAGES))
def test_api_outage_delays_a_transition_but_loses_and_repeats_nothing(
    harness: Harness, bot: BotProcess, user: SlackUser, place: Place, fault: str
) -> None:
    token = place.token
    harness.sim.add_import(token, status="Queued", ValidationSuccessful=1000)
    card = watch(harness, user, token)

    harness.sim.inject_fault(token=token, times=None, **OUTAGES[fault])
    harness.sim.update(token, Status="Processing", Processed=100)
    wait_polls(harness, token, 1)  # a failed poll: the change could not be seen
    assert replies(harness, card) == [], "nothing can be known during the outage"
    assert "Queued" in card_text(harness, card)

    harness.sim.clear_faults()
    recovered_at = time.monotonic()
    (reply,) = wait_replies(harness, card, 1)
    assert "Queued → :gear: Processing" in reply.text
    assert time.monotonic() - recovered_at <= MAX_BACKOFF + SLACK

    wait_polls(harness, token, 1)  # polling as usual again; still one reply
    assert len(replies(harness, card)) == 1
    assert ":gear: Processing" in card_text(harness, card)
    assert healthy(bot)


def test_an_import_whose_api_calls_time_out_does_not_delay_a_healthy_one(
    fresh_harness: Harness, place: Place
) -> None:
    harness = fresh_harness
    # Each poll of the slow import waits 20 s for its answer: were the healthy import's
    # poll held up behind one, its transition would take that long, far longer than
    # the interval and SLACK (on a busy machine too).
    bot = harness.start_bot(HTTP_TIMEOUT_SECONDS=20, MAX_BACKOFF_SECONDS=0.1)
    slow, fine = place.token, place.other_token
    harness.sim.add_import(slow, status="Processing", ValidationSuccessful=1000)
    harness.sim.add_import(fine, status="Queued", ValidationSuccessful=1000)
    harness.emulator.invite_bot(place.other_channel)
    with harness.user(bot, channel_id=place.channel, user_id=place.user_id) as user:
        watch(harness, user, slow)
        fine_card = watch(harness, user, fine, channel=place.other_channel)
    harness.sim.inject_fault(token=slow, delay=30, times=None)
    time.sleep(0.5)
    try:
        harness.sim.update(fine, Status="Processing")
        changed_at = time.monotonic()
        (reply,) = wait_replies(harness, fine_card, 1)
        assert "Queued → :gear: Processing" in reply.text
        assert time.monotonic() - changed_at <= ACTIVE_INTERVAL + SLACK
    finally:
        harness.sim.clear_faults()
        bot.kill()  # a graceful stop would wait for the slow request


# --------------------------------------------------------------------------- Slack faults


def test_slack_rate_limit_is_waited_out_and_the_message_arrives_once(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    token, channel = place.token, place.channel
    harness.sim.add_import(token, status="Queued", ValidationSuccessful=1000)
    card = watch(harness, user, token)
    harness.emulator.inject_error(
        "chat.postMessage", "ratelimited", channel=channel, retry_after=1, times=1
    )
    harness.sim.update(token, Status="Processing")

    (reply,) = wait_replies(harness, card, 1)
    assert "Queued → :gear: Processing" in reply.text
    posts = [
        c for c in harness.emulator.calls("chat.postMessage") if c.params["channel"] == channel
    ]
    refused, accepted = posts[-2], posts[-1]
    assert (refused.status_code, refused.error) == (429, "ratelimited")
    assert accepted.ok and accepted.at - refused.at >= 1.0, "Retry-After: 1 was honoured"
    time.sleep(ACTIVE_INTERVAL)
    assert len(replies(harness, card)) == 1


def test_a_lost_channel_ends_only_its_own_subscription(
    harness: Harness, bot: BotProcess, user: SlackUser, place: Place
) -> None:
    token, kept, lost = place.token, place.channel, place.other_channel
    harness.sim.add_import(token, status="Queued", ValidationSuccessful=1000)
    kept_card = watch(harness, user, token)
    lost_card = watch(harness, user, token, channel=lost)
    harness.emulator.set_channel_state(lost, "channel_not_found")

    harness.sim.update(token, Status="Processing")
    wait_replies(harness, kept_card, 1)
    (row,) = wait_for(
        lambda: [r for r in subscription_rows(harness, lost) if r["state"] == "ended"],
        PATIENCE,
        description="the lost channel's subscription ended",
    )
    assert row["ended_reason"] == "Slack: channel_not_found"
    assert [r["state"] for r in subscription_rows(harness, kept)] == ["active"]
    assert any(
        "ending subscription: Slack says channel_not_found" in line and f"channel={lost}" in line
        for line in bot.log_text().splitlines()
    ), "the bot's log says why the subscription ended"

    # The other channel carries on; the lost one is not tried again.
    tried = len([c for c in harness.emulator.requests if c.params.get("channel") == lost])
    harness.sim.update(token, Status="Completed", Processed=1000)
    (_, done) = wait_replies(harness, kept_card, 2)
    assert "Completed" in done.text
    time.sleep(0.5)
    assert len([c for c in harness.emulator.requests if c.params.get("channel") == lost]) == tried
    assert replies(harness, lost_card) == []


@pytest.mark.slow
def test_api_trouble_posts_one_trouble_reply_and_one_recovery_reply(
    fresh_harness: Harness, place: Place
) -> None:
    harness = fresh_harness
    bot = harness.start_bot(API_TROUBLE_MINUTES=0.03, MAX_BACKOFF_SECONDS=1)  # 1.8 s
    token = place.token
    harness.sim.add_import(token, status="Processing", ValidationSuccessful=1000)
    try:
        with harness.user(bot, channel_id=place.channel, user_id=place.user_id) as user:
            card = watch(harness, user, token)
        harness.sim.inject_fault(503, token=token, times=None)
        (trouble,) = wait_replies(harness, card, 1)
        assert ":warning: Can't reach MyPreferences for this import" in trouble.text
        assert "temporarily unavailable" in trouble.text, "says what is wrong, in words"
        wait_polls(harness, token, 2)  # still failing: no second trouble reply
        assert len(replies(harness, card)) == 1

        harness.sim.clear_faults()
        (_, recovery) = wait_replies(harness, card, 2)
        assert "MyPreferences answers again" in recovery.text
        wait_polls(harness, token, 1)
        assert len(replies(harness, card)) == 2
        assert not trouble.reply_broadcast and not recovery.reply_broadcast
    finally:
        bot.kill()


# --------------------------------------------------------------------------- the schedule


def test_polling_adapts_to_each_import_and_a_failing_one_holds_up_no_other(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    idle, active, failing = place.token, place.other_token, place.token + 2
    harness.sim.add_import(idle, status="Staging")
    harness.sim.add_import(active, status="Processing", ValidationSuccessful=1000)
    harness.sim.add_import(failing, status="Processing", ValidationSuccessful=1000)
    for t in (idle, active, failing):
        harness.emulator.invite_bot(f"{place.channel}{t}")
    cards = {
        t: watch(harness, user, t, channel=f"{place.channel}{t}") for t in (idle, active, failing)
    }
    harness.sim.inject_fault(503, token=failing, times=None)
    started = time.monotonic()

    # While one import fails, another's transition arrives as quickly as ever.
    time.sleep(1.5)
    harness.sim.update(active, Status="Queued")
    changed_at = time.monotonic()
    (reply,) = wait_replies(harness, cards[active], 1)
    assert "Processing → :hourglass_flowing_sand: Queued" in reply.text
    assert time.monotonic() - changed_at <= ACTIVE_INTERVAL + SLACK

    time.sleep(max(0.0, started + 8 - time.monotonic()))
    ended = time.monotonic()
    calls = {t: status_calls(harness, t, started) for t in (idle, active, failing)}
    counts = {t: len(c) for t, c in calls.items()}
    assert counts[active] >= 5, counts  # about one a second
    active_gaps = sorted(b.at - a.at for a, b in itertools.pairwise(calls[active]))
    assert active_gaps[len(active_gaps) // 2] <= 1.5 * ACTIVE_INTERVAL, active_gaps
    assert counts[idle] < counts[active], counts  # every 3 s
    assert min(b.at - a.at for a, b in itertools.pairwise(calls[idle])) >= 2.5, calls[idle]
    assert 1 <= counts[failing] < counts[active], counts
    assert all(c.status_code == 503 for c in calls[failing])
    # Without back-off no gap would exceed the active interval (plus a tick).
    times = [c.at for c in calls[failing]] + [ended]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    assert max(gaps) >= 2 * ACTIVE_INTERVAL, f"no back-off between failures: {gaps}"
    assert replies(harness, cards[failing]) == [] and replies(harness, cards[idle]) == []

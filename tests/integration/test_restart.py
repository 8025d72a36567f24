"""Restarts: nothing is lost and nothing is repeated, whenever the bot stops.

The bot is a real ``import-status-bot serve`` process. It is killed with
SIGKILL (a crash: no cleanup at all) at different points of its work, or
stopped with SIGTERM in the middle of a tick, and started again on the same
database. The channel's thread is then read back: every transition exactly
once, in order.

The design's one allowed exception: a kill that lands after Slack accepted a
message but before the database recorded it as sent repeats that one message
after the restart. The tests tell the two cases apart by comparing, right
after the kill, the thread in the emulator with the rows marked sent.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from sqlalchemy import select

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import Message, wait_for
from bot.store.tables import NotificationRow, SubscriptionRow
from tests.integration import helpers
from tests.integration.helpers import PATIENCE

TOKEN = 4242
CHANNEL = "C0001"
# Short leases: after a SIGKILL the restarted bot need not wait long for the dead one's.
FAST_RESTART: dict[str, Any] = {"LEASE_SECONDS": 1, "IDLE_POLL_INTERVAL_SECONDS": 1}


@pytest.fixture
def harness(fresh_harness: Harness) -> Harness:
    """Each test starts, kills and restarts a bot of its own: a harness of its own."""
    return fresh_harness


# --------------------------------------------------------------------------- helpers


def watch(harness: Harness, bot: BotProcess) -> Message:
    with harness.user(bot) as user:
        return helpers.watch(harness, user, TOKEN)


def replies(harness: Harness, card: Message) -> list[str]:
    return [m.text for m in helpers.replies(harness, card)]


def wait_replies(harness: Harness, card: Message, count: int) -> list[str]:
    """Wait until the thread holds at least ``count`` replies (a repeat may make more)."""
    found = helpers.wait_replies(harness, card, count, exactly=False)
    return [m.text for m in found]


def notification_rows(harness: Harness) -> list[dict[str, Any]]:
    return helpers.db_rows(harness, select(NotificationRow.__table__).order_by(NotificationRow.id))


def sent_count(harness: Harness) -> int:
    return sum(1 for row in notification_rows(harness) if row["state"] == "sent")


def excess(harness: Harness, card: Message) -> int:
    """Replies in the thread beyond the notifications the database has marked sent.

    Right after a kill, this grows by one exactly when the kill landed between Slack
    accepting a message and the database recording it.
    """
    # Let a request already on the wire land: the emulator is a thread of this test
    # process, which may wait its turn for a while on a busy machine.
    time.sleep(1.0)
    return len(replies(harness, card)) - sent_count(harness)


def collapse(texts: list[str]) -> list[str]:
    """The thread with immediate repeats folded: what it says, in order."""
    return [t for i, t in enumerate(texts) if i == 0 or texts[i - 1] != t]


def subscription_state(harness: Harness) -> str:
    (row,) = helpers.db_rows(harness, select(SubscriptionRow.state))
    return str(row["state"])


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.slow
def test_crashes_at_any_point_lose_nothing_and_repeat_nothing(harness: Harness) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    sim = harness.sim
    sim.add_import(TOKEN, name="Crash list", status="Initiated")
    bot = harness.start_bot(**FAST_RESTART)
    card = watch(harness, bot)

    # (changes, what the thread says afterwards, kill: None or seconds after the change)
    script: list[tuple[dict[str, Any], list[str], float | None]] = [
        ({"Status": "Staging"}, ["Initiated → :inbox_tray: Staging"], None),
        ({"Status": "Queued"}, ["Staging → :hourglass_flowing_sand: Queued"], -1.0),
        (
            {"Status": "Processing", "ValidationSuccessful": 1000, "Processed": 300},
            ["Queued → :gear: Processing", "Progress: 25%"],
            rng.uniform(0, 1.3),
        ),
        ({"Processed": 600}, ["Progress: 50%"], rng.uniform(0, 1.3)),
        ({"Processed": 800}, ["Progress: 75%"], rng.uniform(0, 1.3)),
        ({"Status": "Completed", "Processed": 1000}, ["Completed"], rng.uniform(0, 1.3)),
    ]
    expected: list[str] = []
    repeats_allowed = 0  # kills that landed between Slack and the database
    for changes, says, kill_after in script:
        if kill_after is not None and kill_after < 0:
            # The ordinary crash: down while the import moves on.
            time.sleep(0.3)  # past the last reply's database write
            before = excess(harness, card)
            bot.kill()
            assert excess(harness, card) == before
            sim.update(TOKEN, **changes)
            time.sleep(1.5)  # the bot is down for more than a poll interval
            harness.restart(bot)
        else:
            before = excess(harness, card) if kill_after is not None else 0
            sim.update(TOKEN, **changes)
            if kill_after is not None:
                time.sleep(kill_after)  # anywhere in a poll cycle: before, during, after
                bot.kill()
                in_flight = excess(harness, card) - before
                assert in_flight in (0, 1), f"{in_flight} messages in flight at one kill"
                repeats_allowed += in_flight
                harness.restart(bot)
        expected += says
        wait_replies(harness, card, len(expected))

    print(f"crash test: seed {seed}, kills between Slack and the database: {repeats_allowed}")
    time.sleep(1)  # anything that would repeat after the last restart has had its chance
    thread = replies(harness, card)
    said = collapse(thread)
    assert len(said) == len(expected), f"seed {seed}: {thread}"
    for text, words in zip(said, expected, strict=True):
        assert words in text, f"seed {seed}: {words!r} not in {text!r}"
    assert len(thread) - len(said) == repeats_allowed, (
        f"seed {seed}: repeats only where a kill landed between Slack and the database"
    )
    if repeats_allowed == 0:
        assert len(thread) == len(expected)  # the ordinary case: each message exactly once
    assert len([m for m in harness.emulator.messages(CHANNEL) if m.thread_ts is None]) == 1
    assert subscription_state(harness) == "ended"
    assert all(row["state"] == "sent" for row in notification_rows(harness))


@pytest.mark.slow
def test_a_crash_between_slack_and_the_database_repeats_at_most_that_one_message(
    harness: Harness,
) -> None:
    sim = harness.sim
    sim.add_import(TOKEN, status="Queued", ValidationSuccessful=1000)
    bot = harness.start_bot(LEASE_SECONDS=3)  # longer than Slack takes to answer below
    card = watch(harness, bot)

    # Slack takes 2.5 s to answer posts: the bot is killed while one is in that gap,
    # as soon as the post has arrived.
    harness.emulator.set_latency(2.5, "chat.postMessage")
    sim.update(TOKEN, Status="Processing")
    wait_for(
        lambda: harness.emulator.held("chat.postMessage"),
        PATIENCE,
        description="the reply waiting for Slack's answer",
    )
    bot.kill()
    (delivered,) = wait_replies(harness, card, 1)  # Slack got it anyway
    assert "Queued → :gear: Processing" in delivered
    (row,) = notification_rows(harness)
    assert row["state"] == "pending", "the kill landed before the database said 'sent'"

    harness.emulator.set_latency(0, "chat.postMessage")
    harness.restart(bot)
    thread = wait_replies(harness, card, 2)
    assert thread == [delivered, delivered], "that one message, repeated once"
    sim.update(TOKEN, Status="Completed", Processed=1000)
    thread = wait_replies(harness, card, 3)
    time.sleep(1)
    thread = replies(harness, card)
    assert len(thread) == 3 and "Completed" in thread[2], thread
    assert [row["state"] for row in notification_rows(harness)] == ["sent", "sent"]


# --------------------------------------------------------------------------- SIGTERM


@pytest.mark.slow
def test_sigterm_mid_tick_exits_zero_and_the_restart_loses_and_repeats_nothing(
    harness: Harness,
) -> None:
    sim = harness.sim
    sim.add_import(TOKEN, status="Queued", ValidationSuccessful=1000)
    bot = harness.start_bot(HTTP_TIMEOUT_SECONDS=6)  # the slow poll below must not time out
    card = watch(harness, bot)

    # Make the next poll slow (3.5 s) and move the import; SIGTERM arrives while that
    # poll waits for the API (it took its fault on arrival).
    sim.inject_fault(token=TOKEN, delay=3.5, times=1)
    sim.update(TOKEN, Status="Processing")
    wait_for(lambda: not sim.pending_faults(TOKEN), PATIENCE, description="the slow poll")
    answered = sim.status_calls(TOKEN)
    stopping_at = time.monotonic()
    code = bot.terminate(timeout=10)
    took = time.monotonic() - stopping_at
    assert code == 0, bot.log_text()[-2000:]
    assert took <= 10
    # The slow poll had started before SIGTERM and was answered after it: mid-tick.
    assert sim.status_calls(TOKEN) == answered + 1
    assert [c for c in sim.calls if c.access_token == TOKEN][-1].at < stopping_at
    assert "abandoning" not in bot.log_text()

    # The tick finished its poll and kept the result. Delivery, on its own loop, may
    # have sent it while stopping, or left it to the next start: either way, once.
    (row,) = notification_rows(harness)
    assert row["event_key"] == "transition:1:Processing"
    assert row["state"] in ("pending", "sent")
    assert len(replies(harness, card)) == (1 if row["state"] == "sent" else 0)
    harness.restart(bot)
    thread = wait_replies(harness, card, 1)
    sim.update(TOKEN, Status="Completed", Processed=1000)
    wait_replies(harness, card, 2)
    time.sleep(1)
    thread = replies(harness, card)
    assert len(thread) == 2, thread
    assert "Queued → :gear: Processing" in thread[0] and "Completed" in thread[1]
    assert len([m for m in harness.emulator.messages(CHANNEL) if m.thread_ts is None]) == 1

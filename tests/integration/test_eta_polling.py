"""ETA-aware polling over real sockets: the Completed message follows the finish closely.

An import processes at a steady rate in the simulator while the bot polls every
3 s. From its second Processing poll the bot knows the rate; it then polls just
after the predicted finish instead of at the next regular time, so the channel
hears of the finish well before the regular poll would have seen it, with no
more calls than fixed-interval polling makes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.mypreferences_simulator import SteadyRate
from bot.sandbox.slack_emulator import SlackUser, message_text, wait_for
from tests.integration.helpers import PATIENCE, Place, replies, wait_polls, watch

pytestmark = pytest.mark.slow  # about 14 s: the import runs through four intervals

INTERVAL = 3.0
HARNESS_ENV = {
    "POLL_INTERVAL_SECONDS": str(INTERVAL),
    "POLL_MIN_SPACING_SECONDS": "0.5",
    "TICK_SECONDS": "0.1",
    "LOOKUP_RATE_LIMIT": "1000",
}


@pytest.fixture
def user(harness: Harness, bot: BotProcess, place: Place) -> Iterator[SlackUser]:
    with harness.user(bot, channel_id=place.channel, user_id=place.user_id) as slack_user:
        yield slack_user


def test_completed_is_seen_soon_after_the_predicted_finish_not_at_the_next_regular_poll(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    token = place.token
    harness.sim.add_import(token, status="Queued", ValidationSuccessful=1000)
    card = watch(harness, user, token)
    # The import starts processing just after the bot's first poll (so the test does not
    # depend on how long the watch took): the next poll, one interval later, is the first
    # to see Processing (the rate's base), and the finish falls a quarter of an interval
    # into the third interval after it, where fixed-interval polling would see it about
    # 0.75 of an interval late.
    polls_before = harness.sim.status_calls(token)
    wait_polls(harness, token, 1)
    harness.sim.add_import(
        token,
        status="Queued",
        ValidationSuccessful=1000,
        steady=SteadyRate(after=0.3, seconds=3.25 * INTERVAL - 0.3),
    )
    finish = harness.sim.finishes_at(token)
    assert finish is not None

    thread = wait_for(
        lambda: [m for m in replies(harness, card) if "Completed" in message_text(m)] or None,
        PATIENCE,
        description="the Completed reply",
    )

    # What the channel reads: one Completed reply in the thread, broadcast.
    assert len(thread) == 1
    assert ":white_check_mark: Completed" in message_text(thread[0])
    assert thread[0].reply_broadcast
    # When the bot saw it: its polls after the first one; the first of them saw Processing.
    polls = [
        c.at for c in harness.sim.calls if c.access_token == token and c.path.endswith("/Status")
    ][polls_before + 1 :]
    base = polls[0]
    saw = next(at for at in polls if at >= finish)
    fixed_sees = base + math.ceil((finish - base) / INTERVAL) * INTERVAL
    assert saw < fixed_sees, (
        f"seen {saw - finish:.2f} s after the finish; the regular poll would have seen it "
        f"{fixed_sees - finish:.2f} s after"
    )
    assert saw - finish < INTERVAL / 2
    # Never more calls than fixed-interval polling: one per interval from the base up to
    # the poll that sees the finish.
    assert len(polls) <= 1 + math.ceil((finish - base) / INTERVAL)

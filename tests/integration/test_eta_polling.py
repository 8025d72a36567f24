"""ETA-aware polling over real sockets: the Completed message follows the finish closely.

An import processes at a steady rate in the simulator while the bot polls every
3 s. From its second Processing poll the bot knows the rate; it then polls just
after the predicted finish instead of at the next regular time, so the channel
hears of the finish well before the regular poll would have seen it, with no
more calls than fixed-interval polling makes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.mypreferences_simulator import SteadyRate
from bot.sandbox.slack_emulator import ApiRequest, SlackUser, message_text, wait_for
from tests.integration.helpers import PATIENCE, Place, wait_replies, watch

pytestmark = pytest.mark.slow  # about 11 s: the import runs through three intervals

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


def completed_post(harness: Harness, channel: str) -> ApiRequest | None:
    """The accepted chat.postMessage that told ``channel`` the import completed."""
    for call in harness.emulator.calls("chat.postMessage"):
        text = str(call.params.get("text", ""))
        if call.ok and call.params.get("channel") == channel and "Completed" in text:
            return call
    return None


def test_completed_is_posted_soon_after_the_predicted_finish_not_at_the_next_regular_poll(
    harness: Harness, user: SlackUser, place: Place
) -> None:
    token = place.token
    # Processing starts at once and lasts 9.75 s. The first poll after the watch comes
    # one interval later (about 3 s in), so the finish falls a quarter of an interval
    # into the third interval after that poll: fixed-interval polling would see it
    # about 2.25 s late.
    harness.sim.add_import(
        token,
        status="Queued",
        ValidationSuccessful=1000,
        steady=SteadyRate(after=0.0, seconds=9.75),
    )
    finish = harness.sim.finishes_at(token)
    assert finish is not None
    card = watch(harness, user, token)

    post = wait_for(
        lambda: completed_post(harness, place.channel),
        PATIENCE,
        description="the Completed reply",
    )

    calls = [c.at for c in harness.sim.calls if c.access_token == token]
    # The rate base: the first poll that saw Processing (the watch's lookup came first).
    base = calls[1]
    fixed_sees = base + math.ceil((finish - base) / INTERVAL) * INTERVAL
    assert post.at < fixed_sees, (
        f"Completed posted {post.at - finish:.2f} s after the finish; the regular poll "
        f"would have seen it {fixed_sees - finish:.2f} s after"
    )
    # Never more calls than fixed-interval polling: the lookup, then one per interval
    # from the base up to the poll that sees the finish.
    assert len(calls) <= 1 + 1 + math.ceil((finish - base) / INTERVAL)
    # What the channel reads: the thread ends with the Completed reply, broadcast.
    thread = wait_replies(harness, card, 1, exactly=False)
    final = thread[-1]
    assert ":white_check_mark: Completed" in message_text(final)
    assert final.reply_broadcast
    assert time.monotonic() - finish < PATIENCE

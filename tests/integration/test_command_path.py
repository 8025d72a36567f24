"""The slash command's fast path (bot/slack/quick_ack.py) in the real ``serve`` process.

Signatures, allow-lists, retries and bad input through it are covered where they
were before (test_signatures, test_access_policy, test_access, test_hostile_*):
every ``/import-status`` over HTTP now takes it. Here: many people at once, each
answered with their own import, and the acknowledgement going out while a slow
API has not answered yet.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import message_text
from tests.integration.helpers import PATIENCE, final_reply

# A slow answer must not time out: the test waits for it on purpose.
HARNESS_ENV = {
    "HTTP_TIMEOUT_SECONDS": "15",
    "LOOKUP_BUDGET_SECONDS": "20",
    "LOOKUP_RATE_LIMIT": "100000",
}
SENDERS = 20


def test_twenty_people_at_once_each_get_their_own_import(harness: Harness, bot: BotProcess) -> None:
    tokens = [71_000 + n for n in range(SENDERS)]
    for token in tokens:
        harness.sim.add_import(token, name=f"Crowd import {token}", status="Processing")

    def look_up(n: int) -> str:
        with harness.user(bot, channel_id=f"CQA{n:03d}", user_id=f"UQA{n:03d}") as person:
            result = person.command(str(tokens[n]))
            # In the acknowledgement itself, or after "Looking up…" on a busy machine.
            return message_text(final_reply(person, result))

    with ThreadPoolExecutor(SENDERS) as pool:
        answers = list(pool.map(look_up, range(SENDERS)))

    for token, shown in zip(tokens, answers, strict=True):
        assert f"Crowd import {token}" in shown, shown
        assert all(f"Crowd import {other}" not in shown for other in tokens if other != token)


def test_the_acknowledgement_goes_out_before_a_slow_api_answers(
    harness: Harness, bot: BotProcess
) -> None:
    token = 72_001
    harness.sim.add_import(token, name="Slow answer", status="Processing")
    harness.sim.inject_fault(token=token, delay=4)

    with harness.user(bot, channel_id="CQB001", user_id="UQB001") as person:
        result = person.command(str(token))
        acknowledged_at = time.monotonic()
        # When the acknowledgement is back, the API has the request but has not answered.
        assert harness.sim.pending_faults(token) == 0, "the lookup never reached the API"
        assert harness.emulator.responses(result.response_url or "") == []
        assert result.status_code == 200 and result.ack_seconds < 3
        assert result.ack_body["text"] == f"Looking up import {token}…"

        answer = person.wait_response(result, timeout=PATIENCE)

    assert "Slow answer" in message_text(answer) and ":gear: Processing" in message_text(answer)
    assert answer["replace_original"] is False
    (arrived,) = harness.emulator.response_times(result.response_url or "")
    assert arrived > acknowledged_at  # the emulator's clock is this process's monotonic clock

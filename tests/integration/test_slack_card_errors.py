"""A tracking card Slack will never take costs a few calls and ends the watch.

A real ``import-status-bot serve`` process talks to the strict emulator, which
answers each of the card errors issue 9 met, for good: once when the card is
first posted (at ``watch``), once when an existing card is edited. Each costs
at most 3 calls in 30 s, ends the subscription with one log line, and tells
whoever subscribed how to fix it when they can. (The rest of Slack as it really
is: test_slack_as_it_is.py; apart, so that the two 30 s waits run side by side.)
"""

from __future__ import annotations

import time

import pytest

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import message_text
from bot.slack.errors import SLACK_ERRORS
from tests.integration.helpers import calls_to, final_reply, replies, subscriptions, watch

pytestmark = pytest.mark.slow

# The card errors the issue met: a card Slack will never take.
PERMANENT_CARD_ERRORS = [
    "restricted_action",
    "restricted_action_read_only_channel",
    "team_access_not_granted",
    "missing_scope",
    "ekm_access_denied",
    "invalid_blocks",
]
WITHIN = 30.0  # seconds in which each error may cost at most 3 calls
HARNESS_ENV = {"LOOKUP_RATE_LIMIT": "1000"}  # for the bot of tests/integration/conftest.py


def test_each_permanent_card_error_makes_at_most_3_calls_in_30_s_and_ends_the_watch(
    harness: Harness, bot: BotProcess
) -> None:
    """Each error met twice: on the first card (at watch) and on an edit later."""
    emulator, sim = harness.emulator, harness.sim
    started = time.monotonic()
    offset = len(bot.log_text())
    cases: list[tuple[str, str, str]] = []  # (code, at-watch channel, edit channel)
    for n, code in enumerate(PERMANENT_CARD_ERRORS, start=1):
        token = 9000 + 100 * n
        at_watch, at_edit, user_id = f"CPW{n:03d}", f"CPE{n:03d}", f"UP{n:03d}"
        sim.add_import(token, status="Queued", ValidationSuccessful=1000)
        emulator.invite_bot(at_edit)
        with harness.user(bot, channel_id=at_watch, user_id=user_id) as user:
            card = watch(harness, user, token, at_edit)
            emulator.inject_error("chat.update", code, channel=at_edit, times=None)
            emulator.inject_error("chat.postMessage", code, channel=at_watch, times=None)
            answer = message_text(final_reply(user, user.command(f"watch {token}")))
        hint = SLACK_ERRORS[code].hint
        assert f"I can't watch import {token} here" in answer, answer
        assert (hint or f"Slack refused its tracking card ({code})") in answer
        assert subscriptions(harness, at_watch) == []
        sim.update(token, Status="Processing")  # the edit channel's card must change
        cases.append((code, at_watch, at_edit))
        assert card.channel == at_edit

    time.sleep(max(0.0, started + WITHIN - time.monotonic()))
    log = bot.log_text()[offset:]
    for code, at_watch, at_edit in cases:
        tried = calls_to(harness, at_watch, started, "chat.postMessage")
        assert len(tried) <= 3, (code, len(tried))
        tried = calls_to(harness, at_edit, started, "chat.update", "chat.postMessage")
        assert len(tried) <= 3, (code, [c.method for c in tried])
        (row,) = subscriptions(harness, at_edit)
        assert (row["state"], row["ended_reason"]) == ("ended", f"Slack: {code}"), code
        ended = [
            line
            for line in log.splitlines()
            if f"ending subscription: Slack says {code} " in line and f"channel={at_edit}" in line
        ]
        assert len(ended) == 1, (code, ended)
        told = [e for e in emulator.ephemerals(at_edit) if "I stopped watching" in e.text]
        if SLACK_ERRORS[code].hint:
            assert len(told) == 1 and told[0].user.startswith("UP"), code
        assert replies(harness, emulator.messages(at_edit)[0]) == []

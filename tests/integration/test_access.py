"""Who may use the bot, how often, and what ends a workspace's watches: over real HTTP.

One bot serves the module with allow-lists and a small lookup limit. Each test
uses its own user, channel, workspace and access tokens, so the per-user rate
windows and the subscriptions of one test never touch another's.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bot.sandbox.harness import SIGNING_SECRET, BotProcess, Harness
from bot.sandbox.slack_emulator import (
    CommandResult,
    SlackUser,
    message_text,
    slash_command_body,
    wait_for,
)
from tests.integration.helpers import PATIENCE, db_rows, final_reply, log_since

ALLOWED_CHANNELS = ["C0001", "C0002", "C0003", "C0004", "C0005", "C0006"]
ALLOWED_USERS = ["U0001", "U0002", "U0003", "U0004", "U0005", "U0006", "U0007", "U0008"]
LIMIT = 5
HARNESS_ENV = {
    "ALLOWED_CHANNEL_IDS": ",".join(ALLOWED_CHANNELS),
    "ALLOWED_USER_IDS": ",".join(ALLOWED_USERS),
    "LOOKUP_RATE_LIMIT": str(LIMIT),
    "LOOKUP_RATE_WINDOW_SECONDS": "600",
    # Idle imports (Initiated, Staging) are not polled again within a test, so every
    # status call an idle import gets comes from a command; active ones poll every second.
    "IDLE_POLL_INTERVAL_SECONDS": "600",
}
UNKNOWN_TOKEN_SENTENCE = "does not recognise this access token"


def person(
    harness: Harness, bot: BotProcess, user: str, channel: str, team: str = "T0001"
) -> SlackUser:
    harness.emulator.invite_bot(channel)  # this module is about who may ask, not where
    return SlackUser(
        bot.events_url, SIGNING_SECRET, harness.emulator, team, channel_id=channel, user_id=user
    )


def answer(user: SlackUser, text: str) -> tuple[CommandResult, str]:
    """The signed command's result and what its user finally reads (ack or response_url)."""
    result = user.command(text)
    assert result.status_code == 200
    assert isinstance(result.ack_body, dict), result.ack_body
    assert result.ack_body.get("response_type") == "ephemeral", result.ack_body
    return result, message_text(final_reply(user, result))


def subscriptions(harness: Harness, **where: str) -> list[dict[str, Any]]:
    """Subscription rows of the bot's database, joined with their import's token."""
    clauses = " AND ".join(f"s.{column} = :{column}" for column in where) or "1 = 1"
    return db_rows(
        harness,
        "SELECT s.*, i.access_token FROM subscriptions s "
        f"JOIN imports i ON i.id = s.import_id WHERE {clauses} ORDER BY s.id",
        **where,
    )


# --------------------------------------------------------------------------- allow-lists


def test_lookup_and_watch_in_a_channel_not_on_the_list_are_refused_privately(
    harness: Harness, bot: BotProcess
) -> None:
    token = 61_001
    harness.sim.add_import(token, name="Channel list check", status="Staging")
    offset = len(bot.log_text())
    with person(harness, bot, "U0001", "C0OTHER") as outsider_channel:
        for text in (str(token), f"watch {token}"):
            _, reply = answer(outsider_channel, text)
            assert "not enabled in this channel" in reply and "ALLOWED_CHANNEL_IDS" in reply
            assert "Channel list check" not in reply
    assert harness.sim.status_calls(token) == 0, "a refused command called the API"
    assert subscriptions(harness, channel_id="C0OTHER") == []
    assert harness.emulator.messages("C0OTHER") == []
    log = log_since(bot, offset)
    for verb in ("lookup", "watch"):
        assert f"denied {verb}: :no_entry: This bot is not enabled in this channel" in log
    assert "channel=C0OTHER user=U0001" in log
    # The same person in an allowed channel is served: the list is about the channel.
    with person(harness, bot, "U0001", "C0001") as allowed:
        _, reply = answer(allowed, str(token))
    assert "Channel list check" in reply
    assert harness.sim.status_calls(token) == 1


def test_lookup_and_watch_by_someone_not_on_the_list_are_refused_privately(
    harness: Harness, bot: BotProcess
) -> None:
    token = 61_002
    harness.sim.add_import(token, name="User list check", status="Staging")
    offset = len(bot.log_text())
    with person(harness, bot, "U0STRANGER", "C0001") as stranger:
        for text in (str(token), f"watch {token}"):
            _, reply = answer(stranger, text)
            assert "not on the list of people" in reply and "ALLOWED_USER_IDS" in reply
            assert "User list check" not in reply
    assert harness.sim.status_calls(token) == 0, "a refused command called the API"
    assert subscriptions(harness, subscribed_by="U0STRANGER") == []
    log = log_since(bot, offset)
    assert "denied lookup: :no_entry: You are not on the list" in log
    assert "denied watch: :no_entry: You are not on the list" in log
    assert "user=U0STRANGER" in log


def test_only_people_on_the_list_may_stop_a_watch_and_the_card_says_who_did(
    harness: Harness, bot: BotProcess
) -> None:
    token, channel = 61_003, "C0002"
    harness.sim.add_import(token, name="Unwatch check", status="Staging")
    with person(harness, bot, "U0002", channel) as subscriber:
        _, reply = answer(subscriber, f"watch {token}")
    assert f"Watching import {token}" in reply
    card = harness.emulator.wait_for_message(channel, "Unwatch check", timeout=PATIENCE)
    assert "Stop watching" in message_text(card)
    # The allow-lists gate every verb: someone not on them cannot stop the watch...
    with person(harness, bot, "U0STRANGER", channel) as stranger:
        _, reply = answer(stranger, f"unwatch {token}")
    assert "not on the list of people" in reply
    assert subscriptions(harness, channel_id=channel)[0]["state"] == "active"
    # ...anyone on them can, not only who started it.
    with person(harness, bot, "U0007", channel) as colleague:
        _, reply = answer(colleague, f"unwatch {token}")
    assert f"Stopped watching import {token}" in reply
    [row] = subscriptions(harness, channel_id=channel)
    assert row["access_token"] == token and row["state"] == "ended"
    assert row["ended_reason"] == "unwatched by <@U0007>"

    def card_names_who_stopped() -> str | None:
        text = message_text(harness.emulator.message(channel, card.ts) or {})
        return text if "unwatched by <@U0007>" in text else None

    edited = wait_for(card_names_who_stopped, timeout=PATIENCE, description="the card edited")
    assert "No longer watching" in edited and "Stop watching" not in edited


# --------------------------------------------------------------------------- rate limit


def test_the_lookup_after_the_limit_is_refused_without_calling_the_api(
    harness: Harness, bot: BotProcess
) -> None:
    token = 61_004
    harness.sim.add_import(token, name="Rate check", status="Staging")
    with person(harness, bot, "U0003", "C0003") as user:
        for _ in range(LIMIT):
            _, reply = answer(user, str(token))
            assert "Rate check" in reply
        for text in (str(token), f"watch {token}"):
            _, reply = answer(user, text)
            assert "too many lookups recently" in reply, reply
            assert "Try again in 9 min" in reply or "Try again in 10 min" in reply, reply
    assert harness.sim.status_calls(token) == LIMIT
    assert subscriptions(harness, channel_id="C0003") == []
    # The limit is per person: someone else in the same channel is still served.
    with person(harness, bot, "U0004", "C0003") as colleague:
        _, reply = answer(colleague, str(token))
    assert "Rate check" in reply


def test_failed_lookups_use_up_the_limit_twice_as_fast(harness: Harness, bot: BotProcess) -> None:
    known = 61_005
    harness.sim.add_import(known, name="Guess check", status="Staging")
    guesses = [61_905, 61_906, 61_907]  # unknown to MyPreferences: 401
    with person(harness, bot, "U0005", "C0004") as guesser:
        # Limit 5: each failed lookup costs 2, so after 3 failures (6 >= 5) nothing more
        # is allowed, where 3 successful lookups would have left 2.
        for guess in guesses:
            _, reply = answer(guesser, str(guess))
            assert UNKNOWN_TOKEN_SENTENCE in reply
        _, reply = answer(guesser, str(known))
    assert "too many lookups recently" in reply
    assert harness.sim.status_calls(known) == 0
    assert [harness.sim.status_calls(g) for g in guesses] == [1, 1, 1]


def test_failed_watches_use_up_the_limit_twice_as_fast_too(
    harness: Harness, bot: BotProcess
) -> None:
    # Guessing tokens with `watch` must cost what guessing them with a lookup costs.
    known = 61_008
    harness.sim.add_import(known, name="Watch guess check", status="Staging")
    guesses = [61_915, 61_916, 61_917]
    with person(harness, bot, "U0008", "C0004") as guesser:
        for guess in guesses:
            _, reply = answer(guesser, f"watch {guess}")
            assert UNKNOWN_TOKEN_SENTENCE in reply
        _, reply = answer(guesser, f"watch {known}")
    assert "too many lookups recently" in reply
    assert harness.sim.status_calls(known) == 0
    assert subscriptions(harness, subscribed_by="U0008") == []


# --------------------------------------------------------------------------- retries


def test_a_retried_watch_delivery_subscribes_and_posts_once(
    harness: Harness, bot: BotProcess
) -> None:
    token, channel = 61_006, "C0005"
    harness.sim.add_import(token, name="Retry check", status="Staging")
    emulator = harness.emulator
    with person(harness, bot, "U0006", channel) as user:
        # Slack sends the very same body again when it thinks the first delivery failed.
        response_url = emulator.new_response_url(channel=channel, user="U0006")
        body = slash_command_body(
            f"watch {token}", channel_id=channel, user_id="U0006", response_url=response_url
        )
        first = user.send(body, "application/x-www-form-urlencoded", response_url)
        assert first.status_code == 200
        assert f"Watching import {token}" in message_text(final_reply(user, first))
        answered = len(emulator.responses(response_url))  # 1 if the answer came late
        emulator.wait_for_message(channel, "Retry check", timeout=PATIENCE)
        calls_after_first = harness.sim.status_calls(token)
        offset = len(bot.log_text())
        retry = user.send(
            body,
            "application/x-www-form-urlencoded",
            response_url,
            headers={"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"},
        )
    assert retry.status_code == 200
    assert retry.ack_body is None, "a retry is answered with an empty 200"
    time.sleep(1.0)  # what a second run of the command would have done by now
    assert [m for m in emulator.messages(channel) if "Retry check" in message_text(m)] != []
    assert len(emulator.messages(channel)) == 1, "a second card was posted"
    assert len(subscriptions(harness, channel_id=channel)) == 1
    assert harness.sim.status_calls(token) == calls_after_first == 1
    assert len(emulator.responses(response_url)) == answered  # nothing answered later either
    assert "ignored a retried delivery (http_timeout)" in log_since(bot, offset)


# --------------------------------------------------------------------------- workspace events


def _watch_active_imports(
    harness: Harness, bot: BotProcess, team: str, user_id: str, tokens: list[int]
) -> None:
    for token, channel in zip(tokens, ("C0001", "C0006"), strict=True):
        harness.sim.add_import(token, name=f"Team {team} import", status="Processing")
        with person(harness, bot, user_id, channel, team=team) as user:
            _, reply = answer(user, f"watch {token}")
        assert f"Watching import {token}" in reply


def _polls(harness: Harness, tokens: list[int]) -> list[int]:
    return [harness.sim.status_calls(t) for t in tokens]


def _wait_ended(harness: Harness, team: str, tokens: list[int], reason: str) -> None:
    """Events are acknowledged first and handled after: wait for the rows to end."""

    def ended() -> list[tuple[int, str, str]] | None:
        rows = [
            (r["access_token"], r["state"], r["ended_reason"])
            for r in subscriptions(harness, team_id=team)
        ]
        return rows if {state for _, state, _ in rows} == {"ended"} else None

    rows = wait_for(ended, timeout=PATIENCE, description=f"{team}'s subscriptions to end")
    assert rows == [(t, "ended", reason) for t in tokens]


def _assert_polling_stops(harness: Harness, tokens: list[int], control: int) -> None:
    time.sleep(0.5)  # a poll already in flight may still land
    before, control_before = _polls(harness, tokens), harness.sim.status_calls(control)
    # Active imports poll every second: while the other workspace's import is polled
    # three more times, an import still watched would have been polled too.
    wait_for(
        lambda: harness.sim.status_calls(control) >= control_before + 3,
        PATIENCE,
        description="the other workspace's import polled three more times",
    )
    assert _polls(harness, tokens) == before, "ended imports are still polled"


@pytest.fixture(scope="module")
def control_watch(harness: Harness, bot: BotProcess) -> int:
    """An import another workspace (T0001) watches: workspace events must not touch it."""
    token = 61_100
    harness.sim.add_import(token, name="Control import", status="Processing")
    with person(harness, bot, "U0007", "C0006") as user:
        _, reply = answer(user, f"watch {token}")
    assert f"Watching import {token}" in reply
    return token


def test_uninstalling_the_app_ends_the_workspace_watches_and_their_polling(
    harness: Harness, bot: BotProcess, control_watch: int
) -> None:
    team, tokens = "T0UNINST", [61_201, 61_202]
    _watch_active_imports(harness, bot, team, "U0007", tokens)
    before = _polls(harness, tokens)
    wait_for(
        lambda: all(n > b + 1 for n, b in zip(_polls(harness, tokens), before, strict=True)),
        timeout=PATIENCE,
        description="the watched imports being polled",
    )
    offset = len(bot.log_text())
    with person(harness, bot, "U0007", "C0001", team=team) as user:
        result = user.event({"type": "app_uninstalled"})
    assert result.status_code == 200
    _wait_ended(harness, team, tokens, "the app was uninstalled")
    _assert_polling_stops(harness, tokens, control_watch)
    assert [r["state"] for r in subscriptions(harness, team_id="T0001", channel_id="C0006")] == [
        "active"
    ]
    assert "the app was uninstalled: ended 2 subscription(s) team=T0UNINST" in log_since(
        bot, offset
    )


def test_revoking_the_bot_token_ends_the_workspace_watches_but_a_user_token_does_not(
    harness: Harness, bot: BotProcess, control_watch: int
) -> None:
    team, tokens = "T0REVOKE", [61_301, 61_302]
    _watch_active_imports(harness, bot, team, "U0007", tokens)
    with person(harness, bot, "U0007", "C0001", team=team) as user:
        offset = len(bot.log_text())
        only_users = user.event({"type": "tokens_revoked", "tokens": {"oauth": ["U0007"]}})
        assert only_users.status_code == 200
        time.sleep(1.0)  # time enough for the event to be handled, were it to end anything
        assert "revoked" not in log_since(bot, offset)
        assert {r["state"] for r in subscriptions(harness, team_id=team)} == {"active"}
        bot_token = user.event({"type": "tokens_revoked", "tokens": {"bot": ["UBOT"]}})
    assert bot_token.status_code == 200
    _wait_ended(harness, team, tokens, "the bot token was revoked")
    _assert_polling_stops(harness, tokens, control_watch)

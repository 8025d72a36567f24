"""`import-status-bot socket` end to end: a real WebSocket to the emulated Slack.

The bot runs as a real process with SLACK_APP_TOKEN. It calls apps.connections.open
on the emulator, which answers with the URL of Slack's Socket Mode server
(bot/sandbox/slack_socket_mode.py); commands, clicks and events then arrive on that
WebSocket as envelopes and are acknowledged on it within 3 s, while the Web API
and response_url stay HTTP. Lookup, watch, the buttons and the uninstall event
work over it; a ``refresh_requested`` disconnect is followed by a reconnect that
loses no command; /healthz says whether the socket is connected.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import Message, SocketModeUser, message_text, wait_for
from bot.slack import render
from bot.store.tables import SubscriptionRow

ACTIVE_INTERVAL = 1.0
SLACK = 2.0

_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with Harness(Path(tmp_path_factory.mktemp("socket")) / "harness", preloaded=True) as h:
        yield h


@pytest.fixture(scope="module")
def bot(harness: Harness) -> BotProcess:
    bot = harness.start_bot("socket", LOOKUP_RATE_LIMIT=1000)
    wait_for(harness.socket_mode.is_connected, 10, description="the bot's WebSocket")
    return bot


@pytest.fixture
def user(harness: Harness, bot: BotProcess) -> SocketModeUser:
    n = next(_numbers)
    return harness.socket_user(channel_id=f"CSM{n:03d}", user_id=f"USM{n:03d}")


def token_for_test() -> int:
    return 77_000 + 10 * next(_numbers)


def answer(user: SocketModeUser, text: str, **overrides: Any) -> str:
    """What the person reads: the ack sent back on the socket, or the response_url post."""
    result = user.command(text, **overrides)
    assert result.error is None and result.ack_seconds < 3, result
    body = message_text(result.ack_body)
    if any(w in body for w in ("Checking import", "Looking up", "Stopping the watch")):
        body = message_text(user.wait_response(result, timeout=10))
    return body


def card_in(harness: Harness, channel: str) -> Message:
    return wait_for(
        lambda: next((m for m in harness.emulator.messages(channel) if m.thread_ts is None), None),
        5,
        description=f"the card in {channel}",
    )


def health(bot: BotProcess) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(bot.url + "/healthz", timeout=3)
    return answer.status_code, answer.json()


def subscription_states(harness: Harness, team: str) -> list[str]:
    engine = create_engine(harness.database_url)
    try:
        with engine.connect() as conn:
            query = select(SubscriptionRow.state).where(SubscriptionRow.team_id == team)
            return list(conn.execute(query).scalars())
    finally:
        engine.dispose()


def test_lookup_is_answered_on_the_websocket(harness: Harness, user: SocketModeUser) -> None:
    token = token_for_test()
    harness.sim.add_import(token, name="Over the socket", status="Processing")
    text = answer(user, str(token))
    assert "Over the socket" in text and "Processing" in text
    (envelope,) = [e for e in harness.socket_mode.envelopes("slash_commands") if e.ack]
    assert envelope.outcome == "acked"
    assert harness.emulator.calls("apps.connections.open"), "the URL came from the Web API"


def test_watch_posts_the_card_and_each_transition_in_its_thread(
    harness: Harness, user: SocketModeUser
) -> None:
    token = token_for_test()
    harness.sim.add_import(token, name="Socket watch", status="Queued", ValidationSuccessful=10)
    assert f"Watching import {token}" in answer(user, f"watch {token}")
    card = card_in(harness, user.channel_id)
    harness.sim.update(token, Status="Processing")
    (reply,) = wait_for(
        lambda: harness.emulator.thread(card.channel, card.ts), ACTIVE_INTERVAL + SLACK
    )
    assert "Queued → :gear: Processing" in reply.text


def test_the_card_buttons_work_over_the_websocket(harness: Harness, user: SocketModeUser) -> None:
    token = token_for_test()
    harness.sim.add_import(token, name="Buttons", status="Processing", ValidationSuccessful=10)
    assert f"Watching import {token}" in answer(user, f"watch {token}")
    card = card_in(harness, user.channel_id)

    refreshed = user.click(render.ACTION_REFRESH, str(token), card.ts)
    assert refreshed.error is None
    assert "Buttons" in message_text(user.wait_response(refreshed))

    stopped = user.click(render.ACTION_UNWATCH, str(token), card.ts)
    assert stopped.error is None
    assert f"Stopped watching import {token}" in message_text(user.wait_response(stopped))
    wait_for(
        lambda: (
            "No longer watching"
            in message_text(harness.emulator.message(card.channel, card.ts) or {})
        ),
        5,
        description="the card saying the watch stopped",
    )


def test_the_uninstall_event_ends_the_workspace_watches(
    harness: Harness, user: SocketModeUser
) -> None:
    token, team = token_for_test(), "T0SOCKUNINST"
    user.team_id = team
    harness.sim.add_import(token, name="Uninstall", status="Processing", ValidationSuccessful=10)
    assert f"Watching import {token}" in answer(user, f"watch {token}")
    assert subscription_states(harness, team) == ["active"]

    result = user.event({"type": "app_uninstalled"})
    assert result.error is None
    wait_for(lambda: subscription_states(harness, team) == ["ended"], 5, description="ended")


def test_a_refresh_requested_disconnect_reconnects_without_losing_a_command(
    harness: Harness, user: SocketModeUser
) -> None:
    server = harness.socket_mode
    token = token_for_test()
    harness.sim.add_import(token, name="Mid refresh", status="Processing")
    # A slow lookup: acknowledged at once, answered on the response_url later...
    harness.sim.inject_fault(token=token, delay=2.0, times=1)
    slow = user.command(str(token))
    assert slow.error is None and "Looking up" in message_text(slow.ack_body)
    # ...while Slack refreshes the connection.
    opened = len(server.connections())
    server.disconnect("refresh_requested")
    assert "Mid refresh" in message_text(user.wait_response(slow, timeout=10))
    wait_for(lambda: len(server.connections()) > opened, 10, description="a new connection")
    wait_for(server.is_connected, 10, description="connected again")

    assert "Mid refresh" in answer(user, str(token)), "the next command goes through"
    assert harness.emulator.dispatch_failures == []
    assert all(e.outcome == "acked" for e in server.envelopes("slash_commands"))


def test_healthz_tells_whether_the_socket_is_connected(harness: Harness, bot: BotProcess) -> None:
    server = harness.socket_mode
    wait_for(server.is_connected, 10)
    wait_for(lambda: health(bot)[0] == 200, 10, description="healthy while connected")
    assert health(bot)[1]["socket"] == "connected"

    # The app token is revoked and the socket closed: the bot cannot reconnect.
    server.revoke_app_token(server.app_token)
    server.disconnect("link_disabled")
    _, body = wait_for(
        lambda: (h := health(bot))[0] == 503 and h, 10, description="/healthz saying so"
    )
    assert body["socket"] == "disconnected" and "socket: disconnected" in body["problems"]

    # A new token would be the operator's fix; the same one, un-revoked, lets it back in.
    server.add_app_token(server.app_token)
    wait_for(lambda: health(bot)[0] == 200, 30, description="healthy again once reconnected")
    assert bot.running()
    assert server.app_token not in bot.log_text()

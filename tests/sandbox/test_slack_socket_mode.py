"""Slack's Socket Mode side, over real sockets, against slack-sdk's and Bolt's own clients.

The server runs on its own thread; the clients run on the test's event loop, so the
server's blocking waits are called through ``asyncio.to_thread``. Tests that need an ack
deadline to pass take a little over 3 s: Slack's deadline, not shortened here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot.sandbox.slack_socket_mode import (
    ACK_DEADLINE_SECONDS,
    SocketModeServer,
    slash_command_payload,
)

BOT_TOKEN = "xoxb-socket-mode-test"
RESPONSE_URL = "http://127.0.0.1:9/response/R1"  # never posted to in these tests

Listener = Callable[[AsyncBaseSocketModeClient, SocketModeRequest], Awaitable[None]]


@pytest.fixture
def slack() -> Iterator[SocketModeServer]:
    with SocketModeServer(bot_tokens=[BOT_TOKEN]) as server:
        yield server


@contextlib.asynccontextmanager
async def sdk_client(
    slack: SocketModeServer, listener: Listener | None = None
) -> AsyncIterator[SocketModeClient]:
    """slack-sdk's aiohttp SocketModeClient, connected through apps.connections.open."""
    client = SocketModeClient(
        app_token=slack.app_token, web_client=AsyncWebClient(base_url=slack.api_url)
    )
    if listener is not None:
        client.socket_mode_request_listeners.append(listener)
    await client.connect()
    try:
        await asyncio.to_thread(slack.wait_connected, 1)
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def bolt_app(slack: SocketModeServer) -> AsyncIterator[tuple[AsyncApp, list[Any]]]:
    """A Bolt AsyncApp behind AsyncSocketModeHandler; yields the app and what it handled."""

    async def authorize(**_: Any) -> AuthorizeResult:
        # No Web API behind this test: Bolt gets its bot identity without auth.test.
        return AuthorizeResult(
            enterprise_id=None,
            team_id="T0001",
            bot_token=BOT_TOKEN,
            bot_user_id="UBOT",
            bot_id="B0001",
        )

    app = AsyncApp(authorize=authorize, client=AsyncWebClient(base_url=slack.api_url))
    handled: list[Any] = []

    @app.command("/import-status")
    async def command(ack: Any, command: dict[str, Any]) -> None:
        handled.append(command)
        await ack(text=f"Looking up import {command['text']}", response_type="ephemeral")

    @app.action("refresh")
    async def refresh(ack: Any, body: dict[str, Any]) -> None:
        handled.append(body)
        await ack()

    @app.event("app_uninstalled")
    async def uninstalled(ack: Any, event: dict[str, Any]) -> None:
        handled.append(event)
        await ack()

    handler = AsyncSocketModeHandler(
        app, slack.app_token, web_client=AsyncWebClient(base_url=slack.api_url)
    )
    await handler.connect_async()
    try:
        await asyncio.to_thread(slack.wait_connected, 1)
        yield app, handled
    finally:
        await handler.close_async()


def settled(slack: SocketModeServer, quiet: float = 0.5, timeout: float = 10.0) -> None:
    """Wait until one connection is open and none has opened or closed for ``quiet`` s."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = [(c.connection_id, c.open) for c in slack.connections()]
        if now != last:
            last, since = now, time.monotonic()
        elif sum(is_open for _, is_open in now) == 1 and time.monotonic() - since >= quiet:
            return
        time.sleep(0.02)
    raise AssertionError(f"connections never settled: {last}")


def poll(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


async def open_url(slack: SocketModeServer) -> str:
    response = await AsyncWebClient(base_url=slack.api_url).apps_connections_open(
        app_token=slack.app_token
    )
    url = response["url"]
    assert isinstance(url, str)
    return url


# ----------------------------------------------------------------- connecting


async def test_apps_connections_open_returns_a_ws_url_whose_socket_says_hello(
    slack: SocketModeServer,
) -> None:
    url = await open_url(slack)
    assert url.startswith(slack.url.replace("http://", "ws://") + "link/?ticket=")
    assert "app_id=A0001" in url
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as first:
        hello = json.loads((await first.receive(timeout=5)).data)
        async with session.ws_connect(await open_url(slack)) as second:
            second_hello = json.loads((await second.receive(timeout=5)).data)
    assert hello["type"] == "hello"
    assert hello["num_connections"] == 1
    assert hello["connection_info"] == {"app_id": "A0001"}
    assert hello["debug_info"]["approximate_connection_time"] == 18060
    assert second_hello["num_connections"] == 2
    connections = await asyncio.to_thread(lambda: slack_closed(slack, 2))
    assert [c.closed_by for c in connections] == ["client", "client"]


def slack_closed(slack: SocketModeServer, count: int) -> list[Any]:
    """Wait until ``count`` connections exist and all are closed."""

    def closed() -> list[Any] | None:
        found = slack.connections()
        return found if len(found) == count and not any(c.open for c in found) else None

    return poll(closed, f"{count} closed connections")


async def test_debug_reconnects_announces_a_360_second_connection(
    slack: SocketModeServer,
) -> None:
    url = await open_url(slack) + "&debug_reconnects=true"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        hello = json.loads((await ws.receive(timeout=5)).data)
    assert hello["debug_info"]["approximate_connection_time"] == 360
    assert slack.connections()[0].debug_reconnects


async def test_a_ticket_works_once_and_an_unknown_one_never(slack: SocketModeServer) -> None:
    url = await open_url(slack)
    forged = url.split("ticket=")[0] + "ticket=0123456789abcdef&app_id=A0001"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
        for bad in (url, forged):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(bad)
            assert refused.value.status == 401
    assert [r.reason for r in slack.refusals()] == ["used_ticket", "unknown_ticket"]
    assert len(slack.connections()) == 1


async def test_an_eleventh_connection_is_told_too_many_websockets(
    slack: SocketModeServer,
) -> None:
    async with aiohttp.ClientSession() as session, contextlib.AsyncExitStack() as stack:
        for _ in range(10):
            ws = await stack.enter_async_context(session.ws_connect(await open_url(slack)))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
        extra = await stack.enter_async_context(session.ws_connect(await open_url(slack)))
        message = json.loads((await extra.receive(timeout=5)).data)
        closing = await extra.receive(timeout=5)
    assert message["type"] == "disconnect"
    assert message["reason"] == "too_many_websockets"
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (BOT_TOKEN, "not_allowed_token_type"),
        ("xapp-1-A0001-9999-forged", "invalid_auth"),
        ("xapp-1-A0001-2000-revoked", "token_revoked"),
        ("xapp-1-A0001-3000-noscope", "missing_scope"),
        ("", "not_authed"),
    ],
)
async def test_apps_connections_open_refuses_what_slack_refuses(
    slack: SocketModeServer, token: str, error: str
) -> None:
    slack.add_app_token("xapp-1-A0001-2000-revoked")
    slack.revoke_app_token("xapp-1-A0001-2000-revoked")
    slack.add_app_token("xapp-1-A0001-3000-noscope", scopes=("authorizations:read",))
    client = SocketModeClient(app_token=token, web_client=AsyncWebClient(base_url=slack.api_url))
    try:
        with pytest.raises(SlackApiError) as refused:
            await client.issue_new_wss_url()
    finally:
        await client.close()
    assert refused.value.response["error"] == error
    assert slack.connections() == []


async def test_an_app_token_sent_as_a_post_parameter_is_not_taken(
    slack: SocketModeServer,
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            slack.api_url + "apps.connections.open", data={"token": slack.app_token}
        ) as response:
            body = await response.json()
        async with session.get(
            slack.api_url + "apps.connections.open",
            headers={"Authorization": f"Bearer {slack.app_token}"},
        ) as response:
            over_get = await response.json()
    assert body == {"ok": False, "error": "missing_args"}
    assert over_get == {"ok": False, "error": "insecure_request"}


def test_apps_connections_open_is_rate_limited_at_tier_3(slack: SocketModeServer) -> None:
    answers = [slack.apps_connections_open(slack.app_token) for _ in range(51)]
    assert all(a.body["ok"] for a in answers[:50])
    assert answers[50].status_code == 429
    assert answers[50].body == {"ok": False, "error": "ratelimited"}
    assert 1 <= int(answers[50].headers["Retry-After"]) <= 60


# ----------------------------------------------------------------- envelopes and acks


async def test_slash_command_is_acked_by_bolt_with_its_response_payload(
    slack: SocketModeServer,
) -> None:
    async with bolt_app(slack) as (_, handled):
        envelope_id = slack.push_command("42", response_url=RESPONSE_URL)
        ack = await asyncio.to_thread(slack.wait_ack, envelope_id)
    envelope = slack.envelope(envelope_id)
    assert envelope.wire() == {
        "envelope_id": envelope_id,
        "payload": envelope.payload,
        "type": "slash_commands",
        "accepts_response_payload": True,
    }
    assert handled[0]["command"] == "/import-status"
    assert handled[0]["text"] == "42"
    assert ack.payload == {"text": "Looking up import 42", "response_type": "ephemeral"}
    assert not ack.late
    assert ack.seconds < ACK_DEADLINE_SECONDS
    assert envelope.outcome == "acked"


async def test_block_action_click_reaches_bolt_and_is_acked(slack: SocketModeServer) -> None:
    async with bolt_app(slack) as (_, handled):
        envelope_id = slack.push_block_action(
            "refresh", "777", message_ts="1790000000.000100", response_url=RESPONSE_URL
        )
        ack = await asyncio.to_thread(slack.wait_ack, envelope_id)
    envelope = slack.envelope(envelope_id)
    assert envelope.type == "interactive"
    assert envelope.accepts_response_payload is False
    assert "retry_attempt" not in envelope.wire()
    assert handled[0]["actions"][0]["value"] == "777"
    assert handled[0]["container"]["message_ts"] == "1790000000.000100"
    assert ack.payload is None
    assert envelope.outcome == "acked"


async def test_events_api_envelope_reaches_bolt_and_is_acked(slack: SocketModeServer) -> None:
    async with bolt_app(slack) as (_, handled):
        envelope_id = slack.push_event({"type": "app_uninstalled"}, event_id="Ev0001")
        await asyncio.to_thread(slack.wait_ack, envelope_id)
    wire = slack.envelope(envelope_id).wire()
    assert wire["type"] == "events_api"
    assert wire["retry_attempt"] == 0
    assert wire["retry_reason"] == ""
    assert wire["payload"]["event_id"] == "Ev0001"
    assert handled == [{"type": "app_uninstalled"}]
    assert slack.envelope(envelope_id).outcome == "acked"


async def test_an_unacked_event_is_delivered_again_with_retry_attempt(
    slack: SocketModeServer,
) -> None:
    seen: list[SocketModeRequest] = []

    async def ack_only_retries(
        client: AsyncBaseSocketModeClient, request: SocketModeRequest
    ) -> None:
        seen.append(request)
        if request.retry_attempt:
            await client.send_socket_mode_response(SocketModeResponse(request.envelope_id))

    async with sdk_client(slack, ack_only_retries):
        first_id = slack.push_event({"type": "app_uninstalled"}, event_id="Ev0002")
        retry = await asyncio.to_thread(slack.wait_attempt, first_id, 1, 5.0)
        await asyncio.to_thread(slack.wait_ack, retry.envelope_id)

    attempts = slack.attempts(first_id)
    assert [(a.retry_attempt, a.retry_reason, a.outcome) for a in attempts] == [
        (0, "", "timeout"),
        (1, "timeout", "acked"),
    ]
    assert retry.envelope_id != first_id
    assert [r.retry_attempt for r in seen] == [0, 1]
    assert seen[1].payload["event_id"] == "Ev0002"  # the same event, a new envelope
    assert attempts[1].sent_at is not None and attempts[0].sent_at is not None
    assert attempts[1].sent_at - attempts[0].sent_at >= ACK_DEADLINE_SECONDS


async def test_a_late_command_ack_is_dispatch_failed_and_never_retried(
    slack: SocketModeServer,
) -> None:
    async def ack_too_late(client: AsyncBaseSocketModeClient, request: SocketModeRequest) -> None:
        await asyncio.sleep(ACK_DEADLINE_SECONDS + 0.3)
        await client.send_socket_mode_response(
            SocketModeResponse(request.envelope_id, payload={"text": "too late"})
        )

    async with sdk_client(slack, ack_too_late):
        envelope_id = slack.push_command("42", response_url=RESPONSE_URL)
        failed = await asyncio.to_thread(slack.wait_outcome, envelope_id, 5.0)
        ack = await asyncio.to_thread(slack.wait_ack, envelope_id, 5.0)

    assert failed.outcome == "dispatch_failed"
    assert ack.late
    assert ack.seconds > ACK_DEADLINE_SECONDS
    assert ack.payload == {"text": "too late"}
    assert slack.envelope(envelope_id).outcome == "dispatch_failed"
    assert len(slack.attempts(envelope_id)) == 1


def test_a_command_with_no_connection_open_fails_at_once(slack: SocketModeServer) -> None:
    envelope_id = slack.push_command("42", response_url=RESPONSE_URL)
    envelope = slack.envelope(envelope_id)
    assert envelope.outcome == "dispatch_failed"
    assert envelope.sent_at is None
    assert not slack.is_connected()


async def test_envelopes_are_spread_over_the_open_connections(slack: SocketModeServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(await open_url(slack)) as first,
        session.ws_connect(await open_url(slack)) as second,
    ):
        await asyncio.to_thread(slack.wait_connected, 2)
        for n in range(4):
            slack.push_event({"type": "app_uninstalled"}, event_id=f"Ev{n}")
        counts = [c.envelopes_sent for c in slack.connections()]
        del first, second
    assert counts == [2, 2]


async def test_acks_that_match_nothing_are_recorded_as_problems(
    slack: SocketModeServer,
) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(await open_url(slack)) as ws:
        await ws.receive(timeout=5)  # hello
        await ws.send_str("not json")
        await ws.send_str(json.dumps({"envelope_id": "no-such-envelope"}))
        await ws.send_str(json.dumps({"payload": {}}))
        problems = await asyncio.to_thread(
            poll, lambda: len(p := slack.problems()) >= 3 and p, "3 problems"
        )
    assert [p.problem for p in problems] == ["not JSON", "unknown envelope_id", "no envelope_id"]
    assert slack.acks() == []


# ----------------------------------------------------------------- disconnects


async def test_refresh_requested_makes_bolt_reconnect_and_commands_still_get_through(
    slack: SocketModeServer,
) -> None:
    async with bolt_app(slack) as (_, handled):
        assert slack.disconnect("refresh_requested") == [1]
        await asyncio.to_thread(slack.wait_opened, 2)
        await asyncio.to_thread(slack.wait_connected, 1)
        # slack-sdk may still open (and close) a second connection after the first one
        # is ready; push once the set of connections has stayed the same for a moment.
        await asyncio.to_thread(settled, slack)
        envelope_id = slack.push_command("43", response_url=RESPONSE_URL)
        ack = await asyncio.to_thread(slack.wait_ack, envelope_id)
        connections = slack.connections()

    assert connections[0].disconnect_reason == "refresh_requested"
    assert not connections[0].open
    # slack-sdk may open a connection on the close and another on the disconnect message:
    # what matters is that one is open and the command went through it.
    assert [c.connection_id for c in connections if c.open] == [connections[-1].connection_id]
    assert slack.envelope(envelope_id).outcome == "acked"
    assert ack.payload == {"text": "Looking up import 43", "response_type": "ephemeral"}
    assert [c["text"] for c in handled] == ["43"]


async def test_a_warning_is_followed_by_a_new_connection_before_the_old_one_is_closed(
    slack: SocketModeServer,
) -> None:
    async with sdk_client(slack):
        slack.disconnect("warning")
        await asyncio.to_thread(slack.wait_opened, 2)
        connections = await asyncio.to_thread(slack.wait_connected, 1)
    first = slack.connections()[0]
    assert first.disconnect_reason == "warning"
    # slack-sdk closes the old socket itself; Slack would have waited 10 s for it.
    assert first.closed_by == "client"
    assert connections[-1].connection_id == 2


async def test_a_connection_is_warned_then_refreshed_when_its_time_is_up() -> None:
    with SocketModeServer(connection_lifetime=0.4) as slack:
        url = await open_url(slack)
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            messages = [json.loads((await ws.receive(timeout=5)).data) for _ in range(3)]
            closing = await ws.receive(timeout=5)
        # The close frame can reach the client before the server has noted it.
        connection = poll(
            lambda: slack.connections()[0].closed_at and slack.connections()[0], "the close noted"
        )
    assert [m["type"] for m in messages] == ["hello", "disconnect", "disconnect"]
    assert [m.get("reason") for m in messages[1:]] == ["warning", "refresh_requested"]
    assert messages[1]["debug_info"] == {"host": "applink-1"}
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert connection.closed_by == "server"
    assert connection.disconnect_reason == "refresh_requested"


async def test_on_ack_hands_each_ack_to_the_emulator_with_its_envelope() -> None:
    seen: list[tuple[str, Any]] = []
    with SocketModeServer(on_ack=lambda e, a: seen.append((e.type, a.payload))) as slack:
        async with bolt_app(slack):
            envelope_id = slack.push_command("44", response_url=RESPONSE_URL)
            await asyncio.to_thread(slack.wait_ack, envelope_id)
    assert seen == [
        ("slash_commands", {"text": "Looking up import 44", "response_type": "ephemeral"})
    ]


def test_push_refuses_what_slack_would_never_send(slack: SocketModeServer) -> None:
    with pytest.raises(ValueError, match="envelope type"):
        slack.push("hello", {})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        slack.push("events_api", "not an object")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reason"):
        slack.disconnect("goodbye")
    assert slack.envelopes() == []


def test_slash_command_payload_has_the_fields_slack_sends_over_http() -> None:
    payload = slash_command_payload("42", response_url=RESPONSE_URL)
    assert set(payload) == {
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "user_id",
        "user_name",
        "command",
        "text",
        "api_app_id",
        "is_enterprise_install",
        "response_url",
        "trigger_id",
    }
    assert payload["is_enterprise_install"] == "false"  # a string, as in the form

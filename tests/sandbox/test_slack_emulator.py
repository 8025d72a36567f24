"""The Slack emulator, driven over real HTTP by slack_sdk's own clients and by a real Bolt app."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook import WebhookClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bot.sandbox.devserver import ServerThread
from bot.sandbox.slack_emulator import (
    RESPONSE_URL_MAX_POSTS,
    Message,
    SlackEmulator,
    SlackUser,
    block_action_body,
    event_body,
    message_text,
    sign_request,
    slash_command_body,
    wait_for,
)

TOKEN = "xoxb-emulator-token"
SECRET = "test-signing-secret"

STATUS_BLOCKS: list[dict[str, Any]] = [
    {"type": "header", "text": {"type": "plain_text", "text": "Import 42"}},
    {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "*Processing* 50 %"},
        "fields": [
            {"type": "mrkdwn", "text": "*Records*\n1,000"},
            {"type": "mrkdwn", "text": "*Errors*\n3"},
        ],
    },
    {"type": "context", "elements": [{"type": "mrkdwn", "text": "Updated 10:42 UTC"}]},
    {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": "refresh",
                "value": "42",
                "text": {"type": "plain_text", "text": "Refresh"},
            }
        ],
    },
]


@pytest.fixture(scope="module")
def served() -> Iterator[SlackEmulator]:
    emulator = SlackEmulator()
    with emulator.serve():
        yield emulator


@pytest.fixture
def emulator(served: SlackEmulator) -> SlackEmulator:
    served.reset()
    # The bot was invited to the channels these tests post in (tests/sandbox/
    # test_slack_emulator_strict.py shows what happens where it was not).
    for channel in ("C0001", "C1", "C2"):
        served.create_channel(channel, members=["U1", "U9", "U0001"], invite_bot=True)
    return served


@pytest.fixture
def client(emulator: SlackEmulator) -> WebClient:
    return WebClient(token=TOKEN, base_url=emulator.api_url())


def api_error(excinfo: pytest.ExceptionInfo[SlackApiError]) -> str:
    return str(excinfo.value.response["error"])


# ----------------------------------------------------------------- Web API via WebClient


def test_post_message_with_blocks_is_stored_with_increasing_ts(
    emulator: SlackEmulator, client: WebClient
) -> None:
    first = client.chat_postMessage(
        channel="C1", text="Import 42 is processing", blocks=STATUS_BLOCKS
    )
    second = client.chat_postMessage(channel="C1", text="second")

    assert first["ok"] and first["channel"] == "C1"
    assert first["message"]["blocks"] == STATUS_BLOCKS
    assert float(second["ts"]) > float(first["ts"])
    stored = emulator.messages("C1")
    assert [m.text for m in stored] == ["Import 42 is processing", "second"]
    assert stored[0].blocks == STATUS_BLOCKS
    assert stored[0].user == "UBOT" and stored[0].thread_ts is None
    assert emulator.calls("chat.postMessage")[0].params["channel"] == "C1"


def test_thread_reply_with_broadcast_shows_in_channel_and_thread(
    emulator: SlackEmulator, client: WebClient
) -> None:
    parent = client.chat_postMessage(channel="C1", text="tracking")["ts"]
    client.chat_postMessage(channel="C1", text="quiet reply", thread_ts=parent)
    client.chat_postMessage(
        channel="C1", text="Import failed", thread_ts=parent, reply_broadcast=True
    )

    assert [m.text for m in emulator.messages("C1")] == ["tracking", "Import failed"]
    thread = emulator.thread("C1", parent)
    assert [(m.text, m.reply_broadcast) for m in thread] == [
        ("quiet reply", False),
        ("Import failed", True),
    ]
    assert all(m.thread_ts == parent for m in thread)
    assert len(emulator.all_messages()) == 3


def test_unknown_thread_ts_is_accepted_like_slack(client: WebClient) -> None:
    reply = client.chat_postMessage(channel="C1", text="orphan", thread_ts="1.000001")
    assert reply["ok"] and reply["message"]["thread_ts"] == "1.000001"


def test_update_edits_the_message_and_keeps_history(
    emulator: SlackEmulator, client: WebClient
) -> None:
    ts = client.chat_postMessage(channel="C1", text="v1", blocks=STATUS_BLOCKS)["ts"]
    client.chat_update(channel="C1", ts=ts, text="v2")
    updated = client.chat_update(channel="C1", ts=ts, text="v3", blocks=[])

    assert updated["ts"] == ts and updated["text"] == "v3"
    message = emulator.message("C1", ts)
    assert message is not None
    assert message.text == "v3" and message.blocks == [] and message.edits == 2
    # Leaving blocks out of an update keeps them, as Slack does.
    assert message.history == [("v1", STATUS_BLOCKS), ("v2", STATUS_BLOCKS)]


def test_update_of_unknown_message_is_message_not_found(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_update(channel="C1", ts="1790000000.999999", text="x")
    assert api_error(excinfo) == "message_not_found"


def test_post_ephemeral_is_recorded_for_one_user(
    emulator: SlackEmulator, client: WebClient
) -> None:
    answer = client.chat_postEphemeral(
        channel="C1", user="U9", text="only you", blocks=STATUS_BLOCKS
    )

    assert answer["message_ts"]
    (ephemeral,) = emulator.ephemerals("C1")
    assert (ephemeral.user, ephemeral.text) == ("U9", "only you")
    assert emulator.messages("C1") == []
    assert emulator.ephemerals("C2") == []


def test_auth_test_and_conversations_info(emulator: SlackEmulator, client: WebClient) -> None:
    me = client.auth_test()
    assert (me["team_id"], me["user_id"]) == ("T0001", "UBOT")
    assert me["bot_id"] and me["url"]

    emulator.set_scopes({"chat:write", "channels:read"})  # the manifest asks for no read scope
    assert client.conversations_info(channel="C1")["channel"]["id"] == "C1"
    emulator.set_channel_state("C1", "is_archived")
    assert client.conversations_info(channel="C1")["channel"]["is_archived"] is True


def test_form_encoded_call_with_blocks_as_json_string(
    emulator: SlackEmulator, client: WebClient
) -> None:
    answer = client.api_call(
        "chat.postMessage",
        params={"channel": "C1", "text": "form", "blocks": json.dumps(STATUS_BLOCKS)},
    )
    assert answer["ok"]
    assert emulator.messages("C1")[0].blocks == STATUS_BLOCKS


@pytest.mark.parametrize(
    ("token", "error"),
    [("xoxb-wrong", "invalid_auth"), (None, "not_authed")],
)
def test_wrong_or_missing_token_is_rejected(
    emulator: SlackEmulator, token: str | None, error: str
) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        WebClient(token=token, base_url=emulator.api_url()).chat_postMessage(channel="C1", text="x")
    assert api_error(excinfo) == error
    assert emulator.messages("C1") == []
    assert emulator.calls("chat.postMessage")[0].error == error


def test_revoked_token_is_token_revoked(emulator: SlackEmulator, client: WebClient) -> None:
    emulator.revoke_token(TOKEN)
    with pytest.raises(SlackApiError) as excinfo:
        client.auth_test()
    assert api_error(excinfo) == "token_revoked"


def test_unknown_method_and_missing_arguments(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        client.api_call("chat.scheduleMessage", json={"channel": "C1"})
    assert api_error(excinfo) == "unknown_method"
    with pytest.raises(SlackApiError) as excinfo:
        client.api_call("chat.postMessage", json={"channel": "C1"})
    assert api_error(excinfo) == "no_text"
    with pytest.raises(SlackApiError) as excinfo:
        client.api_call("chat.postMessage", json={"text": "no channel"})
    assert api_error(excinfo) == "invalid_arguments"
    with pytest.raises(SlackApiError) as excinfo:
        client.apps_connections_open(app_token=TOKEN)
    assert api_error(excinfo) == "not_allowed_token_type"


def test_blocks_slack_would_reject_are_invalid_blocks(
    emulator: SlackEmulator, client: WebClient
) -> None:
    too_long = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C1", text="x", blocks=too_long)
    assert api_error(excinfo) == "invalid_blocks"
    assert "/blocks/0/text/text" in excinfo.value.response["response_metadata"]["messages"][0]
    assert emulator.messages("C1") == []


# ----------------------------------------------------------------- failures on demand


def test_ratelimited_answers_429_with_retry_after(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.inject_error("chat.postMessage", "ratelimited", retry_after=7)
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C1", text="x")

    assert excinfo.value.response.status_code == 429
    assert api_error(excinfo) == "ratelimited"
    headers = {k.lower(): v for k, v in excinfo.value.response.headers.items()}
    assert headers["retry-after"] in ("7", ["7"])
    # times=1: the next call goes through.
    assert client.chat_postMessage(channel="C1", text="x")["ok"]


def test_rate_limit_retry_handler_retries_and_succeeds(emulator: SlackEmulator) -> None:
    emulator.inject_error("chat.postMessage", "ratelimited", retry_after=0)
    client = WebClient(
        token=TOKEN,
        base_url=emulator.api_url(),
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)],
    )
    assert client.chat_postMessage(channel="C1", text="after retry")["ok"]
    assert [r.status_code for r in emulator.calls("chat.postMessage")] == [429, 200]
    assert [m.text for m in emulator.messages("C1")] == ["after retry"]


def test_injected_error_respects_channel_and_times(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.inject_error("chat.postMessage", "fatal_error", channel="C2", times=2)
    assert client.chat_postMessage(channel="C1", text="other channel is fine")["ok"]
    for _ in range(2):
        with pytest.raises(SlackApiError) as excinfo:
            client.chat_postMessage(channel="C2", text="x")
        assert api_error(excinfo) == "fatal_error"
    assert client.chat_postMessage(channel="C2", text="third works")["ok"]

    emulator.inject_error("*", "service_unavailable", times=None, status_code=503)
    with pytest.raises(SlackApiError) as excinfo:
        client.auth_test()
    assert excinfo.value.response.status_code == 503
    emulator.clear_errors()
    assert client.auth_test()["ok"]


@pytest.mark.parametrize("error", ["channel_not_found", "not_in_channel", "is_archived"])
def test_channel_state_fails_posts_and_updates_until_cleared(
    emulator: SlackEmulator, client: WebClient, error: str
) -> None:
    ts = client.chat_postMessage(channel="C1", text="before")["ts"]
    emulator.set_channel_state("C1", error)
    for call in (
        lambda: client.chat_postMessage(channel="C1", text="x"),
        lambda: client.chat_update(channel="C1", ts=ts, text="x"),
        lambda: client.chat_postEphemeral(channel="C1", user="U1", text="x"),
    ):
        with pytest.raises(SlackApiError) as excinfo:
            call()
        assert api_error(excinfo) == error
    assert client.chat_postMessage(channel="C2", text="elsewhere")["ok"]

    emulator.set_channel_state("C1", None)
    assert client.chat_update(channel="C1", ts=ts, text="after")["ok"]


def test_latency_delays_one_method_without_blocking_others(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.set_latency(2, "chat.postMessage")
    slow = threading.Thread(target=lambda: client.chat_postMessage(channel="C1", text="slow"))
    started = time.monotonic()
    slow.start()
    wait_for(lambda: emulator.held("chat.postMessage"), 10, description="the slow call held")
    client.auth_test()
    # Answered while the slow call still waits: the lock is not held during a delay.
    assert emulator.held("chat.postMessage") == 1, "the lock must not be held while a call waits"
    slow.join()

    assert emulator.held("chat.postMessage") == 0
    assert time.monotonic() - started >= 2
    assert [m.text for m in emulator.messages("C1")] == ["slow"]


def test_delete_and_delete_original_hide_messages(
    emulator: SlackEmulator, client: WebClient
) -> None:
    first = client.chat_postMessage(channel="C1", text="one")["ts"]
    second = client.chat_postMessage(channel="C1", text="two")["ts"]
    client.chat_delete(channel="C1", ts=first)
    url = emulator.new_response_url(channel="C1", message_ts=second)
    WebhookClient(url).send_dict({"delete_original": True})

    assert emulator.messages("C1") == []
    deleted = emulator.message("C1", second)
    assert deleted is not None and deleted.deleted


# ----------------------------------------------------------------- AsyncWebClient


async def test_async_client_posts_threads_updates_and_retries(emulator: SlackEmulator) -> None:
    client = AsyncWebClient(
        token=TOKEN,
        base_url=emulator.api_url(),
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    assert (await client.auth_test())["user_id"] == "UBOT"
    parent = (await client.chat_postMessage(channel="C1", text="t", blocks=STATUS_BLOCKS))["ts"]
    await client.chat_postMessage(channel="C1", text="b", thread_ts=parent, reply_broadcast=True)
    await client.chat_update(channel="C1", ts=parent, text="t2")
    await client.chat_postEphemeral(channel="C1", user="U1", text="e")
    emulator.inject_error("chat.postMessage", "ratelimited", retry_after=0)
    await client.chat_postMessage(channel="C1", text="retried")

    assert [(m.text, m.edits) for m in emulator.messages("C1")] == [
        ("t2", 1),
        ("b", 0),
        ("retried", 0),
    ]
    assert emulator.messages("C1")[0].blocks == STATUS_BLOCKS
    assert len(emulator.ephemerals()) == 1

    with pytest.raises(SlackApiError) as excinfo:
        await AsyncWebClient(token="xoxb-nope", base_url=emulator.api_url()).auth_test()
    assert excinfo.value.response["error"] == "invalid_auth"


# ----------------------------------------------------------------- response_url


def test_response_url_records_posts_up_to_slacks_limit(emulator: SlackEmulator) -> None:
    url = emulator.new_response_url(channel="C1", user="U1")
    assert url.startswith(emulator.url + "response/")
    webhook = WebhookClient(url)
    for n in range(RESPONSE_URL_MAX_POSTS):
        assert webhook.send(text=f"reply {n}").status_code == 200

    refused = webhook.send(text="one too many")
    assert (refused.status_code, refused.body) == (404, "used_url")
    posts = emulator.responses(url)
    assert [p["text"] for p in posts] == [f"reply {n}" for n in range(5)]
    assert emulator.responses(url.rsplit("/", 1)[-1]) == posts
    # Ephemeral by default: the user saw them, the channel did not.
    assert len(emulator.ephemerals("C1")) == 5 and emulator.messages("C1") == []


def test_response_url_in_channel_and_replace_original(
    emulator: SlackEmulator, client: WebClient
) -> None:
    ts = client.chat_postMessage(channel="C1", text="status", blocks=STATUS_BLOCKS)["ts"]
    url = emulator.new_response_url(channel="C1", message_ts=ts, user="U1")
    WebhookClient(url).send(text="refreshed", replace_original=True)
    WebhookClient(url).send(text="for everyone", response_type="in_channel")

    messages = emulator.messages("C1")
    assert [m.text for m in messages] == ["refreshed", "for everyone"]
    assert messages[0].edits == 1
    with pytest.raises(KeyError):
        emulator.responses("no-such-id")


# ----------------------------------------------------------------- requests to the bot


def test_signatures_are_accepted_by_slack_sdk_verifier() -> None:
    body = slash_command_body("status 42", response_url="http://localhost/response/x")
    headers = sign_request(SECRET, body)
    verifier = SignatureVerifier(SECRET)

    assert verifier.is_valid_request(body, headers)
    assert not verifier.is_valid_request(body + b"&x=1", headers)
    assert not SignatureVerifier("other-secret").is_valid_request(body, headers)
    stale = sign_request(SECRET, body, timestamp=int(time.time()) - 600)
    assert not verifier.is_valid_request(body, stale)
    ts = 1_700_000_000
    expected = verifier.generate_signature(timestamp=str(ts), body=body)
    assert sign_request(SECRET, body, ts)["X-Slack-Signature"] == expected


def test_request_bodies_carry_the_fields_slack_sends() -> None:
    fields = parse_qs(
        slash_command_body("status 42", channel_id="C9", response_url="http://r/1").decode()
    )
    for name in (
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
    ):
        assert name in fields, name
    assert fields["command"] == ["/import-status"] and fields["channel_id"] == ["C9"]

    form = parse_qs(block_action_body("refresh", "42", message_ts="1.2", response_url="u").decode())
    payload = json.loads(form["payload"][0])
    assert payload["type"] == "block_actions"
    assert payload["container"] == {
        "type": "message",
        "message_ts": "1.2",
        "channel_id": "C0001",
        "is_ephemeral": False,
    }
    assert payload["actions"][0]["action_id"] == "refresh"
    assert payload["actions"][0]["value"] == "42"

    envelope = json.loads(event_body({"type": "app_mention", "text": "hi"}, event_id="Ev1"))
    assert envelope["type"] == "event_callback" and envelope["event_id"] == "Ev1"


def test_message_text_collects_everything_a_user_reads() -> None:
    message = Message(ts="1.1", channel="C1", text="fallback", blocks=STATUS_BLOCKS)
    text = message_text(message)
    for part in ("fallback", "Import 42", "*Processing* 50 %", "1,000", "Updated 10:42", "Refresh"):
        assert part in text
    assert message_text({"text": "plain", "blocks": []}) == "plain"


def test_wait_for_returns_the_value_or_explains_the_timeout() -> None:
    assert wait_for(lambda: 42, timeout=0.1) == 42
    with pytest.raises(AssertionError, match="the import finished"):
        wait_for(lambda: None, timeout=0.1, interval=0.01, description="the import finished")


# ----------------------------------------------------------------- a real Bolt app


@pytest.fixture
def bolt_url(emulator: SlackEmulator) -> Iterator[str]:
    """A tiny Bolt AsyncApp behind Starlette, talking to the emulator."""
    app = AsyncApp(
        signing_secret=SECRET,
        client=AsyncWebClient(token=TOKEN, base_url=emulator.api_url()),
    )

    @app.command("/import-status")
    async def status(ack: AsyncAck, respond: AsyncRespond, command: dict[str, Any]) -> None:
        await ack()
        await respond(f"Looking up {command['text']}")

    @app.action("refresh")
    async def refresh(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await respond(text=f"Refreshed {body['actions'][0]['value']}", replace_original=True)

    handler = AsyncSlackRequestHandler(app)

    async def events(request: Request) -> Response:
        return await handler.handle(request)

    web = Starlette(routes=[Route("/slack/events", events, methods=["POST"])])
    with ServerThread(web) as server:
        yield server.url + "slack/events"


def test_slack_user_drives_a_bolt_app(emulator: SlackEmulator, bolt_url: str) -> None:
    with SlackUser(bolt_url, SECRET, emulator) as user:
        result = user.command("status 42")
        assert result.status_code == 200 and result.ack_seconds < 3
        assert user.wait_response(result)["text"] == "Looking up status 42"

        ts = WebClient(token=TOKEN, base_url=emulator.api_url()).chat_postMessage(
            channel="C0001", text="Import 42", blocks=STATUS_BLOCKS
        )["ts"]
        clicked = user.click("refresh", "42", message_ts=ts)
        assert clicked.status_code == 200
        assert user.wait_response(clicked)["replace_original"] is True
        emulator.wait_for_message("C0001", "Refreshed 42")

        with SlackUser(bolt_url, "wrong-secret", emulator) as forger:
            assert forger.command("status 42").status_code == 401
    assert emulator.calls("auth.test"), "Bolt verifies its token against the emulator"


# ----------------------------------------------------------------- control endpoints, load


def test_control_endpoints_read_and_steer(emulator: SlackEmulator, client: WebClient) -> None:
    base = emulator.url + "_emulator/"
    ts = client.chat_postMessage(channel="C1", text="hello", blocks=STATUS_BLOCKS)["ts"]
    client.chat_update(channel="C1", ts=ts, text="hello again")
    with httpx.Client() as http:
        (listed,) = http.get(base + "messages", params={"channel": "C1"}).json()
        assert listed["text"] == "hello again" and listed["edits"] == 1
        assert "Refresh" in message_text(listed)
        assert len(http.get(base + "requests", params={"method": "chat.update"}).json()) == 1

        http.post(base + "errors", json={"method": "chat.postMessage", "error": "fatal_error"})
        with pytest.raises(SlackApiError):
            client.chat_postMessage(channel="C1", text="x")
        http.post(base + "errors", json={"method": "auth.test", "error": "x", "times": None})
        http.delete(base + "errors")
        assert client.auth_test()["ok"]

        http.put(base + "channels/C1", json={"error": "not_in_channel"})
        with pytest.raises(SlackApiError):
            client.chat_postMessage(channel="C1", text="x")
        http.put(base + "channels/C1", json={"error": None})

        created = http.post(base + "response_urls", json={"channel": "C1"}).json()
        http.post(created["url"], json={"text": "via control"})
        assert http.get(base + "responses/" + created["id"]).json() == [{"text": "via control"}]
        assert http.get(base + "responses/unknown").status_code == 404


def test_thousands_of_concurrent_posts_get_unique_ordered_ts(emulator: SlackEmulator) -> None:
    # About ts, not rate limits: 250 posts a channel at once would be refused by Slack.
    emulator.set_rate_limit("chat.postMessage", None)
    for i in range(8):
        emulator.invite_bot(f"C{i}")

    def post_many(channel: str) -> None:
        client = WebClient(token=TOKEN, base_url=emulator.api_url())
        for n in range(250):
            client.chat_postMessage(channel=channel, text=str(n))

    threads = [threading.Thread(target=post_many, args=(f"C{i}",)) for i in range(8)]
    # CPU time of this process (the emulator and the clients are its threads): about
    # 2 s. A busy machine stretches wall time, hardly this.
    started = time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert time.process_time() - started < 10
    everything = emulator.all_messages()
    assert len(everything) == 2000
    assert len({m.ts for m in everything}) == 2000
    assert [m.text for m in emulator.messages("C3")] == [str(n) for n in range(250)]
    assert [float(m.ts) for m in everything] == sorted(float(m.ts) for m in everything)

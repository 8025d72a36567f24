"""The emulator is as strict as Slack: one test per rule, each rule from Slack's docs.

Channel membership, rate limits that happen by themselves, Block Kit checked with
slack-sdk's models plus the limits they leave out, the 3-second acknowledgement,
response_url's 5 posts in 30 minutes, and scopes read from manifest.yml. Driven
over real HTTP by slack-sdk's clients (and a real Bolt app for acknowledgements).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook import WebhookClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bot.sandbox import slack_rules
from bot.sandbox.devserver import ServerThread
from bot.sandbox.slack_emulator import (
    DISPATCH_FAILED,
    RESPONSE_URL_LIFETIME_SECONDS,
    SlackEmulator,
    SlackUser,
)

TOKEN = "xoxb-emulator-token"
OTHER_WORKSPACE_TOKEN = "xoxb-other-workspace"
SECRET = "test-signing-secret"
SECTION = {"type": "section", "text": {"type": "mrkdwn", "text": "hello"}}


class FakeClock:
    """The emulator's clock (seconds), moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def served(clock: FakeClock) -> Iterator[SlackEmulator]:
    emulator = SlackEmulator(clock=clock)
    emulator.add_token(OTHER_WORKSPACE_TOKEN, team_id="T0002")
    with emulator.serve():
        yield emulator


@pytest.fixture
def emulator(served: SlackEmulator, clock: FakeClock) -> SlackEmulator:
    served.reset()
    clock.now += 3600  # every rate-limit bucket full again
    return served


@pytest.fixture
def client(emulator: SlackEmulator) -> WebClient:
    return WebClient(token=TOKEN, base_url=emulator.api_url())


def refused(call: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as excinfo:
        call()
    return excinfo.value


def retry_after(error: SlackApiError) -> str:
    headers = {k.lower(): v for k, v in error.response.headers.items()}
    value = headers["retry-after"]
    return str(value[0] if isinstance(value, list) else value)


def error_of(call: Any) -> str:
    return str(refused(call).response["error"])


# --------------------------------------------------------------------------- membership
# https://docs.slack.dev/reference/methods/chat.postMessage#errors: not_in_channel,
# channel_not_found ("a private channel the bot is not in" is invisible to it).


def test_the_bot_must_be_invited_to_post_in_a_public_channel(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.create_channel("C1", "public")
    assert error_of(lambda: client.chat_postMessage(channel="C1", text="x")) == "not_in_channel"

    emulator.invite_bot("C1")
    assert client.chat_postMessage(channel="C1", text="x")["ok"]


@pytest.mark.parametrize(("channel", "kind"), [("C2", "private"), ("D2", "im")])
def test_a_private_channel_or_dm_the_bot_is_not_in_is_channel_not_found(
    emulator: SlackEmulator, client: WebClient, channel: str, kind: str
) -> None:
    emulator.create_channel(channel, kind, members=["U1", "U2"])
    assert error_of(lambda: client.chat_postMessage(channel=channel, text="x")) == (
        "channel_not_found"
    )


def test_an_unknown_channel_is_channel_not_found(client: WebClient) -> None:
    assert error_of(lambda: client.chat_postMessage(channel="CNOPE", text="x")) == (
        "channel_not_found"
    )


def test_a_removed_bot_can_neither_post_nor_edit(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.create_channel("C1", invite_bot=True)
    emulator.create_channel("G1", "private", invite_bot=True)
    ts = {c: client.chat_postMessage(channel=c, text="card")["ts"] for c in ("C1", "G1")}
    emulator.remove_bot("C1")
    emulator.remove_bot("G1")

    assert error_of(lambda: client.chat_update(channel="C1", ts=ts["C1"], text="x")) == (
        "not_in_channel"
    )
    assert error_of(lambda: client.chat_update(channel="G1", ts=ts["G1"], text="x")) == (
        "channel_not_found"
    )


def test_an_archived_channel_refuses_posts_as_is_archived_and_edits_as_is_inactive(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.create_channel("C1", invite_bot=True)
    ts = client.chat_postMessage(channel="C1", text="card")["ts"]
    emulator.archive_channel("C1")

    assert error_of(lambda: client.chat_postMessage(channel="C1", text="x")) == "is_archived"
    assert error_of(lambda: client.chat_update(channel="C1", ts=ts, text="x")) == "is_inactive"


def test_chat_write_public_lets_the_bot_post_in_public_channels_only(
    emulator: SlackEmulator, client: WebClient
) -> None:
    # https://docs.slack.dev/reference/scopes/chat.write.public
    emulator.set_scopes({"chat:write", "chat:write.public"})
    emulator.create_channel("C1")
    emulator.create_channel("G1", "private")
    assert client.chat_postMessage(channel="C1", text="x")["ok"]
    assert error_of(lambda: client.chat_postMessage(channel="G1", text="x")) == (
        "channel_not_found"
    )


def test_an_ephemeral_needs_the_user_in_the_channel(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.create_channel("C1", members=["U1"], invite_bot=True)
    assert client.chat_postEphemeral(channel="C1", user="U1", text="psst")["ok"]
    assert error_of(lambda: client.chat_postEphemeral(channel="C1", user="U7", text="x")) == (
        "user_not_in_channel"
    )


def test_channels_can_be_made_and_the_bot_invited_over_http(
    emulator: SlackEmulator, client: WebClient
) -> None:
    base = emulator.url + "_emulator/channels/"
    made = httpx.post(base + "G7", json={"kind": "private", "members": ["U1"]})
    assert made.json()["channel"]["is_private"] is True
    assert httpx.post(base + "G8", json={"kind": "nonsense"}).status_code == 400
    assert error_of(lambda: client.chat_postMessage(channel="G7", text="x")) == (
        "channel_not_found"
    )
    httpx.post(base + "G7/invite")
    assert client.chat_postMessage(channel="G7", text="x")["ok"]


def test_a_command_makes_its_channel_known_without_inviting_the_bot(
    emulator: SlackEmulator,
) -> None:
    emulator.ensure_channel("C5", member="U1")
    emulator.ensure_channel("D5", member="U1")
    emulator.ensure_channel("G5", member="U1")
    kinds = {c: (emulator.channel(c) or pytest.fail(c)).kind for c in ("C5", "D5", "G5")}
    assert kinds == {"C5": "public", "D5": "im", "G5": "private"}
    assert all("UBOT" not in (emulator.channel(c) or pytest.fail()).members for c in kinds)


# --------------------------------------------------------------------------- rate limits
# https://docs.slack.dev/apis/web-api/rate-limits: HTTP 429, Retry-After in seconds,
# {"ok": false, "error": "ratelimited"}; chat.postMessage 1 a second per channel with
# short bursts; chat.update Tier 3 (50+ a minute) per workspace.


def test_chat_post_message_allows_a_short_burst_then_one_a_second_per_channel(
    emulator: SlackEmulator, client: WebClient, clock: FakeClock
) -> None:
    for channel in ("C1", "C2"):
        emulator.create_channel(channel, invite_bot=True)
    burst = int(slack_rules.POST_MESSAGE.burst)
    for n in range(burst):
        assert client.chat_postMessage(channel="C1", text=str(n))["ok"]
    limited = refused(lambda: client.chat_postMessage(channel="C1", text="one too many"))
    assert limited.response.status_code == 429
    assert retry_after(limited) == "1"

    assert client.chat_postMessage(channel="C2", text="another channel")["ok"]
    clock.now += 1.0
    assert client.chat_postMessage(channel="C1", text="a second later")["ok"]
    assert refused(lambda: client.chat_postMessage(channel="C1", text="x")).response.status_code
    assert len(emulator.messages("C1")) == burst + 1


def test_chat_update_is_tier_3_for_the_whole_workspace(
    emulator: SlackEmulator, client: WebClient, clock: FakeClock
) -> None:
    emulator.add_token(OTHER_WORKSPACE_TOKEN, team_id="T0002")
    for channel in ("C1", "C2"):
        emulator.create_channel(channel, invite_bot=True)
    cards = {c: client.chat_postMessage(channel=c, text="card")["ts"] for c in ("C1", "C2")}
    for n in range(50):
        assert client.chat_update(channel="C1", ts=cards["C1"], text=str(n))["ok"]

    limited = refused(lambda: client.chat_update(channel="C2", ts=cards["C2"], text="x"))
    assert limited.response.status_code == 429, "another channel, the same workspace"
    assert retry_after(limited) == "2"  # 50 a minute: 1.2 s, rounded up
    clock.now += 2
    assert client.chat_update(channel="C2", ts=cards["C2"], text="later")["ok"]


def test_a_limited_call_is_answered_exactly_as_slack_does(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.create_channel("C1", invite_bot=True)
    emulator.set_rate_limit("chat.postMessage", 1, burst=1)
    client.chat_postMessage(channel="C1", text="first")

    answer = httpx.post(
        emulator.api_url() + "chat.postMessage",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"channel": "C1", "text": "second"},
    )
    assert answer.status_code == 429
    assert answer.headers["Retry-After"] == "60"
    assert answer.json() == {"ok": False, "error": "ratelimited"}
    assert [r.status_code for r in emulator.calls("chat.postMessage")] == [200, 429]


def test_a_limit_lifted_for_a_load_test_is_back_after_reset(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.create_channel("C1", invite_bot=True)
    emulator.set_rate_limit("chat.postMessage", None)
    for n in range(20):
        client.chat_postMessage(channel="C1", text=str(n))
    emulator.reset()
    emulator.create_channel("C1", invite_bot=True)
    statuses = []
    for n in range(10):
        try:
            client.chat_postMessage(channel="C1", text=str(n))
            statuses.append(200)
        except SlackApiError as exc:
            statuses.append(exc.response.status_code)
    assert 429 in statuses


# --------------------------------------------------------------------------- Block Kit
# https://docs.slack.dev/reference/block-kit/blocks and each block's page.


@pytest.fixture
def channel(emulator: SlackEmulator) -> str:
    emulator.create_channel("C1", invite_bot=True)
    emulator.set_rate_limit("chat.postMessage", None)
    return "C1"


def invalid(client: WebClient, channel: str, blocks: Any) -> list[str]:
    error = refused(lambda: client.chat_postMessage(channel=channel, text="x", blocks=blocks))
    assert error.response["error"] == "invalid_blocks"
    return list(error.response["response_metadata"]["messages"])


def test_blocks_go_through_slack_sdks_models(client: WebClient, channel: str) -> None:
    assert "unsupported block type" in invalid(client, channel, [{"type": "nonsense"}])[0]
    eleven = [{"type": "mrkdwn", "text": "f"}] * 11
    (problem,) = invalid(client, channel, [{"type": "section", "fields": eleven}])
    assert "fields attribute cannot exceed 10 items" in problem
    (problem,) = invalid(client, channel, [{"type": "section"}])
    assert "text or fields attribute must be specified" in problem


def test_lengths_are_counted_in_utf16_code_units_as_slack_counts_them(
    client: WebClient, channel: str
) -> None:
    emoji = "\U0001f600"  # two UTF-16 code units, one code point
    fits = [{"type": "section", "text": {"type": "mrkdwn", "text": emoji * 1500}}]
    assert client.chat_postMessage(channel=channel, text="x", blocks=fits)["ok"]
    over = [{"type": "section", "text": {"type": "mrkdwn", "text": emoji * 1501}}]
    (problem,) = invalid(client, channel, over)
    assert "[json-pointer:/blocks/0/text/text]" in problem
    header = [{"type": "header", "text": {"type": "plain_text", "text": emoji * 76}}]
    assert "/blocks/0/text/text" in invalid(client, channel, header)[0]


def test_block_ids_are_unique_in_a_message_and_action_ids_in_their_block(
    client: WebClient, channel: str
) -> None:
    twice = [{**SECTION, "block_id": "a"}, {**SECTION, "block_id": "a"}]
    assert "block_id must be unique" in invalid(client, channel, twice)[0]

    def button(action_id: str) -> dict[str, Any]:
        text = {"type": "plain_text", "text": "Go"}
        return {"type": "button", "text": text, "action_id": action_id}

    same_block = [{"type": "actions", "elements": [button("go"), button("go")]}]
    assert "action_id must be unique" in invalid(client, channel, same_block)[0]
    two_blocks = [{"type": "actions", "elements": [button("go")]}] * 2
    assert client.chat_postMessage(channel=channel, text="x", blocks=two_blocks)["ok"]


def test_a_message_holds_at_most_50_blocks(client: WebClient, channel: str) -> None:
    assert client.chat_postMessage(channel=channel, text="x", blocks=[SECTION] * 50)["ok"]
    assert "no more than 50 items" in invalid(client, channel, [SECTION] * 51)[0]


def test_empty_text_and_empty_element_lists_are_refused(client: WebClient, channel: str) -> None:
    empty = [{"type": "section", "text": {"type": "mrkdwn", "text": ""}}]
    assert "more than 0 characters" in invalid(client, channel, empty)[0]
    assert "1 to 25 elements" in invalid(client, channel, [{"type": "actions", "elements": []}])[0]
    assert "1 to 10 elements" in invalid(client, channel, [{"type": "context", "elements": []}])[0]


def test_blocks_without_a_text_fallback_post_with_slacks_warning(
    emulator: SlackEmulator, client: WebClient, channel: str
) -> None:
    with pytest.warns(UserWarning, match="top-level `text`"):  # slack-sdk warns too
        answer = client.chat_postMessage(channel=channel, blocks=[SECTION])
    assert answer["ok"] and answer["warning"] == "missing_text_or_fallback_or_attachments"
    assert emulator.calls("chat.postMessage")[-1].warnings == (
        "missing_text_or_fallback_or_attachments",
    )
    client.chat_postMessage(channel=channel, text="fallback", blocks=[SECTION])
    assert emulator.calls("chat.postMessage")[-1].warnings == ()


def test_a_response_url_post_gets_the_same_block_check(
    emulator: SlackEmulator, channel: str
) -> None:
    url = emulator.new_response_url(channel=channel, user="U1")
    bad = WebhookClient(url).send(text="x", blocks=[{**SECTION, "block_id": "x" * 256}])
    assert (bad.status_code, bad.body) == (400, "invalid_blocks")
    assert emulator.responses(url) == []


# --------------------------------------------------------------------------- response_url
# "up to 5 times within 30 minutes"
# (https://docs.slack.dev/interactivity/handling-user-interaction#message_responses)


def test_a_response_url_expires_after_30_minutes(emulator: SlackEmulator, clock: FakeClock) -> None:
    url = emulator.new_response_url(channel="C1", user="U1")
    assert WebhookClient(url).send(text="in time").status_code == 200
    clock.now += RESPONSE_URL_LIFETIME_SECONDS + 1
    late = WebhookClient(url).send(text="too late")
    assert (late.status_code, late.body) == (404, "expired_url")
    assert [p["text"] for p in emulator.responses(url)] == ["in time"]


def test_replace_original_replaces_an_ephemeral_clicked_message(
    emulator: SlackEmulator, channel: str
) -> None:
    first = emulator.new_response_url(channel=channel, user="U1")
    WebhookClient(first).send(text="Import 42: Processing")
    (shown,) = emulator.ephemerals(channel)
    clicked = emulator.new_response_url(channel=channel, message_ts=shown.ts, user="U1")

    WebhookClient(clicked).send(text="Import 42: Completed", replace_original=True)
    assert [e.text for e in emulator.ephemerals(channel)] == ["Import 42: Completed"]


# --------------------------------------------------------------------------- acknowledgements
# Slack waits 3 s for the acknowledgement
# (https://docs.slack.dev/interactivity/implementing-slash-commands#responding).


@pytest.fixture
def bolt_url(emulator: SlackEmulator) -> Iterator[str]:
    """A Bolt app: ``slow`` acks after 3.2 s, ``broken`` acks with blocks Slack refuses."""
    app = AsyncApp(
        signing_secret=SECRET,
        client=AsyncWebClient(token=TOKEN, base_url=emulator.api_url()),
    )

    @app.command("/import-status")
    async def command(ack: AsyncAck, command: dict[str, Any]) -> None:
        if command["text"] == "slow":
            await asyncio.sleep(3.2)
        if command["text"] == "broken":
            await ack(
                text="x", blocks=[{"type": "header", "text": {"type": "mrkdwn", "text": "*"}}]
            )
            return
        await ack(text="fine")

    handler = AsyncSlackRequestHandler(app)

    async def events(request: Request) -> Response:
        return await handler.handle(request)

    web = Starlette(routes=[Route("/slack/events", events, methods=["POST"])])
    with ServerThread(web) as server:
        yield server.url + "slack/events"


def test_an_acknowledgement_after_3_s_is_slacks_dispatch_failed(
    emulator: SlackEmulator, bolt_url: str
) -> None:
    with SlackUser(bolt_url, SECRET, emulator) as user:
        quick = user.command("quick")
        late = user.command("slow")
    assert (quick.error, quick.ack_body) == (None, "fine")
    assert late.error == DISPATCH_FAILED and late.ack_seconds > 3
    assert emulator.dispatch_failures == [late]


def test_an_acknowledgement_with_invalid_blocks_is_not_shown(
    emulator: SlackEmulator, bolt_url: str
) -> None:
    with SlackUser(bolt_url, SECRET, emulator) as user:
        result = user.command("broken")
    assert result.error == "invalid_blocks"
    assert "/blocks/0/text/type" in result.problems[0]


# --------------------------------------------------------------------------- scopes
# A method's "Required scopes"; missing_scope names what is needed and what was granted.


def test_the_installed_scopes_are_manifest_ymls(emulator: SlackEmulator) -> None:
    manifest = yaml.safe_load(slack_rules.MANIFEST.read_text())
    assert emulator.scopes == frozenset(manifest["oauth_config"]["scopes"]["bot"])


def test_a_method_without_its_scope_is_missing_scope(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.create_channel("C1", invite_bot=True)
    assert "channels:read" not in (emulator.scopes or ())
    error = refused(lambda: client.conversations_info(channel="C1"))
    assert error.response["error"] == "missing_scope"
    assert error.response["needed"] == "channels:read"
    assert error.response["provided"] == ",".join(sorted(emulator.scopes or ()))
    headers = {k.lower(): v for k, v in error.response.headers.items()}
    assert headers["x-accepted-oauth-scopes"] in ("channels:read", ["channels:read"])

    assert client.chat_postMessage(channel="C1", text="x")["ok"]
    emulator.set_scopes({"commands"})
    assert error_of(lambda: client.chat_postMessage(channel="C1", text="x")) == "missing_scope"


def test_a_scope_added_to_the_manifest_is_granted(tmp_path: Path) -> None:
    text = slack_rules.MANIFEST.read_text().replace(
        "      - chat:write  #", "      - channels:read\n      - chat:write  #"
    )
    manifest = tmp_path / "manifest.yml"
    manifest.write_text(text)
    scopes = slack_rules.manifest_scopes(manifest)
    assert scopes is not None and "channels:read" in scopes
    emulator = SlackEmulator(scopes=scopes)
    emulator.create_channel("C1")
    with emulator.serve():
        info = WebClient(token=TOKEN, base_url=emulator.api_url()).conversations_info(channel="C1")
    assert info["channel"]["is_member"] is False


def test_the_manifest_reader_without_pyyaml_agrees_with_pyyaml() -> None:
    text = slack_rules.MANIFEST.read_text()
    by_hand = slack_rules._bot_scopes_by_hand(text)
    assert by_hand == yaml.safe_load(text)["oauth_config"]["scopes"]["bot"]
    assert slack_rules.manifest_scopes(Path("/no/such/manifest.yml")) is None

"""The emulator's modals and Home tabs, driven by slack_sdk's own client over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bot.sandbox import slack_views
from bot.sandbox.devserver import ServerThread
from bot.sandbox.slack_emulator import SlackEmulator, SlackUser

TOKEN = "xoxb-emulator-token"
SECRET = "views-test-secret"


def modal(**extra: Any) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": "cb",
        "title": {"type": "plain_text", "text": "Settings"},
        "submit": {"type": "plain_text", "text": "Save"},
        "private_metadata": "meta",
        "blocks": [
            {
                "type": "input",
                "block_id": "color",
                "label": {"type": "plain_text", "text": "Color"},
                "element": {
                    "type": "static_select",
                    "action_id": "value",
                    "options": [
                        {"text": {"type": "plain_text", "text": "Red"}, "value": "red"},
                        {"text": {"type": "plain_text", "text": "Blue"}, "value": "blue"},
                    ],
                    "initial_option": {
                        "text": {"type": "plain_text", "text": "Red"},
                        "value": "red",
                    },
                },
            },
            {
                "type": "input",
                "block_id": "note",
                "label": {"type": "plain_text", "text": "Note"},
                "element": {"type": "plain_text_input", "action_id": "value"},
            },
            {
                "type": "input",
                "block_id": "who",
                "optional": True,
                "label": {"type": "plain_text", "text": "Who"},
                "element": {"type": "users_select", "action_id": "value"},
            },
        ],
        **extra,
    }


HOME = {"type": "home", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Hi"}}]}


class FakeBot:
    """Records what it receives and answers each request with ``answer`` (after ``delay``
    seconds, with HTTP ``status``)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.answer: dict[str, Any] | None = None
        self.delay = 0.0
        self.status = 200
        self.app = Starlette(routes=[Route("/slack/events", self.events, methods=["POST"])])

    async def events(self, request: Request) -> Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return JSONResponse({"error": "unhandled request"}, status_code=self.status)
        body = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            self.received.append(json.loads(body))
        else:
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            self.received.append(json.loads(form["payload"]) if "payload" in form else form)
        return JSONResponse(self.answer) if self.answer else Response(status_code=200)


@pytest.fixture
def emulator() -> Iterator[SlackEmulator]:
    emulator = SlackEmulator(bot_token=TOKEN)
    with emulator.serve():
        yield emulator


@pytest.fixture
def client(emulator: SlackEmulator) -> WebClient:
    return WebClient(token=TOKEN, base_url=emulator.api_url())


@pytest.fixture
def bot() -> Iterator[tuple[FakeBot, str]]:
    fake = FakeBot()
    with ServerThread(fake.app) as server:
        yield fake, server.url + "slack/events"


def error_of(call: Any) -> str:
    with pytest.raises(SlackApiError) as raised:
        call()
    return str(raised.value.response["error"])


def test_a_trigger_id_opens_one_modal_within_three_seconds(
    emulator: SlackEmulator, client: WebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    trigger = emulator.views.issue_trigger_id("U1")
    opened = client.views_open(trigger_id=trigger, view=modal())
    assert opened["view"]["id"].startswith("V")
    (stored,) = emulator.views.modals("U1")
    assert stored.view["callback_id"] == "cb" and stored.user_id == "U1"
    assert error_of(lambda: client.views_open(trigger_id=trigger, view=modal())) == (
        "exchanged_trigger_id"
    )
    assert error_of(lambda: client.views_open(trigger_id="1.2.abc", view=modal())) == (
        "invalid_trigger_id"
    )
    monkeypatch.setattr(slack_views, "TRIGGER_LIFETIME_SECONDS", -1.0)
    late = emulator.views.issue_trigger_id("U1")
    assert error_of(lambda: client.views_open(trigger_id=late, view=modal())) == (
        "expired_trigger_id"
    )


@pytest.mark.parametrize(
    ("view", "words"),
    [
        (modal(title={"type": "plain_text", "text": "A title far too long here"}), "title"),
        ({**modal(), "blocks": [HOME["blocks"][0]] * 101}, "1 to 100 blocks"),
        ({**modal(), "type": "home"}, "type must be modal"),
        ({**modal(), "private_metadata": "x" * 3001}, "private_metadata"),
        ({**modal(), "blocks": [{"type": "bogus"}]}, "unknown block type"),
    ],
)
def test_a_view_slack_would_refuse_is_refused_with_the_reason(
    emulator: SlackEmulator, client: WebClient, view: dict[str, Any], words: str
) -> None:
    trigger = emulator.views.issue_trigger_id("U1")
    with pytest.raises(SlackApiError) as raised:
        client.views_open(trigger_id=trigger, view=view)
    assert raised.value.response["error"] == "invalid_arguments"
    assert words in json.dumps(raised.value.response["response_metadata"]["messages"])


def test_an_initial_option_must_be_one_of_the_options() -> None:
    view = modal()
    view["blocks"][0]["element"]["initial_option"] = {
        "text": {"type": "plain_text", "text": "Green"},
        "value": "green",
    }
    assert any("initial_option" in p for p in slack_views.view_problems(view, "modal"))


def test_publishing_a_home_tab_again_redraws_the_same_view(
    emulator: SlackEmulator, client: WebClient
) -> None:
    first = client.views_publish(user_id="U1", view=HOME)["view"]
    second = client.views_publish(user_id="U1", view=HOME)["view"]
    assert first["id"] == second["id"] and first["hash"] != second["hash"]
    home = emulator.views.home("U1")
    assert home is not None and home.publishes == 2
    assert error_of(lambda: client.views_publish(user_id="U1", view=HOME, hash="stale")) == (
        "hash_conflict"
    )
    assert error_of(lambda: client.views_publish(user_id="U1", view=modal())) == (
        "invalid_arguments"
    )


def test_views_update_needs_the_current_hash_and_an_open_view(
    emulator: SlackEmulator, client: WebClient
) -> None:
    opened = client.views_open(trigger_id=emulator.views.issue_trigger_id("U1"), view=modal())
    view = opened["view"]
    assert error_of(lambda: client.views_update(view_id=view["id"], view=modal(), hash="old")) == (
        "hash_conflict"
    )
    updated = client.views_update(view_id=view["id"], view=modal(), hash=view["hash"])
    assert updated["view"]["id"] == view["id"]
    assert error_of(lambda: client.views_update(view_id="V404", view=modal())) == "not_found"


def test_a_submission_carries_the_choices_and_the_initial_values(
    emulator: SlackEmulator, client: WebClient, bot: tuple[FakeBot, str]
) -> None:
    fake, url = bot
    view_id = client.views_open(trigger_id=emulator.views.issue_trigger_id("U1"), view=modal())[
        "view"
    ]["id"]
    with SlackUser(url, SECRET, emulator, user_id="U1") as user:
        with pytest.raises(ValueError, match="not one of the options"):
            user.submit_view(view_id, {"color": "green"})
        missing = user.submit_view(view_id, {"who": "U2"})
        assert not missing.sent and set(missing.errors) == {"note"}
        assert fake.received == [], "the client refuses a required field left empty"

        fake.answer = {"response_action": "errors", "errors": {"note": "Too short"}}
        refused = user.submit_view(view_id, {"note": "hi"})
        assert refused.errors == {"note": "Too short"} and not refused.closed
        payload = fake.received[-1]
        assert payload["type"] == "view_submission" and payload["user"]["id"] == "U1"
        values = payload["view"]["state"]["values"]
        assert values["color"]["value"]["selected_option"]["value"] == "red"
        assert values["note"]["value"]["value"] == "hi"
        assert values["who"]["value"]["selected_user"] is None
        assert payload["view"]["private_metadata"] == "meta"

        fake.answer = None
        done = user.submit_view(view_id, {"note": "a longer note", "color": "blue"})
        assert done.closed and done.errors == {}
        assert emulator.views.modals("U1") == []
        with pytest.raises(ValueError, match="no open modal"):
            user.submit_view(view_id, {"note": "again"})


def test_a_late_or_failed_answer_leaves_the_modal_open_and_unchanged(
    emulator: SlackEmulator, client: WebClient, bot: tuple[FakeBot, str]
) -> None:
    fake, url = bot
    view_id = client.views_open(trigger_id=emulator.views.issue_trigger_id("U1"), view=modal())[
        "view"
    ]["id"]
    with SlackUser(url, SECRET, emulator, user_id="U1") as user:
        fake.status = 404  # what Bolt answers when no listener acknowledged in time
        failed = user.submit_view(view_id, {"note": "hello"})
        assert failed.error == "dispatch_failed" and not failed.closed and failed.errors == {}
        fake.status, fake.delay = 200, 3.2
        fake.answer = {"response_action": "errors", "errors": {"note": "Too short"}}
        late = user.submit_view(view_id, {"note": "hello"})
        assert late.error == "dispatch_failed" and late.ack_seconds > 3
        still = emulator.views.view(view_id)
        assert still is not None and still.is_open and still.errors == {}
        fake.delay, fake.answer = 0.0, None
        assert user.submit_view(view_id, {"note": "hello"}).closed, "Submit again: it goes"


def test_opening_the_home_tab_sends_app_home_opened(
    emulator: SlackEmulator, bot: tuple[FakeBot, str]
) -> None:
    fake, url = bot
    with SlackUser(url, SECRET, emulator, user_id="U7") as user:
        assert user.open_home().status_code == 200
    event = fake.received[-1]["event"]
    assert event == {**event, "type": "app_home_opened", "user": "U7", "tab": "home"}


def test_slash_commands_carry_a_trigger_id_the_emulator_accepts(
    emulator: SlackEmulator, client: WebClient, bot: tuple[FakeBot, str]
) -> None:
    fake, url = bot
    with SlackUser(url, SECRET, emulator, user_id="U3") as user:
        user.command("settings")
    trigger = fake.received[-1]["trigger_id"]
    client.views_open(trigger_id=trigger, view=modal())
    (opened,) = emulator.views.modals("U3")
    assert opened.user_id == "U3", "the modal belongs to whoever made the trigger"

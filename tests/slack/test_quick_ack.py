"""The slash command's fast path (bot/slack/quick_ack.py) answers as Bolt's dispatch does.

Each request is a real signed body: it goes once through Bolt's ``async_dispatch``
(what the HTTP route did before) and once through ``QuickCommands.answer`` (what
it does now), each into an app of its own built by ``build_app``, and the two
HTTP answers (status and body) must be the same. The Slack emulator runs as a
real server for ``auth.test`` and the response_url posts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import Settings
from bot.domain.status import ImportStatus, Status
from bot.mypreferences import errors
from bot.sandbox.slack_emulator import (
    SlackEmulator,
    message_text,
    sign_request,
    slash_command_body,
)
from bot.slack import incoming
from bot.slack.app import ImportStatusApp, build_app
from bot.slack.listeners import commands
from bot.slack.listeners.access import AccessControl

SECRET = "quick-ack-test-secret"
FORM = "application/x-www-form-urlencoded"
AUTUMN = ImportStatus(
    access_token=42, status=Status.PROCESSING, name="Autumn", validation_successful=12_000
)


class FakeService:
    """Stands in for ImportService: lookups from a table, an optional wait, no watches."""

    def __init__(self, release: asyncio.Event | None = None) -> None:
        self.statuses: dict[int, ImportStatus | errors.ApiError] = {
            42: AUTUMN,
            7: errors.TokenRejected("HTTP 401"),
        }
        self.release = release
        self.lookups: list[int] = []

    async def lookup(self, access_token: int) -> ImportStatus:
        self.lookups.append(access_token)
        if self.release is not None:
            await self.release.wait()
        found = self.statuses[access_token]
        if isinstance(found, errors.ApiError):
            raise found
        return found

    async def is_watched(self, team_id: str, channel_id: str, access_token: int) -> bool:
        return False

    async def watches(self, team_id: str, channel_id: str) -> list[Any]:
        return []


class BrokenAccess:
    """Access control that fails: the listener raises before it acknowledges."""

    async def check(self, *args: Any) -> str | None:
        raise RuntimeError("the allow-list could not be read")


@pytest.fixture(scope="module")
def emulator() -> Iterator[SlackEmulator]:
    emulator = SlackEmulator()
    with emulator.serve():
        yield emulator


def app_for(
    emulator: SlackEmulator,
    service: FakeService | None = None,
    access: Any = None,
    **settings: Any,
) -> ImportStatusApp:
    client = AsyncWebClient(token=emulator.bot_token, base_url=emulator.api_url())
    return build_app(
        client=client,
        signing_secret=SECRET,
        service=service or FakeService(),  # type: ignore[arg-type]
        access=access or AccessControl(Settings(**settings)),
        subscriptions=SimpleNamespace(),  # type: ignore[arg-type]
        channel_settings=SimpleNamespace(),  # type: ignore[arg-type]
        history=SimpleNamespace(),  # type: ignore[arg-type]
    )


def command(emulator: SlackEmulator, text: str, **fields: Any) -> bytes:
    fields.setdefault("response_url", emulator.new_response_url(channel="C0001", user="U0001"))
    return slash_command_body(text, **fields)


async def through_bolt(app: ImportStatusApp, body: bytes, **headers: str) -> BoltResponse:
    signed = {**sign_request(SECRET, body), "Content-Type": FORM, **headers}
    return await app.async_dispatch(AsyncBoltRequest(body=body.decode(), headers=signed))


async def through_quick(app: ImportStatusApp, body: bytes, **headers: str) -> BoltResponse:
    fields, problem = incoming.read_body(body, FORM)
    assert problem is None
    assert app.quick_commands is not None
    answer = await app.quick_commands.answer(
        fields, headers.get("X-Slack-Retry-Num"), headers.get("X-Slack-Retry-Reason")
    )
    assert answer is not None, "the fast path left this command to Bolt"
    return answer


def seen(response: BoltResponse) -> tuple[int, Any]:
    """What Slack gets: the status and the body (parsed when it is JSON)."""
    body = response.body
    try:
        return response.status, json.loads(body) if body else body
    except ValueError:
        return response.status, body


# --------------------------------------------------------------------------- same answers


@pytest.mark.parametrize(
    "text",
    ["", "help", "HELP", "abc", "0", "watch", "watch 1 1", "list 1", "x" * 600, "42", "0042", "7"],
)
async def test_every_answer_is_the_one_bolt_gives(emulator: SlackEmulator, text: str) -> None:
    body = command(emulator, text)

    by_bolt = seen(await through_bolt(app_for(emulator), body))
    by_quick = seen(await through_quick(app_for(emulator), body))

    assert by_quick == by_bolt
    assert by_quick[0] == 200 and by_quick[1]["response_type"] == "ephemeral"


async def test_a_lookup_is_answered_in_the_acknowledgement(emulator: SlackEmulator) -> None:
    status, answer = seen(await through_quick(app_for(emulator), command(emulator, "42")))

    assert status == 200
    shown = message_text(answer)
    assert "Autumn" in shown and "Processing" in shown and "12,000" in shown


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        ({"allowed_channel_ids": frozenset({"C0009"})}, "42"),
        ({"allowed_user_ids": frozenset({"U0009"})}, "help"),
        ({"allowed_user_ids": frozenset({"U0009"})}, "list"),
    ],
)
async def test_the_allow_lists_refuse_as_before(
    emulator: SlackEmulator, settings: dict[str, Any], text: str
) -> None:
    body = command(emulator, text)
    bolt_service, quick_service = FakeService(), FakeService()

    by_bolt = seen(await through_bolt(app_for(emulator, bolt_service, **settings), body))
    by_quick = seen(await through_quick(app_for(emulator, quick_service, **settings), body))

    assert by_quick == by_bolt
    assert ":no_entry:" in message_text(by_quick[1])
    assert quick_service.lookups == bolt_service.lookups == []


async def test_the_lookup_rate_limit_holds_and_a_failed_lookup_costs_two(
    emulator: SlackEmulator,
) -> None:
    service = FakeService()
    app = app_for(emulator, service, lookup_limit=3)

    answers = [seen(await through_quick(app, command(emulator, t))) for t in ("7", "42", "42")]

    assert "Autumn" not in message_text(answers[0][1])  # the failed one: two slots
    assert "Autumn" in message_text(answers[1][1])
    assert ":hourglass:" in message_text(answers[2][1])
    assert service.lookups == [7, 42]


async def test_a_retried_command_is_answered_empty_and_not_run(emulator: SlackEmulator) -> None:
    body = command(emulator, "42")
    retry = {"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
    bolt_service, quick_service = FakeService(), FakeService()

    by_bolt = seen(await through_bolt(app_for(emulator, bolt_service), body, **retry))
    by_quick = seen(await through_quick(app_for(emulator, quick_service), body, **retry))

    assert by_quick == by_bolt == (200, "")
    assert quick_service.lookups == bolt_service.lookups == []


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x", "https://hooks.slack.com.evil.example/x", "javascript:x"]
)
async def test_a_response_url_that_is_not_slacks_is_refused(
    emulator: SlackEmulator, url: str
) -> None:
    body = command(emulator, "42", response_url=url)
    quick_service = FakeService()

    by_bolt = seen(await through_bolt(app_for(emulator), body))
    by_quick = seen(await through_quick(app_for(emulator, quick_service), body))

    assert by_quick == by_bolt == (400, "")
    assert quick_service.lookups == []


async def test_a_listener_that_raises_before_acknowledging_gets_bolts_500(
    emulator: SlackEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    body = command(emulator, "42")

    by_bolt = seen(await through_bolt(app_for(emulator, access=BrokenAccess()), body))
    caplog.clear()
    by_quick = seen(await through_quick(app_for(emulator, access=BrokenAccess()), body))

    assert by_quick == by_bolt == (500, "")
    assert "listener error: RuntimeError" in caplog.text


# --------------------------------------------------------------------------- timing


async def test_the_acknowledgement_goes_out_while_the_api_is_still_answering(
    emulator: SlackEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "QUICK_ANSWER_SECONDS", 0.05)
    release = asyncio.Event()
    service = FakeService(release)
    url = emulator.new_response_url(channel="C0001", user="U0001")

    status, ack = seen(
        await through_quick(app_for(emulator, service), command(emulator, "42", response_url=url))
    )

    assert (status, ack["text"]) == (200, "Looking up import 42…")
    assert service.lookups == [42] and emulator.responses(url) == []  # the API has not answered
    release.set()
    for _ in range(200):
        if emulator.responses(url):
            break
        await asyncio.sleep(0.025)
    (answer,) = emulator.responses(url)
    assert "Autumn" in message_text(answer) and answer["replace_original"] is False


async def test_auth_test_is_called_once_for_many_commands(emulator: SlackEmulator) -> None:
    app = app_for(emulator)
    before = len(emulator.calls("auth.test"))

    await asyncio.gather(*(through_quick(app, command(emulator, "help")) for _ in range(10)))

    assert len(emulator.calls("auth.test")) - before == 1


# --------------------------------------------------------------------------- left to Bolt


@pytest.mark.parametrize(
    "body",
    [
        slash_command_body("help", command="/other", response_url="https://hooks.slack.com/x"),
        slash_command_body("history", response_url="https://hooks.slack.com/x"),
        slash_command_body("settings", response_url="https://hooks.slack.com/x"),
        slash_command_body("set compact on", response_url="https://hooks.slack.com/x"),
        slash_command_body("help", response_url="https://hooks.slack.com/x") + b"&ssl_check=1",
        b'payload={"type":"block_actions","actions":[{"action_id":"refresh"}]}',
    ],
)
async def test_what_bolt_must_answer_is_left_to_it(emulator: SlackEmulator, body: bytes) -> None:
    app = app_for(emulator)
    fields, problem = incoming.read_body(body, FORM)
    assert problem is None and app.quick_commands is not None

    assert await app.quick_commands.answer(fields, None, None) is None


async def test_until_auth_test_succeeds_bolt_answers(emulator: SlackEmulator) -> None:
    app = app_for(emulator)
    emulator.inject_error("auth.test", "invalid_auth")
    fields, _ = incoming.read_body(command(emulator, "42"), FORM)
    assert app.quick_commands is not None

    assert await app.quick_commands.answer(fields, None, None) is None
    assert await app.quick_commands.answer(fields, None, None) is not None  # auth.test works again

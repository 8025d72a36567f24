"""The /import-status grammar (SPEC section 2) and how answers are acknowledged."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bot.config import Settings
from bot.domain.status import ImportStatus, Status
from bot.mypreferences import errors
from bot.mypreferences.tokens import POSITIVE, TOO_LONG, WHOLE_NUMBER
from bot.sandbox.slack_emulator import message_text
from bot.slack.listeners import commands
from bot.slack.listeners.access import AccessControl
from bot.slack.listeners.commands import (
    MAX_TEXT_LENGTH,
    Command,
    CommandHandler,
    answer,
    guarded,
    parse_command,
)
from bot.slack.render import USAGE_LINE, Message, notice

# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12345", Command("lookup", access_token=12345)),
        ("  12345  ", Command("lookup", access_token=12345)),
        ("watch 12345", Command("watch", access_token=12345)),
        ("WATCH 12345", Command("watch", access_token=12345)),
        ("Watch\t12345", Command("watch", access_token=12345)),
        ("subscribe 12345", Command("watch", access_token=12345)),
        ("SubScribe 7", Command("watch", access_token=7)),
        ("unwatch 12345", Command("unwatch", access_token=12345)),
        ("UNWATCH 12345", Command("unwatch", access_token=12345)),
        ("unsubscribe 12345", Command("unwatch", access_token=12345)),
        ("Unsubscribe 12345", Command("unwatch", access_token=12345)),
        ("exceptions 12345", Command("exceptions", access_token=12345)),
        ("watch 1001 1002 1003", Command("watch", tokens=(1001, 1002, 1003))),
        ("WATCH 1 2", Command("watch", tokens=(1, 2))),
        ("subscribe 0042  7", Command("watch", tokens=(42, 7))),
        ("unwatch 1 2", Command("unwatch", tokens=(1, 2))),
        (
            "watch " + " ".join(str(n) for n in range(1, 21)),
            Command("watch", tokens=tuple(range(1, 21))),
        ),
        ("Exceptions  7", Command("exceptions", access_token=7)),
        ("list", Command("list")),
        ("LIST", Command("list")),
        ("help", Command("help")),
        ("Help", Command("help")),
        ("", Command("help")),
        ("   ", Command("help")),
        (None, Command("help")),
    ],
)
def test_every_grammar_row_parses(text: str | None, expected: Command) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("watch", "`watch` needs an access token, or up to 20 of them."),
        ("subscribe", "`subscribe` needs an access token, or up to 20 of them."),
        ("unwatch", "`unwatch` needs an access token, or up to 20 of them."),
        (
            "watch " + " ".join(str(n) for n in range(1, 22)),
            "`watch` takes at most 20 access tokens at once.",
        ),
        ("watch 1001 1002 1001", "Import 1001 is in the list twice."),
        ("watch 1001 abc", WHOLE_NUMBER),
        ("unwatch 5 0", POSITIVE),
        ("exceptions", "`exceptions` needs exactly one access token."),
        ("EXCEPTIONS 1 2", "`exceptions` needs exactly one access token."),
        ("exceptions -3", POSITIVE),
        ("list 12345", "`list` takes no arguments."),
        ("help watch", "`help` takes no arguments."),
        ("12 34", "I did not understand that."),
        ("status 12345", "I did not understand that."),
        ("watchlist", WHOLE_NUMBER),
        ("abc", WHOLE_NUMBER),
        ("watch abc", WHOLE_NUMBER),
        ("unwatch 0", POSITIVE),
        ("x" * (MAX_TEXT_LENGTH + 1), "That text is too long."),
        ("watch " + "1" * MAX_TEXT_LENGTH, "That text is too long."),
    ],
)
def test_anything_else_is_invalid_with_a_reason(text: str, problem: str) -> None:
    assert parse_command(text) == Command("invalid", problem=problem)


def test_text_at_the_length_limit_is_still_read() -> None:
    text = "watch " + "0" * (MAX_TEXT_LENGTH - len("watch 42")) + "42"
    assert len(text) == MAX_TEXT_LENGTH

    assert parse_command(text) == Command("watch", access_token=42)


@pytest.mark.parametrize("text", ["٤٢", "watch ٤٢", "१२३", "unsubscribe １２"])
def test_unicode_digits_are_not_tokens(text: str) -> None:
    assert parse_command(text) == Command("invalid", problem=WHOLE_NUMBER)


def test_a_huge_number_is_not_a_token() -> None:
    assert parse_command(str(2**70)) == Command("invalid", problem=TOO_LONG)
    assert parse_command(f"watch {10**25}") == Command("invalid", problem=TOO_LONG)


# --------------------------------------------------------------------------- answer()


class Recorder:
    """Fake ack and respond that remember what they were called with, and when."""

    def __init__(self) -> None:
        self.acks: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.ack_at: float | None = None

    async def ack(self, **kwargs: Any) -> None:
        self.ack_at = time.monotonic() - self.started
        self.acks.append(kwargs)

    async def respond(self, **kwargs: Any) -> None:
        self.responses.append(kwargs)


async def test_a_quick_answer_goes_in_the_ack_itself() -> None:
    slack = Recorder()

    async def quick() -> Message:
        return notice("Import 42: Processing")

    await answer(slack.ack, slack.respond, quick(), "Looking up import 42…")  # type: ignore[arg-type]

    assert slack.acks == [
        {
            "response_type": "ephemeral",
            **notice("Import 42: Processing").as_kwargs(),
            "unfurl_links": False,  # no link previews (an import's name may hold a URL)
            "unfurl_media": False,
        }
    ]
    assert slack.responses == []


async def test_a_slow_answer_is_acked_with_a_placeholder_then_responded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commands, "QUICK_ANSWER_SECONDS", 0.05)
    slack = Recorder()
    finished: list[float] = []

    async def slow() -> Message:
        await asyncio.sleep(0.3)
        finished.append(time.monotonic() - slack.started)
        return notice("Import 42: Completed")

    await answer(slack.ack, slack.respond, slow(), "Looking up import 42…")  # type: ignore[arg-type]

    assert slack.acks == [{"response_type": "ephemeral", "text": "Looking up import 42…"}]
    assert slack.ack_at is not None and slack.ack_at < finished[0]  # before the work finished
    assert slack.responses == [
        {
            "response_type": "ephemeral",
            "replace_original": False,
            **notice("Import 42: Completed").as_kwargs(),
            "unfurl_links": False,
            "unfurl_media": False,
        }
    ]


def test_the_quick_answer_window_leaves_room_in_slacks_three_seconds() -> None:
    assert 0 < commands.QUICK_ANSWER_SECONDS <= 2


async def test_guarded_turns_an_api_error_into_the_users_sentence() -> None:
    async def fails() -> Message:
        raise errors.PermissionDenied("HTTP 403")

    message = await guarded(42, fails)

    shown = message_text(message.as_kwargs())
    assert "Import 42" in shown
    assert "lacks permission to read import status" in shown


async def test_guarded_turns_a_bug_into_a_short_apology_without_details() -> None:
    async def crashes() -> Message:
        raise RuntimeError("secret internals at 0xdeadbeef")

    message = await guarded(42, crashes)

    shown = message_text(message.as_kwargs())
    assert "Something went wrong inside the bot" in shown
    assert "0xdeadbeef" not in shown and "RuntimeError" not in shown


# --------------------------------------------------------------------------- the handler


class FakeService:
    """Stands in for ImportService: records calls, answers lookups from a table."""

    def __init__(self, statuses: dict[int, ImportStatus | errors.ApiError]) -> None:
        self.statuses = statuses
        self.calls: list[tuple[str, int | None]] = []

    async def lookup(self, access_token: int) -> ImportStatus:
        self.calls.append(("lookup", access_token))
        found = self.statuses[access_token]
        if isinstance(found, errors.ApiError):
            raise found
        return found

    async def is_watched(self, team_id: str, channel_id: str, access_token: int) -> bool:
        return False

    async def watch(self, **kwargs: Any) -> Any:
        self.calls.append(("watch", kwargs.get("access_token")))
        raise AssertionError("not expected in these tests")

    async def unwatch(self, **kwargs: Any) -> Any:
        self.calls.append(("unwatch", kwargs.get("access_token")))
        raise AssertionError("not expected in these tests")


def slash(text: str) -> dict[str, Any]:
    return {"text": text, "team_id": "T1", "channel_id": "C1", "user_id": "U1"}


@pytest.mark.parametrize(
    "text", ["abc", "0", "12.5", "٤٢", "1" * 30, "12 34", "watch x", "unsubscribe -1", "list 1"]
)
async def test_handler_explains_bad_input_without_touching_the_service(text: str) -> None:
    service = FakeService({})
    handler = CommandHandler(service, AccessControl(Settings()))  # type: ignore[arg-type]
    slack = Recorder()

    await handler.handle(slack.ack, slack.respond, slash(text))  # type: ignore[arg-type]

    assert service.calls == []
    assert len(slack.acks) == 1 and slack.responses == []
    shown = message_text(slack.acks[0])
    assert ":warning:" in shown and USAGE_LINE in shown
    assert slack.acks[0]["response_type"] == "ephemeral"


async def test_handler_answers_a_lookup_with_the_status() -> None:
    status = ImportStatus(
        access_token=42, status=Status.PROCESSING, name="Autumn", validation_successful=12_000
    )
    service = FakeService({42: status})
    handler = CommandHandler(service, AccessControl(Settings()))  # type: ignore[arg-type]
    slack = Recorder()

    await handler.handle(slack.ack, slack.respond, slash("0042"))  # type: ignore[arg-type]

    assert service.calls == [("lookup", 42)]
    shown = message_text(slack.acks[0])
    assert "Autumn" in shown and "Processing" in shown and "12,000" in shown


async def test_handler_answers_an_api_error_with_its_sentence() -> None:
    service = FakeService({42: errors.TokenRejected("HTTP 401")})
    handler = CommandHandler(service, AccessControl(Settings()))  # type: ignore[arg-type]
    slack = Recorder()

    await handler.handle(slack.ack, slack.respond, slash("42"))  # type: ignore[arg-type]

    shown = message_text(slack.acks[0])
    assert errors.TokenRejected.user_message in shown


# --------------------------------------------------------------------------- second round


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("history", Command("history", count=10)),
        ("HISTORY 25", Command("history", count=25)),
        ("history 500", Command("history", count=500)),
        ("settings", Command("settings")),
        ("Settings", Command("settings")),
        ("set broadcast failures", Command("set", words=("broadcast", "failures"))),
        (
            "set digest 09:00 Europe/Paris",
            Command("set", words=("digest", "09:00", "Europe/Paris")),
        ),
    ],
)
def test_history_settings_and_set_parse(text: str, expected: Command) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("history 0", "`history` takes one number from 1 to 50, or none."),
        ("history x", "`history` takes one number from 1 to 50, or none."),
        ("history ٤", "`history` takes one number from 1 to 50, or none."),
        ("history 1 2", "`history` takes one number from 1 to 50, or none."),
        ("settings broadcast", "`settings` takes no arguments."),
        ("set", "`set` needs a setting and a value: set KEY VALUE."),
        ("set broadcast", "`set` needs a setting and a value: set KEY VALUE."),
    ],
)
def test_bad_history_settings_and_set_are_invalid_with_a_reason(text: str, problem: str) -> None:
    assert parse_command(text) == Command("invalid", problem=problem)

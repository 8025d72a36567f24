"""The exceptions archive over real HTTP: watched imports keep their failed records in Slack.

The bot is a real ``import-status-bot serve`` process between the MyPreferences
simulator and the Slack emulator. What is checked is what a channel shows: the file in
the tracking card's thread (its CSV read back from the emulator), the summary posted
as its comment, the card's line, and what one person sees privately when they ask.

One bot per EXCEPTIONS_FILE mode (redacted, the default, then full and none), each with
its own simulator, emulator and database; every test has its own channel, user and
access token.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.mypreferences_simulator import expected_reasons, generated_exception
from bot.sandbox.slack_emulator import Message, SlackUser, message_text, wait_for
from bot.sandbox.slack_files import UploadedFile
from bot.slack import render
from bot.store.tables import ArchiveRow, ArchiveUploadRow

pytestmark = pytest.mark.slow

_numbers = itertools.count(1)
ARCHIVE_WAIT = 15.0  # from the import finishing to the file in the thread, at most
ENV = {
    "EXPIRY_WARNING_MINUTES": "60",
    "LOOKUP_RATE_LIMIT": "1000",
    "EXCEPTIONS_PAGE_SIZE": "1000",  # 2,500 records: 3 pages
    "EXCEPTIONS_REQUESTS_PER_SECOND": "10",
}


# --------------------------------------------------------------------------- fixtures


class Bot:
    """One harness (simulator, emulator, database) and its bot, for one EXCEPTIONS_FILE."""

    def __init__(self, workdir: Path, mode: str | None) -> None:
        self.archives = workdir / "archives"
        self.archives.mkdir(parents=True)
        env = dict(ENV, EXCEPTIONS_DIR=str(self.archives))
        if mode is not None:
            env["EXCEPTIONS_FILE"] = mode
        self.harness = Harness(workdir / "harness", env=env, preloaded=True)
        self.process: BotProcess = self.harness.start_bot()

    def close(self) -> None:
        self.harness.close()


@pytest.fixture(scope="module")
def redacted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    bot = Bot(Path(tmp_path_factory.mktemp("redacted")), None)
    yield bot
    bot.close()


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    bot = Bot(Path(tmp_path_factory.mktemp("full")), "full")
    yield bot
    bot.close()


@pytest.fixture(scope="module")
def summary_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    bot = Bot(Path(tmp_path_factory.mktemp("none")), "none")
    yield bot
    bot.close()


@dataclass
class Place:
    channel: str
    user_id: str
    token: int


@pytest.fixture
def place() -> Place:
    n = next(_numbers)
    return Place(f"CE{n:03d}", f"UE{n:03d}", 7100 + n)


def user_of(bot: Bot, place: Place) -> SlackUser:
    return bot.harness.user(bot.process, channel_id=place.channel, user_id=place.user_id)


# --------------------------------------------------------------------------- helpers


def ack_text(user: SlackUser, text: str) -> str:
    result = user.command(text)
    assert result.status_code == 200 and result.ack_seconds < 3
    body = message_text(result.ack_body)
    if "Checking import" in body or "Fetching the exceptions" in body:
        body = message_text(user.wait_response(result, timeout=20))
    return body


def watch(bot: Bot, user: SlackUser, token: int) -> Message:
    assert f"Watching import {token}" in ack_text(user, f"watch {token}")

    def card() -> Message | None:
        found = [
            m
            for m in bot.harness.emulator.messages(user.channel_id)
            if m.thread_ts is None and f"import {token}" in m.text
        ]
        return found[0] if found else None

    return wait_for(card, 5, description="the tracking card")


def running(bot: Bot, token: int, **fields: Any) -> None:
    """An import that is processing, its token expiring in 6 hours."""
    values: dict[str, Any] = {
        "name": "Spring opt-ins",
        "status": "Processing",
        "ValidationSuccessful": 10_000,
        "Processed": 5_000,
        "expires": datetime.now(UTC) + timedelta(hours=6),
    }
    values.update(fields)
    bot.harness.sim.add_import(token, **values)


def finish(bot: Bot, token: int, exceptions: int, **fields: Any) -> None:
    """The import completes; Retrieve exceptions then serves ``exceptions`` records."""
    values: dict[str, Any] = {
        "name": "Spring opt-ins",
        "status": "Completed",
        "ValidationSuccessful": 10_000,
        "Processed": 10_000 - exceptions,
        "Exceptions": exceptions,
        "NotHonored": 40,
        "ValidationFailed": 800,
        "exception_count": exceptions,
        "expires": datetime.now(UTC) + timedelta(hours=6),
    }
    values.update(fields)
    bot.harness.sim.add_import(token, **values)


def thread_files(bot: Bot, card: Message) -> list[UploadedFile]:
    return bot.harness.emulator.files.shared(card.channel, card.ts)


def wait_thread_file(bot: Bot, card: Message, timeout: float = ARCHIVE_WAIT) -> UploadedFile:
    found = wait_for(lambda: thread_files(bot, card), timeout, description="a file in the thread")
    assert len(found) == 1, [f.filename for f in found]
    return found[0]


def wait_card_line(bot: Bot, card: Message, words: str) -> str:
    def showing() -> str | None:
        current = bot.harness.emulator.message(card.channel, card.ts)
        text = message_text(current) if current is not None else ""
        return text if words in text else None

    return wait_for(showing, 5, description=f"the card showing {words!r}")


def replies(bot: Bot, card: Message) -> list[Message]:
    return bot.harness.emulator.thread(card.channel, card.ts)


def table(bot: Bot, model: Any) -> list[dict[str, Any]]:
    engine = create_engine(bot.harness.database_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(model.__table__)).mappings()]
    finally:
        engine.dispose()


def exceptions_calls(bot: Bot, token: int) -> int:
    return sum(
        1
        for call in bot.harness.sim.calls
        if call.access_token == token and call.path.endswith("/Exceptions")
    )


# --------------------------------------------------------------------------- archives


def test_a_finished_import_gets_one_redacted_file_and_its_summary_in_the_thread(
    redacted: Bot, place: Place
) -> None:
    running(redacted, place.token)
    with user_of(redacted, place) as user:
        card = watch(redacted, user, place.token)
        finish(redacted, place.token, 2500)
        shared = wait_thread_file(redacted, card)

    rows = shared.rows()
    assert rows[0][:3] == ["RecordNumber", "ProfileId", "EmailAddress"]
    assert len(rows) == 2501, "a header and the 2,500 records, nothing more"
    first = generated_exception(1)
    assert rows[1][0] == "1" and rows[1][2] != first["EmailAddress"]
    assert rows[1][2].endswith("@example.com") and "***" in rows[1][2]  # redacted by default
    assert not any(str(first["Phone"]) in cell for row in rows for cell in row)
    assert shared.filename == f"import-{place.token}-exceptions.csv"

    counts = expected_reasons(2500)
    top, top_count = max(counts.items(), key=lambda item: item[1])
    comment = shared.initial_comment.replace("\u200d", "")
    assert f"• {top}: {top_count:,} (40%)" in comment
    assert f"Exceptions of Spring opt-ins ({place.token})*: 2,500 records" in comment
    assert "The import reported 2,500 exceptions, 40 not honoured and 800 failed validation" in (
        comment
    )
    assert first["EmailAddress"] not in comment
    assert exceptions_calls(redacted, place.token) == 3

    line = wait_card_line(redacted, card, "Exceptions: 2,500 records · file in thread")
    assert "No longer watching" in line
    thread = replies(redacted, card)
    assert "Completed" in thread[0].text and thread[-1].ts == shared.message_ts
    time.sleep(1.0)
    assert len(thread_files(redacted, card)) == 1, "exactly one file"
    assert [
        u["state"] for u in table(redacted, ArchiveUploadRow) if u["slack_file_id"] == shared.id
    ]
    assert list(redacted.archives.iterdir()) == [], "no temporary file is left"


def test_a_clean_finish_posts_no_archive(redacted: Bot, place: Place) -> None:
    running(redacted, place.token, Exceptions=0)
    with user_of(redacted, place) as user:
        card = watch(redacted, user, place.token)
        redacted.harness.sim.update(place.token, Status="Completed", Processed=10_000)
        wait_for(lambda: len(replies(redacted, card)) >= 1, 5, description="the Completed reply")
    time.sleep(1.5)
    assert thread_files(redacted, card) == [] and len(replies(redacted, card)) == 1
    assert exceptions_calls(redacted, place.token) == 0


def test_no_records_returned_is_said_once(redacted: Bot, place: Place) -> None:
    running(redacted, place.token)
    with user_of(redacted, place) as user:
        card = watch(redacted, user, place.token)
        finish(redacted, place.token, 0, ValidationFailed=800)  # failures, but no records
        said = wait_for(
            lambda: [m for m in replies(redacted, card) if "returned no records" in m.text],
            ARCHIVE_WAIT,
            description="the no-records note",
        )
    assert len(said) == 1 and thread_files(redacted, card) == []
    wait_card_line(redacted, card, "Exceptions: MyPreferences returned none")
    time.sleep(1.0)
    assert len([m for m in replies(redacted, card) if "returned no records" in m.text]) == 1


def test_still_processing_at_the_expiry_warning_keeps_a_partial_archive_first(
    redacted: Bot, place: Place
) -> None:
    expires = datetime.now(UTC) + timedelta(minutes=30)
    running(redacted, place.token, Exceptions=120, exception_count=120, expires=expires)
    with user_of(redacted, place) as user:
        card = watch(redacted, user, place.token)
        partial = wait_thread_file(redacted, card)
        assert datetime.now(UTC) < expires
        assert "Partial exceptions" in partial.initial_comment
        assert len(partial.rows()) == 121
        wait_card_line(redacted, card, "Exceptions: 120 (partial) records · file in thread")

        # It then finishes while the token still lives: the final archive follows.
        finish(redacted, place.token, 300, expires=expires)
        final = wait_for(
            lambda: thread_files(redacted, card)[1:], ARCHIVE_WAIT, description="the final file"
        )
    assert len(final) == 1 and len(final[0].rows()) == 301
    assert "Partial" not in final[0].initial_comment
    wait_card_line(redacted, card, "Exceptions: 300 records · file in thread")
    kinds = sorted(a["kind"] for a in table(redacted, ArchiveRow) if a["records"] in (120, 300))
    assert kinds == ["final", "partial"]


def test_the_token_expiring_mid_archive_posts_what_was_fetched_marked_partial(
    redacted: Bot, place: Place
) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=90)  # a 401 now means "expired"
    running(redacted, place.token, expires=expires)
    with user_of(redacted, place) as user:
        card = watch(redacted, user, place.token)
        sim = redacted.harness.sim
        # Page 1 arrives, then MyPreferences answers 401, as it does after Expires.
        sim.inject_fault(401, token=place.token, endpoint="exceptions", after=1, times=None)
        try:
            finish(redacted, place.token, 2500, expires=expires)
            shared = wait_thread_file(redacted, card)
        finally:
            sim.clear_faults()
    assert shared.rows()[-1] == ["# partial: 1,000 of 2,500 records; the token expired"]
    assert len(shared.rows()) == 1002
    assert "*Partial:* 1,000 of 2,500 records; the token expired" in shared.initial_comment
    wait_card_line(redacted, card, "Exceptions: 1,000 of 2,500 (partial) records")


def test_full_puts_personal_data_in_the_file(full: Bot, place: Place) -> None:
    running(full, place.token)
    with user_of(full, place) as user:
        card = watch(full, user, place.token)
        finish(full, place.token, 2500)
        shared = wait_thread_file(full, card)
    rows = shared.rows()
    assert len(rows) == 2501
    assert rows[1][2] == generated_exception(1)["EmailAddress"]
    assert "personal data shown in full" in shared.initial_comment


def test_none_posts_the_summary_alone(summary_only: Bot, place: Place) -> None:
    running(summary_only, place.token)
    with user_of(summary_only, place) as user:
        card = watch(summary_only, user, place.token)
        finish(summary_only, place.token, 2500)
        summary = wait_for(
            lambda: [m for m in replies(summary_only, card) if "Top reasons" in message_text(m)],
            ARCHIVE_WAIT,
            description="the summary in the thread",
        )
    (message,) = summary
    text = message_text(message).replace("\u200d", "")
    assert "2,500 records" in text and "• Invalid email address: 1,000 (40%)" in text
    assert "No file is posted: EXCEPTIONS_FILE is `none`" in text
    assert generated_exception(1)["EmailAddress"] not in text  # the summary is masked
    assert summary_only.harness.emulator.files.shared() == []
    wait_card_line(summary_only, card, "Exceptions: 2,500 records · summary in thread")


def test_an_app_installed_without_files_write_still_gets_the_summary_and_the_fix(
    redacted: Bot, place: Place
) -> None:
    emulator = redacted.harness.emulator
    installed = emulator.scopes
    assert installed is not None and "files:write" in installed
    running(redacted, place.token)
    with user_of(redacted, place) as user:
        card = watch(redacted, user, place.token)
        emulator.set_scopes(installed - {"files:write"})
        try:
            finish(redacted, place.token, 30)
            said = wait_for(
                lambda: [m for m in replies(redacted, card) if "files:write" in message_text(m)],
                ARCHIVE_WAIT,
                description="the summary with the fix",
            )
        finally:
            emulator.set_scopes(installed)
    text = message_text(said[0])
    assert "30 records" in text and "Reinstall it from the current manifest.yml" in text
    assert thread_files(redacted, card) == []
    wait_card_line(redacted, card, "Exceptions: 30 records · summary in thread")


def test_a_channels_own_exceptions_setting_overrides_exceptions_file(
    redacted: Bot, place: Place
) -> None:
    running(redacted, place.token)
    with user_of(redacted, place) as user:
        result = user.command("set exceptions full")
        assert result.status_code == 200
        card = watch(redacted, user, place.token)
        finish(redacted, place.token, 30)
        shared = wait_thread_file(redacted, card)
        # Asked privately in the same channel, the file in the DM follows the setting too.
        answer = ack_text(user, f"exceptions {place.token}")
    assert shared.rows()[1][2] == generated_exception(1)["EmailAddress"]
    assert "personal data shown in full" in shared.initial_comment
    assert generated_exception(1)["EmailAddress"] in answer
    (dm,) = redacted.harness.emulator.files.shared("D" + place.user_id[1:])
    assert dm.rows()[1][2] == generated_exception(1)["EmailAddress"]


# --------------------------------------------------------------------------- on demand


def test_exceptions_command_answers_privately_and_sends_the_file_to_the_dm(
    redacted: Bot, place: Place
) -> None:
    finish(redacted, place.token, 2500)
    with user_of(redacted, place) as user:
        answer = ack_text(user, f"exceptions {place.token}").replace("\u200d", "")
    assert "2,500 records" in answer and "• Invalid email address: 1,000 (40%)" in answer
    assert "in your direct messages with me" in answer
    dm = "D" + place.user_id[1:]
    (shared,) = redacted.harness.emulator.files.shared(dm)
    assert len(shared.rows()) == 2501 and "***" in shared.rows()[1][2]
    # Nothing went to the channel.
    assert redacted.harness.emulator.messages(place.channel) == []
    assert redacted.harness.emulator.files.shared(place.channel) == []


def test_the_exceptions_button_on_a_status_message_does_the_same(
    redacted: Bot, place: Place
) -> None:
    finish(redacted, place.token, 30)
    with user_of(redacted, place) as user:
        lookup = user.command(str(place.token))
        actions = [
            e["action_id"]
            for block in lookup.ack_body["blocks"]
            if block["type"] == "actions"
            for e in block["elements"]
        ]
        assert render.ACTION_EXCEPTIONS in actions
        click = user.click(
            render.ACTION_EXCEPTIONS, str(place.token), "1790000000.000001", is_ephemeral=True
        )
        assert click.status_code == 200 and click.ack_seconds < 3
        answers = wait_for(
            lambda: [
                message_text(p)
                for p in redacted.harness.emulator.responses(click.response_url or "")
                if "30 records" in message_text(p)
            ],
            20,
            description="the summary",
        )
    assert "Top reasons" in answers[0]
    assert len(redacted.harness.emulator.files.shared("D" + place.user_id[1:])) == 1


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("unknown", "does not recognise this access token, or it has expired"),
        ("expired", "does not recognise this access token, or it has expired"),
        ("clean", "has no failed records: 0 exceptions, 0 not honoured, 0 failed validation"),
    ],
)
def test_exceptions_for_unknown_expired_and_clean_imports_get_clear_words(
    redacted: Bot, place: Place, case: str, words: str
) -> None:
    sim = redacted.harness.sim
    if case == "expired":
        sim.add_import(
            place.token, exception_count=10, expires=datetime.now(UTC) - timedelta(minutes=1)
        )
    elif case == "clean":
        sim.add_import(place.token, status="Completed", ValidationSuccessful=10, Processed=10)
    with user_of(redacted, place) as user:
        answer = ack_text(user, f"exceptions {place.token}")
    assert words in answer
    assert "Traceback" not in answer and "Something went wrong" not in answer
    assert redacted.harness.emulator.files.shared("D" + place.user_id[1:]) == []
    assert exceptions_calls(redacted, place.token) == 0

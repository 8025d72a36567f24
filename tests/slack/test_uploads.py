"""Exceptions uploads as one step of the delivery pass, against the strict Slack emulator.

The archiver, delivery and ``ThreadUploads`` are the real ones, on a real SQLite store,
talking over HTTP to the emulator served in this process; only the MyPreferences API is
in memory (``tests.archive.test_fetch.Api``) and time is a fake clock that the
archiver's waits move forward, so a 20-second wait costs nothing. What is checked is
what Slack shows and what the channel's rows say: where the file lands, when Slack is
called at all, and what each refusal does to the channel.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import Engine, update

from bot.archive.archiver import MAX_UPLOAD_ATTEMPTS, Archiver
from bot.archive.csvfile import ArchiveFile
from bot.mypreferences.pace import Pace
from bot.sandbox.slack_emulator import SlackEmulator, message_text
from bot.slack.delivery import Delivery
from bot.slack.uploads import ThreadUploads, send_to_direct_message, upload_file
from bot.store import Store
from bot.store.engine import make_engine
from bot.store.tables import ArchiveRow, ArchiveUploadRow, SubscriptionRow
from tests.archive.test_archiver import NOW, Clock, finish_import, run_due, settings, table
from tests.archive.test_fetch import Api

TEAM, CHANNEL = "T1", "C1"
KEEPER_SLEEP = 600 / 3  # the archive lease keeper's sleep, LEASE_SECONDS=600


@pytest.fixture(scope="module")
def served() -> Iterator[SlackEmulator]:
    emulator = SlackEmulator(team_id=TEAM)
    with emulator.serve():
        yield emulator


@pytest.fixture
def emulator(served: SlackEmulator) -> SlackEmulator:
    served.reset()
    served.invite_bot(CHANNEL)
    return served


@pytest.fixture
def engine(migrated_sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(migrated_sqlite_url)
    yield engine
    engine.dispose()


class World:
    """Import 42, watched in C1, completed with 30 exceptions; its archive is due."""

    def __init__(self, tmp_path: Path, engine: Engine, emulator: SlackEmulator) -> None:
        self.emulator = emulator
        self.engine = engine
        self.store = Store(engine)
        self.clock = Clock()
        self.slept: list[float] = []
        self.slack = AsyncWebClient(token=emulator.bot_token, base_url=emulator.api_url())
        self.delivery = Delivery(self.store.outbox, self.slack, "A", clock=self.clock)
        finish_import(self.store, (CHANNEL,), cards=False)
        self.subscription_id = table(engine, SubscriptionRow)[0]["id"]
        config = settings(tmp_path, lease_seconds=600)
        self.archiver = Archiver(
            config,
            self.store.archives,
            Api(30),
            Pace(1e9),
            ThreadUploads(self.slack, config, self.delivery),
            "A",
            clock=self.clock,
            sleep=self.sleep,
            ready_wait_seconds=0,
        )
        self.on_sleep: Any = None

    async def sleep(self, seconds: float) -> None:
        """The archiver's waits: recorded, and the fake clock moves on.

        Its lease keeper (every third of LEASE_SECONDS) sleeps for real: it never
        wakes within a test, and the fake clock is the waits' alone.
        """
        if seconds >= KEEPER_SLEEP:
            await asyncio.sleep(seconds)
            return
        if self.on_sleep is not None:
            self.on_sleep(seconds)
        self.slept.append(seconds)
        self.clock.now += timedelta(seconds=seconds)

    async def post_cards(self) -> None:
        """Delivery brings the thread up to date first (the card and its replies)."""
        await self.delivery.deliver_due()

    def card_ts(self) -> str:
        (card,) = [m for m in self.emulator.messages(CHANNEL) if m.thread_ts is None]
        return card.ts

    def calls(self, method: str) -> int:
        return len(self.emulator.calls(method))

    def upload(self) -> dict[str, Any]:
        (row,) = table(self.engine, ArchiveUploadRow)
        return row


@pytest.fixture
def world(tmp_path: Path, engine: Engine, emulator: SlackEmulator) -> World:
    return World(tmp_path, engine, emulator)


async def test_the_file_goes_last_after_the_card_and_the_replies_before_it(world: World) -> None:
    # Nothing was delivered yet: the archive's own pass posts the card and replies first.
    await run_due(world.archiver)
    thread = world.emulator.thread(CHANNEL, world.card_ts())
    (shared,) = world.emulator.files.shared(CHANNEL, world.card_ts())
    assert len(thread) >= 2 and thread[-1].ts == shared.message_ts
    assert all("Exceptions" not in message_text(m) for m in thread[:-1])
    assert "30 records" in shared.initial_comment and len(shared.rows()) == 31
    upload = world.upload()
    assert (upload["state"], upload["slack_file_id"]) == ("sent", shared.id)
    assert world.slept == []  # nothing had to wait


async def test_a_channel_slack_made_wait_gets_no_upload_call_before_the_wait_ends(
    world: World,
) -> None:
    await world.post_cards()
    world.store.outbox.wait_channel(TEAM, CHANNEL, NOW + timedelta(seconds=20), "test")
    calls_at_each_wait: list[int] = []
    world.on_sleep = lambda _: calls_at_each_wait.append(world.calls("files.getUploadURLExternal"))
    await run_due(world.archiver)
    assert world.slept == [pytest.approx(20)] and calls_at_each_wait == [0]
    assert len(world.emulator.files.shared(CHANNEL)) == 1
    assert world.upload()["last_error"] is None  # waiting is not a failure


async def test_a_429_on_the_upload_makes_the_whole_channel_wait_then_it_goes(world: World) -> None:
    await world.post_cards()
    world.emulator.inject_error("files.completeUploadExternal", "ratelimited", retry_after=7)
    channel_waits: list[float] = []

    def seen(_: float) -> None:
        state = world.store.outbox.delivery(world.subscription_id)
        assert state is not None and state.channel_wait_until is not None
        channel_waits.append((state.channel_wait_until - world.clock()).total_seconds())

    world.on_sleep = seen
    await run_due(world.archiver)
    # Stored for the channel, as a reply's 429 is: no card edit or reply goes before it.
    assert channel_waits == [pytest.approx(7)] and world.slept == [pytest.approx(7)]
    assert len(world.emulator.files.shared(CHANNEL)) == 1
    upload = world.upload()
    assert (upload["state"], upload["attempts"], upload["last_error"]) == ("sent", 2, "ratelimited")


async def test_a_lost_channel_ends_the_subscription_and_drops_the_upload(world: World) -> None:
    await world.post_cards()
    world.emulator.remove_bot(CHANNEL)
    await run_due(world.archiver)
    assert world.calls("files.completeUploadExternal") == 1  # refused once, never again
    assert world.emulator.files.shared() == []
    upload = world.upload()
    assert (upload["state"], upload["last_error"]) == ("dropped", "not_in_channel")
    assert table(world.engine, ArchiveRow)[0]["state"] == "done"
    # As for a reply: the card is given up and whoever subscribed hears of it by DM.
    (sub,) = table(world.engine, SubscriptionRow)
    assert sub["card_done"] == sub["card_wanted"]
    (told,) = world.emulator.messages("D1")
    assert "Invite me with `/invite @import-status`" in message_text(told)


async def test_an_active_watch_whose_channel_is_lost_is_ended(world: World) -> None:
    await world.post_cards()
    with world.engine.begin() as conn:  # a partial archive: the import is still running
        conn.execute(update(SubscriptionRow).values(state="active", ended_reason=None))
    world.emulator.set_channel_state(CHANNEL, "channel_not_found")
    await run_due(world.archiver)
    (sub,) = table(world.engine, SubscriptionRow)
    assert (sub["state"], sub["ended_reason"]) == ("ended", "Slack: channel_not_found")
    assert world.upload()["state"] == "dropped"


async def test_transient_trouble_backs_off_and_is_given_up_in_the_end(world: World) -> None:
    await world.post_cards()
    world.emulator.inject_error("files.getUploadURLExternal", "internal_error", times=None)
    runs = 0
    while world.upload()["state"] == "pending" and runs < 10:
        world.clock.now += timedelta(minutes=5)  # the archive is due again
        runs += await run_due(world.archiver)
    assert world.calls("files.getUploadURLExternal") == MAX_UPLOAD_ATTEMPTS
    upload = world.upload()
    assert (upload["state"], upload["last_error"]) == ("dropped", "internal_error")
    waits = [w for w in world.slept if w > 0.1]
    assert waits[:4] == [2, 4, 8, 16]  # exponential, within one archive run
    assert world.emulator.files.shared() == []


async def test_a_subscription_being_delivered_is_not_uploaded_into_at_the_same_time(
    world: World,
) -> None:
    await world.post_cards()
    other = world.store.outbox.claim_subscription(world.subscription_id, "B", world.clock(), 5)
    assert other
    calls_at_each_wait: list[int] = []
    world.on_sleep = lambda _: calls_at_each_wait.append(world.calls("files.getUploadURLExternal"))
    await run_due(world.archiver)
    # Tried again each second; once replica B's lease has run out, the upload goes.
    assert len(world.slept) >= 5 and set(calls_at_each_wait) == {0}
    assert len(world.emulator.files.shared(CHANNEL)) == 1
    assert world.upload()["attempts"] == 1  # the send itself; the waits were not failures


async def test_an_app_without_files_write_gets_the_summary_and_the_fix(world: World) -> None:
    await world.post_cards()
    scopes = world.emulator.scopes
    assert scopes is not None
    world.emulator.set_scopes(scopes - {"files:write"})
    await run_due(world.archiver)
    assert world.emulator.files.shared() == []
    last = world.emulator.thread(CHANNEL, world.card_ts())[-1]
    assert "30 records" in message_text(last) and "lacks the `files:write` scope" in message_text(
        last
    )
    upload = world.upload()
    assert (upload["state"], upload["slack_ts"], upload["slack_file_id"]) == (
        "sent",
        last.ts,
        None,
    )


# --------------------------------------------------------------------------- the file itself


def archive_of(path: Path, name: str) -> ArchiveFile:
    return ArchiveFile(
        path=path,
        filename=name,
        records_written=1,
        records_seen=1,
        cut=False,
        partial=False,
        gzipped=name.endswith(".gz"),
        size_bytes=path.stat().st_size,
    )


@pytest.mark.parametrize("size", [0, 1, 65_536 * 3 + 17])
async def test_the_bytes_arrive_as_they_are_on_disk(
    emulator: SlackEmulator, tmp_path: Path, size: int
) -> None:
    path = tmp_path / "import-7-exceptions.csv.gz"
    data = os.urandom(size)
    path.write_bytes(data)
    slack = AsyncWebClient(token=emulator.bot_token, base_url=emulator.api_url())
    file_id = await upload_file(
        slack,
        channel=CHANNEL,
        thread_ts=None,
        archive=archive_of(path, path.name),
        title="Exceptions of import 7",
        comment="the summary",
    )
    (shared,) = emulator.files.shared(CHANNEL)
    assert (shared.id, shared.data, shared.title) == (file_id, data, "Exceptions of import 7")
    (started,) = emulator.calls("files.getUploadURLExternal")
    assert started.params["length"] == str(size) and started.params["filename"] == path.name


async def test_the_direct_message_is_opened_and_gets_the_file(
    emulator: SlackEmulator, tmp_path: Path
) -> None:
    emulator.ensure_channel("D0042", member="U0042")  # the person wrote to the bot before
    path = tmp_path / "x.csv"
    path.write_bytes(b"a\r\n1\r\n")
    slack = AsyncWebClient(token=emulator.bot_token, base_url=emulator.api_url())
    await send_to_direct_message(slack, "U0042", archive_of(path, "x.csv"), "t", "c")
    (shared,) = emulator.files.shared("D0042")
    assert shared.rows() == [["a"], ["1"]]

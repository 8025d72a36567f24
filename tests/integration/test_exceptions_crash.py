"""SIGKILL while an exceptions archive is fetched or uploaded, and two replicas at once.

The bot is killed (SIGKILL: no clean-up at all) at one point of the archive; after a
restart, the channel must hold one complete file, never two, except in the one
documented window: once ``files.completeUploadExternal`` has reached Slack, Slack
shares the file whether or not the bot lives to record it, so a kill then (the request
in flight, or its answer on the way back) repeats the file, as for messages. Every
earlier point, paging included, gives exactly one file.

The emulator holds the upload at a named point (``emulator.files.hold``) and counts
arrivals there, so each kill lands where it is meant to; LEASE_SECONDS is 2 so a dead
bot's archive is taken over quickly.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import Message, message_text, wait_for
from bot.sandbox.slack_files import UploadedFile
from bot.store.tables import ArchiveRow, ArchiveUploadRow, ImportRow

pytestmark = pytest.mark.slow

ENV = {
    "LEASE_SECONDS": "2",
    "LOOKUP_RATE_LIMIT": "1000",
    "EXCEPTIONS_PAGE_SIZE": "1000",
    "EXCEPTIONS_REQUESTS_PER_SECOND": "20",
}
_numbers = itertools.count(1)
HOLD = 3.0  # how long the emulator (or the simulator) holds the request the bot dies in


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with Harness(Path(tmp_path_factory.mktemp("crash")) / "harness", env=ENV, preloaded=True) as h:
        yield h


@pytest.fixture(scope="module")
def bot(harness: Harness) -> BotProcess:
    return harness.start_bot()


def rows(harness: Harness, model: Any, **where: Any) -> list[dict[str, Any]]:
    engine = create_engine(harness.database_url)
    try:
        query = select(model.__table__)
        for name, value in where.items():
            query = query.where(model.__table__.c[name] == value)
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]
    finally:
        engine.dispose()


def archive_state(harness: Harness, token: int) -> str | None:
    (imported,) = rows(harness, ImportRow, access_token=token)
    found = rows(harness, ArchiveRow, import_id=imported["id"])
    return found[0]["state"] if found else None


def start_watch(harness: Harness, bot: BotProcess, token: int, channel: str) -> Message:
    harness.sim.add_import(
        token,
        name="Crash test",
        status="Processing",
        ValidationSuccessful=10_000,
        Processed=100,
        expires=datetime.now(UTC) + timedelta(hours=6),
    )
    with harness.user(bot, channel_id=channel, user_id="UC001") as user:
        result = user.command(f"watch {token}")
        assert result.status_code == 200
        text = message_text(result.ack_body)
        if "Checking import" in text:
            text = message_text(user.wait_response(result, timeout=10))
        assert f"Watching import {token}" in text
    return wait_for(
        lambda: next((m for m in harness.emulator.messages(channel) if m.thread_ts is None), None),
        5,
        description="the card",
    )


def finish(harness: Harness, token: int, exceptions: int = 2500) -> None:
    harness.sim.update(
        token,
        Status="Completed",
        Processed=10_000 - exceptions,
        Exceptions=exceptions,
    )


def files(harness: Harness, card: Message) -> list[UploadedFile]:
    return harness.emulator.files.shared(card.channel, card.ts)


def settled(harness: Harness, bot: BotProcess, token: int, card: Message) -> list[UploadedFile]:
    """The thread's files once the archive is done (and nothing more can come)."""
    wait_for(lambda: archive_state(harness, token) == "done", 20, description="archive done")
    time.sleep(0.5)
    return files(harness, card)


def kill_at(harness: Harness, bot: BotProcess, reached: Any, what: str) -> None:
    wait_for(reached, 15, description=what)
    bot.kill()


@pytest.mark.parametrize(
    ("point", "window"),
    [
        ("paging", False),
        ("getUploadURL:before", False),
        ("upload:before", False),
        ("complete:before", True),  # the request has reached Slack: the window
        ("complete:after", True),  # shared; the answer never reaches the bot
    ],
)
def test_a_kill_anywhere_leaves_one_complete_file_except_in_the_window(
    harness: Harness, bot: BotProcess, point: str, window: bool
) -> None:
    n = next(_numbers)
    token, channel = 8100 + n, f"CK{n:03d}"
    card = start_watch(harness, bot, token, channel)
    sim, emulator = harness.sim, harness.emulator
    if point == "paging":
        # Page 2 takes HOLD seconds to come: the bot dies while it waits for it.
        sim.inject_fault(delay=HOLD, token=token, endpoint="exceptions", after=1)
        pages_before = sim.exceptions_calls()
    else:
        emulator.files.hold(point, HOLD)
        arrivals = emulator.files.reached[point]
    try:
        finish(harness, token)
        if point == "paging":
            kill_at(harness, bot, lambda: sim.exceptions_calls() > pages_before, "page 1")
            time.sleep(0.3)  # page 2 asked for, held by the simulator
        else:
            kill_at(
                harness,
                bot,
                lambda: emulator.files.reached[point] > arrivals,
                f"the bot at {point}",
            )
    finally:
        killed = time.monotonic()
        sim.clear_faults()
        if point != "paging":
            emulator.files.hold(point, 0)
    assert files(harness, card) == [] or window, "nothing is shared before the window"
    harness.restart(bot)

    settled(harness, bot, token, card)
    # A request held at the kill is still handled when its hold ends: count after that.
    time.sleep(max(0.0, killed + HOLD + 0.5 - time.monotonic()))
    shared = files(harness, card)
    assert len(shared) == (2 if window else 1), [f.filename for f in shared]
    for one in shared:
        assert len(one.rows()) == 2501, "every file posted is complete"
    uploads = [
        u for u in rows(harness, ArchiveUploadRow) if u["slack_file_id"] in {f.id for f in shared}
    ]
    assert [u["state"] for u in uploads] == ["sent"], "the database records one upload"


def test_two_replicas_archive_each_import_once(tmp_path: Path) -> None:
    with Harness(tmp_path / "replicas", env=ENV, preloaded=True) as harness:
        first, second = harness.start_bot(), harness.start_bot()
        cards = {}
        for n, token in enumerate((8201, 8202, 8203, 8204), start=1):
            cards[token] = start_watch(harness, (first, second)[n % 2], token, f"CR{n:03d}")
        for token in cards:
            finish(harness, token, 1500)  # 2 pages each
        for token, card in cards.items():
            assert len(settled(harness, first, token, card)) == 1
        calls = [c for c in harness.sim.calls if c.path.endswith("/Exceptions")]
        by_token: dict[int | None, int] = {}
        for call in calls:
            by_token[call.access_token] = by_token.get(call.access_token, 0) + 1
        assert by_token == {token: 2 for token in cards}, "each archive fetched once, by one bot"
        logs = first.log_text() + second.log_text()
        assert logs.count("exceptions fetched: 1500 records in 2 pages") == 4

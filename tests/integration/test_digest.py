"""The daily digest over real HTTP: one per channel and day, across SIGKILL restarts and replicas.

The bot checks for due digests every 0.3 s here (``DIGEST_CHECK_SECONDS``).
A digest time is minute-precise and a time chosen after it passed starts the
next day, so each test chooses a time that passed two hours ago (in a zone
where that is still today) and then dates the choice back two days in the
database, as if it had been made then: the digest is due at once, as it is
for a bot that was down at digest time.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, update

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import Message, SlackUser, message_text, wait_for
from bot.store.engine import make_engine
from bot.store.tables import ChannelSettingsRow, DigestRow, SubscriptionRow

CHECK_SECONDS = 0.3
QUIET = 1.5  # five checks: long enough for a second digest to show up if one would
_numbers = itertools.count(1)


def passed_digest_time() -> str:
    """A digest time two hours ago, in a UTC±N zone where that is still today."""
    now = datetime.now(UTC)
    for offset in sorted(range(-12, 15), key=lambda h: abs((now.hour + h) % 24 - 12)):
        local = now + timedelta(hours=offset)
        zone = "UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"
        return f"{local - timedelta(hours=2):%H:%M} {zone}"
    raise AssertionError("unreachable")


def date_back(engine: Engine, channel: str) -> None:
    """As if the digest time had been chosen two days ago."""
    with engine.begin() as conn:
        conn.execute(
            update(ChannelSettingsRow)
            .where(ChannelSettingsRow.channel_id == channel)
            .values(digest_since=datetime.now(UTC) - timedelta(days=2))
        )


def digests(harness: Harness, channel: str) -> list[Message]:
    return [m for m in harness.emulator.messages(channel) if "Daily import digest" in m.text]


def digest_rows(engine: Engine, channel: str) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        return [
            (r.state, r.slack_ts)
            for r in conn.execute(
                select(DigestRow.state, DigestRow.slack_ts).where(DigestRow.channel_id == channel)
            )
        ]


def ack(user: SlackUser, text: str) -> str:
    result = user.command(text)
    assert result.status_code == 200 and result.ack_seconds < 3
    body = message_text(result.ack_body)
    if "Checking import" in body:
        body = message_text(user.wait_response(result, timeout=10))
    return body


def finished_count(engine: Engine, channel: str) -> int:
    with engine.connect() as conn:
        states = conn.execute(
            select(SubscriptionRow.state).where(SubscriptionRow.channel_id == channel)
        ).scalars()
        return sum(1 for s in states if s == "ended")


def one_digest(harness: Harness, channel: str) -> Message:
    found = wait_for(lambda: digests(harness, channel), 8, description=f"a digest in {channel}")
    time.sleep(QUIET)
    assert len(digests(harness, channel)) == 1, [m.text for m in digests(harness, channel)]
    return found[0]


# --------------------------------------------------------------------------- one replica


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with Harness(Path(tmp_path_factory.mktemp("digest")) / "harness", preloaded=True) as h:
        yield h


@pytest.fixture(scope="module")
def bot(harness: Harness) -> BotProcess:
    return harness.start_bot(DIGEST_CHECK_SECONDS=CHECK_SECONDS, LOOKUP_RATE_LIMIT=1000)


@pytest.fixture(scope="module")
def engine(harness: Harness) -> Iterator[Engine]:
    engine = make_engine(harness.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def place(harness: Harness, bot: BotProcess) -> Iterator[tuple[SlackUser, int]]:
    n = next(_numbers)
    with harness.user(bot, channel_id=f"CD{n:04d}", user_id=f"UD{n:03d}") as user:
        yield user, 81000 + 10 * n


def test_a_bot_down_at_digest_time_posts_it_once_when_it_comes_back(
    harness: Harness, bot: BotProcess, engine: Engine, place: tuple[SlackUser, int]
) -> None:
    user, token = place
    channel = user.channel_id
    harness.sim.add_import(token, name="Done import", status="Processing", ValidationSuccessful=10)
    harness.sim.add_import(
        token + 1,
        name="Busy import",
        status="Processing",
        ValidationSuccessful=1000,
        Processed=250,
    )
    assert "Watching" in ack(user, f"watch {token}")
    assert "Watching" in ack(user, f"watch {token + 1}")
    harness.sim.update(token, Status="Completed", Processed=8, Exceptions=2)
    wait_for(lambda: finished_count(engine, channel) == 1, 6, description="the finished watch")

    assert "Saved" in ack(user, f"set digest {passed_digest_time()}")
    time.sleep(QUIET)
    assert digests(harness, channel) == [], "a time chosen after it passed waits for tomorrow"

    bot.kill()  # down at digest time
    date_back(engine, channel)
    harness.restart(bot)
    digest = one_digest(harness, channel)
    text = message_text(digest)
    assert "1 completed, 0 failed, 0 expired" in text
    assert "8 records processed" in text and "2 failed records" in text
    assert f"Done import ({token})" in text
    assert "Still running (1)" in text and f"Busy import ({token + 1})" in text and "25%" in text
    assert "|thread>" in text
    assert digest_rows(engine, channel) == [("sent", digest.ts)]

    bot.kill()
    harness.restart(bot)
    time.sleep(QUIET)
    assert len(digests(harness, channel)) == 1, "a restart the same day posts nothing more"


def test_a_crash_right_after_posting_does_not_post_it_again(
    harness: Harness, bot: BotProcess, engine: Engine, place: tuple[SlackUser, int]
) -> None:
    user, token = place
    channel = user.channel_id
    harness.sim.add_import(token, name="Running", status="Queued", ValidationSuccessful=5)
    assert "Watching" in ack(user, f"watch {token}")
    assert "Saved" in ack(user, f"set digest {passed_digest_time()}")
    date_back(engine, channel)
    wait_for(lambda: digests(harness, channel), 8, description="the digest")
    wait_for(lambda: digest_rows(engine, channel)[0][0] == "sent", 3, description="recorded")
    bot.kill()
    harness.restart(bot)
    time.sleep(QUIET)
    assert len(digests(harness, channel)) == 1


def test_a_channel_where_nothing_happened_gets_no_digest(
    harness: Harness, bot: BotProcess, engine: Engine, place: tuple[SlackUser, int]
) -> None:
    user, _ = place
    channel = user.channel_id
    assert "Saved" in ack(user, f"set digest {passed_digest_time()}")
    date_back(engine, channel)
    wait_for(lambda: digest_rows(engine, channel), 5, description="the day settled")
    time.sleep(QUIET)
    assert digests(harness, channel) == []
    assert digest_rows(engine, channel) == [("empty", None)]


# --------------------------------------------------------------------------- three replicas


@pytest.mark.postgres
def test_three_replicas_post_one_digest_per_channel(tmp_path: Path, postgres_url: str) -> None:
    with Harness(tmp_path / "replicas", database_url=postgres_url, preloaded=True) as cluster:
        bots = [
            cluster.start_bot(DIGEST_CHECK_SECONDS=0.2, LOOKUP_RATE_LIMIT=1000) for _ in range(3)
        ]
        engine = make_engine(postgres_url)
        try:
            channels = [f"CR{i:03d}" for i in range(4)]
            for i, channel in enumerate(channels):
                token = 91000 + i
                cluster.sim.add_import(token, status="Queued", ValidationSuccessful=5)
                with cluster.user(bots[i % 3], channel_id=channel, user_id="UR001") as user:
                    assert "Watching" in ack(user, f"watch {token}")
                    assert "Saved" in ack(user, f"set digest {passed_digest_time()}")
            for channel in channels:
                date_back(engine, channel)
            for channel in channels:
                wait_for(lambda c=channel: digests(cluster, c), 8, description=f"{channel}")
            time.sleep(QUIET)
            assert [len(digests(cluster, c)) for c in channels] == [1] * 4

            # A replica dies and a new one starts: still one digest per channel today.
            bots[0].kill()
            cluster.start_bot(DIGEST_CHECK_SECONDS=0.2)
            time.sleep(QUIET)
            assert [len(digests(cluster, c)) for c in channels] == [1] * 4
            assert all(digest_rows(engine, c)[0][0] == "sent" for c in channels)
        finally:
            engine.dispose()

"""The digest job on a real SQLite store: once per day, nothing when quiet, retries, give-ups."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.domain.digest import DigestSummary
from bot.domain.settings import parse_setting
from bot.domain.status import ImportStatus, Status
from bot.store import Store
from bot.store.engine import make_engine
from bot.watch.digest import MAX_ATTEMPTS, DigestJob, DigestNotSent

CHOSEN = datetime(2030, 1, 1, 6, 0, tzinfo=UTC)  # the digest time was chosen then
DUE = datetime(2030, 1, 1, 9, 30, tzinfo=UTC)  # 09:00 UTC has passed


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Poster:
    """Records digests; fails with ``errors`` first, in order."""

    def __init__(self, errors: list[DigestNotSent] | None = None) -> None:
        self.posted: list[tuple[str, DigestSummary]] = []
        self.errors = list(errors or [])

    async def post_digest(self, team_id: str, channel_id: str, summary: DigestSummary) -> str:
        if self.errors:
            raise self.errors.pop(0)
        self.posted.append((channel_id, summary))
        return f"1.{len(self.posted)}"


@pytest.fixture
def store(migrated_sqlite_url: str) -> Iterator[Store]:
    engine = make_engine(migrated_sqlite_url)
    yield Store(engine)
    engine.dispose()


def configure(store: Store, channel: str, *, running: bool = True) -> None:
    store.channel_settings.update(
        "T1", channel, dict([parse_setting("digest", "09:00 UTC")]), "U1", CHOSEN
    )
    if running:
        store.subscriptions.subscribe(
            team_id="T1",
            channel_id=channel,
            client_id="c",
            status=ImportStatus(access_token=len(channel), status=Status.QUEUED),
            user_id="U1",
            now=CHOSEN,
            next_poll_at=CHOSEN + timedelta(days=9),
        )


def job(store: Store, poster: Poster, clock: Clock, owner: str = "a") -> DigestJob:
    return DigestJob(
        store.channel_settings, store.history, store.digests, poster, owner, clock=clock
    )


def run(j: DigestJob) -> int:
    return asyncio.run(j.run())


def test_each_channel_gets_one_digest_per_day(store: Store) -> None:
    configure(store, "C1")
    configure(store, "C22")
    poster, clock = Poster(), Clock(CHOSEN + timedelta(hours=2))
    assert run(job(store, poster, clock)) == 0, "not 09:00 yet"
    clock.now = DUE
    assert run(job(store, poster, clock)) == 2
    assert run(job(store, poster, clock, owner="b")) == 0, "another replica: already sent"
    assert sorted(c for c, _ in poster.posted) == ["C1", "C22"]
    clock.now = DUE + timedelta(days=1)
    assert run(job(store, poster, clock)) == 2, "and again the next day"


def test_a_quiet_channel_gets_nothing_and_is_not_asked_again(store: Store) -> None:
    configure(store, "C1", running=False)
    poster = Poster()
    assert run(job(store, poster, Clock(DUE))) == 0
    assert poster.posted == []
    assert store.digests.settled([("T1", "C1", "2030-01-01")]) == {("T1", "C1", "2030-01-01")}


def test_a_transient_refusal_is_retried_later_and_a_permanent_one_gives_up(store: Store) -> None:
    configure(store, "C1")
    configure(store, "C22")
    poster = Poster(
        [
            DigestNotSent("internal_error", permanent=False),
            DigestNotSent("invalid_blocks", permanent=True),
        ]
    )
    clock = Clock(DUE)
    assert run(job(store, poster, clock)) == 0
    assert run(job(store, poster, clock)) == 0, "waits before retrying"
    clock.now = DUE + timedelta(seconds=31)
    assert run(job(store, poster, clock)) == 1
    clock.now = DUE + timedelta(hours=1)
    assert run(job(store, poster, clock)) == 0, "the permanent one is given up for the day"
    assert [c for c, _ in poster.posted] == ["C1"]


def test_repeated_transient_refusals_give_up_after_max_attempts(store: Store) -> None:
    configure(store, "C1")
    poster = Poster([DigestNotSent("ratelimited", permanent=False)] * MAX_ATTEMPTS)
    clock = Clock(DUE)
    for _ in range(MAX_ATTEMPTS + 2):
        run(job(store, poster, clock))
        clock.now += timedelta(minutes=11)
    assert poster.posted == [] and poster.errors == []

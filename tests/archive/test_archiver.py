"""The archiver: one fetch per archive, each thread posted once, crashes and takeovers.

A real SQLite store, an API in memory (``tests.archive.test_fetch.Api``) and a fake
Slack that shows what a channel would see. A crash is a ``Crash`` (BaseException:
nothing in the bot catches it, as nothing runs after SIGKILL) raised at one point;
another replica then takes the archive over once the lease has run out.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

import bot.store.archives as archives_module
from bot.archive.archiver import (
    MAX_RATE_LIMITED_UPLOADS,
    MAX_UPLOAD_ATTEMPTS,
    ArchivePost,
    Archiver,
    Fate,
    Published,
)
from bot.config import Settings
from bot.domain.exceptions import ExceptionsFile
from bot.domain.rules import decide
from bot.domain.status import ImportStatus, Status
from bot.mypreferences import errors
from bot.mypreferences.pace import Pace
from bot.store import Store
from bot.store.engine import make_engine
from bot.store.records import PollResult
from bot.store.tables import ArchiveRow, ArchiveUploadRow, NotificationRow, SubscriptionRow
from tests.archive.test_fetch import Api

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 60.0


class Crash(BaseException):
    """The process dies here (nothing catches a BaseException that is not ours)."""


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Shared:
    """One thing a channel shows: a file (with its comment) or a message."""

    channel: str
    thread_ts: str | None
    text: str
    file_name: str | None = None
    rows: list[list[str]] = field(default_factory=list)


class FakeSlack:
    """Plays Slack's side: the three upload steps, with a crash possible after any of them."""

    def __init__(self) -> None:
        self.shared: list[Shared] = []
        self.steps: list[str] = []
        self.crash_at: str | None = None
        # Canned answers per channel, used first (errors); then uploads succeed.
        self.answers: dict[str, list[Published]] = {}

    def _step(self, name: str) -> None:
        self.steps.append(name)
        if self.crash_at == name:
            self.crash_at = None
            raise Crash(name)

    async def publish(self, post: ArchivePost) -> Published:
        canned = self.answers.get(post.target.channel_id)
        if canned:
            return canned.pop(0)
        if post.target.tracking_ts is None:  # as delivery answers: no thread to post into yet
            return Published(Fate.LATER, error="the card is not posted yet", wait_seconds=60)
        self._step("before upload")
        archive = post.result.files.get(post.mode) if post.result else None
        text = f"{post.mode.value}: {post.result.records if post.result else post.error}"
        if archive is None:
            self.shared.append(Shared(post.target.channel_id, post.target.tracking_ts, text))
            self._step("message accepted")
            return Published(Fate.SENT, ts="9.000001")
        self._step("got upload URL")  # files.getUploadURLExternal
        data = archive.path.read_bytes()
        self._step("bytes uploaded")  # POST to the upload URL: nothing shown yet
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
        self.shared.append(
            Shared(post.target.channel_id, post.target.tracking_ts, text, archive.filename, rows)
        )
        self._step("upload completed")  # files.completeUploadExternal: now it is shown
        return Published(Fate.SENT, file_id=f"F{len(self.shared)}")


class CrashingStore:
    """The real store, with a crash possible right before or after one of its writes."""

    def __init__(self, store: Store, slack: FakeSlack) -> None:
        self._store = store.archives
        self._slack = slack

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name != "mark_upload_sent":
            return method

        def mark(*args: Any, **kwargs: Any) -> bool:
            self._slack._step("before marking sent")
            done = bool(method(*args, **kwargs))
            self._slack._step("marked sent")
            return done

        return mark


@pytest.fixture
def engine(migrated_sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(migrated_sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    folder = tmp_path / "archives"
    folder.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "lease_seconds": LEASE,
        "exceptions_dir": str(folder),
        "exceptions_page_size": 1000,
    }
    values.update(overrides)
    return Settings(**values)


def status(value: Status, expires: datetime, exceptions: int = 0) -> ImportStatus:
    return ImportStatus(
        access_token=42,
        status=value,
        name="Spring opt-ins",
        validation_successful=3000,
        processed=500,
        exceptions=exceptions,
        expires=expires,
    )


def finish_import(
    store: Store,
    channels: tuple[str, ...] = ("C1",),
    *,
    expires: datetime = NOW + timedelta(hours=6),
    cards: bool = True,
) -> None:
    """Channels watch import 42; it completes with 2,500 exceptions; cards and replies sent."""
    for channel in channels:
        store.subscriptions.subscribe(
            team_id="T1",
            channel_id=channel,
            client_id="ACME",
            status=status(Status.PROCESSING, expires),
            user_id="U1",
            now=NOW,
            next_poll_at=NOW,
        )
    (item,) = store.polls.claim_due_imports("poller", NOW, 10, LEASE)
    done = status(Status.COMPLETED, expires, exceptions=2500)
    store.polls.save_poll_results(
        "poller",
        [
            PollResult(
                import_id=item.id,
                decision=decide(item.memory, done, NOW, Settings().rules()),
                polled_at=NOW,
                next_poll_at=NOW,
            )
        ],
    )
    if cards:
        post_cards(store.engine)


def post_cards(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(update(SubscriptionRow).values(tracking_ts="1.000100"))
        conn.execute(update(NotificationRow).values(state="sent"))


def archiver(
    tmp_path: Path,
    store: Any,
    api: Api,
    slack: FakeSlack,
    owner: str,
    clock: Clock,
    **options: Any,
) -> Archiver:
    return Archiver(
        settings(tmp_path, **options.pop("settings", {})),
        store,
        api,
        Pace(1e9),
        slack,
        owner,
        clock=clock,
        # Nothing here posts a card while the archiver waits for its thread, and the
        # wait is on the real clock: a thread not ready is seen at once, without
        # READY_POLL_SECONDS of real sleep (what ready_wait_seconds=0.2 cost each time).
        ready_wait_seconds=options.pop("ready_wait_seconds", 0),
        **options,
    )


async def run_due(arch: Archiver) -> int:
    due = await asyncio.to_thread(
        arch.store.claim_due_archives, arch.owner, arch.clock(), 10, arch.lease_seconds
    )
    for archive in due:
        await arch.run(archive)
    return len(due)


def table(engine: Engine, model: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(model.__table__))]


def leftovers(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "archives").iterdir())


# --------------------------------------------------------------------------- posting


async def test_a_finished_import_gets_one_file_in_each_thread(
    tmp_path: Path, store: Store, engine: Engine
) -> None:
    finish_import(store, ("C1", "C2"))
    api, slack, clock = Api(2500), FakeSlack(), Clock()
    assert await run_due(archiver(tmp_path, store.archives, api, slack, "A", clock)) == 1
    assert [(s.channel, s.thread_ts, s.file_name) for s in slack.shared] == [
        ("C1", "1.000100", "import-42-exceptions.csv"),
        ("C2", "1.000100", "import-42-exceptions.csv"),
    ]
    assert api.requests == 3  # one fetch for both channels
    assert len(slack.shared[0].rows) == 2501  # header + every record
    assert slack.shared[0].rows[1][1] == "p***@example.com"  # redacted by default
    assert [u["state"] for u in table(engine, ArchiveUploadRow)] == ["sent", "sent"]
    (archive,) = table(engine, ArchiveRow)
    assert (archive["state"], archive["records"], archive["pages"]) == ("done", 2500, 3)
    assert leftovers(tmp_path) == []  # the temporary files are gone
    assert await run_due(archiver(tmp_path, store.archives, api, slack, "B", clock)) == 0


async def test_each_channel_gets_its_own_mode_from_one_fetch(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes = {"C1": "full", "C2": None, "C3": "none"}
    monkeypatch.setattr(
        archives_module, "channel_exceptions_mode", lambda conn, team, channel: modes[channel]
    )
    finish_import(store, ("C1", "C2", "C3"))
    api, slack = Api(2500), FakeSlack()
    await run_due(archiver(tmp_path, store.archives, api, slack, "A", Clock()))
    by_channel = {s.channel: s for s in slack.shared}
    assert by_channel["C1"].rows[1][1] == "person.1@example.com"
    assert by_channel["C2"].rows[1][1] == "p***@example.com"
    assert by_channel["C3"].file_name is None and by_channel["C3"].text == "none: 2500"
    assert api.requests == 3


async def test_an_import_without_records_says_so_once(tmp_path: Path, store: Store) -> None:
    finish_import(store)
    slack = FakeSlack()
    await run_due(archiver(tmp_path, store.archives, Api(0), slack, "A", Clock()))
    assert [(s.file_name, s.text) for s in slack.shared] == [(None, "redacted: 0")]


async def test_a_token_that_expired_first_is_said_not_fetched(tmp_path: Path, store: Store) -> None:
    finish_import(store, expires=NOW + timedelta(minutes=5))
    clock, api, slack = Clock(), Api(2500), FakeSlack()
    clock.now = NOW + timedelta(minutes=6)
    await run_due(archiver(tmp_path, store.archives, api, slack, "A", clock))
    assert api.requests == 0
    assert [s.text for s in slack.shared] == [
        "redacted: the token expired before the exceptions could be fetched"
    ]


async def test_a_failing_api_is_tried_again_later_and_the_last_try_keeps_what_it_has(
    tmp_path: Path, store: Store, engine: Engine
) -> None:
    finish_import(store)
    clock, slack = Clock(), FakeSlack()
    failing = Api(2500, fail={n: errors.Unavailable("HTTP 503") for n in range(2, 100)})
    arch = archiver(tmp_path, store.archives, failing, slack, "A", clock)
    tries = 0
    while not slack.shared and tries < 10:
        clock.now += timedelta(minutes=16)  # past any backoff (at most 15 min)
        failing.requests = 0
        tries += await run_due(arch)
    assert tries == 6  # MAX_ATTEMPTS: five retries, then the last one keeps page 1
    assert [s.text for s in slack.shared] == ["redacted: 1000"]
    assert slack.shared[0].rows[-1] == [
        "# partial: 1,000 of 2,500 records; MyPreferences stopped answering (HTTP 503)"
    ]
    assert table(engine, ArchiveRow)[0]["attempts"] == 5


async def test_an_unknown_token_is_said_at_once(tmp_path: Path, store: Store) -> None:
    finish_import(store)
    slack = FakeSlack()
    api = Api(2500, fail={1: errors.TokenRejected("HTTP 401")})
    await run_due(archiver(tmp_path, store.archives, api, slack, "A", Clock()))
    assert len(slack.shared) == 1 and "does not recognise" in slack.shared[0].text


async def test_a_thread_whose_card_is_not_posted_yet_is_kept_for_later(
    tmp_path: Path, store: Store, engine: Engine
) -> None:
    finish_import(store, cards=False)
    clock, slack = Clock(), FakeSlack()
    arch = archiver(tmp_path, store.archives, Api(2500), slack, "A", clock)
    await run_due(arch)
    assert slack.shared == []
    (archive,) = table(engine, ArchiveRow)
    assert archive["state"] == "pending" and archive["attempts"] == 0  # not a failure
    post_cards(engine)
    clock.now += timedelta(minutes=1)
    await run_due(arch)
    assert len(slack.shared) == 1


async def test_a_thread_that_never_becomes_ready_is_given_up_after_a_day(
    tmp_path: Path, store: Store, engine: Engine
) -> None:
    finish_import(store, cards=False)
    clock, slack = Clock(), FakeSlack()
    arch = archiver(tmp_path, store.archives, Api(30), slack, "A", clock)
    clock.now += timedelta(hours=23)
    await run_due(arch)
    assert table(engine, ArchiveUploadRow)[0]["state"] == "pending"
    clock.now += timedelta(hours=2)
    await run_due(arch)
    (upload,) = table(engine, ArchiveUploadRow)
    assert upload["state"] == "dropped" and "never became ready" in upload["last_error"]
    assert table(engine, ArchiveRow)[0]["state"] == "done" and slack.shared == []


async def test_failed_uploads_are_counted_and_given_up_rate_limits_later_than_errors(
    tmp_path: Path, store: Store, engine: Engine
) -> None:
    finish_import(store, ("C1", "C2"))
    slack = FakeSlack()
    slack.answers = {
        "C1": [Published(Fate.WAIT, error="ratelimited", wait_seconds=0.1)] * 200,
        "C2": [Published(Fate.RETRY, error="internal_error")] * 200,
    }
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    clock = Clock()
    arch = archiver(tmp_path, store.archives, Api(30), slack, "A", clock, sleep=sleep)
    runs = 0
    while any(u["state"] == "pending" for u in table(engine, ArchiveUploadRow)) and runs < 50:
        clock.now += timedelta(minutes=30)
        runs += await run_due(arch)
    tries = {c: 200 - len(answers) for c, answers in slack.answers.items()}
    assert tries == {"C1": MAX_RATE_LIMITED_UPLOADS, "C2": MAX_UPLOAD_ATTEMPTS}
    assert [u["state"] for u in table(engine, ArchiveUploadRow)] == ["dropped", "dropped"]
    assert slack.shared == []


async def test_a_short_rate_limit_is_waited_out_and_a_lost_channel_dropped(
    tmp_path: Path, store: Store, engine: Engine
) -> None:
    finish_import(store, ("C1", "C2"))
    slack = FakeSlack()
    slack.answers = {
        "C1": [Published(Fate.WAIT, error="ratelimited", wait_seconds=0.01)],  # then it goes
        "C2": [Published(Fate.DROP, error="channel_not_found")],
    }
    await run_due(archiver(tmp_path, store.archives, Api(2500), slack, "A", Clock()))
    assert [s.channel for s in slack.shared] == ["C1"]
    states = {
        u["subscription_id"]: (u["state"], u["last_error"]) for u in table(engine, ArchiveUploadRow)
    }
    assert sorted(states.values()) == [("dropped", "channel_not_found"), ("sent", "ratelimited")]
    assert table(engine, ArchiveRow)[0]["state"] == "done"


async def test_the_soonest_expiry_is_archived_first(tmp_path: Path, engine: Engine) -> None:
    store = Store(engine)
    finish_import(store, expires=NOW + timedelta(hours=9))
    with engine.begin() as conn:
        conn.execute(update(ArchiveRow).values(expires_at=NOW + timedelta(hours=9)))
    (late,) = table(engine, ArchiveRow)
    # A second import (token 43) finishing later, but whose token expires sooner.
    store.subscriptions.subscribe(
        team_id="T1",
        channel_id="C9",
        client_id="ACME",
        status=ImportStatus(access_token=43, status=Status.PROCESSING),
        user_id="U1",
        now=NOW,
        next_poll_at=NOW,
    )
    (item,) = store.polls.claim_due_imports("poller", NOW, 10, LEASE)
    soon = ImportStatus(
        access_token=43, status=Status.COMPLETED, exceptions=1, expires=NOW + timedelta(hours=1)
    )
    store.polls.save_poll_results(
        "poller",
        [PollResult(item.id, decide(item.memory, soon, NOW, Settings().rules()), NOW, NOW)],
    )
    first = store.archives.claim_due_archives("A", NOW, 1, LEASE)
    assert [a.access_token for a in first] == [43] and first[0].id != late["id"]


# --------------------------------------------------------------------------- leases


async def test_a_lost_lease_stops_the_archive_before_anything_is_posted(
    tmp_path: Path, store: Store, engine: Engine
) -> None:
    finish_import(store)
    slack = FakeSlack()

    class SlowApi(Api):
        async def get_exceptions(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.15)
            return await super().get_exceptions(*args, **kwargs)

    api = SlowApi(5000)
    arch = archiver(
        tmp_path, store.archives, api, slack, "A", Clock(), settings={"lease_seconds": 0.3}
    )
    (due,) = store.archives.claim_due_archives("A", NOW, 10, 0.3)
    with engine.begin() as conn:  # another replica took the archive over meanwhile
        conn.execute(update(ArchiveRow).values(lease_owner="B"))
    await asyncio.wait_for(arch.run(due), timeout=5)
    assert slack.shared == [] and api.requests < 5
    assert leftovers(tmp_path) == []


async def test_a_long_archive_keeps_its_lease(tmp_path: Path, store: Store, engine: Engine) -> None:
    finish_import(store)
    slack = FakeSlack()

    class SlowApi(Api):
        async def get_exceptions(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.1)
            return await super().get_exceptions(*args, **kwargs)

    real_clock = lambda: datetime.now(UTC)  # noqa: E731 (leases run on real time here)
    arch = Archiver(
        settings(tmp_path, lease_seconds=0.3),
        store.archives,
        SlowApi(2500 * 4),  # 10 pages: about 1 s, more than three lease lengths
        Pace(1e9),
        slack,
        "A",
        clock=real_clock,
        ready_wait_seconds=0.2,
    )
    with engine.begin() as conn:  # due now, on the real clock
        conn.execute(update(ArchiveRow).values(next_attempt_at=real_clock()))
    (due,) = store.archives.claim_due_archives("A", real_clock(), 10, 0.3)
    task = asyncio.create_task(arch.run(due))
    await asyncio.sleep(0.6)
    assert store.archives.claim_due_archives("B", real_clock(), 10, 0.3) == []
    await asyncio.wait_for(task, timeout=10)
    assert len(slack.shared) == 1 and len(slack.shared[0].rows) == 10_001


# --------------------------------------------------------------------------- crashes


CRASH_POINTS = [
    "before upload",
    "got upload URL",
    "bytes uploaded",
    "upload completed",  # Slack shows the file; the database does not know yet
    "before marking sent",
    "marked sent",
]


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_a_crash_at_any_point_posts_the_file_once_except_in_the_one_window(
    tmp_path: Path, store: Store, engine: Engine, point: str
) -> None:
    finish_import(store)
    clock, slack = Clock(), FakeSlack()
    slack.crash_at = point
    crashing = CrashingStore(store, slack)
    with pytest.raises(Crash):
        await run_due(archiver(tmp_path, crashing, Api(2500), slack, "A", clock))
    # Another replica, once the dead one's lease has run out, finishes the job.
    clock.now += timedelta(seconds=LEASE + 1)
    taken = await run_due(archiver(tmp_path, store.archives, Api(2500), slack, "B", clock))
    files = [s for s in slack.shared if s.file_name]
    window = point in ("upload completed", "before marking sent")
    assert len(files) == (2 if window else 1), (point, slack.steps)
    assert all(len(f.rows) == 2501 for f in files)
    assert taken == 1  # after "marked sent" it only finds nothing left to post
    assert [u["state"] for u in table(engine, ArchiveUploadRow)] == ["sent"]
    assert table(engine, ArchiveRow)[0]["state"] == "done"


def test_the_window_is_one_step_wide() -> None:
    # The steps between Slack showing the file and the database knowing it: none but
    # the write itself. (The crash test above is the proof; this keeps the list honest.)
    shown = CRASH_POINTS.index("upload completed")
    recorded = CRASH_POINTS.index("marked sent")
    assert CRASH_POINTS[shown:recorded] == ["upload completed", "before marking sent"]


async def test_stop_hands_a_running_archive_over(tmp_path: Path, store: Store) -> None:
    finish_import(store)
    slack = FakeSlack()

    class SlowApi(Api):
        async def get_exceptions(self, *args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(1)
            return await super().get_exceptions(*args, **kwargs)

    arch = archiver(tmp_path, store.archives, SlowApi(2500), slack, "A", Clock())
    assert await arch.tick() == 1
    await asyncio.sleep(0.1)
    await arch.stop(timeout=0.1)
    store.archives.release_leases("A")
    assert slack.shared == [] and leftovers(tmp_path) == []
    assert len(store.archives.claim_due_archives("B", NOW, 10, LEASE)) == 1


def test_the_mode_of_a_target_falls_back_to_exceptions_file(tmp_path: Path, store: Store) -> None:
    arch = archiver(
        tmp_path,
        store.archives,
        Api(1),
        FakeSlack(),
        "A",
        Clock(),
        settings={"exceptions_file": ExceptionsFile.FULL},
    )
    from bot.store.archives import UploadTarget

    target = UploadTarget(1, 1, "T", "C", "U", "1.0", None, True, True)
    assert arch.mode_of(target) is ExceptionsFile.FULL
    assert (
        arch.mode_of(target.__class__(**{**target.__dict__, "mode": "none"})) is ExceptionsFile.NONE
    )
    assert (
        arch.mode_of(target.__class__(**{**target.__dict__, "mode": "bogus"}))
        is ExceptionsFile.FULL
    )

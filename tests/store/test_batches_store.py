"""Batches and channel posts in the database, on SQLite and PostgreSQL; the 0005 migration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from sqlalchemy import Engine, func, select, text, update

from bot.domain.events import Event, EventKind
from bot.domain.rules import Decision, Memory
from bot.domain.settings import parse_setting
from bot.domain.status import ImportStatus, Status
from bot.store import Store
from bot.store.batches import NewMember
from bot.store.engine import alembic_config, make_engine, migrate
from bot.store.records import PollResult
from bot.store.tables import BatchRow, ChannelPostRow, ImportRow, SubscriptionRow

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


def status(token: int, state: Status = Status.PROCESSING) -> ImportStatus:
    return ImportStatus(access_token=token, status=state, validation_successful=100, processed=10)


def make_batch(store: Store, *tokens: int, channel: str = "C1", finished: tuple[int, ...] = ()):
    members = [
        NewMember(status(t, Status.COMPLETED if t in finished else Status.PROCESSING), NOW)
        for t in tokens
    ]
    return store.batches.create(
        team_id="T1",
        channel_id=channel,
        client_id="c",
        members=members,
        user_id="U1",
        now=NOW,
        lease_owner="a",
        lease_seconds=10,
    )


def count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model)).scalar_one())


def members(engine: Engine, batch_id: int) -> list[SubscriptionRow]:
    with engine.connect() as conn:
        return list(
            conn.execute(select(SubscriptionRow).where(SubscriptionRow.batch_id == batch_id)).all()
        )


# --------------------------------------------------------------------------- batches


def test_a_batch_is_made_whole_leased_to_its_maker_and_forgotten_whole(
    store: Store, engine: Engine
) -> None:
    made = make_batch(store, 1001, 1002, 1003, finished=(1003,))
    assert made.batch_id is not None and made.already_watched == ()
    rows = members(engine, made.batch_id)
    assert [r.state for r in rows] == ["active", "active", "ended"]
    assert rows[2].ended_reason == "Completed", "a finished import joins as ended"
    assert store.batches.claim_batch(made.batch_id, "b", NOW, 10) is False, "leased to its maker"
    assert store.outbox.claim_deliveries("b", LATER, 10, 10) == [], "its imports: never alone"
    assert not store.outbox.claim_subscription(rows[0].id, "b", LATER, 10)

    assert store.batches.forget(made.batch_id)
    assert (count(engine, BatchRow), count(engine, SubscriptionRow), count(engine, ImportRow)) == (
        0,
        0,
        0,
    )


def test_a_batch_of_imports_the_channel_already_watches_makes_nothing(
    store: Store, engine: Engine
) -> None:
    store.subscriptions.subscribe(
        team_id="T1",
        channel_id="C1",
        client_id="c",
        status=status(1002),
        user_id="U1",
        now=NOW,
        next_poll_at=NOW,
    )
    made = make_batch(store, 1001, 1002, 1003)
    assert made.batch_id is None and made.already_watched == (1002,)
    assert count(engine, BatchRow) == 0 and count(engine, SubscriptionRow) == 1
    assert make_batch(store, 1001, 1002, channel="C2").batch_id is not None, "another channel may"


def test_what_makes_a_batch_due_and_what_settles_it(store: Store, engine: Engine) -> None:
    made = make_batch(store, 1001, 1002)
    batch_id = made.batch_id
    assert batch_id is not None
    store.batches.release_batch(batch_id, "a")
    assert store.batches.claim_batches("a", NOW, 10, 10) == [batch_id], "its card is not posted"
    state = store.batches.batch_state(batch_id)
    assert state is not None and state.card_due and state.tracking_ts is None
    store.batches.set_batch_card(state, "1.0001")
    store.batches.release_batch(batch_id, "a")
    assert [r.tracking_ts for r in members(engine, batch_id)] == ["1.0001", "1.0001"]
    assert store.batches.claim_batches("a", NOW, 10, 10) == [], "nothing more to show"

    # A poll of one import changes it and ends it: the card is due, and so is the reply.
    first = members(engine, batch_id)[0]
    finished = status(1001, Status.COMPLETED)
    event = Event(
        EventKind.TRANSITION, "transition:1:Completed", Status.PROCESSING, Status.COMPLETED
    )
    import_id = first.import_id
    with engine.begin() as conn:
        conn.execute(update(ImportRow).where(ImportRow.id == import_id).values(lease_owner="p"))
    store.polls.save_poll_results(
        "p",
        [
            PollResult(
                import_id=import_id,
                decision=Decision([event], Memory(finished), changed=True, finished=True),
                polled_at=NOW,
                next_poll_at=LATER,
            )
        ],
    )
    assert store.batches.claim_batches("a", NOW, 10, 10) == [batch_id]
    state = store.batches.batch_state(batch_id)
    assert state is not None and state.card_due
    assert [n.access_token for n in state.notifications] == [1001]
    assert [m.ended_reason for m in state.members] == ["Completed", None]
    store.batches.mark_batch_card_done(state)
    store.outbox.mark_sent(state.notifications[0].notification.id, "1.0002", NOW)
    store.batches.release_batch(batch_id, "a")
    assert store.batches.claim_batches("a", NOW, 10, 10) == [], "one import still runs"

    # The other is unwatched: every import has ended, so the batch is due to end.
    store.subscriptions.unsubscribe(
        team_id="T1", channel_id="C1", client_id="c", access_token=1002, reason="x", now=NOW
    )
    assert store.batches.claim_batches("a", NOW, 10, 10) == [batch_id]
    assert store.batches.end_batch(batch_id, "all imports ended", NOW, summary=True)
    assert not store.batches.end_batch(batch_id, "all imports ended", NOW, summary=True)
    state = store.batches.batch_state(batch_id)
    assert state is not None and not state.active and state.summary_state == "pending"
    store.batches.summary_sent(batch_id, "1.0003")
    store.batches.mark_batch_card_done(state)
    store.batches.release_batch(batch_id, "a")
    assert store.batches.claim_batches("a", NOW, 10, 10) == []


def test_a_batch_waits_with_its_channel_and_one_replica_holds_it(store: Store) -> None:
    batch_id = make_batch(store, 1001, 1002).batch_id
    assert batch_id is not None
    store.batches.release_batch(batch_id, "a")
    store.outbox.wait_channel("T1", "C1", NOW + timedelta(seconds=30), "ratelimited")
    assert store.batches.claim_batches("a", NOW, 10, 10) == []
    after = NOW + timedelta(seconds=31)
    assert store.batches.claim_batches("a", after, 10, 10) == [batch_id]
    assert store.batches.claim_batches("b", after, 10, 10) == []
    assert not store.batches.renew_batch_lease(batch_id, "b", after, 10)
    assert store.batches.renew_batch_lease(batch_id, "a", after, 10)


def test_a_lost_channel_ends_the_batch_and_all_its_imports(store: Store, engine: Engine) -> None:
    batch_id = make_batch(store, 1001, 1002).batch_id
    assert batch_id is not None
    store.batches.end_batch_now(batch_id, "Slack: is_archived", NOW)
    assert {r.state for r in members(engine, batch_id)} == {"ended"}
    state = store.batches.batch_state(batch_id)
    assert state is not None and not state.active and not state.card_due
    assert state.summary_state is None
    store.batches.release_batch(batch_id, "a")
    assert store.batches.claim_batches("a", LATER, 10, 10) == []


def test_compact_on_or_off_gives_each_card_of_the_channel_one_edit(
    store: Store, engine: Engine
) -> None:
    batch_id = make_batch(store, 1001, 1002).batch_id
    assert batch_id is not None
    state = store.batches.batch_state(batch_id)
    assert state is not None
    store.batches.set_batch_card(state, "1.0001")
    store.batches.release_batch(batch_id, "a")
    assert store.batches.claim_batches("a", NOW, 10, 10) == []
    store.channel_settings.update("T1", "C1", dict([parse_setting("compact", "on")]), "U1", NOW)
    assert store.batches.claim_batches("a", NOW, 10, 10) == [batch_id]


# --------------------------------------------------------------------------- channel posts


def test_a_channel_post_is_queued_once_and_sent_by_one_replica(
    store: Store, engine: Engine
) -> None:
    posts = store.channel_posts
    for _ in range(2):
        posts.queue_post(
            team_id="T1", channel_id="CA", kind="alert", key="alert:7", payload={"x": 1}, now=NOW
        )
    assert count(engine, ChannelPostRow) == 1
    (claimed,) = posts.claim_posts("a", NOW, 10, 10)
    assert (claimed.kind, claimed.payload) == ("alert", {"x": 1})
    assert posts.claim_posts("b", NOW, 10, 10) == []
    assert not posts.extend_post(claimed.id, "b", NOW, 30)
    assert posts.extend_post(claimed.id, "a", NOW, 30)
    posts.post_sent(claimed.id, "1.5", NOW)
    assert posts.claim_posts("b", LATER, 10, 10) == []


def test_a_channel_post_waits_with_its_channel_and_backs_off(store: Store) -> None:
    posts = store.channel_posts
    posts.queue_post(team_id="T1", channel_id="CA", kind="notice", key="n1", payload={}, now=NOW)
    store.outbox.wait_channel("T1", "CA", NOW + timedelta(seconds=20), "ratelimited")
    assert posts.claim_posts("a", NOW, 10, 10) == []
    (post,) = posts.claim_posts("a", NOW + timedelta(seconds=21), 10, 10)
    posts.post_failed(post.id, "internal_error", NOW + timedelta(seconds=60))
    assert posts.claim_posts("a", NOW + timedelta(seconds=59), 10, 10) == []
    (again,) = posts.claim_posts("a", NOW + timedelta(seconds=61), 10, 10)
    assert again.attempts == 1
    posts.drop_post(again.id, "channel_not_found")
    assert posts.claim_posts("a", NOW + timedelta(days=1), 10, 10) == []


# --------------------------------------------------------------------------- migration


def test_settings_and_watches_survive_the_upgrade_to_batches(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        config = alembic_config(engine)
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0004")
            connection.commit()
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO channel_settings (team_id, channel_id, broadcast, milestones,"
                    " mention, alerts_channel, compact, digest_time, digest_zone, digest_since,"
                    " exceptions, updated_by, updated_at) VALUES ('T1', 'C1', 'failures', false,"
                    " '<!subteam^S0OPS|@ops>', 'CALERT', true, '09:30', 'Europe/Paris', :now,"
                    " 'full', 'U1', :now)"
                ),
                {"now": "2030-01-01 12:00:00"},
            )
        before = Store(engine).channel_settings.get("T1", "C1")
        migrate(engine)
        store = Store(engine)
        assert store.channel_settings.get("T1", "C1") == before
        assert before.alerts == "CALERT" and before.compact and not before.milestones
        assert make_batch(store, 5, 6).batch_id is not None, "the new tables work"
    finally:
        engine.dispose()

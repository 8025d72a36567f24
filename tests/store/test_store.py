"""The store: subscriptions, leased polling, the notification outbox, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from bot.domain.events import EventKind
from bot.domain.rules import EXPIRED, Decision, Failure, Memory, Outcome, Rules, decide
from bot.domain.status import ImportStatus, Status
from bot.store import Store
from bot.store.engine import make_engine, migrate
from bot.store.records import DueImport, PollResult
from bot.store.tables import Base, ImportRow, NotificationRow, SubscriptionRow

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 60.0
RULES = Rules(expiry_warning=timedelta(minutes=30), trouble_after=timedelta(minutes=5))
CLIENT = "client-1"
LATER = timedelta(hours=1)  # not due during a test
UNAVAILABLE = Failure("MyPreferences is temporarily unavailable.")


def status(
    value: Status = Status.PROCESSING, done: int | None = 100, token: int = 1001
) -> ImportStatus:
    return ImportStatus(
        access_token=token,
        status=value,
        name=f"Import {token}",
        validation_successful=1000,
        processed=done,
        expires=NOW + timedelta(days=2),
    )


def watch(
    store: Store,
    current: ImportStatus | None = None,
    *,
    team: str = "T1",
    channel: str = "C1",
    next_poll: datetime = NOW,
    now: datetime = NOW,
) -> int:
    """Subscribe a channel; returns the subscription id."""
    return store.subscriptions.subscribe(
        team_id=team,
        channel_id=channel,
        client_id=CLIENT,
        status=current or status(),
        user_id="U1",
        now=now,
        next_poll_at=next_poll,
    ).subscription_id


def claim_one(store: Store, owner: str = "A", now: datetime = NOW) -> DueImport:
    claimed = store.polls.claim_due_imports(owner, now, limit=10, lease_seconds=LEASE)
    assert len(claimed) == 1
    return claimed[0]


def poll(item: DueImport, outcome: Outcome, now: datetime = NOW) -> PollResult:
    return PollResult(
        import_id=item.id,
        decision=decide(item.memory, outcome, now, RULES),
        polled_at=now,
        next_poll_at=now + timedelta(seconds=30),
    )


def rows(engine: Engine, model: type[Base]) -> list[dict[str, Any]]:
    table = model.__table__
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c.id))]


def one(engine: Engine, model: type[Base], row_id: int) -> dict[str, Any]:
    (found,) = [r for r in rows(engine, model) if r["id"] == row_id]
    return found


def notification_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(NotificationRow)).scalar_one())


def transition_to_completed(store: Store, owner: str = "A") -> Decision:
    """Claim the one watched import and save a Processing -> Completed poll."""
    item = claim_one(store, owner)
    result = poll(item, status(Status.COMPLETED, 1000))
    store.polls.save_poll_results(owner, [result])
    return result.decision


# ----- subscribing ---------------------------------------------------------------


def test_subscribe_creates_the_import_and_an_active_subscription(
    store: Store, engine: Engine
) -> None:
    subscribed = store.subscriptions.subscribe(
        team_id="T1",
        channel_id="C1",
        client_id=CLIENT,
        status=status(),
        user_id="U1",
        now=NOW,
        next_poll_at=NOW + timedelta(seconds=30),
    )

    assert subscribed.created is True
    (imported,) = rows(engine, ImportRow)
    assert imported["client_id"] == CLIENT
    assert imported["access_token"] == 1001
    assert imported["status"] == "Processing"
    assert ImportStatus.from_json(imported["snapshot"]) == status()
    assert imported["expires_at"] == NOW + timedelta(days=2)
    assert imported["next_poll_at"] == NOW + timedelta(seconds=30)
    (subscription,) = rows(engine, SubscriptionRow)
    assert subscription["id"] == subscribed.subscription_id
    assert subscription["import_id"] == imported["id"]
    assert (subscription["team_id"], subscription["channel_id"]) == ("T1", "C1")
    assert subscription["state"] == "active"
    assert subscription["card_done"] < subscription["card_wanted"]  # the card is to be posted


def test_subscribing_twice_in_a_channel_returns_the_existing_watch(
    store: Store, engine: Engine
) -> None:
    first = store.subscriptions.subscribe(
        team_id="T1",
        channel_id="C1",
        client_id=CLIENT,
        status=status(),
        user_id="U1",
        now=NOW,
        next_poll_at=NOW,
    )
    second = store.subscriptions.subscribe(
        team_id="T1",
        channel_id="C1",
        client_id=CLIENT,
        status=status(),
        user_id="U2",
        now=NOW + timedelta(minutes=1),
        next_poll_at=NOW,
    )

    assert second.created is False
    assert second.subscription_id == first.subscription_id
    assert len(rows(engine, SubscriptionRow)) == 1
    assert len(rows(engine, ImportRow)) == 1


def test_a_second_channel_gets_its_own_subscription_for_the_same_import(
    store: Store, engine: Engine
) -> None:
    first = watch(store, channel="C1")
    second = watch(store, channel="C2")

    assert first != second
    (imported,) = rows(engine, ImportRow)
    assert {s["import_id"] for s in rows(engine, SubscriptionRow)} == {imported["id"]}


def test_watching_again_after_unwatching_creates_a_new_subscription(store: Store) -> None:
    first = watch(store)
    store.subscriptions.unsubscribe(
        team_id="T1",
        channel_id="C1",
        client_id=CLIENT,
        access_token=1001,
        reason="unwatched",
        now=NOW,
    )

    again = store.subscriptions.subscribe(
        team_id="T1",
        channel_id="C1",
        client_id=CLIENT,
        status=status(),
        user_id="U1",
        now=NOW,
        next_poll_at=NOW,
    )

    assert again.created is True
    assert again.subscription_id != first


# ----- claiming imports to poll ----------------------------------------------------


def test_claim_leases_only_due_watched_unleased_imports(store: Store, engine: Engine) -> None:
    watch(store, status(token=1), next_poll=NOW - timedelta(seconds=1))
    watch(store, status(token=2), next_poll=NOW + timedelta(seconds=10))  # not due
    watch(store, status(token=3), next_poll=NOW - timedelta(seconds=5))
    store.subscriptions.unsubscribe(  # due, but nobody watches it any more
        team_id="T1", channel_id="C1", client_id=CLIENT, access_token=3, reason="x", now=NOW
    )

    claimed = store.polls.claim_due_imports("A", NOW, limit=10, lease_seconds=LEASE)

    assert [c.access_token for c in claimed] == [1]
    assert claimed[0].client_id == CLIENT
    assert claimed[0].memory.status == status(token=1)
    leased = {r["access_token"]: r for r in rows(engine, ImportRow)}
    assert leased[1]["lease_owner"] == "A"
    assert leased[1]["lease_until"] == NOW + timedelta(seconds=LEASE)
    assert leased[2]["lease_owner"] is None
    assert leased[3]["lease_owner"] is None


def test_claim_takes_the_most_overdue_first_and_respects_the_limit(store: Store) -> None:
    for token, minutes in ((1, 1), (2, 3), (3, 2)):
        watch(store, status(token=token), next_poll=NOW - timedelta(minutes=minutes))

    claimed = store.polls.claim_due_imports("A", NOW, limit=2, lease_seconds=LEASE)

    assert [c.access_token for c in claimed] == [2, 3]


def test_an_import_watched_by_two_channels_is_claimed_once(store: Store) -> None:
    watch(store, channel="C1")
    watch(store, channel="C2")

    claimed = store.polls.claim_due_imports("A", NOW, limit=10, lease_seconds=LEASE)

    assert len(claimed) == 1


def test_a_leased_import_is_not_claimed_by_another_owner_until_the_lease_expires(
    store: Store, engine: Engine
) -> None:
    watch(store)
    claim_one(store, "A")

    during = store.polls.claim_due_imports("B", NOW + timedelta(seconds=LEASE - 1), 10, LEASE)
    after = store.polls.claim_due_imports("B", NOW + timedelta(seconds=LEASE + 1), 10, LEASE)

    assert during == []
    assert [c.access_token for c in after] == [1001]
    assert rows(engine, ImportRow)[0]["lease_owner"] == "B"


def test_claim_returns_the_memory_the_last_poll_saved(store: Store) -> None:
    watch(store, status(Status.QUEUED, 0))
    item = claim_one(store)
    store.polls.save_poll_results("A", [poll(item, status(Status.PROCESSING, 100))])
    later = NOW + timedelta(seconds=30)

    again = claim_one(store, now=later)

    assert again.memory.status == status(Status.PROCESSING, 100)
    assert again.memory.transitions == 1
    assert again.memory.rate_base_at == NOW
    assert again.memory.rate_base_done == 100


# ----- saving poll results -----------------------------------------------------------


def test_unchanged_poll_touches_only_the_import_row(store: Store, engine: Engine) -> None:
    watch(store, channel="C1")
    watch(store, channel="C2")
    item = claim_one(store)
    subscriptions_before = rows(engine, SubscriptionRow)
    import_before = rows(engine, ImportRow)[0]
    later = NOW + timedelta(seconds=5)

    created = store.polls.save_poll_results("A", [poll(item, status(), now=later)])

    assert created == 0
    assert notification_count(engine) == 0
    assert rows(engine, SubscriptionRow) == subscriptions_before  # no card edit wanted
    imported = rows(engine, ImportRow)[0]
    assert imported["last_polled_at"] == later
    assert imported["next_poll_at"] == later + timedelta(seconds=30)
    assert imported["lease_owner"] is None and imported["lease_until"] is None
    assert imported["version"] == import_before["version"]
    assert imported["snapshot"] == import_before["snapshot"]


def test_failed_poll_records_the_error_and_failures_without_notifying(
    store: Store, engine: Engine
) -> None:
    watch(store)
    item = claim_one(store)
    decision = decide(item.memory, UNAVAILABLE, NOW, RULES)
    result = PollResult(item.id, decision, NOW, NOW + timedelta(seconds=15), error="Unavailable")

    created = store.polls.save_poll_results("A", [result])

    assert created == 0
    imported = rows(engine, ImportRow)[0]
    assert imported["failures"] == 1
    assert imported["last_error"] == "Unavailable"
    assert imported["trouble_since"] == NOW
    assert imported["status"] == "Processing"


def test_changed_poll_inserts_one_notification_per_active_subscription(
    store: Store, engine: Engine
) -> None:
    first = watch(store, channel="C1")
    second = watch(store, channel="C2")
    ended = watch(store, channel="C3")
    store.outbox.end_subscription(ended, "channel_not_found", NOW)
    item = claim_one(store)

    created = store.polls.save_poll_results("A", [poll(item, status(Status.QUEUED, 100))])

    assert created == 2
    notifications = rows(engine, NotificationRow)
    assert {n["subscription_id"] for n in notifications} == {first, second}
    for notification in notifications:
        assert notification["event_key"] == "transition:1:Queued"
        assert notification["kind"] == EventKind.TRANSITION.value
        assert notification["state"] == "pending"
        assert notification["next_attempt_at"] == NOW
        assert ImportStatus.from_json(notification["snapshot"]).status is Status.QUEUED
    imported = rows(engine, ImportRow)[0]
    assert imported["status"] == "Queued"
    assert imported["transitions"] == 1
    assert imported["version"] == 2
    assert imported["last_changed_at"] == NOW
    wanted = {s["id"]: s["card_wanted"] for s in rows(engine, SubscriptionRow)}
    assert wanted[first] == wanted[second] == 2  # one more card edit each


def test_counts_only_change_edits_cards_without_notifications(store: Store, engine: Engine) -> None:
    subscription = watch(store)
    item = claim_one(store)

    created = store.polls.save_poll_results("A", [poll(item, status(done=120))])

    assert created == 0
    assert notification_count(engine) == 0
    assert one(engine, SubscriptionRow, subscription)["card_wanted"] == 2


def test_resaving_the_same_events_inserts_nothing(store: Store, engine: Engine) -> None:
    watch(store, channel="C1")
    watch(store, channel="C2")
    item = claim_one(store)
    result = poll(item, status(Status.QUEUED, 100))
    store.polls.save_poll_results("A", [result])
    again = claim_one(store, now=NOW + timedelta(seconds=30))

    # A replica that crashed after saving polls again and reaches the same decision.
    created = store.polls.save_poll_results("A", [PollResult(again.id, result.decision, NOW, NOW)])

    assert created == 0
    assert notification_count(engine) == 2


def test_a_repeated_milestone_key_is_not_announced_twice(store: Store, engine: Engine) -> None:
    watch(store, status(done=0))
    moments = [NOW + timedelta(minutes=m) for m in range(3)]
    total = 0
    for moment, done in zip(moments, (600, 300, 600), strict=True):
        item = claim_one(store, now=moment)
        total += store.polls.save_poll_results("A", [poll(item, status(done=done), now=moment)])

    assert total == 1
    assert [n["event_key"] for n in rows(engine, NotificationRow)] == ["milestone:50"]


def test_a_result_saved_after_losing_the_lease_is_ignored(store: Store, engine: Engine) -> None:
    subscription = watch(store)
    stale = claim_one(store, "A")
    taken = claim_one(store, "B", now=NOW + timedelta(seconds=LEASE + 1))

    created = store.polls.save_poll_results(
        "A",
        [
            poll(stale, status(Status.COMPLETED, 1000)),
        ],
    )
    quiet = store.polls.save_poll_results("A", [poll(stale, status())])

    assert created == 0 and quiet == 0
    imported = rows(engine, ImportRow)[0]
    assert imported["status"] == "Processing"
    assert imported["lease_owner"] == "B"
    assert imported["last_polled_at"] == NOW + timedelta(seconds=LEASE + 1)  # B's claim
    assert one(engine, SubscriptionRow, subscription)["state"] == "active"
    assert notification_count(engine) == 0
    # The owner of the lease still saves.
    assert store.polls.save_poll_results("B", [poll(taken, status(Status.QUEUED))]) == 1


def test_finished_import_ends_subscriptions_but_keeps_final_messages_deliverable(
    store: Store, engine: Engine
) -> None:
    first = watch(store, channel="C1")
    second = watch(store, channel="C2")

    decision = transition_to_completed(store)

    assert decision.finished is True
    for subscription in (first, second):
        row = one(engine, SubscriptionRow, subscription)
        assert row["state"] == "ended"
        assert row["ended_reason"] == "Completed"
        assert row["ended_at"] == NOW
        delivery = store.outbox.delivery(subscription)
        assert delivery is not None and delivery.active is False
        assert [n.event.key for n in delivery.notifications] == ["transition:1:Completed"]
    assert store.subscriptions.channel_watches("T1", "C1") == []
    assert sorted(store.outbox.claim_deliveries("N", NOW, 10, LEASE)) == sorted([first, second])
    # Nobody watches it any more: it is not polled again.
    assert store.polls.claim_due_imports("A", NOW + timedelta(hours=1), 10, LEASE) == []


def test_expired_import_ends_subscriptions_with_the_reason(store: Store, engine: Engine) -> None:
    subscription = watch(store)
    item = claim_one(store)

    store.polls.save_poll_results("A", [poll(item, EXPIRED)])

    row = one(engine, SubscriptionRow, subscription)
    assert row["state"] == "ended"
    assert row["ended_reason"] == "token expired"
    assert [n["event_key"] for n in rows(engine, NotificationRow)] == ["expired"]


# ----- delivering -------------------------------------------------------------------------


def test_claim_deliveries_returns_a_new_subscription_whose_card_is_not_posted(
    store: Store,
) -> None:
    subscription = watch(store)

    assert store.outbox.claim_deliveries("N", NOW, 10, LEASE) == [subscription]


def test_claim_deliveries_skips_subscriptions_with_nothing_to_tell(store: Store) -> None:
    subscription = watch(store)
    store.outbox.set_tracking_message(subscription, "1700000000.000100", 1)

    assert store.outbox.claim_deliveries("N", NOW, 10, LEASE) == []


def test_claim_deliveries_returns_subscriptions_with_pending_notifications(
    store: Store,
) -> None:
    subscription = watch(store)
    store.outbox.set_tracking_message(subscription, "1700000000.000100", 1)
    item = claim_one(store)
    store.polls.save_poll_results("A", [poll(item, status(Status.QUEUED))])
    store.outbox.mark_card_done(subscription, 2)  # only the notification is left

    assert store.outbox.claim_deliveries("N", NOW, 10, LEASE) == [subscription]


def test_claim_deliveries_respects_leases(store: Store) -> None:
    subscription = watch(store)
    store.outbox.claim_deliveries("N1", NOW, 10, LEASE)

    during = store.outbox.claim_deliveries("N2", NOW + timedelta(seconds=LEASE - 1), 10, LEASE)
    after = store.outbox.claim_deliveries("N2", NOW + timedelta(seconds=LEASE + 1), 10, LEASE)

    assert during == []
    assert after == [subscription]


def pending_notification(store: Store) -> tuple[int, int]:
    """A subscription whose card is posted and that has one pending notification."""
    subscription = watch(store)
    store.outbox.set_tracking_message(subscription, "1700000000.000100", 1)
    item = claim_one(store)
    store.polls.save_poll_results("A", [poll(item, status(Status.QUEUED))])
    store.outbox.mark_card_done(subscription, 2)
    delivery = store.outbox.delivery(subscription)
    assert delivery is not None
    (notification,) = delivery.notifications
    return subscription, notification.id


def test_mark_sent_records_the_message_and_leaves_nothing_pending(
    store: Store, engine: Engine
) -> None:
    subscription, notification = pending_notification(store)
    sent_at = NOW + timedelta(seconds=2)

    store.outbox.mark_sent(notification, "1700000000.000200", sent_at)

    row = one(engine, NotificationRow, notification)
    assert (row["state"], row["slack_ts"], row["sent_at"], row["attempts"]) == (
        "sent",
        "1700000000.000200",
        sent_at,
        1,
    )
    delivery = store.outbox.delivery(subscription)
    assert delivery is not None and delivery.notifications == []
    assert store.outbox.claim_deliveries("N", NOW + timedelta(hours=1), 10, LEASE) == []


def test_a_failed_attempt_is_retried_at_the_given_time(store: Store, engine: Engine) -> None:
    subscription, notification = pending_notification(store)
    retry_at = NOW + timedelta(minutes=2)

    store.outbox.mark_attempt_failed(notification, "ratelimited " * 40, retry_at)

    row = one(engine, NotificationRow, notification)
    assert row["state"] == "pending"
    assert row["attempts"] == 1
    assert row["next_attempt_at"] == retry_at
    assert len(row["last_error"]) == 200
    assert store.outbox.claim_deliveries("N", NOW + timedelta(minutes=1), 10, LEASE) == []
    assert store.outbox.claim_deliveries("N", retry_at, 10, LEASE) == [subscription]


def test_end_subscription_drops_what_can_no_longer_be_sent(store: Store, engine: Engine) -> None:
    subscription, notification = pending_notification(store)

    store.outbox.end_subscription(subscription, "channel_not_found", NOW)

    row = one(engine, SubscriptionRow, subscription)
    assert (row["state"], row["ended_reason"]) == ("ended", "channel_not_found")
    assert row["card_done"] == row["card_wanted"]  # no final card edit into a lost channel
    assert one(engine, NotificationRow, notification)["state"] == "dropped"
    assert store.outbox.claim_deliveries("N", NOW + timedelta(hours=1), 10, LEASE) == []


def test_unsubscribe_ends_the_watch_with_one_last_card_edit(store: Store, engine: Engine) -> None:
    subscription, notification = pending_notification(store)
    card_wanted = one(engine, SubscriptionRow, subscription)["card_wanted"]

    ended = store.subscriptions.unsubscribe(
        team_id="T1",
        channel_id="C1",
        client_id=CLIENT,
        access_token=1001,
        reason="unwatched by U1",
        now=NOW,
    )

    assert ended == subscription
    row = one(engine, SubscriptionRow, subscription)
    assert (row["state"], row["ended_reason"], row["ended_at"]) == ("ended", "unwatched by U1", NOW)
    assert row["card_wanted"] == card_wanted + 1
    assert one(engine, NotificationRow, notification)["state"] == "dropped"
    assert store.subscriptions.channel_watches("T1", "C1") == []


def test_unsubscribe_of_an_import_not_watched_there_changes_nothing(store: Store) -> None:
    watch(store)
    elsewhere = [
        ("T2", "C1", CLIENT, 1001),
        ("T1", "C2", CLIENT, 1001),
        ("T1", "C1", "other-client", 1001),
        ("T1", "C1", CLIENT, 9999),
    ]

    ended = [
        store.subscriptions.unsubscribe(
            team_id=team,
            channel_id=channel,
            client_id=client,
            access_token=token,
            reason="x",
            now=NOW,
        )
        for team, channel, client, token in elsewhere
    ]

    assert ended == [None] * len(elsewhere)
    assert len(store.subscriptions.channel_watches("T1", "C1")) == 1


def test_end_team_ends_only_that_workspace(store: Store, engine: Engine) -> None:
    first = watch(store, team="T1", channel="C1")
    second = watch(store, team="T1", channel="C2", current=status(token=2), next_poll=NOW + LATER)
    other = watch(store, team="T2", channel="C1")
    item = claim_one(store)  # token 1001, watched by T1/C1 and T2/C1
    store.polls.save_poll_results("A", [poll(item, status(Status.QUEUED))])

    ended = store.subscriptions.end_team("T1", "app uninstalled", NOW)

    assert ended == 2
    states = {s["id"]: (s["state"], s["ended_reason"]) for s in rows(engine, SubscriptionRow)}
    assert states[first] == states[second] == ("ended", "app uninstalled")
    assert states[other] == ("active", None)
    by_subscription = {n["subscription_id"]: n["state"] for n in rows(engine, NotificationRow)}
    assert by_subscription == {first: "dropped", other: "pending"}


def test_release_leases_gives_back_only_this_owners_leases(store: Store, engine: Engine) -> None:
    watch(store, status(token=1))
    watch(store, status(token=2))
    store.polls.claim_due_imports("A", NOW, limit=1, lease_seconds=LEASE, expected_interval=1)
    store.polls.claim_due_imports("B", NOW, limit=1, lease_seconds=LEASE, expected_interval=1)
    store.outbox.claim_deliveries("A", NOW, limit=1, lease_seconds=LEASE)

    store.release_leases("A")

    owners = {r["access_token"]: r["lease_owner"] for r in rows(engine, ImportRow)}
    assert sorted(owners.values(), key=str) == ["B", None]
    assert [s["lease_owner"] for s in rows(engine, SubscriptionRow)] == [None, None]
    # Due again after a second; only A's, whose lease was given back, can be taken.
    later = NOW + timedelta(seconds=LEASE / 2)
    assert len(store.polls.claim_due_imports("C", later, limit=10, lease_seconds=LEASE)) == 1
    assert len(store.outbox.claim_deliveries("C", NOW, limit=10, lease_seconds=LEASE)) == 2


def test_channel_watches_lists_only_active_watches_of_that_channel(store: Store) -> None:
    first = watch(store, status(token=1), now=NOW)
    second = watch(store, status(Status.STAGING, None, token=2), now=NOW + timedelta(minutes=1))
    gone = watch(store, status(token=3), now=NOW + timedelta(minutes=2))
    store.outbox.end_subscription(gone, "unwatched", NOW)
    watch(store, status(token=4), channel="C2")
    watch(store, status(token=5), team="T2")

    watches = store.subscriptions.channel_watches("T1", "C1")

    assert [w.subscription_id for w in watches] == [first, second]
    assert [w.access_token for w in watches] == [1, 2]
    assert [w.status for w in watches] == [Status.PROCESSING, Status.STAGING]
    assert watches[1].name == "Import 2"
    assert watches[1].subscribed_at == NOW + timedelta(minutes=1)


# ----- several replicas ----------------------------------------------------------------------


@pytest.mark.postgres
def test_concurrent_claims_never_hand_out_the_same_import(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    try:
        migrate(engine)
        store = Store(engine)
        for token in range(200):
            watch(store, status(token=token), next_poll=NOW - timedelta(seconds=token % 7))
        start = threading.Barrier(4)
        claimed: dict[str, list[int]] = {}
        errors: list[BaseException] = []

        def replica(owner: str) -> None:
            mine: list[int] = []
            try:
                start.wait()
                while batch := store.polls.claim_due_imports(owner, NOW, 15, LEASE):
                    mine += [item.id for item in batch]
            except BaseException as exc:  # surfaced below, not lost in the thread
                errors.append(exc)
            claimed[owner] = mine

        threads = [threading.Thread(target=replica, args=(f"R{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert errors == []
        every = [i for ids in claimed.values() for i in ids]
        assert len(every) == len(set(every)) == 200
        owners = {r["id"]: r["lease_owner"] for r in rows(engine, ImportRow)}
        for owner, ids in claimed.items():
            assert all(owners[i] == owner for i in ids)
    finally:
        engine.dispose()


# ----- one row per unchanged poll ------------------------------------------------------------


def _claimed_poll(store: Store, outcome: Outcome, *, interval: float = 30) -> PollResult:
    (item,) = store.polls.claim_due_imports(
        "A", NOW, limit=1, lease_seconds=LEASE, expected_interval=interval
    )
    decision = decide(item.memory, outcome, NOW, RULES)
    return PollResult(
        import_id=item.id,
        decision=decision,
        polled_at=NOW,
        next_poll_at=NOW + timedelta(seconds=interval),
        previous=item.memory,
        expected_next_poll_at=item.expected_next_poll_at,
    )


def test_a_healthy_unchanged_poll_is_fully_recorded_by_its_claim(
    store: Store, engine: Engine
) -> None:
    watch(store)
    # Watched a while: the first Processing poll set the rate base; this one changes nothing.
    first = _claimed_poll(store, status())
    store.polls.save_poll_results("A", [first])
    with engine.begin() as conn:
        conn.execute(update(ImportRow).values(next_poll_at=NOW))
    before = rows(engine, ImportRow)[0]

    result = _claimed_poll(store, status())

    assert result.needs_saving() is False
    assert store.polls.save_poll_results("A", [result]) == 0
    after = rows(engine, ImportRow)[0]
    # The claim wrote when it was polled and when it is due next; nothing else moved.
    assert after["next_poll_at"] == NOW + timedelta(seconds=30)
    assert after["last_polled_at"] == NOW
    assert {k: v for k, v in after.items() if k not in ("next_poll_at", "lease_until")} == {
        k: v for k, v in before.items() if k not in ("next_poll_at", "lease_until", "lease_owner")
    } | {"lease_owner": "A"}


def test_polls_that_change_memory_or_fail_are_saved(store: Store) -> None:
    watch(store)
    assert _claimed_poll(store, status()).needs_saving()  # sets the processing rate's base
    failing = PollResult(
        import_id=1,
        decision=decide(
            Memory(status=status()),
            Failure("MyPreferences is temporarily unavailable."),
            NOW,
            RULES,
        ),
        polled_at=NOW,
        next_poll_at=NOW + timedelta(seconds=30),
        error="Unavailable",
        previous=Memory(status=status()),
        expected_next_poll_at=NOW + timedelta(seconds=30),
    )
    assert failing.needs_saving()

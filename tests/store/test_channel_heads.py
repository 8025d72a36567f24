"""Leasing for delivery one subscription per channel (``Outbox.claim_channel_heads``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, update

from bot.domain.status import ImportStatus, Status
from bot.store import Store
from bot.store.tables import NotificationRow, SubscriptionRow

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 60.0


def watch(store: Store, channel: str, token: int, team: str = "T1") -> int:
    """A new subscription: its card is still to be posted, so it has work now."""
    return store.subscriptions.subscribe(
        team_id=team,
        channel_id=channel,
        client_id="ACME",
        status=ImportStatus(access_token=token, status=Status.PROCESSING),
        user_id="U1",
        now=NOW,
        next_poll_at=NOW + timedelta(hours=1),
    ).subscription_id


def heads(store: Store, owner: str, now: datetime, limit: int, **skip: object) -> list[int]:
    """The ids leased, in id order (RETURNING gives no order)."""
    return sorted(store.outbox.claim_channel_heads(owner, now, limit, LEASE, **skip))  # type: ignore[arg-type]


def test_one_subscription_per_channel_lowest_id_first(store: Store) -> None:
    c1 = [watch(store, "C1", 1000 + n) for n in range(3)]
    c2 = [watch(store, "C2", 2000 + n) for n in range(3)]

    assert heads(store, "A", NOW, 10) == [c1[0], c2[0]]


def test_a_channel_with_a_leased_subscription_waits_for_it(store: Store) -> None:
    c1 = [watch(store, "C1", 1000 + n) for n in range(2)]
    c2 = watch(store, "C2", 2000)
    heads(store, "A", NOW, 1)  # C1's first

    # Not C1's second, not even by another replica: one sender per channel.
    assert heads(store, "B", NOW, 10) == [c2]
    store.outbox.release_subscription(c1[0], "A")
    assert heads(store, "B", NOW, 10) == [c1[0]]
    # Leases that ran out (a dead replica) no longer hold their channels.
    later = NOW + timedelta(seconds=LEASE + 1)
    assert heads(store, "C", later, 10) == [c1[0], c2]


def test_skipped_channels_and_subscriptions_are_left_alone(store: Store) -> None:
    c1 = [watch(store, "C1", 1000 + n) for n in range(2)]
    c2 = watch(store, "C2", 2000)
    other_team = watch(store, "C1", 3000, team="T2")

    assert heads(store, "A", NOW, 10, skip_channels={("T1", "C1")}) == [c2, other_team]
    store.outbox.release_leases("A")
    assert heads(store, "A", NOW, 10, skip_subscriptions={c1[0], c2}) == [c1[1], other_team]


def test_channels_just_sent_to_come_after_every_other(store: Store) -> None:
    c1 = [watch(store, "C1", 1000 + n) for n in range(2)]
    c2 = watch(store, "C2", 2000)
    c3 = watch(store, "C3", 3000)
    served = {("T1", "C1")}

    # With one slot, C1's lower id waits: C2 has not been told anything yet.
    assert heads(store, "A", NOW, 1, served_channels=served) == [c2]
    # Once every other channel has its turn, C1 takes the slot left.
    assert heads(store, "A", NOW, 5, served_channels=served) == [c1[0], c3]


def test_limit_counts_channels(store: Store) -> None:
    first = [watch(store, f"C{n}", 1000 + n) for n in range(5)]
    assert heads(store, "A", NOW, 2) == first[:2]
    assert heads(store, "A", NOW, 2) == first[2:4]


def test_a_deferred_card_is_not_leased_before_its_turn(store: Store) -> None:
    sid = watch(store, "C1", 1000)
    store.outbox.set_tracking_message(sid, "1790000000.000001", 1)
    with store.outbox.engine.begin() as conn:  # the card is posted; it needs an edit
        conn.execute(update(SubscriptionRow).values(card_wanted=2))
    assert heads(store, "A", NOW, 10) == [sid]  # leased: the edit finds it is not its turn
    store.outbox.release_subscription(sid, "A", card_not_before=NOW + timedelta(seconds=30))

    assert heads(store, "A", NOW + timedelta(seconds=29), 10) == []
    assert heads(store, "A", NOW + timedelta(seconds=30), 10) == [sid]
    state = store.outbox.delivery(sid)
    assert state is not None and state.card_attempts == 0 and state.card_error is None
    assert state.card_retry_at == NOW + timedelta(seconds=30)

    # A release without a turn keeps the one stored; one by a replica that lost the
    # lease changes nothing.
    store.outbox.release_subscription(sid, "A")
    store.outbox.release_subscription(sid, "B", card_not_before=NOW + timedelta(hours=1))
    state = store.outbox.delivery(sid)
    assert state is not None and state.card_retry_at == NOW + timedelta(seconds=30)


def posted(store: Store, sid: int) -> None:
    """The card is posted and up to date: only a reply can give the subscription work."""
    store.outbox.set_tracking_message(sid, f"1790000000.{sid:06d}", 1)


def add_reply(store: Store, sid: int, due: datetime, key: str = "transition:1") -> None:
    with store.outbox.engine.begin() as conn:
        conn.execute(
            insert(NotificationRow).values(
                subscription_id=sid,
                team_id="T1",
                event_key=key,
                kind="transition",
                event={},
                created_at=NOW,
                state="pending",
                attempts=0,
                next_attempt_at=due,
            )
        )


def test_a_reply_due_gives_work_and_one_not_due_yet_does_not(store: Store) -> None:
    due, later, idle = (watch(store, f"C{n}", 1000 + n) for n in range(3))
    for sid in (due, later, idle):
        posted(store, sid)
    add_reply(store, due, NOW)
    add_reply(store, later, NOW + timedelta(seconds=5))

    assert heads(store, "A", NOW, 10) == [due]
    assert heads(store, "B", NOW + timedelta(seconds=5), 10) == [later]


def test_a_reply_waits_for_its_card(store: Store) -> None:
    sid = watch(store, "C1", 1000)
    with store.outbox.engine.begin() as conn:  # the card is not posted and not to be, yet
        conn.execute(update(SubscriptionRow).values(card_retry_at=NOW + timedelta(hours=1)))
    add_reply(store, sid, NOW)

    assert heads(store, "A", NOW, 10) == []


def test_a_channel_slack_asked_to_wait_is_passed_over_and_the_next_channel_goes(
    store: Store,
) -> None:
    c1 = watch(store, "C1", 1000)
    c2 = watch(store, "C2", 2000)
    store.outbox.wait_channel("T1", "C1", NOW + timedelta(seconds=30), "chat.postMessage")

    assert heads(store, "A", NOW, 1) == [c2], "the limit is not used up by a waiting channel"
    assert heads(store, "A", NOW + timedelta(seconds=30), 10) == [c1]


def test_a_skipped_head_makes_way_for_the_next_in_its_channel_but_a_busy_channel_does_not(
    store: Store,
) -> None:
    c1 = [watch(store, "C1", 1000 + n) for n in range(3)]
    assert heads(store, "A", NOW, 10, skip_subscriptions={c1[0]}) == [c1[1]]
    # C1 is busy now (c1[1] is leased): skipping its holder frees nothing.
    assert heads(store, "B", NOW, 10, skip_subscriptions={c1[1]}) == []


def test_a_batch_subscription_is_never_a_head_but_its_lease_keeps_the_channel_busy(
    store: Store,
) -> None:
    member, alone = watch(store, "C1", 1000), watch(store, "C1", 1001)
    with store.outbox.engine.begin() as conn:
        conn.execute(
            update(SubscriptionRow)
            .where(SubscriptionRow.id == member)
            .values(batch_id=7, lease_owner="batch", lease_until=NOW + timedelta(seconds=10))
        )

    assert heads(store, "A", NOW, 10) == []
    assert heads(store, "A", NOW + timedelta(seconds=11), 10) == [alone]


def test_two_replicas_taking_turns_never_lease_two_subscriptions_of_one_channel(
    store: Store,
) -> None:
    channels = [f"C{n}" for n in range(6)]
    subs = [
        watch(store, channel, 1000 + 10 * c + n)
        for c, channel in enumerate(channels)
        for n in range(3)
    ]
    channel_of = {sid: channels[i // 3] for i, sid in enumerate(subs)}
    leased: dict[int, str] = {}
    for turn in range(12):
        owner = "AB"[turn % 2]
        for sid in heads(store, owner, NOW, 2):
            leased[sid] = owner
        holding = [channel_of[sid] for sid in leased]
        assert len(holding) == len(set(holding)), f"turn {turn}: {leased}"
        if turn % 3 == 2:  # a sender finishes: its channel's next may go
            done = min(leased)
            store.outbox.release_subscription(done, leased.pop(done))
            with store.outbox.engine.begin() as conn:  # and it has nothing left to do
                conn.execute(
                    update(SubscriptionRow).where(SubscriptionRow.id == done).values(card_done=1)
                )
    assert set(leased.values()) == {"A", "B"}, "both replicas had channels to send to"

"""Leasing for delivery one subscription per channel (``Outbox.claim_channel_heads``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from bot.domain.status import ImportStatus, Status
from bot.store import Store
from bot.store.tables import SubscriptionRow

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


def test_limit_counts_channels(store: Store) -> None:
    first = [watch(store, f"C{n}", 1000 + n) for n in range(5)]
    assert heads(store, "A", NOW, 2) == first[:2]
    assert heads(store, "A", NOW, 2) == first[2:4]


def test_a_deferred_card_is_not_leased_before_its_turn(store: Store) -> None:
    sid = watch(store, "C1", 1000)
    store.outbox.set_tracking_message(sid, "1790000000.000001", 1)
    with store.outbox.engine.begin() as conn:  # the card is posted; it needs an edit
        conn.execute(update(SubscriptionRow).values(card_wanted=2))
    store.outbox.defer_card(sid, NOW + timedelta(seconds=30))

    assert heads(store, "A", NOW + timedelta(seconds=29), 10) == []
    assert heads(store, "A", NOW + timedelta(seconds=30), 10) == [sid]
    state = store.outbox.delivery(sid)
    assert state is not None and state.card_attempts == 0 and state.card_error is None

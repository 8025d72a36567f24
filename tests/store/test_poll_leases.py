"""Import leases in the real store: how long a claim lasts, and polls in flight left alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from bot.domain.status import ImportStatus, Status
from bot.store import Store
from bot.store.tables import ImportRow

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
INTERVAL = 1.0
LEASE = 4.0  # what the poller asks for: the interval plus one HTTP timeout


def watch(store: Store, token: int) -> None:
    store.subscriptions.subscribe(
        team_id="T1",
        channel_id="C1",
        client_id="ACME",
        status=ImportStatus(access_token=token, status=Status.PROCESSING),
        user_id="U1",
        now=NOW,
        next_poll_at=NOW,
    )


def lease_until(engine: Engine) -> dict[int, datetime | None]:
    with engine.connect() as conn:
        found = conn.execute(select(ImportRow.access_token, ImportRow.lease_until)).all()
    return {t: u.replace(tzinfo=UTC) if u and u.tzinfo is None else u for t, u in found}


def test_a_dead_replicas_imports_are_free_one_lease_after_the_claim(engine: Engine) -> None:
    store = Store(engine)
    watch(store, 11)

    claimed = store.polls.claim_due_imports("dead", NOW, 10, LEASE, INTERVAL)

    assert [c.access_token for c in claimed] == [11]
    assert lease_until(engine) == {11: NOW + timedelta(seconds=LEASE)}
    # Due again after the interval, but still leased: another replica waits...
    due_again = NOW + timedelta(seconds=INTERVAL)
    assert store.polls.claim_due_imports("live", due_again, 10, LEASE, INTERVAL) == []
    # ...until the lease has ended, and not a moment longer.
    after_lease = NOW + timedelta(seconds=LEASE + 0.001)
    taken = store.polls.claim_due_imports("live", after_lease, 10, LEASE, INTERVAL)
    assert [c.access_token for c in taken] == [11]


def test_an_import_still_in_flight_is_not_claimed_again_by_its_own_replica(
    engine: Engine,
) -> None:
    store = Store(engine)
    watch(store, 21)
    watch(store, 22)
    first = store.polls.claim_due_imports("A", NOW, 10, LEASE, INTERVAL)
    in_flight = {c.id for c in first if c.access_token == 21}

    due_again = NOW + timedelta(seconds=INTERVAL)
    again = store.polls.claim_due_imports("A", due_again, 10, LEASE, INTERVAL, exclude=in_flight)

    # 22 (finished, its lease simply running out) is claimed again; 21 is left alone,
    # its lease and next poll untouched.
    assert [c.access_token for c in again] == [22]
    assert lease_until(engine)[21] == NOW + timedelta(seconds=LEASE)

"""The exceptions archive's outbox: decided with the poll, leased, each upload sent once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update

from bot.domain.archiving import ArchiveKind
from bot.domain.rules import Rules, decide
from bot.domain.status import ImportStatus, Status
from bot.store import Store
from bot.store.records import ArchiveNote, PollResult
from bot.store.tables import ArchiveRow, ArchiveUploadRow, NotificationRow, SubscriptionRow

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
LEASE = 60.0
RULES = Rules(expiry_warning=timedelta(minutes=30), trouble_after=timedelta(minutes=5))
CLIENT = "client-1"


def status(
    value: Status = Status.PROCESSING,
    *,
    token: int = 1001,
    exceptions: int = 0,
    expires: datetime = NOW + timedelta(hours=6),
) -> ImportStatus:
    return ImportStatus(
        access_token=token,
        status=value,
        name=f"Import {token}",
        validation_successful=1000,
        processed=900,
        exceptions=exceptions,
        expires=expires,
    )


def watch(store: Store, current: ImportStatus, channel: str = "C1") -> int:
    return store.subscriptions.subscribe(
        team_id="T1",
        channel_id=channel,
        client_id=CLIENT,
        status=current,
        user_id="U1",
        now=NOW,
        next_poll_at=NOW,
    ).subscription_id


def save_poll(store: Store, new: ImportStatus, now: datetime = NOW, owner: str = "A") -> None:
    """Claim every due import and save ``new`` as the outcome of its poll."""
    for item in store.polls.claim_due_imports(owner, now, limit=10, lease_seconds=LEASE):
        result = PollResult(
            import_id=item.id,
            decision=decide(item.memory, new, now, RULES),
            polled_at=now,
            next_poll_at=now + timedelta(seconds=30),
        )
        store.polls.save_poll_results(owner, [result])


def table(engine: Engine, model: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        found = conn.execute(select(model.__table__).order_by(model.__table__.c.id))
        return [dict(r._mapping) for r in found]


def post_cards(engine: Engine, *, sent: bool = True) -> None:
    """Delivery's part: the cards are posted and (when ``sent``) the thread is up to date."""
    with engine.begin() as conn:
        conn.execute(update(SubscriptionRow).values(tracking_ts="1.000100"))
        if sent:
            conn.execute(update(NotificationRow).values(state="sent"))


def finish_with_failures(store: Store, channels: tuple[str, ...] = ("C1", "C2")) -> None:
    for channel in channels:
        watch(store, status(), channel)
    save_poll(store, status(Status.COMPLETED, exceptions=60))


def test_a_finish_with_failures_creates_one_archive_and_one_upload_per_channel(
    store: Store, engine: Engine
) -> None:
    finish_with_failures(store)
    (archive,) = table(engine, ArchiveRow)
    assert (archive["kind"], archive["state"], archive["attempts"]) == ("final", "pending", 0)
    assert archive["expires_at"] == NOW + timedelta(hours=6)
    uploads = table(engine, ArchiveUploadRow)
    assert [u["state"] for u in uploads] == ["pending", "pending"]
    assert {u["subscription_id"] for u in uploads} == {
        s["id"] for s in table(engine, SubscriptionRow)
    }


def test_a_clean_finish_creates_no_archive(store: Store, engine: Engine) -> None:
    watch(store, status())
    save_poll(store, status(Status.COMPLETED))
    assert table(engine, ArchiveRow) == [] and table(engine, ArchiveUploadRow) == []


def test_the_same_decision_twice_creates_nothing_more(store: Store, engine: Engine) -> None:
    watch(store, status(expires=NOW + timedelta(minutes=20)))
    running = status(exceptions=5, expires=NOW + timedelta(minutes=20))
    save_poll(store, running)  # inside the expiry warning, with failures: partial archive
    save_poll(store, running, now=NOW + timedelta(seconds=31))
    assert [a["kind"] for a in table(engine, ArchiveRow)] == ["partial"]
    assert len(table(engine, ArchiveUploadRow)) == 1


def test_claim_order_is_by_token_expiry(store: Store, engine: Engine) -> None:
    for token, hours in ((1, 9), (2, 3), (3, 6)):
        expires = NOW + timedelta(hours=hours)
        watch(store, status(token=token, expires=expires), f"C{token}")
    save_poll(store, status(Status.COMPLETED, exceptions=1))
    archives = table(engine, ArchiveRow)
    with engine.begin() as conn:
        for archive in archives:
            hours = {1: 9, 2: 3, 3: 6}[archive["import_id"]]
            conn.execute(
                update(ArchiveRow)
                .where(ArchiveRow.id == archive["id"])
                .values(expires_at=NOW + timedelta(hours=hours))
            )
    first = store.archives.claim_due_archives("A", NOW, 1, LEASE)
    rest = store.archives.claim_due_archives("B", NOW, 10, LEASE)
    assert [a.import_id for a in first] == [2]
    assert [a.import_id for a in rest] == [3, 1]
    assert store.archives.claim_due_archives("C", NOW, 10, LEASE) == []  # all leased


def test_a_lease_is_renewed_by_its_holder_only_and_taken_over_when_it_runs_out(
    store: Store,
) -> None:
    finish_with_failures(store, ("C1",))
    (due,) = store.archives.claim_due_archives("A", NOW, 10, LEASE)
    assert due.kind is ArchiveKind.FINAL and due.status is not None
    assert due.status.exceptions == 60 and due.access_token == 1001
    assert store.archives.renew_lease(due.id, "A", NOW + timedelta(seconds=50), LEASE)
    assert not store.archives.renew_lease(due.id, "B", NOW, LEASE)
    # Renewed at +50 s: still A's at +100 s, B's at +111 s.
    assert store.archives.claim_due_archives("B", NOW + timedelta(seconds=100), 10, LEASE) == []
    (taken,) = store.archives.claim_due_archives("B", NOW + timedelta(seconds=111), 10, LEASE)
    assert taken.id == due.id
    assert not store.archives.renew_lease(due.id, "A", NOW + timedelta(seconds=112), LEASE)


def test_an_upload_waits_for_the_card_and_the_thread_before_it(
    store: Store, engine: Engine
) -> None:
    finish_with_failures(store, ("C1",))
    (archive,) = table(engine, ArchiveRow)
    (target,) = store.archives.upload_targets(archive["id"])
    assert target.wanted and not target.ready and target.tracking_ts is None
    post_cards(engine, sent=False)  # the card is there, the "Completed" reply is not yet
    assert not store.archives.upload_targets(archive["id"])[0].ready
    post_cards(engine)
    (target,) = store.archives.upload_targets(archive["id"])
    assert target.ready and target.channel_id == "C1" and target.mode is None


def test_an_upload_is_sent_once_and_the_card_gains_its_line(store: Store, engine: Engine) -> None:
    finish_with_failures(store, ("C1",))
    post_cards(engine)
    (due,) = store.archives.claim_due_archives("A", NOW, 10, LEASE)
    (target,) = store.archives.upload_targets(due.id)
    store.archives.record_fetch(
        due.id, "A", records=60, expected=60, pages=1, stopped=None, cut=False, error=None
    )
    wanted_before = table(engine, SubscriptionRow)[0]["card_wanted"]
    assert store.archives.mark_upload_sent(
        target.upload_id, mode="redacted", file_id="F1", ts=None, now=NOW
    )
    assert not store.archives.mark_upload_sent(
        target.upload_id, mode="redacted", file_id="F2", ts=None, now=NOW
    )
    assert table(engine, SubscriptionRow)[0]["card_wanted"] == wanted_before + 1
    assert store.archives.upload_targets(due.id) == []
    assert store.archives.finish_archive(due.id, "A", NOW)
    assert table(engine, ArchiveRow)[0]["state"] == "done"
    assert store.archives.note_for(target.subscription_id) == ArchiveNote(
        kind=ArchiveKind.FINAL,
        records=60,
        expected=60,
        stopped=None,
        cut=False,
        error=None,
        mode="redacted",
        has_file=True,
    )
    delivery = store.outbox.delivery(target.subscription_id)
    assert delivery is not None and delivery.exceptions is not None
    assert delivery.exceptions.has_file


def test_an_archive_with_an_upload_left_is_released_not_done(store: Store, engine: Engine) -> None:
    finish_with_failures(store)
    post_cards(engine)
    (due,) = store.archives.claim_due_archives("A", NOW, 10, LEASE)
    first, _second = store.archives.upload_targets(due.id)
    store.archives.mark_upload_sent(first.upload_id, mode="none", file_id=None, ts="2.0", now=NOW)
    assert not store.archives.finish_archive(due.id, "A", NOW)
    assert table(engine, ArchiveRow)[0]["state"] == "pending"
    (again,) = store.archives.claim_due_archives("B", NOW, 10, LEASE)
    assert [t.channel_id for t in store.archives.upload_targets(again.id)] == ["C2"]


def test_an_unwatched_subscription_no_longer_wants_its_upload(store: Store, engine: Engine) -> None:
    watch(store, status(expires=NOW + timedelta(minutes=20)))
    save_poll(store, status(exceptions=5, expires=NOW + timedelta(minutes=20)))
    store.subscriptions.unsubscribe(
        team_id="T1",
        channel_id="C1",
        client_id=CLIENT,
        access_token=1001,
        reason="unwatched",
        now=NOW,
    )
    (archive,) = table(engine, ArchiveRow)
    (target,) = store.archives.upload_targets(archive["id"])
    assert not target.wanted
    store.archives.drop_upload(target.upload_id, "unwatched")
    assert table(engine, ArchiveUploadRow)[0]["state"] == "dropped"


def test_a_channel_that_starts_watching_later_gets_a_posted_archive_too(
    store: Store, engine: Engine
) -> None:
    soon = NOW + timedelta(minutes=20)
    watch(store, status(expires=soon))
    save_poll(store, status(exceptions=5, expires=soon))
    post_cards(engine)
    (due,) = store.archives.claim_due_archives("A", NOW, 10, LEASE)
    (target,) = store.archives.upload_targets(due.id)
    store.archives.mark_upload_sent(
        target.upload_id, mode="redacted", file_id="F", ts=None, now=NOW
    )
    store.archives.finish_archive(due.id, "A", NOW)
    watch(store, status(exceptions=5, expires=soon), "C2")
    later = NOW + timedelta(minutes=1)
    save_poll(store, status(exceptions=7, expires=soon), now=later)
    (archive,) = table(engine, ArchiveRow)
    assert archive["state"] == "pending"
    (again,) = store.archives.claim_due_archives("B", later, 10, LEASE)
    assert [t.channel_id for t in store.archives.upload_targets(again.id)] == ["C2"]


def test_a_failed_attempt_is_counted_and_due_later(store: Store, engine: Engine) -> None:
    finish_with_failures(store, ("C1",))
    (due,) = store.archives.claim_due_archives("A", NOW, 10, LEASE)
    store.archives.retry_archive(
        due.id, "A", "MyPreferences is unavailable", NOW + timedelta(seconds=30), count=True
    )
    assert store.archives.claim_due_archives("B", NOW + timedelta(seconds=29), 10, LEASE) == []
    (again,) = store.archives.claim_due_archives("B", NOW + timedelta(seconds=30), 10, LEASE)
    assert again.attempts == 1
    assert table(engine, ArchiveRow)[0]["error"] == "MyPreferences is unavailable"


def test_release_leases_makes_archives_due_for_another_replica(store: Store) -> None:
    finish_with_failures(store, ("C1",))
    store.archives.claim_due_archives("A", NOW, 10, LEASE)
    store.release_leases("A")
    assert len(store.archives.claim_due_archives("B", NOW, 10, LEASE)) == 1


def test_a_final_archive_that_could_not_be_fetched_leaves_the_card_on_the_partial_one(
    store: Store, engine: Engine
) -> None:
    soon = NOW + timedelta(minutes=20)
    watch(store, status(expires=soon))
    save_poll(store, status(exceptions=5, expires=soon))  # the partial archive
    post_cards(engine)
    (partial,) = store.archives.claim_due_archives("A", NOW, 10, LEASE)
    store.archives.record_fetch(
        partial.id, "A", records=5, expected=5, pages=1, stopped=None, cut=False, error=None
    )
    (target,) = store.archives.upload_targets(partial.id)
    store.archives.mark_upload_sent(
        target.upload_id, mode="redacted", file_id="F", ts=None, now=NOW
    )
    store.archives.finish_archive(partial.id, "A", NOW)
    later = NOW + timedelta(minutes=1)
    save_poll(store, status(Status.COMPLETED, exceptions=9, expires=soon), now=later)
    (final,) = store.archives.claim_due_archives("A", later, 10, LEASE)
    assert final.kind is ArchiveKind.FINAL
    store.archives.record_fetch(
        final.id,
        "A",
        records=None,
        expected=None,
        pages=None,
        stopped=None,
        cut=False,
        error="the token expired before the exceptions could be fetched",
    )
    (target,) = store.archives.upload_targets(final.id)
    store.archives.mark_upload_sent(
        target.upload_id, mode="redacted", file_id=None, ts="3.0", now=later
    )
    note = store.archives.note_for(target.subscription_id)
    assert note is not None and note.kind is ArchiveKind.PARTIAL and note.records == 5

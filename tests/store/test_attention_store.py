"""Channel settings, the digest's daily lease and the watch history, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, select, text, update

from bot.domain.history import Outcome
from bot.domain.settings import DEFAULTS, Broadcast, Digest, parse_setting
from bot.domain.status import ImportStatus, Status
from bot.store import Store
from bot.store.digests import EMPTY, SENT
from bot.store.engine import alembic_config, make_engine, migrate
from bot.store.tables import ChannelSettingsRow, DigestRow

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
DAY = ("T1", "C1", "2030-01-01")


def parsed(key: str, value: str) -> dict[str, object]:
    k, v = parse_setting(key, value, channel_id="C1")
    return {k: v}


# --- settings -------------------------------------------------------------------------


def test_a_channel_that_never_changed_anything_has_the_defaults(store: Store) -> None:
    assert store.channel_settings.get("T1", "C1") == DEFAULTS


def test_a_change_is_kept_per_channel_and_reports_before_and_after(store: Store) -> None:
    before, after = store.channel_settings.update(
        "T1", "C1", parsed("broadcast", "failures"), "U1", NOW
    )
    assert before == DEFAULTS
    assert after.broadcast is Broadcast.FAILURES
    _, after = store.channel_settings.update(
        "T1", "C1", parsed("mention", "<!subteam^S0OPS|@ops>"), "U2", NOW
    )
    assert after.broadcast is Broadcast.FAILURES  # earlier change kept
    assert store.channel_settings.get("T1", "C1") == after
    assert store.channel_settings.get("T1", "C2") == DEFAULTS
    assert store.channel_settings.get("T2", "C1") == DEFAULTS


def test_every_key_survives_a_new_store_on_the_same_database(engine: Engine) -> None:
    changes: dict[str, object] = {}
    for key, value in [
        ("broadcast", "none"),
        ("milestones", "off"),
        ("mention", "<@U0ALICE|alice>"),
        ("alerts", "<#C0ALERT|alerts>"),
        ("compact", "on"),
        ("digest", "07:30 America/Chicago"),
        ("exceptions", "full"),
    ]:
        changes |= parsed(key, value)
    _, after = Store(engine).channel_settings.update("T1", "C1", changes, "U1", NOW)
    assert Store(engine).channel_settings.get("T1", "C1") == after
    assert after.changes_from(DEFAULTS) != []
    assert len(after.changes_from(DEFAULTS)) == 7


def test_concurrent_changes_of_different_keys_both_stick(store: Store) -> None:
    def change(key: str, value: str, user: str) -> None:
        store.channel_settings.update("T1", "C1", parsed(key, value), user, NOW)

    threads = [
        threading.Thread(target=change, args=("broadcast", "all", "U1")),
        threading.Thread(target=change, args=("compact", "on", "U2")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.channel_settings.get("T1", "C1")
    assert final.broadcast is Broadcast.ALL and final.compact is True


def test_digest_channels_list_who_wants_a_digest_since_when(store: Store) -> None:
    store.channel_settings.update("T1", "C1", parsed("digest", "09:00 Europe/Paris"), "U1", NOW)
    store.channel_settings.update("T1", "C2", parsed("broadcast", "all"), "U1", NOW)
    later = NOW + timedelta(hours=1)
    store.channel_settings.update("T1", "C1", parsed("broadcast", "all"), "U1", later)
    (channel,) = store.channel_settings.digest_channels()
    assert (channel.team_id, channel.channel_id) == ("T1", "C1")
    assert channel.digest == Digest(time(9, 0), "Europe/Paris")
    assert channel.since == NOW  # another key changing does not move it
    store.channel_settings.update("T1", "C1", parsed("digest", "off"), "U1", later)
    assert store.channel_settings.digest_channels() == []


def test_an_unreadable_stored_value_falls_back_to_its_default(store: Store, engine: Engine) -> None:
    store.channel_settings.update(
        "T1", "C1", parsed("digest", "09:00 Europe/Paris") | parsed("compact", "on"), "U1", NOW
    )
    with engine.begin() as conn:
        conn.execute(update(ChannelSettingsRow).values(digest_zone="Gone/Away", broadcast="x"))
    settings = store.channel_settings.get("T1", "C1")
    assert settings.digest is None and settings.broadcast is Broadcast.FINISH
    assert settings.compact is True


# --- the digest's lease ------------------------------------------------------------------


def test_one_replica_claims_a_day_and_the_others_cannot(store: Store) -> None:
    assert store.digests.claim(DAY, "a", NOW, 30) == 0
    assert store.digests.claim(DAY, "b", NOW, 30) is None
    store.digests.finish(DAY, "a", SENT, NOW, ts="1.2")
    assert store.digests.claim(DAY, "b", NOW + timedelta(hours=1), 30) is None
    assert store.digests.settled([DAY, ("T1", "C1", "2030-01-02")]) == {DAY}


def test_a_claim_whose_holder_died_is_taken_over_after_its_lease(store: Store) -> None:
    assert store.digests.claim(DAY, "dead", NOW, 30) == 0
    assert store.digests.claim(DAY, "b", NOW + timedelta(seconds=29), 30) is None
    assert store.digests.claim(DAY, "b", NOW + timedelta(seconds=31), 30) == 0
    assert store.digests.settled([DAY]) == set()


def test_a_failed_post_waits_then_counts_attempts_and_can_give_up(store: Store) -> None:
    store.digests.claim(DAY, "a", NOW, 30)
    store.digests.failed(DAY, "a", "internal_error", NOW + timedelta(seconds=60), give_up=False)
    assert store.digests.claim(DAY, "b", NOW + timedelta(seconds=59), 30) is None
    assert store.digests.claim(DAY, "b", NOW + timedelta(seconds=61), 30) == 1
    store.digests.failed(DAY, "b", "invalid_blocks", NOW, give_up=True)
    assert store.digests.settled([DAY]) == {DAY}


def test_only_the_lease_holder_can_settle_a_day(store: Store, engine: Engine) -> None:
    store.digests.claim(DAY, "a", NOW, 30)
    store.digests.finish(DAY, "intruder", EMPTY, NOW)
    with engine.connect() as conn:
        assert conn.execute(select(DigestRow.state)).scalar_one() == "sending"


def test_release_leases_lets_another_replica_send_at_once(store: Store) -> None:
    store.digests.claim(DAY, "a", NOW, 300)
    store.digests.release_leases("a")
    assert store.digests.claim(DAY, "b", NOW, 30) == 0


# --- history ---------------------------------------------------------------------------


def _watch(store: Store, token: int, channel: str = "C1", user: str = "U1") -> int:
    status = ImportStatus(
        access_token=token, status=Status.PROCESSING, name=f"Import {token}", processed=10
    )
    return store.subscriptions.subscribe(
        team_id="T1",
        channel_id=channel,
        client_id="c",
        status=status,
        user_id=user,
        now=NOW,
        next_poll_at=NOW,
    ).subscription_id


def test_history_lists_a_channels_ended_watches_newest_first(store: Store) -> None:
    for token in (1, 2, 3):
        _watch(store, token)
    _watch(store, 4, channel="C2")
    for minutes, token in ((1, 1), (3, 2)):
        store.subscriptions.unsubscribe(
            team_id="T1",
            channel_id="C1",
            client_id="c",
            access_token=token,
            reason="unwatched by <@U1>",
            now=NOW + timedelta(minutes=minutes),
        )
    finished = store.history.finished("T1", channel_id="C1", limit=10)
    assert [w.access_token for w in finished] == [2, 1]
    assert finished[0].outcome is Outcome.STOPPED
    assert finished[0].seconds == 180
    assert finished[0].status is not None and finished[0].status.processed == 10
    assert store.history.finished("T1", channel_id="C1", limit=1)[0].access_token == 2
    since = store.history.finished("T1", since=NOW + timedelta(minutes=2))
    assert [w.access_token for w in since] == [2]
    assert [w.access_token for w in store.history.active("T1", channel_id="C1")] == [3]
    assert [w.access_token for w in store.history.active("T1")] == [3, 4]


def test_active_watches_of_one_person(store: Store) -> None:
    _watch(store, 1, user="U1")
    _watch(store, 2, user="U2")
    assert [w.access_token for w in store.history.active("T1", subscribed_by="U2")] == [2]


# --- the migration --------------------------------------------------------------------


def _watch_in_the_first_schema(engine: Engine, token: int) -> None:
    """A watch written as the first release wrote it (its columns only, plain SQL)."""
    stamp = NOW.replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO imports (client_id, access_token, name, status, version,"
                " transitions, first_seen_at, next_poll_at, failures, trouble_notified)"
                " VALUES ('c', :token, :name, 'Processing', 1, 0, :now, :now, 0, false)"
            ),
            {"token": token, "name": f"Import {token}", "now": stamp},
        )
        conn.execute(
            text(
                "INSERT INTO subscriptions (team_id, channel_id, import_id, subscribed_by,"
                " subscribed_at, state, card_wanted, card_done)"
                " SELECT 'T1', 'C1', id, 'U1', :now, 'active', 1, 0 FROM imports"
                " WHERE access_token = :token"
            ),
            {"token": token, "now": stamp},
        )


def test_upgrade_from_the_first_schema_keeps_the_data_and_starts_with_defaults(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    try:
        config = alembic_config(engine)
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
            connection.commit()
        _watch_in_the_first_schema(engine, 77)
        migrate(engine)
        store = Store(engine)
        assert [w.access_token for w in store.history.active("T1")] == [77]
        assert store.channel_settings.get("T1", "C1") == DEFAULTS
        _, after = store.channel_settings.update(
            "T1", "C1", parsed("broadcast", "failures"), "U1", NOW
        )
        head = ScriptDirectory.from_config(config).get_current_head()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
        # And back: the downgrade removes the new tables and keeps the old data.
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0001")
            connection.commit()
        assert [w.access_token for w in Store(engine).history.active("T1")] == [77]
        migrate(engine)
        assert Store(engine).channel_settings.get("T1", "C1") == DEFAULTS
        assert after.broadcast is Broadcast.FAILURES
    finally:
        engine.dispose()

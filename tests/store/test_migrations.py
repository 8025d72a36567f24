"""The Alembic migrations: they build the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Engine, Integer, MetaData, inspect, text

from bot.store.engine import alembic_config, make_engine, migrate
from bot.store.tables import Base, UTCDateTime

TABLES = {"imports", "subscriptions", "notifications"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh, empty database (not migrated)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bot.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    yield engine
    engine.dispose()


def head_revision(engine: Engine) -> str:
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    assert head is not None
    return head


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def _is_utc_datetime_type_noise(diff: Any) -> bool:
    """UTCDateTime in the models is plain DateTime in the database: not a real difference."""
    if not isinstance(diff, tuple) or diff[0] != "modify_type":
        return False
    return isinstance(diff[-1], UTCDateTime) or isinstance(diff[-2], UTCDateTime)


def schema_differences(engine: Engine, metadata: MetaData) -> list[Any]:
    """What ``alembic revision --autogenerate`` would put in a new migration."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
    # A change touching one column comes as a list of tuples; flatten to look at each.
    flat = [d for entry in differences for d in (entry if isinstance(entry, list) else [entry])]
    return [d for d in flat if not _is_utc_datetime_type_noise(d)]


def test_migrate_creates_the_tables_at_the_head_revision(engine: Engine) -> None:
    assert not TABLES & table_names(engine)

    revision = migrate(engine)

    assert revision == head_revision(engine)
    assert TABLES | {"alembic_version"} <= table_names(engine)


def test_migrate_twice_is_harmless_and_keeps_the_data(engine: Engine) -> None:
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO imports (client_id, access_token, version, transitions, "
                "first_seen_at, next_poll_at, failures, trouble_notified) "
                "VALUES ('c', 7, 0, 0, '2030-01-01 00:00:00', '2030-01-01 00:00:00', 0, false)"
            )
        )

    revision = migrate(engine)

    assert revision == head_revision(engine)
    with engine.connect() as connection:
        tokens = connection.execute(text("SELECT access_token FROM imports")).scalars().all()
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    assert tokens == [7]
    assert len(versions) == 1


def test_head_revision_matches_the_models(engine: Engine) -> None:
    """A model change without a migration fails here."""
    migrate(engine)

    assert schema_differences(engine, Base.metadata) == []


def test_the_model_comparison_notices_a_column_without_a_migration(engine: Engine) -> None:
    migrate(engine)
    changed = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["imports"].append_column(Column("priority", Integer, nullable=True))

    differences = schema_differences(engine, changed)

    assert [(d[0], d[2], d[3].name) for d in differences] == [("add_column", "imports", "priority")]


def test_downgrade_to_base_and_upgrade_again_on_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'bot.db'}")
    try:
        migrate(engine)
        config = alembic_config(engine)
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
            connection.commit()
        assert not TABLES & table_names(engine)

        revision = migrate(engine)

        assert revision == head_revision(engine)
        assert table_names(engine) >= TABLES
        assert schema_differences(engine, Base.metadata) == []
    finally:
        engine.dispose()

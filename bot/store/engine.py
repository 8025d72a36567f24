"""Database engine and migrations glue: the one place that opens connections."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text

log = logging.getLogger(__name__)

_PACKAGE_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_REPO_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
# Any fixed number works; it only has to be the same for every replica.
_MIGRATION_LOCK_ID = 7_245_113


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for SQLite (WAL, busy timeout, serialised writers) or PostgreSQL."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event issue BEGIN itself (see below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            # IMMEDIATE takes the write lock up front, so two processes never
            # deadlock upgrading a read transaction to a write one.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **kwargs)


def migrations_path() -> Path:
    """Where the Alembic scripts are: inside the installed package, or the repository."""
    return _PACKAGE_MIGRATIONS if _PACKAGE_MIGRATIONS.is_dir() else _REPO_MIGRATIONS


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> str:
    """Upgrade the database to the newest schema; safe when several replicas start at once."""
    config = alembic_config(engine)
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        finally:
            if engine.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID}
                )
                connection.commit()
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    log.info("database schema at revision %s", revision)
    return str(revision)

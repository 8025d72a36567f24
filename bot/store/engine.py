"""Database engine and migrations glue: the one place that opens connections."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
)

from bot.config import ConfigError

log = logging.getLogger(__name__)

_PACKAGE_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_REPO_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
# Any fixed number works; it only has to be the same for every replica.
_MIGRATION_LOCK_ID = 7_245_113


# How long a SQLite transaction waits for the write lock (PRAGMA busy_timeout, and the
# process's own turn below) before it fails with "database is locked".
_SQLITE_BUSY_SECONDS = 30

# How long PostgreSQL may take to answer a connection attempt (libpq waits for TCP's own
# timeout, minutes, when a host drops packets); a `connect_timeout` in the URL wins.
_PG_CONNECT_TIMEOUT_SECONDS = 10


class DatabaseUnavailable(ConfigError):
    """DATABASE_URL names a database this process cannot open or write.

    The message is one line that says what to fix; it never holds the password.
    """


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for SQLite (WAL, busy timeout, serialised writers) or PostgreSQL.

    Raises ``DatabaseUnavailable`` for a URL that cannot be parsed or has no driver here.
    """
    parsed = parse_database_url(url)
    try:
        return _make_engine(parsed, **kwargs)
    except (NoSuchModuleError, ImportError):
        raise DatabaseUnavailable(
            f"DATABASE_URL: no driver for {parsed.drivername}:// here; "
            "use postgresql+psycopg://... or sqlite:///..."
        ) from None


def parse_database_url(url: str) -> URL:
    """The SQLAlchemy URL; its password may be URL-encoded (%40 for @, %25 for %)."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        # The value is not echoed: it holds the password.
        raise DatabaseUnavailable(
            "DATABASE_URL: not a valid database URL; URL-encode special characters in the "
            "user name and password (@ as %40, : as %3A, / as %2F, % as %25)"
        ) from None


def _make_engine(url: URL, **kwargs: Any) -> Engine:
    if url.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_SECONDS},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event issue BEGIN itself (see below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_SECONDS * 1000}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        _WriteTurns().attach(engine)
        return engine
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        kwargs["connect_args"] = {
            "connect_timeout": _PG_CONNECT_TIMEOUT_SECONDS,
            **kwargs.get("connect_args", {}),
        }
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **kwargs)


class _WriteTurns:
    """This process's SQLite transactions take turns on a lock, not on SQLite's sleeps.

    Every transaction begins with BEGIN IMMEDIATE, which takes SQLite's one write
    lock up front (so two never deadlock upgrading a read to a write). A thread
    that finds the lock taken is left to SQLite's busy handler, which sleeps and
    tries again, up to 100 ms a time: under load, the threads that happen to try
    at the right moment keep winning and one delivery waited 2.5 s behind the
    poller's saves (bench/README.md, fan-out). Here the threads of one process
    wait on a lock instead, and one is woken the moment the transaction before
    it ends. Other processes on the same file still meet SQLite's lock.

    The turn is held from BEGIN to COMMIT or ROLLBACK, or until the connection
    goes back to the pool (a read left open, a broken connection), so nothing can
    leave the process unable to write.
    """

    _HELD = "isb_write_turn"

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._ended)
        event.listen(engine, "rollback", self._ended)
        event.listen(engine.pool, "checkin", self._returned)

    def _begin(self, connection: Any) -> None:
        if not self._lock.acquire(timeout=_SQLITE_BUSY_SECONDS):
            # What SQLite itself says once its busy timeout runs out.
            raise OperationalError(
                "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
            )
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        connection.info[self._HELD] = True

    def _ended(self, connection: Any) -> None:
        # One connection may run several transactions, one after the other (the
        # migration does). A broken one cannot say: the pool's checkin will.
        if not connection.invalidated:
            self._give_back(connection.info)

    def _returned(self, _dbapi_connection: Any, record: Any) -> None:
        self._give_back(record.info)

    def _give_back(self, info: dict[str, Any]) -> None:
        if info.pop(self._HELD, False):
            self._lock.release()


def migrations_path() -> Path:
    """Where the Alembic scripts are: inside the installed package, or the repository."""
    return _PACKAGE_MIGRATIONS if _PACKAGE_MIGRATIONS.is_dir() else _REPO_MIGRATIONS


def alembic_config(engine: Engine) -> Config:
    """Alembic's settings for this engine (migrations/env.py connects through it).

    The URL stays out: Alembic's ConfigParser would reject a `%` (an encoded character in
    the password) and its error would print the URL, password and all.
    """
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> str:
    """Upgrade the database to the newest schema; safe when several replicas start at once.

    Raises ``DatabaseUnavailable`` when the database cannot be reached or written.
    """
    try:
        return _upgrade(engine)
    except DBAPIError as exc:
        if not operator_can_fix(exc):
            raise
        raise DatabaseUnavailable(describe_failure(exc, engine.url)) from None


def _upgrade(engine: Engine) -> str:
    config = alembic_config(engine)
    # Alembic narrates every start at INFO ("Context impl SQLiteImpl." ...); the revision
    # line below says what matters, and a failure stays the one line the CLI prints.
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    if not log.isEnabledFor(logging.DEBUG):
        alembic_log.setLevel(logging.WARNING)
    try:
        return _upgrade_quietly(engine, config)
    finally:
        alembic_log.setLevel(level)


def _upgrade_quietly(engine: Engine, config: Config) -> str:
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
        # A database that opens but cannot be written (a read-only file, a role that may
        # only read) passes an up-to-date migration and fails every tick after; one write
        # that changes nothing finds that out at start-up.
        connection.execute(text("UPDATE alembic_version SET version_num = version_num"))
        connection.commit()
    log.info("database schema at revision %s", revision)
    return str(revision)


def operator_can_fix(exc: DBAPIError) -> bool:
    """Whether the error is about where the database is or who may write it, not a bug."""
    return (
        exc.statement is None  # it failed while connecting: the URL or the server
        or isinstance(exc, OperationalError | InterfaceError)
        or type(exc) is DatabaseError  # SQLite: "file is not a database"
        or getattr(exc.orig, "sqlstate", None) == "42501"  # PostgreSQL: permission denied
    )


def describe_failure(exc: DBAPIError, url: URL) -> str:
    """One line naming DATABASE_URL, what went wrong and what to fix; never the password."""
    reason = _driver_reason(exc, url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_problem(url, reason)
    where = url.render_as_string(hide_password=True)
    verb = "cannot connect to" if "connection" in str(exc.orig).split("\n")[0] else "cannot use"
    return f"DATABASE_URL: {verb} {where}: {reason}"


def _driver_reason(exc: DBAPIError, url: URL) -> str:
    """The driver's own first line, without psycopg's repetition of host and port."""
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc.orig).__name__
    reason = reason.removeprefix("connection failed: ")
    reason = re.sub(r"^connection to server at .*? failed: ", "", reason)
    reason = re.sub(r"^FATAL:\s*", "", reason)[:200]
    # Drivers do not echo passwords, but a guard costs nothing.
    for secret in _password_forms(url):
        reason = reason.replace(secret, "***")
    return reason or type(exc.orig).__name__


def _password_forms(url: URL) -> list[str]:
    password = url.password
    if not isinstance(password, str) or not password:
        return []
    return [password, quote(password, safe="")]


def _sqlite_problem(url: URL, reason: str) -> str:
    database = url.database or ""
    if url.query.get("mode") == "ro" or re.search(r"[?&]mode=ro\b", database):
        return (
            "DATABASE_URL: the SQLite database is opened read-only (mode=ro) "
            "but the bot writes to it; remove mode=ro"
        )
    if database in ("", ":memory:"):
        return f"DATABASE_URL: cannot open the SQLite database: {reason}"
    path = Path(os.path.abspath(database.removeprefix("file:").split("?")[0]))
    folder, uid = path.parent, os.getuid()
    if not folder.is_dir():
        return (
            f"DATABASE_URL: the folder {folder} does not exist; "
            f"create it and make it writable by uid {uid}"
        )
    # SQLite writes the database and, beside it, its -wal and -shm files.
    unwritable = [
        p
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"))
        if p.exists() and not os.access(p, os.W_OK)
    ]
    if not os.access(folder, os.W_OK):
        return (
            f"DATABASE_URL: cannot write to {folder} ({reason}); "
            f"make {folder} writable by uid {uid}"
        )
    if unwritable:
        return (
            f"DATABASE_URL: cannot write {unwritable[0]} ({reason}); make it writable by uid {uid}"
        )
    if "disk is full" in reason:
        return f"DATABASE_URL: no space left for {path}; free space on its volume"
    return f"DATABASE_URL: cannot use the SQLite database {path}: {reason}"

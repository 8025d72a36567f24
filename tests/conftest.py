"""Shared fixtures (a fresh PostgreSQL database) and the order in which work is handed out.

The suite runs on several pytest-xdist workers (``addopts`` in pyproject.toml).
Each test module runs whole on one worker, in file order (``--dist loadfile``), so
a module-scoped fixture, such as the one bot a module's integration tests share,
is made once. Modules are handed out in this order, so that what waits longest
starts first and no long module is left to run alone at the end:

1. modules marked ``slow``: a test of 10 s or more, or a module of 20 s or more
   (wall time on a quiet machine), marked with ``pytest.mark.slow`` or ``pytestmark``;
2. the rest of ``tests/integration``;
3. the unit tests: many short modules that fill the gaps at the end.

In the first two groups, a module of few tests goes before one of many: a worker
is handed its next module while it still runs the last test of the current one
(xdist needs the next test to know when to tear a module's fixtures down), so the
long single tests had better start early, with a short module queued behind them.
Among the unit tests, big modules go first and the small ones fill the gaps.

How many workers (``-n auto`` in pyproject.toml): WORKERS for the whole suite or
a folder, one per file for a few files, none for a single file (it runs in this
process: no workers to start, and a debugger works). ``-n N`` on the command line
(``-n0``: none), or PYTEST_XDIST_AUTO_NUM_WORKERS, decides otherwise.
"""

from __future__ import annotations

import compileall
import contextlib
import importlib
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

# The suite starts some hundred Python processes (its workers, bots, the CLI), each
# importing the same modules: let the first compile each one and cache it
# (__pycache__, git-ignored) whatever PYTHONDONTWRITEBYTECODE says, or every process
# compiles the project again (12 s of a clean clone's run on this project's machine).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

from bot.store.engine import make_engine, migrate  # noqa: E402 (bytecode first)

DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Most tests wait on processes, sockets and clocks, so more workers than cores pay:
# on this project's 2-core machine, quiet, with nothing compiled yet, 8 workers took
# 132 s where 6 took 147 s (the two cores are then busy 89 % of the run against 76 %).
WORKERS = 8


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    files = {arg.split("::")[0] for arg in config.args}
    if files and all(Path(config.invocation_params.dir, f).is_file() for f in files):
        return 0 if len(files) == 1 else min(WORKERS, len(files))
    return WORKERS


def _rank(item: pytest.Item) -> int:
    if item.get_closest_marker("slow"):
        return 0
    return 1 if item.nodeid.startswith("tests/integration/") else 2


def pytest_configure(config: pytest.Config) -> None:
    """Before the workers start, compile once what each of them would compile again.

    Workers start together, so on a fresh checkout each would compile the project
    and rewrite the test modules' asserts itself (some 4 s of CPU each, 8 workers on
    2 cores). The main process does it first and caches it; the workers read it.
    """
    if hasattr(config, "workerinput") or len(config.option.tx or []) < 2:
        return  # a worker, or no workers
    root = Path(__file__).resolve().parent.parent
    compileall.compile_dir(root / "bot", quiet=1)
    for path in sorted(_test_files(config, root)):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        # A module that fails to import (or skips itself) is the workers' to report.
        with contextlib.suppress(Exception, pytest.skip.Exception):
            importlib.import_module(module)  # through pytest's assert rewriting, cached


def _test_files(config: pytest.Config, root: Path) -> set[Path]:
    """The test modules under the paths given on the command line (default: tests/)."""
    files: set[Path] = set()
    for arg in config.args or ["tests"]:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path.is_dir():
            files.update(path.rglob("test_*.py"))
        elif path.name.startswith("test_") and path.suffix == ".py":
            files.add(path)
    return {f for f in files if f.is_relative_to(root / "tests")}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the modules as above; a module's tests keep their order, together."""
    rank: dict[str, int] = {}
    size: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        rank[module] = min(rank.get(module, 2), _rank(item))
        size[module] = size.get(module, 0) + 1

    def key(item: pytest.Item) -> tuple[int, int]:
        module = item.nodeid.split("::")[0]
        return rank[module], size[module] if rank[module] < 2 else -size[module]

    items.sort(key=key)  # stable: file order otherwise


def _admin_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)


def _connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection to the database a SQLAlchemy URL names."""
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(libpq, autocommit=True, connect_timeout=3)


def _admin_connection() -> psycopg.Connection[Any]:
    """A connection to the server's admin database (autocommit), or skip the test.

    Skips when PostgreSQL is unreachable, unless REQUIRE_POSTGRES=1 (CI), where that
    is a failure.
    """
    try:
        return _connect(_admin_url())
    except psycopg.OperationalError as exc:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but PostgreSQL is unreachable: {exc}")
        admin = make_url(_admin_url())
        pytest.skip(f"PostgreSQL unreachable at {admin.host}:{admin.port}: {exc}")


@contextmanager
def _new_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database (a random name: workers never share one)."""
    name = f"isb_test_{uuid.uuid4().hex[:12]}"
    with _admin_connection() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(_admin_url()).set(database=name).render_as_string(hide_password=False)
        finally:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (not migrated), dropped afterwards."""
    with _new_postgres_database() as url:
        yield url


# A test that only needs an empty database at the newest schema gets one of these: a
# copy of a SQLite file migrated once, or this worker's PostgreSQL database emptied.
# Creating and migrating a database for each test cost 0.1 s (SQLite) and 1.5 s
# (PostgreSQL) of the suite's time per test.


@pytest.fixture(scope="session")
def _migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("schema") / "bot.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()  # the last connection closed: everything is in the file, no WAL left
    return path


@pytest.fixture
def migrated_sqlite_url(tmp_path: Path, _migrated_sqlite_file: Path) -> str:
    """A SQLite database of the test's own at the newest schema, with no rows."""
    path = tmp_path / "bot.db"
    shutil.copyfile(_migrated_sqlite_file, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def _migrated_postgres_database() -> Iterator[str]:
    with _new_postgres_database() as url:
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url


@pytest.fixture
def migrated_postgres_url(_migrated_postgres_database: str) -> str:
    """This worker's PostgreSQL database at the newest schema, emptied for the test.

    Every table but Alembic's is truncated and its ids start again at 1. The previous
    test's engine is disposed by then; a connection it left open fails this within
    10 s instead of hanging.
    """
    with _connect(_migrated_postgres_database) as connection:
        connection.execute("SET lock_timeout = '10s'")
        tables = [
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
            )
        ]
        names = ", ".join(f'"{table}"' for table in tables)
        connection.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    return _migrated_postgres_database

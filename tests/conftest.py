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

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Most tests wait on processes, sockets and clocks, so more workers than cores pay:
# of 4, 6 and 8 on this project's 2-core machine (busy with other work), 6 did best.
WORKERS = 6


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


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards.

    Its name is random, so tests on parallel workers never share one. Skips when
    PostgreSQL is unreachable, unless REQUIRE_POSTGRES=1 (CI), where that is a failure.
    """
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(_admin_url())
    conninfo = {
        "host": admin.host or "127.0.0.1",
        "port": admin.port or 5432,
        "user": admin.username or "postgres",
        "dbname": admin.database or "test",
    }
    if admin.password:
        conninfo["password"] = admin.password
    try:
        connection = psycopg.connect(**conninfo, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but PostgreSQL is unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {admin.host}:{admin.port}: {exc}")
    name = f"isb_test_{uuid.uuid4().hex[:12]}"
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin.set(database=name).render_as_string(hide_password=False)
        finally:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

"""Shared fixtures (a fresh PostgreSQL database) and how the suite is spread over workers.

The suite runs on several pytest-xdist workers (``addopts`` in pyproject.toml,
``--dist loadgroup``). Two rules, applied here at collection, keep that correct and
short without any bookkeeping in the test modules:

- A module that uses a module-scoped (or class-scoped) fixture, such as the one bot
  process its integration tests share, runs whole on one worker, in file order.
  Every other test is scheduled on its own, so independent slow tests run side by side.
- Work starts with what waits longest: units holding a test marked ``slow`` first,
  then the rest of ``tests/integration``, then the unit tests, which are many and
  short and fill the gaps at the end. Mark a test (or a module, with ``pytestmark``)
  ``slow`` when it takes 10 s or more of wall time.

Run one file without workers: ``.venv/bin/pytest -n0 tests/test_config.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
_SHARED_SCOPES = {"class", "module", "package"}


def _shares_fixtures(item: pytest.Item) -> bool:
    """Whether the test uses a fixture that outlives it but not the worker's session."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs[-1].scope in _SHARED_SCOPES for defs in info.name2fixturedefs.values())


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    sharing_modules = {item.nodeid.split("::")[0] for item in items if _shares_fixtures(item)}
    units: list[str] = []  # the unit of work each item belongs to: a group or itself
    for item in items:
        module = item.nodeid.split("::")[0]
        if module in sharing_modules and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(module))
        group = item.get_closest_marker("xdist_group")
        units.append(str(group.args[0]) if group and group.args else item.nodeid)

    rank: dict[str, int] = {}
    for item, unit in zip(items, units, strict=True):
        if item.get_closest_marker("slow"):
            item_rank = 0
        elif item.nodeid.startswith("tests/integration/"):
            item_rank = 1
        else:
            item_rank = 2
        rank[unit] = min(rank.get(unit, 2), item_rank)
    # A stable sort: the tests of one unit stay together and in file order.
    order = sorted(range(len(items)), key=lambda index: rank[units[index]])
    items[:] = [items[index] for index in order]


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

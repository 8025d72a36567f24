"""Shared fixtures: the harness (simulator + emulator + real bot processes) and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import SlackUser

DEFAULT_TEST_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with Harness(tmp_path / "harness") as h:
        yield h


@pytest.fixture
def bot(harness: Harness) -> BotProcess:
    return harness.start_bot()


@pytest.fixture
def user(harness: Harness, bot: BotProcess) -> Iterator[SlackUser]:
    with harness.user(bot) as slack_user:
        yield slack_user


def _admin_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards.

    Skips when PostgreSQL is unreachable, unless REQUIRE_POSTGRES=1 (CI), where
    that is a failure.
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

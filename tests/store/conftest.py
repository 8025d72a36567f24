"""The store's tests run each on SQLite and on PostgreSQL, on an empty migrated database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from bot.store import Store
from bot.store.engine import make_engine


@pytest.fixture(
    params=[
        pytest.param("migrated_sqlite_url", id="sqlite"),
        pytest.param("migrated_postgres_url", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An engine on an empty database at the newest schema."""
    url: str = request.getfixturevalue(request.param)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store(engine)

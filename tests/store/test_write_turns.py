"""SQLite transactions of one process take turns (``bot/store/engine.py``: ``_WriteTurns``).

Whatever ends a transaction (commit, an error, a read left open, a connection
that breaks) must give the turn back: if one did not, the next transaction in
the process would wait for ever. Each check runs the next transaction in a
thread that must finish within a few seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from bot.store.engine import make_engine


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'turns.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO counter VALUES (0)"))
    yield engine
    engine.dispose()


def add_one(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE counter SET n = n + 1"))


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT n FROM counter")).scalar_one())


def finishes(work: Callable[[], object], seconds: float = 5.0) -> bool:
    """Whether ``work`` runs to its end, without an error, within ``seconds`` in a thread."""
    done = threading.Event()

    def run() -> None:
        work()
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return done.is_set()


def test_a_transaction_that_fails_gives_its_turn_back(engine: Engine) -> None:
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(text("UPDATE counter SET n = n + 1"))
        raise RuntimeError("a bug half-way through a write")

    assert finishes(lambda: add_one(engine))
    assert count(engine) == 1, "the failed transaction was rolled back"


def test_a_read_closed_without_commit_gives_its_turn_back(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT n FROM counter")).scalar_one()

    assert finishes(lambda: add_one(engine))


def test_one_connection_runs_transactions_one_after_another(engine: Engine) -> None:
    def twice() -> None:
        with engine.connect() as conn:
            conn.execute(text("UPDATE counter SET n = n + 1"))
            conn.rollback()
            conn.execute(text("UPDATE counter SET n = n + 1"))
            conn.commit()
            conn.execute(text("UPDATE counter SET n = n + 1"))
            conn.commit()

    assert finishes(twice), "a transaction waited for its own connection's last one"
    assert count(engine) == 2


def test_a_statement_sqlite_refuses_gives_its_turn_back(engine: Engine) -> None:
    with pytest.raises(Exception, match="no such table"), engine.begin() as conn:
        conn.execute(text("UPDATE missing SET n = 1"))

    assert finishes(lambda: add_one(engine))


def test_a_connection_invalidated_mid_transaction_gives_its_turn_back(engine: Engine) -> None:
    conn = engine.connect()
    conn.execute(text("UPDATE counter SET n = n + 1"))
    conn.invalidate()  # as SQLAlchemy does when the driver reports the connection broken

    assert finishes(lambda: add_one(engine)), "the broken connection kept the turn"
    conn.rollback()
    conn.close()
    assert count(engine) == 1, "the broken connection's write was lost, the next one kept"


def test_threads_writing_at_once_all_get_their_turn(engine: Engine) -> None:
    def writer() -> None:
        for _ in range(50):
            add_one(engine)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert not any(t.is_alive() for t in threads)
    assert count(engine) == 400

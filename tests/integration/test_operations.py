"""What an operator sees of a running bot: /healthz, /metrics and JSON logs.

One bot (LOG_FORMAT=json) serves the module; the PostgreSQL test starts its own.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import SlackUser, message_text, wait_for
from tests.integration.helpers import PATIENCE, final_reply

CHANNEL = "C0OPS"


HARNESS_ENV = {"LOG_FORMAT": "json"}
USER_CHANNEL = CHANNEL


def healthz(bot: BotProcess, timeout: float = 10) -> httpx.Response:
    return httpx.get(bot.url + "/healthz", timeout=timeout)


def healthy(bot: BotProcess) -> httpx.Response | None:
    answer = healthz(bot)
    return answer if answer.status_code == 200 else None


# --------------------------------------------------------------------------- /healthz


def test_healthz_reports_the_database_and_the_watchers_last_tick(bot: BotProcess) -> None:
    def ticked() -> httpx.Response | None:
        answer = healthz(bot)
        watcher = answer.json().get("watcher")
        ticked = isinstance(watcher, dict) and watcher.get("last_tick_seconds_ago") is not None
        return answer if ticked else None

    answer = wait_for(ticked, timeout=PATIENCE, description="a finished watcher tick")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert len(answer.content) < 1024, "a health answer is small"
    body = answer.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert "problems" not in body
    # The watcher ticks every 0.25 s here: its last tick is recent.
    assert 0 <= body["watcher"]["last_tick_seconds_ago"] < 5


def test_healthz_answers_503_with_the_reason_while_the_database_is_unusable(
    harness: Harness, bot: BotProcess
) -> None:
    database = harness.database_url.removeprefix("sqlite:///")
    # Another process holds SQLite's write lock: the bot can no longer use its database.
    blocker = sqlite3.connect(database, isolation_level=None, timeout=1)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        answer = healthz(bot, timeout=60)
        # The check gives the database 3 s; 15 s leaves room for a busy machine and is
        # still far from hanging (until the 60 s client timeout).
        assert time.monotonic() - started < 15, "the health check must not hang"
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == "unhealthy"
        assert body["database"] == "unreachable"
        assert [p for p in body["problems"] if p.startswith("database: ")], body
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # Once the database is usable again, so is the bot.
    answer = wait_for(lambda: healthy(bot), timeout=PATIENCE, description="200 once unlocked")
    assert answer.json()["database"] == "ok"


@pytest.mark.postgres
def test_healthz_answers_503_when_postgresql_refuses_connections(
    harness: Harness, postgres_url: str
) -> None:
    import psycopg

    bot = harness.start_bot(DATABASE_URL=postgres_url)
    try:
        assert healthz(bot).status_code == 200
        server, database = postgres_url.replace("+psycopg", "", 1).rsplit("/", 1)
        # From another database: PostgreSQL will not lock out the one it is connected to.
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            # The server stops taking connections to this database and drops the bot's.
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
            answer = healthz(bot)
            assert answer.status_code == 503
            body = answer.json()
            assert body["database"] == "unreachable"
            assert "database: OperationalError" in body["problems"]
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        answer = wait_for(lambda: healthy(bot), timeout=PATIENCE, description="200 once reopened")
        assert answer.json()["database"] == "ok"
    finally:
        bot.terminate()


# --------------------------------------------------------------------------- /metrics


def metrics(bot: BotProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed as Prometheus text: (name, labels) -> value."""
    answer = httpx.get(bot.url + "/metrics", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[tuple[str, Any], float], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def watched(samples: dict[tuple[str, Any], float]) -> dict[str, float]:
    return {
        dict(ls)["status"]: v
        for (n, ls), v in samples.items()
        if n == "import_status_watched_imports" and v
    }


def test_metrics_follow_a_watch_story(harness: Harness, bot: BotProcess, user: SlackUser) -> None:
    token = 63_001
    sim, emulator = harness.sim, harness.emulator
    sim.add_import(token, name="Metrics story", status="Staging", ValidationSuccessful=1_000)
    result = user.command(f"watch {token}")
    assert f"Watching import {token}" in message_text(final_reply(user, result))
    card = emulator.wait_for_message(CHANNEL, "Metrics story", timeout=PATIENCE)
    before = metrics(bot)
    assert watched(before) == {"Staging": 1.0}
    transitions_sent = total(
        before, "import_status_notifications_total", kind="transition", outcome="sent"
    )

    sim.update(token, Status="Processing", Processed=100)
    reply = wait_for(
        lambda: next(
            (m for m in emulator.thread(CHANNEL, card.ts) if "Processing" in m.text), None
        ),
        timeout=PATIENCE,
        description="the transition posted in the thread",
    )
    assert "Staging" in reply.text
    # Let the watcher tick a few more times, so every counter has moved on.
    ticks = total(metrics(bot), "import_status_tick_seconds_count")
    wait_for(
        lambda: total(metrics(bot), "import_status_tick_seconds_count") > ticks + 2,
        timeout=PATIENCE,
        description="more watcher ticks",
    )
    after = metrics(bot)
    assert (
        total(after, "import_status_notifications_total", kind="transition", outcome="sent")
        == transitions_sent + 1
    )
    assert watched(after) == {"Processing": 1.0}
    assert total(after, "import_status_polls_total") > total(before, "import_status_polls_total")
    assert total(after, "import_status_polls_total", outcome="changed") >= 1
    assert total(after, "import_status_tick_seconds_count") > total(
        before, "import_status_tick_seconds_count"
    )
    assert total(after, "import_status_api_latency_seconds_count") > total(
        before, "import_status_api_latency_seconds_count"
    )
    assert total(after, "import_status_commands_total", verb="watch") >= 1

    # Completed: the final message goes out, the watch ends, the gauge forgets the import.
    sim.update(token, Status="Completed", Processed=1_000)
    emulator.wait_for_message(CHANNEL, "finished", timeout=PATIENCE)
    wait_for(lambda: watched(metrics(bot)) == {}, timeout=PATIENCE, description="no watched import")
    final = metrics(bot)
    assert (
        total(final, "import_status_notifications_total", kind="transition", outcome="sent")
        == transitions_sent + 2
    )


# --------------------------------------------------------------------------- JSON logs


def test_every_log_line_is_json_and_watch_lines_carry_token_team_and_channel(
    harness: Harness, bot: BotProcess, user: SlackUser
) -> None:
    token = 63_002
    harness.sim.add_import(token, name="Log story", status="Processing")
    assert f"Watching import {token}" in message_text(
        final_reply(user, user.command(f"watch {token}"))
    )
    harness.emulator.wait_for_message(CHANNEL, "Log story", timeout=PATIENCE)
    harness.sim.inject_fault(503, token=token)  # one failed poll: a warning line

    def records() -> list[dict[str, Any]]:
        text = bot.log_text()
        complete = text[: text.rfind("\n") + 1]  # a line being written is read next time
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def logged(message: str) -> list[dict[str, Any]] | None:
        found = any(r["message"].startswith(message) and r.get("token") == token for r in records())
        return records() if found else None

    wait_for(lambda: logged("poll failed"), timeout=PATIENCE, description="a failed poll logged")
    harness.sim.update(token, Status="Completed")

    lines = wait_for(
        lambda: logged("notification sent"), timeout=PATIENCE, description="a sent line"
    )
    for record in lines:
        assert {"time", "level", "logger", "message"} <= set(record), record
        assert record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
    assert any(r["message"].startswith("listening on http://") for r in lines)
    failed_polls = [
        r for r in lines if r["message"].startswith("poll failed") and r.get("token") == token
    ]
    assert failed_polls and all(r["level"] == "WARNING" for r in failed_polls)
    watch_lines = [
        r
        for r in lines
        if r["message"] in ("watch started", "notification sent") and r.get("token") == token
    ]
    assert {r["message"] for r in watch_lines} == {"watch started", "notification sent"}
    for record in watch_lines:
        assert (record["token"], record["team"], record["channel"]) == (token, "T0001", CHANNEL)
        assert isinstance(record["token"], int)

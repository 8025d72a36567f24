"""The `import-status-bot` command line as an operator runs it: a real subprocess.

`status TOKEN` talks to a simulator served in this test process over real HTTP;
what is checked is what a terminal shows: stdout, one stderr line, the exit code.
Every run also checks that no secret appears anywhere in the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from bot.exit_codes import ExitCode
from bot.mypreferences import errors
from bot.sandbox.devserver import ServerThread
from bot.sandbox.mypreferences_simulator import Simulator, base_url, oauth_token_url
from tests.integration.helpers import status_calls_since

CLIENT_ID = "ACME"
# Recognisable secrets: if any of them shows up in any output, a test fails.
AUTHORIZATION = (
    "PNAUTHINFO3-HMAC-SHA256 Credential=ops/2026-01-01T00:00:00Z Signature=S3CRET-c2lnbmF0dXJl"
)
OAUTH_CLIENT_SECRET = "oauth-S3CRET-9c4f1d7e2b"
SECRETS = (AUTHORIZATION, "S3CRET-c2lnbmF0dXJl", OAUTH_CLIENT_SECRET)

_SCRIPT = Path(sys.executable).with_name("import-status-bot")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "bot"]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(
        client_id=CLIENT_ID, authorization=AUTHORIZATION, oauth_client_secret=OAUTH_CLIENT_SECRET
    )


@pytest.fixture(scope="module")
def sim_url(sim: Simulator) -> Iterator[str]:
    """Where the simulator listens (its server runs in this test process)."""
    with ServerThread(sim.app) as server:
        yield server.url


@pytest.fixture(autouse=True)
def _no_leftover_faults(sim: Simulator) -> Iterator[None]:
    yield
    sim.clear_faults()


def run_cli(sim_url: str | None, *args: str, **env: str) -> Run:
    """Run the console script with a clean environment pointed at the simulator."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "MYPREFERENCES_", "DATABASE_", "LOOKUP_", "HTTP_", "LOG_"))
    }
    if sim_url is not None:
        base.update(
            MYPREFERENCES_API_URL=base_url(sim_url),
            MYPREFERENCES_CLIENT_ID=CLIENT_ID,
            MYPREFERENCES_AUTHORIZATION=AUTHORIZATION,
            HTTP_TIMEOUT_SECONDS="1",
            LOOKUP_BUDGET_SECONDS="2",
        )
    base.update(env)
    started = time.monotonic()
    done = subprocess.run(
        [*COMMAND, *args], env=base, capture_output=True, text=True, timeout=60, check=False
    )
    run = Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)
    for secret in SECRETS:
        assert secret not in run.stdout + run.stderr, f"a secret was printed: {run!r}"
    return run


# --------------------------------------------------------------------------- status


def test_status_prints_name_status_and_counts_and_exits_0(sim: Simulator, sim_url: str) -> None:
    sim.add_import(
        4242,
        name="Spring list",
        status="Processing",
        expires=datetime.now(UTC) + timedelta(hours=2, minutes=5, seconds=30),
        TotalRecordsReceived=1_250_000,
        ValidationSuccessful=1_234_567,
        ValidationFailed=15_433,
        Processed=617_000,
    )

    run = run_cli(sim_url, "status", "4242")

    assert run.code == ExitCode.OK, run
    assert "Spring list  (import 4242)" in run.stdout
    assert "Processing" in run.stdout
    for count in ("1,250,000", "1,234,567", "15,433", "617,000"):
        assert count in run.stdout
    assert "Progress:" in run.stdout and "49%" in run.stdout
    assert "in 2 h 5 min" in run.stdout
    assert run.stderr_lines == []


def test_status_of_an_unknown_token_exits_2_with_one_line(sim: Simulator, sim_url: str) -> None:
    run = run_cli(sim_url, "status", "999999")

    assert run.code == ExitCode.NOT_FOUND
    assert run.stdout == ""
    assert run.stderr_lines == [
        f"import-status-bot: import 999999: {errors.TokenRejected.user_message}"
    ]


def test_status_of_an_expired_token_exits_2(sim: Simulator, sim_url: str) -> None:
    sim.add_import(4300, name="Gone", expires=datetime.now(UTC) - timedelta(minutes=1))

    run = run_cli(sim_url, "status", "4300")

    assert run.code == ExitCode.NOT_FOUND
    assert len(run.stderr_lines) == 1
    assert "does not recognise this access token, or it has expired" in run.stderr
    assert "Gone" not in run.stdout + run.stderr


def test_status_forbidden_exits_3(sim: Simulator, sim_url: str) -> None:
    sim.add_import(4301, name="Locked", status="Processing")
    sim.inject_fault(403, token=4301)

    run = run_cli(sim_url, "status", "4301")

    assert run.code == ExitCode.CONFIG
    assert run.stderr_lines == [
        f"import-status-bot: import 4301: {errors.PermissionDenied.user_message}"
    ]


def test_status_with_a_wrong_account_id_exits_3(sim: Simulator, sim_url: str) -> None:
    sim.add_import(4302, name="Elsewhere", status="Processing")

    run = run_cli(sim_url, "status", "4302", MYPREFERENCES_CLIENT_ID="NOT-ACME")

    assert run.code == ExitCode.CONFIG
    assert run.stderr_lines == [
        f"import-status-bot: import 4302: {errors.AccountNotFound.user_message}"
    ]


def test_status_without_a_client_id_exits_3_naming_the_variable(
    sim: Simulator, sim_url: str
) -> None:
    started = time.monotonic()

    run = run_cli(sim_url, "status", "4242", MYPREFERENCES_CLIENT_ID="")

    assert run.code == ExitCode.CONFIG
    assert len(run.stderr_lines) == 1
    assert "MYPREFERENCES_CLIENT_ID" in run.stderr_lines[0]
    assert run.stderr_lines[0].startswith("import-status-bot: configuration error:")
    assert status_calls_since(sim, started) == 0


def test_status_without_credentials_exits_3_naming_the_variable(
    sim: Simulator, sim_url: str
) -> None:
    run = run_cli(sim_url, "status", "4242", MYPREFERENCES_AUTHORIZATION="")

    assert run.code == ExitCode.CONFIG
    assert len(run.stderr_lines) == 1
    assert "MYPREFERENCES_AUTHORIZATION" in run.stderr_lines[0]


def test_status_when_the_api_is_down_exits_4(sim: Simulator, sim_url: str) -> None:
    sim.add_import(4303, name="Down", status="Processing")
    sim.inject_fault(503, token=4303, times=None)

    run = run_cli(sim_url, "status", "4303")

    assert run.code == ExitCode.UNAVAILABLE
    assert run.stderr_lines == [
        f"import-status-bot: import 4303: {errors.Unavailable.user_message}"
    ]
    assert sim.status_calls(4303) >= 2  # it retried before giving up


def test_status_when_the_api_never_answers_exits_4_within_the_lookup_budget(
    sim: Simulator, sim_url: str
) -> None:
    sim.add_import(4304, name="Silent", status="Processing")
    sim.inject_fault(token=4304, delay=40, times=None)

    # One attempt alone could wait HTTP_TIMEOUT_SECONDS (30 s); LOOKUP_BUDGET_SECONDS
    # bounds the whole lookup, retries included, as it does for a lookup in Slack.
    run = run_cli(sim_url, "status", "4304", HTTP_TIMEOUT_SECONDS="30", LOOKUP_BUDGET_SECONDS="1.5")

    assert run.code == ExitCode.UNAVAILABLE
    assert run.stderr_lines == [f"import-status-bot: import 4304: {errors.Timeout.user_message}"]
    # 1.5 s of budget, plus the start of a Python process on a machine that may be busy:
    # far below the 30 s one unbounded attempt would take.
    assert run.seconds < 15


# More spellings are covered by tests/slack/test_commands.py (parse_access_token).
@pytest.mark.parametrize("token", ["abc", "12.5", "0", "٤٢"])
def test_status_with_a_bad_token_exits_64_without_calling_the_api(
    sim: Simulator, sim_url: str, token: str
) -> None:
    started = time.monotonic()

    run = run_cli(sim_url, "status", token)

    assert run.code == ExitCode.USAGE
    assert len(run.stderr_lines) == 1
    assert "access token" in run.stderr_lines[0]
    assert "`" not in run.stderr_lines[0]  # Slack's markup is not for the terminal
    assert status_calls_since(sim, started) == 0


def test_status_in_oauth_mode_with_debug_logging_prints_no_secret(
    sim: Simulator, sim_url: str
) -> None:
    sim.add_import(4305, name="Bearer", status="Queued", ValidationSuccessful=9_000)
    before = sim.token_requests

    run = run_cli(
        sim_url,
        "status",
        "4305",
        MYPREFERENCES_AUTHORIZATION="",
        MYPREFERENCES_OAUTH_TOKEN_URL=oauth_token_url(sim_url),
        MYPREFERENCES_OAUTH_CLIENT_ID=sim.oauth_client_id,
        MYPREFERENCES_OAUTH_CLIENT_SECRET=OAUTH_CLIENT_SECRET,
        MYPREFERENCES_OAUTH_SCOPE="ACME/tester",
        LOG_LEVEL="DEBUG",
    )

    assert run.code == ExitCode.OK, run
    assert "Bearer  (import 4305)" in run.stdout and "9,000" in run.stdout
    assert sim.token_requests == before + 1
    # run_cli checked the secrets; the bearer token the simulator issued is not shown either.
    assert "Authorization" not in run.stdout + run.stderr


def test_errors_with_debug_logging_print_no_secret(sim: Simulator, sim_url: str) -> None:
    sim.add_import(4306, name="Noisy", status="Processing")
    sim.inject_fault(403, token=4306)

    run = run_cli(sim_url, "status", "4306", LOG_LEVEL="DEBUG")

    assert run.code == ExitCode.CONFIG
    assert "DEBUG" in run.stderr  # the debug lines were written, and run_cli found no secret


# --------------------------------------------------------------------------- migrate


def test_migrate_creates_the_schema_in_a_fresh_file_and_is_idempotent(tmp_path: Path) -> None:
    database = tmp_path / "fresh.db"
    url = f"sqlite:///{database}"
    assert not database.exists()

    first = run_cli(None, "migrate", DATABASE_URL=url)
    second = run_cli(None, "migrate", DATABASE_URL=url)

    assert first.code == ExitCode.OK and second.code == ExitCode.OK, (first, second)
    assert first.stdout.startswith("database is at schema revision ")
    assert second.stdout == first.stdout
    engine = create_engine(url)
    try:
        tables = set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            imports = conn.execute(text("SELECT COUNT(*) FROM imports")).scalar_one()
    finally:
        engine.dispose()
    assert {"imports", "subscriptions", "notifications", "alembic_version"} <= tables
    assert first.stdout.strip().endswith(revision)
    assert imports == 0


def test_migrate_with_a_malformed_database_url_exits_3_naming_the_variable() -> None:
    run = run_cli(None, "migrate", DATABASE_URL="mysql://nope")

    assert run.code == ExitCode.CONFIG
    assert len(run.stderr_lines) == 1
    assert "DATABASE_URL" in run.stderr_lines[0]

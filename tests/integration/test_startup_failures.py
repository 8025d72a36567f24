"""Every start-up failure an operator can cause, as the operator sees it.

Each test runs the real program (`python -m bot`) and checks what a terminal or a
container log shows: exactly one line on stderr that says what to fix, exit code 3,
no traceback, and no secret anywhere in the output. The database password is
URL-encoded (`%40`, `%25`) throughout, since that once crashed Alembic's config parser
and printed it.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from bot.exit_codes import ExitCode
from bot.sandbox.devserver import ServerThread
from bot.sandbox.mypreferences_simulator import Simulator, base_url
from bot.store.engine import make_engine

pytestmark = pytest.mark.slow

# The password as written in DATABASE_URL and as the driver receives it.
PASSWORD_ENCODED = "S3cr%40t%25pw"
PASSWORD = "S3cr@t%pw"
SLACK_TOKEN = "xoxb-startup-S3CRET-token"
SIGNING_SECRET = "startup-S3CRET-signing"
AUTHORIZATION = "PNAUTHINFO3 startup-S3CRET-authorization"
# Any of these in any output fails the test.
SECRETS = ("S3cr", "S3CRET", "%40t", "@t%pw")
_LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def bot_env(**settings: str) -> dict[str, str]:
    """Everything `serve` needs, with nothing of the test process's own settings."""
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLACK_", "MYPREFERENCES_", "DATABASE_", "LOG_"))
        and key not in ("HOST", "PORT", "TMPDIR")
    }
    return {
        **base,
        "SLACK_BOT_TOKEN": SLACK_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": "http://127.0.0.1:9/api/",
        "MYPREFERENCES_CLIENT_ID": "ACME",
        "MYPREFERENCES_AUTHORIZATION": AUTHORIZATION,
        "MYPREFERENCES_API_URL": "http://127.0.0.1:9/Profiles/",
        "HOST": "127.0.0.1",
        "PORT": "0",
        **settings,
    }


def run_bot(
    *args: str, cwd: Path, as_plain_user: bool = False, timeout: float = 60, **settings: str
) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "bot", *args],
        env=bot_env(**settings),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=_drop_root_file_access if as_plain_user and os.geteuid() == 0 else None,
    )
    run = Run(done.returncode, done.stdout, done.stderr)
    for secret in SECRETS:
        assert secret not in run.stdout + run.stderr, f"a secret was printed: {run!r}"
    return run


def assert_one_line_error(run: Run, *expected: str) -> str:
    """Exit 3, nothing on stdout, one stderr line holding each expected fragment."""
    assert run.code == ExitCode.CONFIG, run
    assert "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr_lines) == 1, run.stderr
    (line,) = run.stderr_lines
    assert line.startswith("import-status-bot: "), line
    for fragment in expected:
        assert fragment in line, line
    assert run.stdout == "", run
    return line


def _drop_root_file_access() -> None:
    """Run as root without the capabilities that let it write anything (a child only).

    The tests run as root here, and root writes through any file mode; without
    CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER it meets file modes as the
    image's uid 10001 does.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for capability in (1, 2, 3):
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _postgres(url: str, *, user: str | None = None, database: str | None = None) -> str:
    """The fixture's database URL with the test password (and another user or database)."""
    parsed = make_url(url)
    return (
        f"{parsed.drivername}://{user or parsed.username}:{PASSWORD_ENCODED}"
        f"@{parsed.host}:{parsed.port or 5432}/{database or parsed.database}"
    )


# --------------------------------------------------------------- URL-encoded passwords


def test_the_password_is_decoded_for_the_driver_and_both_forms_are_redacted() -> None:
    from bot.config import load_settings

    url = f"postgresql+psycopg://bot:{PASSWORD_ENCODED}@db.example:5432/bot"

    engine = make_engine(url)

    assert engine.url.password == PASSWORD
    assert PASSWORD not in repr(engine.url) and PASSWORD_ENCODED not in repr(engine.url)
    # what the log redaction replaces
    assert {PASSWORD, PASSWORD_ENCODED} <= set(load_settings({"DATABASE_URL": url}).secrets())
    engine.dispose()


@pytest.mark.postgres
def test_percent_encoded_password_migrates_serves_and_looks_up(
    postgres_url: str, tmp_path: Path
) -> None:
    database_url = _postgres(postgres_url)

    migrated = run_bot("migrate", cwd=tmp_path, DATABASE_URL=database_url)
    assert migrated.code == ExitCode.OK, migrated
    assert "database is at schema revision" in migrated.stdout

    # serve, with every log line at DEBUG, until /healthz answers
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve"],
            env=bot_env(DATABASE_URL=database_url, LOG_LEVEL="DEBUG"),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        port = _wait_for_port(process, log_path)
        health = _healthz(f"http://127.0.0.1:{port}/healthz")
        assert health["database"] == "ok", health
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
    output = log_path.read_text()
    assert code == ExitCode.OK, output
    for secret in SECRETS:
        assert secret not in output

    sim = Simulator(client_id="ACME", authorization=AUTHORIZATION)
    sim.add_import(5150, name="Autumn list", status="Completed")
    with ServerThread(sim.app) as server:
        status = run_bot(
            "status",
            "5150",
            cwd=tmp_path,
            DATABASE_URL=database_url,
            MYPREFERENCES_API_URL=base_url(server.url),
        )
    assert status.code == ExitCode.OK, status
    assert "Autumn list" in status.stdout


def _healthz(url: str) -> dict[str, object]:
    """/healthz's body once it answers 200 (the port is logged just before uvicorn listens)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return dict(json.load(answer))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _LISTENING.search(log_path.read_text(errors="replace"))
        if found:
            return found.group(2)
        assert process.poll() is None, f"serve exited:\n{log_path.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"serve never said it was listening:\n{log_path.read_text()}")


# --------------------------------------------------------------------- the database


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_unreachable_postgres_is_one_line_naming_the_variable(command: str, tmp_path: Path) -> None:
    url = f"postgresql+psycopg://bot:{PASSWORD_ENCODED}@127.0.0.1:{_free_port()}/bot"

    run = run_bot(command, cwd=tmp_path, DATABASE_URL=url)

    line = assert_one_line_error(run, "DATABASE_URL", "cannot connect", "127.0.0.1")
    assert "refused" in line.lower()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"user": "no_such_role"}, 'role "no_such_role" does not exist'),
        ({"database": "no_such_database"}, 'database "no_such_database" does not exist'),
    ],
    ids=["unknown-role", "unknown-database"],
)
def test_postgres_refusing_the_connection_is_one_line(
    postgres_url: str, tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    url = _postgres(postgres_url, **change)

    for command in ("serve", "migrate"):
        run = run_bot(command, cwd=tmp_path, DATABASE_URL=url)

        assert_one_line_error(run, "DATABASE_URL", expected)


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_a_data_folder_the_user_cannot_write_says_which_folder_and_uid(
    command: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)  # as a root-owned volume looks to uid 10001
    try:
        run = run_bot(
            command,
            cwd=tmp_path,
            as_plain_user=True,
            DATABASE_URL=f"sqlite:///{data}/import-status-bot.db",
        )
    finally:
        data.chmod(0o755)

    assert_one_line_error(run, "DATABASE_URL", f"make {data} writable by uid {os.getuid()}")
    assert not (data / "import-status-bot.db").exists()


def test_an_exceptions_dir_the_user_cannot_write_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        run = run_bot(
            "serve",
            cwd=tmp_path,
            as_plain_user=True,
            DATABASE_URL=f"sqlite:///{tmp_path}/import-status-bot.db",
            EXCEPTIONS_DIR=str(locked),
        )
    finally:
        locked.chmod(0o700)

    assert_one_line_error(run, "EXCEPTIONS_DIR", f"{str(locked)!r} is not writable by the bot")
    assert not (tmp_path / "import-status-bot.db").exists()


def test_a_database_file_the_user_cannot_write_names_the_file(tmp_path: Path) -> None:
    database = tmp_path / "import-status-bot.db"
    first = run_bot("migrate", cwd=tmp_path, DATABASE_URL=f"sqlite:///{database}")
    assert first.code == ExitCode.OK, first
    for path in tmp_path.glob("import-status-bot.db*"):
        path.chmod(0o444)

    run = run_bot("serve", cwd=tmp_path, as_plain_user=True, DATABASE_URL=f"sqlite:///{database}")

    assert_one_line_error(
        run, "DATABASE_URL", f"cannot write {database}", f"writable by uid {os.getuid()}"
    )


def test_a_read_only_sqlite_uri_is_one_line(tmp_path: Path) -> None:
    database = tmp_path / "bot.db"
    database.touch()

    for command in ("serve", "migrate"):
        run = run_bot(
            command, cwd=tmp_path, DATABASE_URL=f"sqlite:///file:{database}?mode=ro&uri=true"
        )

        assert_one_line_error(run, "DATABASE_URL", "read-only (mode=ro)")


def test_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"

    run = run_bot("serve", cwd=tmp_path, DATABASE_URL=f"sqlite:///{missing}/bot.db")

    assert_one_line_error(run, "DATABASE_URL", f"the folder {missing} does not exist")


# ------------------------------------------------------------------------- the port


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def test_a_port_already_taken_is_one_line(taken_port: int, tmp_path: Path) -> None:
    run = run_bot(
        "serve",
        cwd=tmp_path,
        PORT=str(taken_port),
        DATABASE_URL=f"sqlite:///{tmp_path}/bot.db",
    )

    assert_one_line_error(run, f"PORT: {taken_port} is already in use", "set PORT")


# --------------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("PORT", "http", "PORT: expected a whole number"),
        ("PORT", "70000", "PORT: expected a whole number of at most 65535"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL: expected one of"),
        ("SLACK_BOT_TOKEN", "S3CRET-not-a-bot-token", "SLACK_BOT_TOKEN: expected a value"),
        ("DATABASE_URL", f"mysql://bot:{PASSWORD_ENCODED}@db/bot", "DATABASE_URL: expected"),
        ("DATABASE_URL", "postgresql+psycopg://bot:S3cr@t@db/bot", "encode an @"),
        ("DATABASE_URL", f"postgresql+psycopg://bot:{PASSWORD_ENCODED}@db:S3cr/bot", "URL-enc"),
        ("DATABASE_URL", f"postgresql+nosuch://bot:{PASSWORD_ENCODED}@db/bot", "no driver"),
        (
            "DATABASE_URL",
            f"postgresql+psycopg://bot:{PASSWORD_ENCODED}@127.0.0.1:9/bot?bogus=1",
            'invalid connection option "bogus"',
        ),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    setting: str, value: str, expected: str, tmp_path: Path
) -> None:
    settings = {"DATABASE_URL": f"sqlite:///{tmp_path}/bot.db", setting: value}

    run = run_bot("serve", cwd=tmp_path, **settings)

    assert_one_line_error(run, expected)
    assert value not in run.stderr or setting in ("PORT", "LOG_LEVEL")

"""`import-status-bot exceptions TOKEN [--out FILE]` as an operator runs it: a real subprocess.

The simulator is served in this test process over real HTTP; what is checked is what
the terminal shows (stdout, one stderr line, the exit code) and the file written.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.exit_codes import ExitCode
from bot.sandbox.devserver import ServerThread
from bot.sandbox.mypreferences_simulator import (
    Simulator,
    base_url,
    expected_reasons,
    generated_exception,
)
from tests.integration.test_cli import AUTHORIZATION, CLIENT_ID, COMMAND, SECRETS, Run


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(client_id=CLIENT_ID, authorization=AUTHORIZATION)


@pytest.fixture(scope="module")
def sim_url(sim: Simulator) -> Iterator[str]:
    with ServerThread(sim.app) as server:
        yield server.url


def run(sim_url: str, cwd: Path, *args: str, **env: str) -> Run:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "MYPREFERENCES_", "DATABASE_", "LOOKUP_", "EXCEPTIONS_"))
    }
    base.update(
        MYPREFERENCES_API_URL=base_url(sim_url),
        MYPREFERENCES_CLIENT_ID=CLIENT_ID,
        MYPREFERENCES_AUTHORIZATION=AUTHORIZATION,
        HTTP_TIMEOUT_SECONDS="2",
        LOOKUP_BUDGET_SECONDS="4",
        EXCEPTIONS_REQUESTS_PER_SECOND="50",
    )
    base.update(env)
    done = subprocess.run(
        [*COMMAND, "exceptions", *args],
        env=base,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    result = Run(done.returncode, done.stdout, done.stderr, 0.0)
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def rows(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))


def finished(sim: Simulator, token: int, exceptions: int) -> None:
    sim.add_import(
        token,
        name="Spring list",
        status="Completed",
        ValidationSuccessful=10_000,
        Processed=10_000 - exceptions,
        Exceptions=exceptions,
        exception_count=exceptions,
    )


def test_the_csv_is_written_masked_by_default_and_the_summary_printed(
    sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    finished(sim, 7001, 2500)
    done = run(sim_url, tmp_path, "7001", EXCEPTIONS_PAGE_SIZE="1000")
    assert done.code == ExitCode.OK, done.stderr
    written = tmp_path / "import-7001-exceptions.csv"
    table = rows(written)
    assert len(table) == 2501 and table[0][:3] == ["RecordNumber", "ProfileId", "EmailAddress"]
    email = str(generated_exception(1)["EmailAddress"])
    assert table[1][2] != email and table[1][2].endswith("@example.com") and "***" in table[1][2]
    assert email not in written.read_text(encoding="utf-8-sig")
    top = max(expected_reasons(2500).items(), key=lambda item: item[1])
    assert top == ("Invalid email address", 1000)
    assert "Exceptions of Spring list  (import 7001): 2,500 records" in done.stdout
    assert "1,000   40%  Invalid email address" in done.stdout
    assert (
        f"Wrote 2,500 records to {written} (personal data masked; "
        "--full writes them as MyPreferences sent them)." in done.stdout
    )
    assert email not in done.stdout
    assert [p.name for p in tmp_path.iterdir()] == [written.name]  # no spool left behind


@pytest.mark.parametrize(
    ("setting", "flags", "words"),
    [
        (None, ["--full"], "(personal data as sent; --full)."),
        ("full", [], "(personal data as sent; EXCEPTIONS_FILE=full)."),
        ("redacted", ["--full"], "(personal data as sent; --full)."),
    ],
)
def test_full_writes_the_records_as_sent_only_when_asked(
    sim: Simulator,
    sim_url: str,
    tmp_path: Path,
    setting: str | None,
    flags: list[str],
    words: str,
) -> None:
    finished(sim, 7007, 30)
    env = {"EXCEPTIONS_FILE": setting} if setting else {}
    done = run(sim_url, tmp_path, "7007", *flags, **env)
    assert done.code == ExitCode.OK, done.stderr
    table = rows(tmp_path / "import-7007-exceptions.csv")
    assert table[1][2] == generated_exception(1)["EmailAddress"]  # as MyPreferences sent it
    assert words in done.stdout


def test_none_still_writes_a_redacted_file_and_says_so(
    sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    finished(sim, 7008, 30)
    done = run(sim_url, tmp_path, "7008", EXCEPTIONS_FILE="none")
    assert done.code == ExitCode.OK, done.stderr
    table = rows(tmp_path / "import-7008-exceptions.csv")
    assert len(table) == 31 and "***" in table[1][2]
    assert "(personal data masked;" in done.stdout
    assert "EXCEPTIONS_FILE is none, which keeps files out of Slack" in done.stdout
    assert "this command writes one anyway, redacted." in done.stdout


def test_a_gz_name_compresses_the_masked_file(sim: Simulator, sim_url: str, tmp_path: Path) -> None:
    finished(sim, 7002, 30)
    out = tmp_path / "kept.csv.gz"
    done = run(sim_url, tmp_path, "7002", "--out", str(out))
    assert done.code == ExitCode.OK, done.stderr
    table = rows(out)
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert len(table) == 31 and "@example.com" in table[1][2] and "***" in table[1][2]
    assert "example.com" not in done.stdout.replace("***@example.com", "")


@pytest.mark.parametrize(
    ("token", "words"),
    [
        (7404, "does not recognise this access token, or it has expired"),
        (7405, "does not recognise this access token, or it has expired"),
    ],
)
def test_unknown_and_expired_tokens_get_clear_words_and_no_file(
    sim: Simulator, sim_url: str, tmp_path: Path, token: int, words: str
) -> None:
    if token == 7405:
        sim.add_import(token, exception_count=10, expires=datetime.now(UTC) - timedelta(minutes=1))
    done = run(sim_url, tmp_path, str(token))
    assert done.code == ExitCode.NOT_FOUND
    assert len(done.stderr_lines) == 1 and words in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_import_without_failures_says_so_and_writes_nothing(
    sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    sim.add_import(7003, status="Completed", ValidationSuccessful=10, Processed=10)
    done = run(sim_url, tmp_path, "7003")
    assert done.code == ExitCode.OK
    assert "Import 7003 has no failed records" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_never_overwritten(
    sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    finished(sim, 7004, 5)
    out = tmp_path / "mine.csv"
    out.write_text("precious")
    done = run(sim_url, tmp_path, "7004", "--out", str(out))
    assert done.code == ExitCode.USAGE and "exists; not overwriting it" in done.stderr
    assert out.read_text() == "precious"
    missing = run(sim_url, tmp_path, "7004", "--out", str(tmp_path / "no" / "such.csv"))
    assert missing.code == ExitCode.USAGE and "no such directory" in missing.stderr


def test_a_malformed_token_is_a_usage_error(sim_url: str, tmp_path: Path) -> None:
    done = run(sim_url, tmp_path, "12ab")
    assert done.code == ExitCode.USAGE and "whole number" in done.stderr


def test_paging_that_fails_midway_keeps_what_came_and_says_so(
    sim: Simulator, sim_url: str, tmp_path: Path
) -> None:
    finished(sim, 7006, 2500)
    sim.inject_fault(500, token=7006, endpoint="exceptions", after=1, times=None)
    try:
        done = run(sim_url, tmp_path, "7006", LOOKUP_BUDGET_SECONDS="1")
    finally:
        sim.clear_faults()
    assert done.code == ExitCode.OK, done.stderr
    assert "Partial: 1,000 of 2,500 records; MyPreferences stopped answering (HTTP 500)." in (
        done.stdout
    )
    table = rows(tmp_path / "import-7006-exceptions.csv")
    assert table[-1] == [
        "# partial: 1,000 of 2,500 records; MyPreferences stopped answering (HTTP 500)"
    ]

"""`/import-status TOKEN` end to end: signed slash commands to the real bot process.

The simulator (MyPreferences) and the emulator (Slack) are separate HTTP servers;
the bot is a real ``import-status-bot serve`` subprocess. One harness and one bot
serve the whole module; bots with other settings (another account id, a slow API
budget, OAuth) share the harness and start only when a test needs them.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.mypreferences import errors
from bot.sandbox.harness import Harness
from bot.sandbox.mypreferences_simulator import oauth_token_url
from bot.sandbox.slack_emulator import CommandResult, SlackUser, message_text
from bot.slack.render import USAGE_LINE
from tests.integration.helpers import PATIENCE, db_rows, final_reply, status_calls_since

# Short limits keep the error paths quick: every attempt is cut after 3 s and a
# lookup gives up after 5 s. They are not shorter because the machine may be busy:
# a 503 that takes more than HTTP_TIMEOUT_SECONDS to arrive reads as a timeout.
# The rate limit is lifted so many lookups by one user in one module are never refused.
HARNESS_ENV = {
    "HTTP_TIMEOUT_SECONDS": "3",
    "LOOKUP_BUDGET_SECONDS": "5",
    "LOOKUP_RATE_LIMIT": "100000",
}
ZWJ = "\u200d"  # render.escape puts it around '_' and '*' in outside text


def visible(message: Any) -> str:
    """What the user reads: every text in the message, without the escaping joiners."""
    return message_text(message).replace(ZWJ, "")


def final_answer(
    user: SlackUser, result: CommandResult, timeout: float = PATIENCE
) -> dict[str, Any]:
    """The answer the user ends up with: the ack itself, or the respond() after "Looking up…"."""
    assert result.status_code == 200
    assert result.ack_seconds < 3, f"ack took {result.ack_seconds:.2f} s"
    return final_reply(user, result, timeout=timeout)


def expires_in(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


# --------------------------------------------------------------------------- success


def test_lookup_shows_name_status_counts_progress_and_relative_expiry(
    harness: Harness, user: SlackUser
) -> None:
    harness.sim.add_import(
        4242,
        name="Spring newsletter opt-ins",
        status="Processing",
        expires=expires_in(hours=3, minutes=10, seconds=30),
        TotalRecordsReceived=2_500_000,
        ValidationSuccessful=2_400_000,
        ValidationFailed=100_000,
        Processed=1_200_000,
        Pending=7_000,
        Exceptions=12_345,
        NotHonored=1_000,
    )
    calls = harness.sim.status_calls(4242)

    result = user.command("4242")

    # With a quick API the status is the acknowledgement itself (well inside 3 s).
    answer = final_answer(user, result)
    shown = visible(answer)
    assert "Spring newsletter opt-ins" in shown
    assert "4242" in shown
    assert ":gear: Processing" in shown
    for count in ("2,500,000", "2,400,000", "100,000", "1,200,000", "7,000", "12,345", "1,000"):
        assert count in shown
    # (1,200,000 + 12,345 + 1,000) of 2,400,000 validated = 50.5 %, floored.
    assert "▓▓▓▓▓▓▓▓▓▓░░░░░░░░░░ 50%" in shown
    assert "1,213,345 of 2,400,000 records" in shown
    assert "Token expires in 3 h 10 min" in shown
    assert "<!date^" in shown  # the absolute time, formatted by Slack for each reader
    assert answer["response_type"] == "ephemeral"
    assert harness.sim.status_calls(4242) == calls + 1


def test_lookup_of_a_staging_import_has_no_progress_bar(harness: Harness, user: SlackUser) -> None:
    harness.sim.add_import(4243, name="Staging list", status="Staging", TotalRecordsReceived=3_400)

    shown = visible(final_answer(user, user.command("4243")))

    assert ":inbox_tray: Staging" in shown and "3,400" in shown
    assert "%" not in shown and "▓" not in shown and "░" not in shown


def test_leading_zeros_and_surrounding_spaces_still_find_the_import(
    harness: Harness, user: SlackUser
) -> None:
    harness.sim.add_import(4244, name="Zero padded", status="Queued")

    shown = visible(final_answer(user, user.command("  004244  ")))

    assert "Zero padded" in shown and "Queued" in shown


# --------------------------------------------------------------------------- API errors


def test_unknown_token_tells_the_user_it_is_unknown_or_expired(
    harness: Harness, user: SlackUser
) -> None:
    shown = visible(final_answer(user, user.command("987654")))

    assert "Import 987654" in shown
    assert errors.TokenRejected.user_message in shown
    assert "Traceback" not in shown


def test_expired_token_tells_the_user_it_is_unknown_or_expired(
    harness: Harness, user: SlackUser
) -> None:
    harness.sim.add_import(5001, name="Old import", status="Staging", expires=expires_in(hours=-1))

    shown = visible(final_answer(user, user.command("5001")))

    assert errors.TokenRejected.user_message in shown
    assert "Old import" not in shown


def test_forbidden_says_the_api_user_lacks_permission(harness: Harness, user: SlackUser) -> None:
    harness.sim.add_import(5002, name="Secret import", status="Processing")
    harness.sim.inject_fault(403, token=5002)

    shown = visible(final_answer(user, user.command("5002")))

    assert errors.PermissionDenied.user_message in shown
    assert "Secret import" not in shown


def test_wrong_account_id_says_to_check_the_client_id(harness: Harness) -> None:
    harness.sim.add_import(5003, name="Right account only", status="Processing")
    wrong_account = harness.start_bot(MYPREFERENCES_CLIENT_ID="NOT-ACME")
    with harness.user(wrong_account) as someone:
        shown = visible(final_answer(someone, someone.command("5003")))

    assert errors.AccountNotFound.user_message in shown
    assert "MYPREFERENCES_CLIENT_ID" in shown
    assert "Right account only" not in shown


def test_service_unavailable_after_retries_says_try_again_later(
    harness: Harness, user: SlackUser
) -> None:
    harness.sim.add_import(5004, name="Unlucky", status="Processing")
    harness.sim.inject_fault(503, token=5004, times=None)

    shown = visible(final_answer(user, user.command("5004")))

    assert errors.Unavailable.user_message in shown
    assert harness.sim.status_calls(5004) >= 2  # it did retry before giving up


def test_timeout_on_every_attempt_says_the_api_did_not_answer(
    harness: Harness, user: SlackUser
) -> None:
    harness.sim.add_import(5005, name="Slow", status="Processing")
    # Longer than HTTP_TIMEOUT_SECONDS (3 s) and the whole budget, on every attempt.
    harness.sim.inject_fault(token=5005, delay=10, times=None)

    result = user.command("5005")
    shown = visible(final_answer(user, result))

    assert result.ack_body["text"] == "Looking up import 5005…"
    assert errors.Timeout.user_message in shown


def test_malformed_json_says_the_answer_could_not_be_read(
    harness: Harness, user: SlackUser
) -> None:
    harness.sim.add_import(5006, name="Garbled", status="Processing")
    harness.sim.inject_fault(token=5006, malformed=True, times=None)

    shown = visible(final_answer(user, user.command("5006")))

    assert errors.MalformedResponse.user_message in shown


@pytest.mark.slow
def test_ack_stays_fast_when_the_api_takes_ten_seconds(harness: Harness) -> None:
    harness.sim.add_import(5007, name="Patience", status="Processing", ValidationSuccessful=10_000)
    patient = harness.start_bot(HTTP_TIMEOUT_SECONDS=15, LOOKUP_BUDGET_SECONDS=20)
    harness.sim.inject_fault(token=5007, delay=10, times=None)

    with harness.user(patient) as someone:
        result = someone.command("5007")
        assert result.status_code == 200
        assert result.ack_seconds < 3
        assert result.ack_body["text"] == "Looking up import 5007…"
        assert result.ack_body["response_type"] == "ephemeral"
        answer = someone.wait_response(result, timeout=PATIENCE)

    shown = visible(answer)
    assert "Patience" in shown and ":gear: Processing" in shown and "10,000" in shown
    assert answer["response_type"] == "ephemeral"
    assert answer["replace_original"] is False


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("typed", "explanation"),
    [
        ("abc", "An access token is a whole number"),
        ("0", "An access token is a positive number"),
        ("-5", "An access token is a positive number"),
        ("12.5", "An access token is a whole number"),
        ("٤٢", "An access token is a whole number"),  # Arabic-Indic digits
        ("1" * 30, "That access token is too long to be real"),
        ("12 34", "I did not understand that"),
        ("watch abc", "An access token is a whole number"),
        ("subscribe", "`subscribe` needs an access token, or up to 20"),
        ("unwatch 0", "An access token is a positive number"),
        ("list everything", "`list` takes no arguments"),
        ("x" * 501, "That text is too long"),
    ],
)
def test_invalid_text_gets_an_explanation_and_usage_without_calling_the_api(
    harness: Harness, user: SlackUser, typed: str, explanation: str
) -> None:
    started = time.monotonic()

    result = user.command(typed)

    assert result.status_code == 200 and result.ack_seconds < 3
    shown = visible(result.ack_body)
    assert f":warning: {explanation}" in shown
    assert USAGE_LINE in shown
    assert result.ack_body["response_type"] == "ephemeral"
    assert status_calls_since(harness.sim, started) == 0
    assert harness.emulator.responses(result.response_url or "") == []


@pytest.mark.parametrize("typed", ["", "   ", "help", "HELP"])
def test_empty_text_and_help_show_usage_with_examples(user: SlackUser, typed: str) -> None:
    result = user.command(typed)

    assert result.status_code == 200
    shown = visible(result.ack_body)
    assert USAGE_LINE in shown
    assert "/import-status 12345" in shown
    assert "/import-status watch 12345" in shown
    assert "/import-status list" in shown
    assert ":warning:" not in shown


def _row_counts(harness: Harness) -> dict[str, int]:
    return {
        table: db_rows(harness, f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]
        for table in ("imports", "subscriptions", "notifications")
    }


def test_bad_input_stores_nothing(harness: Harness, user: SlackUser) -> None:
    assert Path(harness.database_url.removeprefix("sqlite:///")).exists()
    started = time.monotonic()

    for typed in ("watch abc", "subscribe 0", "watch ٤٢", "unwatch -1", "watch 12 12", "4242x"):
        result = user.command(typed)
        assert result.status_code == 200
        assert USAGE_LINE in visible(result.ack_body)

    assert _row_counts(harness) == {
        "imports": 0,
        "subscriptions": 0,
        "notifications": 0,
    }
    assert status_calls_since(harness.sim, started) == 0
    assert harness.emulator.calls("chat.postMessage") == []


# --------------------------------------------------------------------------- OAuth


def test_oauth_mode_looks_up_and_refreshes_once_after_revocation(harness: Harness) -> None:
    sim = harness.sim
    sim.add_import(6001, name="Bearer import", status="Processing", ValidationSuccessful=2_000)
    oauth_bot = harness.start_bot(
        MYPREFERENCES_AUTHORIZATION="",
        MYPREFERENCES_OAUTH_TOKEN_URL=oauth_token_url(harness.sim_server.url),
        MYPREFERENCES_OAUTH_CLIENT_ID=sim.oauth_client_id,
        MYPREFERENCES_OAUTH_CLIENT_SECRET=sim.oauth_client_secret,
        MYPREFERENCES_OAUTH_SCOPE="ACME/tester",
    )
    token_requests = sim.token_requests

    with harness.user(oauth_bot) as someone:
        first = visible(final_answer(someone, someone.command("6001")))
        assert "Bearer import" in first and "2,000" in first
        assert sim.token_requests == token_requests + 1
        assert sim.last_token_scope == "ACME/tester"

        sim.revoke_oauth_tokens()
        calls = sim.status_calls(6001)
        second = visible(final_answer(someone, someone.command("6001")))

    assert "Bearer import" in second and errors.TokenRejected.user_message not in second
    # One 401 with the revoked bearer, one fresh token, one retry that succeeds.
    assert sim.token_requests == token_requests + 2
    assert sim.status_calls(6001) == calls + 2
    # The bearer token and the client secret never reach the log.
    log = oauth_bot.log_text()
    assert sim.oauth_client_secret not in log
    assert not re.search(r"Bearer [A-Za-z0-9_\-]{20,}", log)

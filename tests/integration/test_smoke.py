"""The shortest end-to-end path: a signed /import-status over real HTTP."""

from bot.sandbox.harness import Harness
from bot.sandbox.slack_emulator import SlackUser, message_text
from tests.integration.helpers import final_reply


def test_lookup_over_real_http_shows_name_status_and_counts(
    harness: Harness, user: SlackUser
) -> None:
    harness.sim.add_import(
        4242,
        name="Spring list",
        status="Processing",
        ValidationSuccessful=1_234_567,
        Processed=1_000,
    )
    result = user.command("4242")
    assert result.status_code == 200
    assert result.ack_seconds < 3
    text = message_text(final_reply(user, result))
    assert "Spring list" in text and "Processing" in text and "1,234,567" in text

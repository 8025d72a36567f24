"""The demo reads well in a terminal: Slack markup made readable, colour only when asked.

The story itself runs as a real process in tests/integration/test_demo.py.
"""

from __future__ import annotations

from bot.sandbox.demo import MOVING_TOKEN, Style, classify_reply, slack_to_terminal

PLAIN = Style(colour=False)


def test_slack_markup_becomes_readable_terminal_text() -> None:
    raw = (
        "<@U0001> :warning: The access token expires in 5 s "
        "(<!date^1795783865^{date_short_pretty} at {time}|2026-11-27 12:51 UTC>) "
        "and the import is still :inbox_tray: Staging. *Bold* &lt;b&gt; &amp;"
    )
    shown = slack_to_terminal(raw, PLAIN)
    assert shown == (
        "@demo-user ⚠ The access token expires in 5 s (2026-11-27 12:51 UTC) "
        "and the import is still ↓ Staging. Bold <b> &"
    )


def test_escaped_outside_text_stays_literal() -> None:
    # bot.slack.render.escape wraps outside asterisks in zero-width joiners.
    raw = "Import \u200d*\u200dnot bold\u200d*\u200d, 10:30:45, :made_up:"
    assert slack_to_terminal(raw, PLAIN) == "Import *not bold*, 10:30:45, (made up)"


def test_colour_only_when_asked() -> None:
    assert Style(colour=False).bold("x") == "x"
    assert Style(colour=True).bold("x") == "\x1b[1mx\x1b[0m"
    assert slack_to_terminal("*x*", Style(colour=True)) == "\x1b[1mx\x1b[0m"


def test_replies_are_classified_by_what_they_announce() -> None:
    assert classify_reply("Status: :gear: Processing → :white_check_mark: Completed", 7) == [
        ("transition", 7, "Completed")
    ]
    assert classify_reply("Progress: 50% (1 of 2 records)", MOVING_TOKEN) == [
        ("milestone", MOVING_TOKEN, "50")
    ]
    assert classify_reply("Nothing to see", 7) == []

"""Channel settings: every key's values, the clear error for every bad one, and the round trip."""

from __future__ import annotations

from datetime import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.domain.exceptions import ExceptionsFile
from bot.domain.settings import (
    DEFAULTS,
    KEYS,
    Broadcast,
    ChannelSettings,
    Digest,
    InvalidSetting,
    Mention,
    MentionKind,
    parse_setting,
)


def test_defaults_are_the_bots_behaviour_before_settings() -> None:
    assert (
        ChannelSettings(
            broadcast=Broadcast.FINISH,
            milestones=True,
            mention=Mention(MentionKind.SUBSCRIBER),
            alerts=None,
            compact=False,
            digest=None,
            exceptions=None,
        )
        == DEFAULTS
    )
    assert [DEFAULTS.value_text(k) for k in KEYS] == [
        "finish",
        "on",
        "subscriber",
        "off",
        "off",
        "off",
        "default",
    ]


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("broadcast", "all", Broadcast.ALL),
        ("BROADCAST", "Failures", Broadcast.FAILURES),
        ("broadcast", "none", Broadcast.NONE),
        ("milestones", "off", False),
        ("milestones", "ON", True),
        ("compact", "on", True),
        ("mention", "none", Mention(MentionKind.NONE)),
        ("mention", "subscriber", Mention(MentionKind.SUBSCRIBER)),
        ("mention", "<@U0ALICE|alice>", Mention(MentionKind.USER, "U0ALICE", "alice")),
        ("mention", "<@W0ALICE>", Mention(MentionKind.USER, "W0ALICE")),
        ("mention", "U0ALICE", Mention(MentionKind.USER, "U0ALICE")),
        ("mention", "<!subteam^S0OPS|@ops>", Mention(MentionKind.GROUP, "S0OPS", "@ops")),
        ("mention", "<!subteam^S0OPS>", Mention(MentionKind.GROUP, "S0OPS")),
        ("mention", "S0OPS", Mention(MentionKind.GROUP, "S0OPS")),
        ("alerts", "<#C0ALERT|alerts>", "C0ALERT"),
        ("alerts", "<#G0PRIV|>", "G0PRIV"),
        ("alerts", "C0ALERT", "C0ALERT"),
        ("alerts", "off", None),
        ("digest", "09:00 Europe/Paris", Digest(time(9, 0), "Europe/Paris")),
        ("digest", "7:05  america/new_york", Digest(time(7, 5), "America/New_York")),
        ("digest", "23:59 UTC", Digest(time(23, 59), "UTC")),
        ("digest", "OFF", None),
        ("exceptions", "redacted", ExceptionsFile.REDACTED),
        ("exceptions", "full", ExceptionsFile.FULL),
        ("exceptions", "none", ExceptionsFile.NONE),
        ("exceptions", "default", None),
    ],
)
def test_each_value_parses(key: str, text: str, value: object) -> None:
    assert parse_setting(key, text, channel_id="C0HERE") == (key.lower(), value)


@pytest.mark.parametrize(
    ("key", "text", "words"),
    [
        ("volume", "11", "no setting called that"),
        ("broadcast", "sometimes", "`all`, `finish`, `failures` or `none`"),
        ("broadcast", "", "needs a value"),
        ("milestones", "yes", "`on` or `off`"),
        ("compact", "1", "`on` or `off`"),
        ("mention", "@alice", "pick the person or group from Slack's suggestions"),
        ("mention", "<!channel>", "not someone the bot can mention"),
        ("mention", "<!here>", "not someone the bot can mention"),
        ("mention", "<@U0ALICE", "not someone the bot can mention"),
        ("alerts", "#alerts", "pick the channel from Slack's suggestions"),
        ("alerts", "<#C0HERE|here>", "must be another channel"),
        ("alerts", "<@U0ALICE>", "not a channel"),
        ("digest", "9am Europe/Paris", "HH:MM on a 24-hour clock"),
        ("digest", "24:00 Europe/Paris", "HH:MM on a 24-hour clock"),
        ("digest", "09:60 Europe/Paris", "HH:MM on a 24-hour clock"),
        ("digest", "09:00", "give the time and a time zone"),
        ("digest", "09:00 Mars/Olympus", "not an IANA time zone"),
        ("digest", "09:00 ../../etc/passwd", "not an IANA time zone"),
        ("digest", "09:00 localtime", "not an IANA time zone"),
        ("digest", "09:00 Europe/Paris extra", "give the time and a time zone"),
        ("exceptions", "some", "`redacted`, `full`, `none` or `default`"),
        ("broadcast", "x" * 500, "too long"),
    ],
)
def test_each_bad_value_gets_a_clear_error_naming_what_is_accepted(
    key: str, text: str, words: str
) -> None:
    with pytest.raises(InvalidSetting) as raised:
        parse_setting(key, text, channel_id="C0HERE")
    assert words in str(raised.value)


def test_an_error_never_repeats_the_offending_text() -> None:
    # The text came from outside; the error goes into mrkdwn unescaped.
    with pytest.raises(InvalidSetting) as raised:
        parse_setting("broadcast", "<!channel>")
    assert "<!channel>" not in str(raised.value)


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("broadcast", "failures"),
        ("milestones", "off"),
        ("mention", "<!subteam^S0OPS|@ops>"),
        ("mention", "<@U0ALICE>"),
        ("alerts", "<#C0ALERT|alerts>"),
        ("compact", "on"),
        ("digest", "06:30 Asia/Kolkata"),
        ("exceptions", "full"),
    ],
)
def test_value_text_reads_back_to_the_same_value(key: str, text: str) -> None:
    _, value = parse_setting(key, text)
    settings = DEFAULTS.with_value(key, value)
    assert parse_setting(key, settings.value_text(key)) == (key, value)
    assert settings.changes_from(DEFAULTS) == [
        (key, DEFAULTS.value_text(key), settings.value_text(key))
    ]


def test_mention_markup_mentions_the_right_target() -> None:
    assert Mention().markup("U0SUB") == "<@U0SUB>"
    assert Mention(MentionKind.GROUP, "S0OPS", "@ops").markup("U0SUB") == "<!subteam^S0OPS>"
    assert Mention(MentionKind.USER, "U0ALICE", "alice").markup("U0SUB") == "<@U0ALICE>"
    assert Mention(MentionKind.NONE).markup("U0SUB") is None


@given(st.text(max_size=60), st.sampled_from(KEYS))
def test_any_text_either_parses_or_raises_invalid_setting(text: str, key: str) -> None:
    try:
        parsed_key, value = parse_setting(key, text, channel_id="C0HERE")
    except InvalidSetting as exc:
        assert str(exc)
    else:
        settings = DEFAULTS.with_value(parsed_key, value)
        assert parse_setting(key, settings.value_text(key), channel_id="C0HERE")[1] == value

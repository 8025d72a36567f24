"""Channel settings over real HTTP: `settings`, `set KEY VALUE` and the modal.

One real ``import-status-bot serve`` process serves the module (the Slack
emulator and the MyPreferences simulator are real HTTP servers too); each
test has a channel of its own. The bot runs with an allow-list of people, so
the outsider's attempts show what the allow-lists do to settings.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from bot.domain.settings import DEFAULTS, Broadcast, ChannelSettings, MentionKind
from bot.sandbox.harness import BotProcess, Harness
from bot.sandbox.slack_emulator import SlackUser, message_text, wait_for
from bot.sandbox.slack_views import StoredView, Submission, view_problems
from bot.slack.render_settings import MENTION_GROUP_BLOCK, MENTION_USER_BLOCK, modal_channel
from bot.store import Store
from bot.store.engine import make_engine
from bot.store.tables import ChannelSettingsRow

MEMBERS = ("US001", "US002", "US003")
OUTSIDER = "US999"
_channels = itertools.count(1)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    with Harness(Path(tmp_path_factory.mktemp("settings")) / "harness", preloaded=True) as h:
        yield h


@pytest.fixture(scope="module")
def bot(harness: Harness) -> BotProcess:
    return harness.start_bot(ALLOWED_USER_IDS=",".join(MEMBERS), LOOKUP_RATE_LIMIT=1000)


@pytest.fixture(scope="module")
def engine(harness: Harness) -> Iterator[Engine]:
    engine = make_engine(harness.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def channel() -> str:
    return f"CS{next(_channels):04d}"


@pytest.fixture
def user(harness: Harness, bot: BotProcess, channel: str) -> Iterator[SlackUser]:
    with harness.user(bot, channel_id=channel, user_id=MEMBERS[0]) as slack_user:
        yield slack_user


def stored(engine: Engine, channel: str) -> ChannelSettings:
    return Store(engine).channel_settings.get("T0001", channel)


def rows(engine: Engine, channel: str) -> int:
    with engine.connect() as conn:
        found = conn.execute(
            select(ChannelSettingsRow.id).where(ChannelSettingsRow.channel_id == channel)
        ).all()
    return len(found)


def ack(user: SlackUser, text: str, **overrides: str) -> str:
    result = user.command(text, **overrides)
    assert result.status_code == 200 and result.ack_seconds < 3
    return message_text(result.ack_body)


def submit(user: SlackUser, view: StoredView, chosen: dict[str, object]) -> Submission:
    """Submit the modal; the bot must answer in time (else Slack shows the person an error
    and the modal stays as it was: ``dispatch_failed``)."""
    result = user.submit_view(view.id, chosen)
    assert result.error is None, f"{result.error}: answered after {result.ack_seconds:.2f} s"
    return result


def open_modal(harness: Harness, user: SlackUser) -> StoredView:
    """``settings`` in the channel, and the modal it opens.

    The bot opens the modal after it acknowledges the command, so the modal this
    command opened is the one that was not open before and is for this channel: the
    person may still have another test's modal open (under load, that one used to be
    taken for the new one, and the test then changed the wrong channel's settings).
    """
    where = user.channel_id
    before = {v.id for v in harness.emulator.views.modals(user.user_id)}
    shown = ack(user, "settings")
    assert "Import settings of this channel" in shown

    def modal() -> StoredView | None:
        return next(
            (
                v
                for v in harness.emulator.views.modals(user.user_id)
                if v.id not in before
                and modal_channel(v.view["private_metadata"])
                == (
                    "T0001",
                    where,
                )
            ),
            None,
        )

    view = wait_for(modal, 15, description=f"the settings modal of {where}")
    assert view_problems(view.view, "modal") == []
    return view


def notices(harness: Harness, channel: str) -> list[str]:
    return [
        message_text(m)
        for m in harness.emulator.messages(channel)
        if "changed this channel's import settings" in message_text(m)
    ]


# --------------------------------------------------------------------------- showing


def test_settings_shows_the_defaults_and_opens_the_modal_with_them(
    harness: Harness, user: SlackUser, channel: str, engine: Engine
) -> None:
    view = open_modal(harness, user)
    blocks = {b.get("block_id"): b for b in view.view["blocks"]}
    initial = {
        key: blocks[key]["element"]["initial_option"]["value"]
        for key in ("broadcast", "milestones", "mention", "compact", "exceptions")
    }
    assert initial == {
        "broadcast": "finish",
        "milestones": "on",
        "mention": "subscriber",
        "compact": "off",
        "exceptions": "default",
    }
    assert blocks["digest"]["element"]["initial_value"] == "off"
    assert "initial_conversations" not in blocks["alerts"]["element"]
    shown = ack(user, "settings")
    for line in ("`broadcast`: `finish`", "`milestones`: `on`", "`digest`: `off`"):
        assert line in shown
    assert rows(engine, channel) == 0, "looking changes nothing"


# --------------------------------------------------------------------------- set


def test_set_stores_the_value_tells_the_channel_and_logs_who(
    harness: Harness, bot: BotProcess, user: SlackUser, channel: str, engine: Engine
) -> None:
    answer = ack(user, "set broadcast failures")
    assert "Saved" in answer and "`broadcast`: `failures`" in answer
    assert stored(engine, channel).broadcast is Broadcast.FAILURES
    (notice,) = wait_for(lambda: notices(harness, channel), 15, description="the notice")
    assert f"<@{user.user_id}> changed" in notice
    assert "`finish` → `failures`" in notice
    assert wait_for(
        lambda: "channel setting broadcast changed from finish to failures" in bot.log_text(),
        15,
        description="the log line",
    )
    line = next(
        ln
        for ln in bot.log_text().splitlines()
        if "from finish to failures" in ln and channel in ln
    )
    assert f"user={user.user_id}" in line
    # The same value again changes nothing and tells nobody.
    assert "Nothing changed" in ack(user, "set BROADCAST Failures")
    assert len(notices(harness, channel)) == 1


def test_a_user_group_mention_is_stored_but_the_notice_pings_nobody(
    harness: Harness, user: SlackUser, channel: str, engine: Engine
) -> None:
    assert "Saved" in ack(user, "set mention <!subteam^S0OPS|@ops>")
    mention = stored(engine, channel).mention
    assert (mention.kind, mention.id, mention.label) == (MentionKind.GROUP, "S0OPS", "@ops")
    (notice,) = wait_for(lambda: notices(harness, channel), 15, description="the notice")
    assert "@ops" in notice
    assert "<!subteam" not in notice, "changing a setting must not ping the whole group"
    assert "<!subteam^S0OPS>" in ack(user, "settings"), "the person asking sees the group"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("set broadcast sometimes", "`all`, `finish`, `failures` or `none`"),
        ("set volume 11", "There is no setting called that"),
        ("set digest 25:00 Europe/Paris", "HH:MM on a 24-hour clock"),
        ("set digest 09:00 Mars/Olympus", "not an IANA time zone"),
        ("set mention @alice", "Slack's suggestions"),
        ("set alerts <#{channel}|here>", "must be another channel"),
        ("set milestones maybe", "`on` or `off`"),
        ("set broadcast", "`set` needs a setting and a value"),
    ],
)
def test_an_invalid_value_gets_a_clear_error_and_changes_nothing(
    harness: Harness, user: SlackUser, channel: str, engine: Engine, text: str, words: str
) -> None:
    answer = ack(user, text.format(channel=channel)).replace("\u200d", "")  # ZWJ of escape()
    assert words in answer
    assert ":warning:" in answer
    assert rows(engine, channel) == 0
    assert notices(harness, channel) == []


def test_an_outsider_can_neither_look_nor_change(
    harness: Harness, bot: BotProcess, channel: str, engine: Engine
) -> None:
    # The allow-lists gate every verb (README, "Who may use the bot"): an outsider
    # learns nothing about the channel, its settings included.
    with harness.user(bot, channel_id=channel, user_id=OUTSIDER) as outsider:
        assert "ALLOWED_USER_IDS" in ack(outsider, "set broadcast none")
        shown = ack(outsider, "settings")
        assert "ALLOWED_USER_IDS" in shown and "broadcast" not in shown
        assert harness.emulator.views.modals(OUTSIDER) == [], "no form for who may not use it"
        with harness.user(bot, channel_id=channel, user_id=MEMBERS[1]) as member:
            view = open_modal(harness, member)
        # A member's modal submitted by the outsider (a forged request): refused in the modal.
        result = outsider.submit_view(view.id, {"broadcast": "none"}, forged=True)
    assert result.response_action == "errors"
    assert "ALLOWED_USER_IDS" in result.errors["broadcast"]
    assert rows(engine, channel) == 0


# --------------------------------------------------------------------------- the modal


def test_the_modal_and_set_reach_the_same_stored_settings(
    harness: Harness, user: SlackUser, channel: str, engine: Engine
) -> None:
    by_text = f"CS{next(_channels):04d}"
    for command in (
        "set broadcast all",
        "set milestones off",
        "set mention <@US002|bob>",
        "set alerts <#CALERT1|alerts>",
        "set compact on",
        "set digest 07:30 America/Chicago",
        "set exceptions full",
    ):
        assert "Saved" in ack(user, command, channel_id=by_text)

    view = open_modal(harness, user)
    result = submit(
        user,
        view,
        {
            "broadcast": "all",
            "milestones": "off",
            "mention": "user",
            MENTION_USER_BLOCK: "US002",
            "alerts": ["CALERT1"],
            "compact": "on",
            "digest": "07:30 america/chicago",
            "exceptions": "full",
        },
    )
    assert result.closed and result.errors == {}, result
    from_modal, from_text = stored(engine, channel), stored(engine, by_text)
    assert from_modal.mention.id == from_text.mention.id == "US002"
    # The text form carried Slack's label ("bob"); the modal's user picker does not.
    assert from_modal == ChannelSettings(**{**vars(from_text), "mention": from_modal.mention})
    assert from_modal.changes_from(DEFAULTS) and len(from_modal.changes_from(DEFAULTS)) == 7
    (notice,) = wait_for(lambda: notices(harness, channel), 15, description="the notice")
    assert "`finish` → `all`" in notice and "`07:30 America/Chicago`" in notice

    # Opened again, the modal shows what is stored.
    again = {b.get("block_id"): b for b in open_modal(harness, user).view["blocks"]}
    assert again["broadcast"]["element"]["initial_option"]["value"] == "all"
    assert again[MENTION_USER_BLOCK]["element"]["initial_user"] == "US002"
    assert again["alerts"]["element"]["initial_conversations"] == ["CALERT1"]
    assert again["digest"]["element"]["initial_value"] == "07:30 America/Chicago"


def test_invalid_modal_values_are_shown_in_the_modal_and_change_nothing(
    harness: Harness, user: SlackUser, channel: str, engine: Engine
) -> None:
    view = open_modal(harness, user)
    result = submit(
        user, view, {"broadcast": "none", "digest": "25:00 Mars/Olympus", "mention": "group"}
    )
    assert result.sent and result.response_action == "errors" and not result.closed
    assert "HH:MM on a 24-hour clock" in result.errors["digest"]
    assert "`" not in result.errors["digest"], "plain text: no mrkdwn backquotes"
    assert "user group's ID" in result.errors[MENTION_GROUP_BLOCK]
    assert rows(engine, channel) == 0, "one bad field keeps every field unsaved"

    # The same modal, corrected: saved.
    fixed = submit(
        user,
        view,
        {
            "broadcast": "none",
            "digest": "18:00 Europe/Berlin",
            "mention": "group",
            MENTION_GROUP_BLOCK: "S0SUPPORT",
            "alerts": [channel],
        },
    )
    assert fixed.response_action == "errors" and set(fixed.errors) == {"alerts"}, fixed
    assert "another channel" in fixed.errors["alerts"]
    assert rows(engine, channel) == 0
    done = submit(
        user,
        view,
        {
            "broadcast": "none",
            "digest": "18:00 Europe/Berlin",
            "mention": "group",
            MENTION_GROUP_BLOCK: "S0SUPPORT",
        },
    )
    assert done.closed
    settings = stored(engine, channel)
    assert settings.broadcast is Broadcast.NONE
    assert settings.mention.id == "S0SUPPORT" and settings.digest is not None


def test_a_required_field_left_empty_never_reaches_the_bot(
    harness: Harness, user: SlackUser, channel: str, engine: Engine
) -> None:
    view = open_modal(harness, user)
    result = user.submit_view(view.id, {"digest": ""})
    assert not result.sent and "digest" in result.errors
    still = harness.emulator.views.view(view.id)
    assert still is not None and still.is_open
    assert rows(engine, channel) == 0


# --------------------------------------------------------------------------- restarts


def test_settings_survive_a_crash_and_a_restart(
    harness: Harness, bot: BotProcess, user: SlackUser, channel: str, engine: Engine
) -> None:
    assert "Saved" in ack(user, "set digest 06:45 Asia/Kolkata")
    assert "Saved" in ack(user, "set compact on")
    before = stored(engine, channel)
    bot.kill()
    harness.restart(bot)
    with harness.user(bot, channel_id=channel, user_id=MEMBERS[2]) as other:
        shown = ack(other, "settings")
    assert "`digest`: `06:45 Asia/Kolkata`" in shown and "`compact`: `on`" in shown
    assert stored(engine, channel) == before

"""Settings, history, digest and Home tab rendering: valid Block Kit within Slack's limits."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from bot.domain.digest import summarise
from bot.domain.history import ActiveWatch, FinishedWatch
from bot.domain.settings import DEFAULTS, InvalidSetting, parse_setting
from bot.domain.status import ImportStatus, Status
from bot.sandbox.slack_views import view_problems
from bot.slack.render import MAX_BLOCKS, Message
from bot.slack.render_reports import (
    ACTION_HOME_UNWATCH,
    digest_message,
    history_message,
    home_view,
    link_key,
    parse_home_unwatch_value,
)
from bot.slack.render_settings import (
    MENTION_GROUP_BLOCK,
    MENTION_USER_BLOCK,
    block_of,
    change_notice,
    form_texts,
    modal_channel,
    settings_message,
    settings_modal,
)

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
HOSTILE = "<!channel> *bold* " + "x" * 120


def valid(message: Message) -> Message:
    """Slack's checks: slack_sdk's block models, the 50-block limit, a fallback text."""
    json.dumps(message.as_kwargs())
    assert message.text.strip() and len(message.text) <= 3000
    assert 1 <= len(message.blocks) <= MAX_BLOCKS
    for block in message.blocks:
        parsed = Block.parse(block)
        assert parsed is not None, block
        parsed.validate_json()
    return message


def finished(n: int, reason: str = "Completed", name: str | None = None) -> FinishedWatch:
    status = ImportStatus(
        access_token=1000 + n,
        status=Status.COMPLETED,
        name=name or f"Import {n}",
        processed=1234567,
        exceptions=3,
        not_honored=1,
        validation_failed=2,
    )
    return FinishedWatch(
        team_id="T1",
        channel_id="C1",
        access_token=1000 + n,
        name=status.name,
        status=status,
        subscribed_by="U1",
        subscribed_at=NOW - timedelta(hours=3, minutes=n),
        ended_at=NOW - timedelta(minutes=n),
        ended_reason=reason,
        tracking_ts=f"1790000000.{n:06d}",
    )


def active(n: int, owner: str = "U1", name: str | None = None) -> ActiveWatch:
    status = ImportStatus(
        access_token=2000 + n,
        status=Status.PROCESSING,
        name=name or f"Running {n}",
        validation_successful=1000,
        processed=300,
    )
    return ActiveWatch(
        "T1", f"C{n % 3}", 2000 + n, status.name, status, owner, NOW, f"1790000001.{n:06d}"
    )


def links_for(*watches: Any) -> dict[str, str]:
    return {
        link_key(w.channel_id, w.tracking_ts): f"https://x.slack.com/archives/{w.channel_id}/p1"
        for w in watches
    }


# --- settings ----------------------------------------------------------------------------


def test_settings_message_lists_every_key_and_how_to_change_it() -> None:
    message = valid(settings_message(DEFAULTS))
    body = message.blocks[0]["text"]["text"]
    for key in ("broadcast", "milestones", "mention", "alerts", "compact", "digest", "exceptions"):
        assert f"`{key}`" in body
    assert "set KEY VALUE" in json.dumps(message.blocks)


def test_change_notice_mentions_the_changer_and_pings_no_group() -> None:
    after = DEFAULTS.with_value(*parse_setting("mention", "<!subteam^S0OPS|@ops>"))
    message = valid(change_notice("U9", DEFAULTS, after))
    everything = message.text + json.dumps(message.blocks)
    assert "<@U9>" in everything and "@ops" in everything
    assert "subteam" not in everything
    unlabelled = DEFAULTS.with_value(*parse_setting("mention", "S0OPS"))
    assert "subteam" not in json.dumps(change_notice("U9", DEFAULTS, unlabelled).as_kwargs())


def test_a_hostile_label_is_shown_escaped() -> None:
    after = DEFAULTS.with_value("mention", parse_setting("mention", "<!subteam^S0X|*@x* y>")[1])
    text = json.dumps(change_notice("U9", DEFAULTS, after).as_kwargs())
    assert "*@x*" not in text


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"mention": "<@U0ALICE|alice>", "alerts": "<#C0AL|al>", "digest": "09:00 Europe/Paris"},
        {"mention": "<!subteam^S0OPS|@ops>", "exceptions": "full", "broadcast": "none"},
    ],
)
def test_the_modal_is_a_valid_view_filled_with_the_settings(changes: dict[str, str]) -> None:
    settings = DEFAULTS
    for key, value in changes.items():
        settings = settings.with_value(*parse_setting(key, value))
    view = settings_modal(settings, "T1", "C1")
    assert view_problems(view, "modal") == []
    assert len(view["blocks"]) <= 100
    assert modal_channel(view["private_metadata"]) == ("T1", "C1")


def _state(view: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any]:
    """The state.values Slack would send, from the modal's initial values and ``chosen``."""
    values: dict[str, Any] = {}
    for block in view["blocks"]:
        if block["type"] != "input":
            continue
        element, block_id = block["element"], block["block_id"]
        kind = element["type"]
        entry: dict[str, Any] = {"type": kind}
        if kind == "static_select":
            value = chosen.get(block_id, element["initial_option"]["value"])
            entry["selected_option"] = {"value": value}
        elif kind == "users_select":
            entry["selected_user"] = chosen.get(block_id, element.get("initial_user"))
        elif kind == "multi_conversations_select":
            entry["selected_conversations"] = chosen.get(
                block_id, element.get("initial_conversations", [])
            )
        else:
            entry["value"] = chosen.get(block_id, element.get("initial_value"))
        values[block_id] = {"value": entry}
    return values


def test_an_untouched_modal_reads_back_as_the_current_settings() -> None:
    settings = DEFAULTS.with_value(*parse_setting("mention", "<@U0ALICE|alice>"))
    settings = settings.with_value(*parse_setting("alerts", "C0AL"))
    settings = settings.with_value(*parse_setting("digest", "06:00 Asia/Tokyo"))
    view = settings_modal(settings, "T1", "C1")
    texts, problems = form_texts(_state(view, {}))
    assert problems == {}
    read = DEFAULTS
    for key, text in texts.items():
        read = read.with_value(*parse_setting(key, text, channel_id="C1"))
    assert read.changes_from(settings) == [("mention", "<@U0ALICE|alice>", "<@U0ALICE>")]


def test_form_problems_land_on_the_block_that_caused_them() -> None:
    view = settings_modal(DEFAULTS, "T1", "C1")
    _, problems = form_texts(_state(view, {"mention": "user"}))
    assert set(problems) == {MENTION_USER_BLOCK}
    _, problems = form_texts(_state(view, {"mention": "group", MENTION_GROUP_BLOCK: "U0X"}))
    assert set(problems) == {MENTION_GROUP_BLOCK}
    _, problems = form_texts(_state(view, {"alerts": ["C1", "C2"]}))
    assert set(problems) == {"alerts"}
    assert block_of("mention", "S0X") == MENTION_GROUP_BLOCK
    assert block_of("mention", "U0X") == MENTION_USER_BLOCK
    assert block_of("digest", "x") == "digest"
    with pytest.raises(InvalidSetting):
        parse_setting("alerts", "C1", channel_id="C1")


def test_modal_metadata_that_is_not_ours_is_refused() -> None:
    for bad in ("", "{", "[]", '{"team": "T"}', '{"team": 1, "channel": "C"}'):
        assert modal_channel(bad) is None


# --- history, digest, Home ---------------------------------------------------------------


def test_history_of_fifty_long_names_stays_within_slacks_limits() -> None:
    watches = [finished(n, name=HOSTILE) for n in range(50)]
    message = valid(history_message(watches, links_for(*watches)))
    text = json.dumps(message.blocks)
    assert "<!channel>" not in text
    assert text.count("|thread>") == 50


def test_history_shows_every_part_of_a_line() -> None:
    watch = finished(1)
    message = valid(history_message([watch], links_for(watch)))
    line = message.blocks[1]["text"]["text"]
    assert ":white_check_mark: Completed: Import 1 (1001)" in line
    assert "1,234,567 processed, 3 exceptions, 1 not honoured, 2 failed validation" in line
    assert "took 3 h" in line
    assert "<https://x.slack.com/archives/C1/p1|thread>" in line
    stopped = valid(history_message([finished(2, "unwatched by <@U7>")], {}))
    assert ":no_bell: Stopped (unwatched by <@U7>)" in stopped.blocks[1]["text"]["text"]
    assert "|thread>" not in json.dumps(stopped.blocks), "no link without one"


def test_a_busy_digest_stays_within_slacks_limits() -> None:
    ended = [finished(n, name=HOSTILE) for n in range(200)]
    running = [active(n, name=HOSTILE) for n in range(200)]
    summary = summarise(date(2026, 12, 1), NOW + timedelta(hours=1), ended, running)
    message = valid(digest_message(summary, links_for(*ended, *running)))
    assert "and " in json.dumps(message.blocks) and "more" in json.dumps(message.blocks)
    assert "<!channel>" not in json.dumps(message.as_kwargs())


def test_the_home_tab_is_a_valid_view_even_when_everything_is_busy() -> None:
    mine = [active(n, name=HOSTILE) for n in range(60)]
    recent = [finished(n) for n in range(10)]
    view = home_view(
        "U1", mine=mine, active=mine, recent=recent, links=links_for(*mine, *recent), now=NOW
    )
    assert view_problems(view, "home") == []
    buttons = [b["accessory"] for b in view["blocks"] if "accessory" in b]
    assert len(buttons) == 20 and all(b["action_id"] == ACTION_HOME_UNWATCH for b in buttons)
    assert parse_home_unwatch_value(buttons[0]["value"]) == ("C0", "2000")
    assert parse_home_unwatch_value("nonsense") is None
    empty = home_view("U1", mine=[], active=[], recent=[], links={}, now=NOW)
    assert view_problems(empty, "home") == []
    denied = home_view("U1", mine=[], active=[], recent=[], links={}, now=NOW, denial="No.")
    assert view_problems(denied, "home") == [] and len(denied["blocks"]) == 2

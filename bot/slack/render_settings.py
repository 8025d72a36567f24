"""How a channel's settings look in Slack: the summary, the modal, the change notice.

Pure, like ``render``. The modal's block ids and what ``form_texts`` reads back
from a submission live side by side here, so the two cannot drift apart; the
values themselves are checked by ``bot.domain.settings.parse_setting``, exactly
as ``/import-status set KEY VALUE`` checks them.
"""

from __future__ import annotations

import json
from typing import Any

from bot.domain.exceptions import ExceptionsFile
from bot.domain.settings import (
    ALLOWED,
    KEYS,
    MEANING,
    Broadcast,
    ChannelSettings,
    MentionKind,
)
from bot.slack.render import Message, _context, _message, _section, escape

SETTINGS_CALLBACK_ID = "channel_settings"
SETTINGS_USAGE = "Usage: /import-status settings | set KEY VALUE, where KEY is one of " + ", ".join(
    KEYS
)
MODAL_MAX_BLOCKS = 100
_TITLE_LIMIT = 24
_OPTION_TEXT_LIMIT = 75
# The one action id of every input block: block ids tell the inputs apart.
INPUT_ACTION = "value"
# Extra inputs of the modal beside one per key: who exactly to mention.
MENTION_USER_BLOCK = "mention_user"
MENTION_GROUP_BLOCK = "mention_group"

_BROADCAST_LABELS = {
    Broadcast.ALL: "Every status change",
    Broadcast.FINISH: "Finished, failed and expiring imports",
    Broadcast.FAILURES: "Only failures and expiry",
    Broadcast.NONE: "Nothing (thread replies only)",
}
_MENTION_LABELS = {
    MentionKind.SUBSCRIBER: "Whoever started the watch",
    MentionKind.USER: "A person (choose below)",
    MentionKind.GROUP: "A user group (give its ID below)",
    MentionKind.NONE: "Nobody",
}
_EXCEPTIONS_LABELS = {
    "default": "As the bot's EXCEPTIONS_FILE says",
    ExceptionsFile.REDACTED.value: "Redacted (personal data masked)",
    ExceptionsFile.FULL.value: "Full records",
    ExceptionsFile.NONE.value: "Summary only, no file",
}
_SWITCH_LABELS = {"on": "On", "off": "Off"}


# --- What the channel has chosen ---------------------------------------------------


def shown_value(settings: ChannelSettings, key: str) -> str:
    """A value as mrkdwn for someone reading the settings (mentions render as names)."""
    if key == "mention" and settings.mention.kind in (MentionKind.USER, MentionKind.GROUP):
        return settings.mention.markup("") or ""
    if key == "alerts" and settings.alerts:
        return f"<#{settings.alerts}>"
    return f"`{settings.value_text(key)}`"


def quiet_value(settings: ChannelSettings, key: str) -> str:
    """A value as mrkdwn that notifies nobody: a user group shows its name, not a mention.

    Used in the channel notice, where "mention is now @ops" must not ping all of @ops.
    """
    mention = settings.mention
    if key == "mention" and mention.kind is MentionKind.GROUP:
        return escape(mention.label, limit=80) if mention.label else f"user group `{mention.id}`"
    return shown_value(settings, key)


def settings_message(settings: ChannelSettings, *, note: str | None = None) -> Message:
    """The channel's settings, one line per key, and how to change them (ephemeral).

    Only people the allow-lists let in see them at all, and they may change them.
    """
    lines = ["*Import settings of this channel*"]
    if note:
        lines.insert(0, note)
    lines += [f"• `{key}`: {shown_value(settings, key)}: {MEANING[key]}" for key in KEYS]
    how = (
        "Change one with `/import-status set KEY VALUE`, e.g. `/import-status set broadcast "
        "failures`."
    )
    fallback = "Import settings of this channel: " + ", ".join(
        f"{key} {settings.value_text(key)}" for key in KEYS
    )
    return _message(fallback, [_section("\n".join(lines)), _context(how)])


def settings_error_message(problem: str) -> Message:
    """Why a ``set`` was refused (``problem`` is an InvalidSetting's bot-written sentence)."""
    text = f":warning: {problem}\n{SETTINGS_USAGE}"
    return _message(text, [_section(text)])


def change_notice(user_id: str, before: ChannelSettings, after: ChannelSettings) -> Message:
    """The channel's record of who changed what; nobody but the changer is mentioned."""
    keys = [key for key, _, _ in after.changes_from(before)]
    changes = [f"• `{k}`: {quiet_value(before, k)} → {quiet_value(after, k)}" for k in keys]
    head = f":gear: <@{user_id}> changed this channel's import settings:"
    # The fallback text notifies too: the same quiet values, without the backquotes.
    plain = ", ".join(
        f"{k} {quiet_value(before, k)} → {quiet_value(after, k)}".replace("`", "") for k in keys
    )
    text = "\n".join([head, *changes])
    return _message(f"Import settings changed: {plain}", [_section(text)])


# --- The modal ----------------------------------------------------------------------


def _option(value: str, label: str) -> dict[str, Any]:
    return {
        "text": {"type": "plain_text", "text": label[:_OPTION_TEXT_LIMIT], "emoji": True},
        "value": value,
    }


def _select(block_id: str, label: str, choices: dict[str, str], current: str) -> dict[str, Any]:
    options = [_option(value, text) for value, text in choices.items()]
    element: dict[str, Any] = {
        "type": "static_select",
        "action_id": INPUT_ACTION,
        "options": options,
        "initial_option": next(o for o in options if o["value"] == current),
    }
    return _input(block_id, label, element)


def _input(
    block_id: str,
    label: str,
    element: dict[str, Any],
    *,
    hint: str | None = None,
    optional: bool = False,
) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "input",
        "block_id": block_id,
        "label": {"type": "plain_text", "text": label, "emoji": True},
        "element": element,
        "optional": optional,
    }
    if hint:
        block["hint"] = {"type": "plain_text", "text": hint, "emoji": True}
    return block


def settings_modal(settings: ChannelSettings, team_id: str, channel_id: str) -> dict[str, Any]:
    """The settings modal for ``views.open``, filled with the channel's current values."""
    mention = settings.mention
    user_element: dict[str, Any] = {"type": "users_select", "action_id": INPUT_ACTION}
    if mention.kind is MentionKind.USER and mention.id:
        user_element["initial_user"] = mention.id
    group_element: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": INPUT_ACTION,
        "max_length": 40,
        "placeholder": {"type": "plain_text", "text": "S0123ABCD"},
    }
    if mention.kind is MentionKind.GROUP and mention.id:
        group_element["initial_value"] = mention.id
    alerts_element: dict[str, Any] = {
        "type": "multi_conversations_select",
        "action_id": INPUT_ACTION,
        "max_selected_items": 1,
        "filter": {"include": ["public", "private"], "exclude_bot_users": True},
    }
    if settings.alerts:
        alerts_element["initial_conversations"] = [settings.alerts]
    digest_element = {
        "type": "plain_text_input",
        "action_id": INPUT_ACTION,
        "max_length": 80,
        "initial_value": settings.value_text("digest"),
    }
    blocks = [
        _context(f"Settings for <#{channel_id}>. Each applies to this channel only."),
        _select(
            "broadcast",
            "Also post to the channel",
            {b.value: _BROADCAST_LABELS[b] for b in Broadcast},
            settings.value_text("broadcast"),
        ),
        _select(
            "milestones",
            "Progress replies at 25/50/75 %",
            _SWITCH_LABELS,
            settings.value_text("milestones"),
        ),
        _select(
            "mention",
            "Mention on broadcasts",
            {k.value: _MENTION_LABELS[k] for k in MentionKind},
            mention.kind.value,
        ),
        _input(MENTION_USER_BLOCK, "Person to mention", user_element, optional=True),
        _input(
            MENTION_GROUP_BLOCK,
            "User group to mention",
            group_element,
            hint="The group's ID, which starts with S (in Slack: the group's page, Copy group ID).",
            optional=True,
        ),
        _input(
            "alerts",
            "Also send failures and expiry warnings to",
            alerts_element,
            hint="Leave empty for no alert channel. The bot must be a member there.",
            optional=True,
        ),
        _select(
            "compact", "One-line cards and replies", _SWITCH_LABELS, settings.value_text("compact")
        ),
        _input(
            "digest",
            "Daily digest",
            digest_element,
            hint="A time and an IANA time zone, e.g. 09:00 Europe/Paris, or off.",
        ),
        _select(
            "exceptions",
            "Exceptions archive",
            _EXCEPTIONS_LABELS,
            settings.value_text("exceptions"),
        ),
    ]
    return {
        "type": "modal",
        "callback_id": SETTINGS_CALLBACK_ID,
        "private_metadata": json.dumps({"team": team_id, "channel": channel_id}),
        "title": {"type": "plain_text", "text": "Import settings"[:_TITLE_LIMIT]},
        "submit": {"type": "plain_text", "text": "Save"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": blocks[:MODAL_MAX_BLOCKS],
    }


def modal_channel(private_metadata: str) -> tuple[str, str] | None:
    """(team, channel) the modal was opened for, or None if the metadata is not ours."""
    try:
        data = json.loads(private_metadata)
        team, channel = data["team"], data["channel"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(team, str) or not isinstance(channel, str) or not channel:
        return None
    return team, channel


def form_texts(values: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """What a settings submission says, as ``set`` text per key, and problems per block.

    ``values`` is the submission's ``view.state.values``. A key whose input is
    missing or malformed is left out, with a problem on its block.
    """
    texts: dict[str, str] = {}
    problems: dict[str, str] = {}

    def element(block_id: str) -> dict[str, Any]:
        found = (values.get(block_id) or {}).get(INPUT_ACTION)
        return found if isinstance(found, dict) else {}

    for key in ("broadcast", "milestones", "compact", "exceptions", "mention"):
        chosen = (element(key).get("selected_option") or {}).get("value")
        if isinstance(chosen, str) and chosen:
            texts[key] = chosen
        else:
            problems[key] = f"Choose one: {ALLOWED[key]}."
    digest = element("digest").get("value")
    texts["digest"] = digest if isinstance(digest, str) else ""
    conversations = element("alerts").get("selected_conversations") or []
    if isinstance(conversations, list) and len(conversations) <= 1:
        texts["alerts"] = str(conversations[0]) if conversations else "off"
    else:
        problems["alerts"] = "Choose at most one channel."
    kind = texts.get("mention")
    if kind == MentionKind.USER.value:
        user = element(MENTION_USER_BLOCK).get("selected_user")
        if isinstance(user, str) and user:
            texts["mention"] = user
        else:
            del texts["mention"]
            problems[MENTION_USER_BLOCK] = "Choose the person to mention."
    elif kind == MentionKind.GROUP.value:
        group = element(MENTION_GROUP_BLOCK).get("value")
        if isinstance(group, str) and group.strip().startswith(("S", "<!subteam^")):
            texts["mention"] = group.strip()
        else:
            del texts["mention"]
            problems[MENTION_GROUP_BLOCK] = "Give the user group's ID (it starts with S)."
    return texts, problems


def block_of(key: str, mention_text: str | None = None) -> str:
    """The modal block where a problem with ``key`` is shown."""
    if key == "mention" and mention_text not in (None, "subscriber", "none"):
        return MENTION_USER_BLOCK if (mention_text or "")[:1] in "UW" else MENTION_GROUP_BLOCK
    return key

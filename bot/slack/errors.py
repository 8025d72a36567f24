"""Every Slack error the bot can meet, and its fate: the one table delivery consults.

Slack answers a failed Web API call with ``{"ok": false, "error": CODE}`` (HTTP 200),
or HTTP 429 with ``Retry-After`` when rate-limited, or HTTP 5xx when it is having a
bad day. Each code the bot can meet when posting or editing a message is listed
here with what delivery does about it, so that no error is retried forever and no
error ends a subscription by accident. A code missing from the table is treated as
transient (retried with backoff, then given up) and logged as unknown.

Sources: the error lists of https://docs.slack.dev/reference/methods/chat.postMessage,
https://docs.slack.dev/reference/methods/chat.update,
https://docs.slack.dev/reference/methods/chat.postEphemeral,
https://docs.slack.dev/reference/methods/conversations.open and
https://docs.slack.dev/apis/web-api/rate-limits (HTTP 429 with Retry-After).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class Fate(Enum):
    """What delivery does when Slack answers with an error."""

    #: Wait as long as Slack's Retry-After says (clamped), for that channel, then try again.
    RATE_LIMITED = "rate_limited"
    #: Try again later with exponential backoff; give up after the attempt limit.
    TRANSIENT = "transient"
    #: The tracking card was deleted or can no longer be edited: post a fresh one.
    CARD_GONE = "card_gone"
    #: This message can never be sent as it is: drop it (a tracking card: end the watch).
    BAD_MESSAGE = "bad_message"
    #: The bot can no longer post in the channel: end the subscription.
    LOST_CHANNEL = "lost_channel"
    #: A workspace or channel policy forbids it: end the subscription.
    FORBIDDEN = "forbidden"
    #: The bot's token no longer works: end the subscription (the bot cannot speak at all).
    REVOKED = "revoked"

    @property
    def permanent(self) -> bool:
        """True when trying the same call again can never succeed."""
        return self in (Fate.BAD_MESSAGE, Fate.LOST_CHANNEL, Fate.FORBIDDEN, Fate.REVOKED)

    @property
    def ends_subscription(self) -> bool:
        """True when the channel cannot be told anything any more."""
        return self in (Fate.LOST_CHANNEL, Fate.FORBIDDEN, Fate.REVOKED)


INVITE_HINT = "I can't post in this channel. Invite me with `/invite @import-status` and try again."
_ADMIN = "Ask a workspace admin to allow it, then try again."


@dataclass(frozen=True)
class SlackError:
    """One Slack error code, its fate, and what a person can do about it (if anything)."""

    code: str
    fate: Fate
    #: A sentence for the person who subscribed, when they (or an admin) can fix it.
    hint: str | None = None


def _table(*rows: SlackError) -> dict[str, SlackError]:
    return {row.code: row for row in rows}


SLACK_ERRORS: dict[str, SlackError] = _table(
    # Rate limits: HTTP 429, the body's error is "ratelimited" (older docs: "rate_limited").
    SlackError("ratelimited", Fate.RATE_LIMITED),
    SlackError("rate_limited", Fate.RATE_LIMITED),
    # Slack's own trouble: "likely due to a transient issue on our end".
    SlackError("internal_error", Fate.TRANSIENT),
    SlackError("fatal_error", Fate.TRANSIENT),
    SlackError("service_unavailable", Fate.TRANSIENT),
    SlackError("request_timeout", Fate.TRANSIENT),
    SlackError("team_added_to_org", Fate.TRANSIENT),
    # The tracking card itself is gone or frozen (chat.update only).
    SlackError("message_not_found", Fate.CARD_GONE),
    SlackError("cant_update_message", Fate.CARD_GONE),
    SlackError("edit_window_closed", Fate.CARD_GONE),
    # The message is wrong: a bug on our side, never fixed by waiting.
    SlackError("invalid_blocks", Fate.BAD_MESSAGE),
    SlackError("invalid_blocks_format", Fate.BAD_MESSAGE),
    SlackError("msg_too_long", Fate.BAD_MESSAGE),
    SlackError("msg_blocks_too_long", Fate.BAD_MESSAGE),
    SlackError("no_text", Fate.BAD_MESSAGE),
    SlackError("too_many_attachments", Fate.BAD_MESSAGE),
    SlackError("invalid_attachments", Fate.BAD_MESSAGE),
    SlackError("invalid_arguments", Fate.BAD_MESSAGE),
    SlackError("invalid_arg_name", Fate.BAD_MESSAGE),
    SlackError("invalid_array_arg", Fate.BAD_MESSAGE),
    SlackError("invalid_charset", Fate.BAD_MESSAGE),
    SlackError("invalid_form_data", Fate.BAD_MESSAGE),
    SlackError("invalid_post_type", Fate.BAD_MESSAGE),
    SlackError("missing_post_type", Fate.BAD_MESSAGE),
    SlackError("invalid_json", Fate.BAD_MESSAGE),
    SlackError("json_not_object", Fate.BAD_MESSAGE),
    SlackError("invalid_metadata_format", Fate.BAD_MESSAGE),
    SlackError("invalid_metadata_schema", Fate.BAD_MESSAGE),
    SlackError("metadata_too_large", Fate.BAD_MESSAGE),
    SlackError("markdown_text_conflict", Fate.BAD_MESSAGE),
    SlackError("as_user_not_supported", Fate.BAD_MESSAGE),
    SlackError("cannot_reply_to_message", Fate.BAD_MESSAGE),
    SlackError("method_deprecated", Fate.BAD_MESSAGE),
    SlackError("deprecated_endpoint", Fate.BAD_MESSAGE),
    SlackError("unknown_method", Fate.BAD_MESSAGE),
    # The bot is not (or no longer) in the channel, or the channel is gone or archived.
    SlackError("channel_not_found", Fate.LOST_CHANNEL, INVITE_HINT),
    SlackError("not_in_channel", Fate.LOST_CHANNEL, INVITE_HINT),
    SlackError(
        "is_archived", Fate.LOST_CHANNEL, "This channel is archived, so I can't post in it."
    ),
    # chat.update in an archived channel.
    SlackError(
        "is_inactive", Fate.LOST_CHANNEL, "This channel is archived, so I can't post in it."
    ),
    SlackError("user_not_in_channel", Fate.LOST_CHANNEL, INVITE_HINT),
    # Workspace and channel policies.
    SlackError(
        "restricted_action",
        Fate.FORBIDDEN,
        f"A workspace setting stops me posting in this channel. {_ADMIN}",
    ),
    SlackError(
        "restricted_action_read_only_channel",
        Fate.FORBIDDEN,
        "This channel is read-only for me, so I can't post in it. "
        "Ask a channel manager to let me post, then try again.",
    ),
    SlackError(
        "restricted_action_thread_only_channel",
        Fate.FORBIDDEN,
        "This channel only takes replies in threads, so I can't post a tracking card in it. "
        "Watch the import from another channel.",
    ),
    SlackError(
        "restricted_action_non_threadable_channel",
        Fate.FORBIDDEN,
        "This channel has no threads, so I can't post updates under a tracking card. "
        "Watch the import from another channel.",
    ),
    SlackError(
        "posting_to_general_channel_denied",
        Fate.FORBIDDEN,
        f"Only admins may post in this channel. {_ADMIN}",
    ),
    SlackError(
        "team_access_not_granted",
        Fate.FORBIDDEN,
        f"This app has not been granted access to this workspace or channel. {_ADMIN}",
    ),
    SlackError(
        "missing_scope",
        Fate.FORBIDDEN,
        "The app is missing a permission it needs. "
        "Ask a workspace admin to reinstall it from its manifest, then try again.",
    ),
    SlackError(
        "ekm_access_denied",
        Fate.FORBIDDEN,
        f"Your workspace's administrators have suspended posting for apps. {_ADMIN}",
    ),
    SlackError("access_denied", Fate.FORBIDDEN, f"Slack denied the app access. {_ADMIN}"),
    SlackError("no_permission", Fate.FORBIDDEN, f"The app lacks the permission to post. {_ADMIN}"),
    SlackError("accesslimited", Fate.FORBIDDEN, f"Slack limits this app on your network. {_ADMIN}"),
    SlackError(
        "enterprise_is_restricted",
        Fate.FORBIDDEN,
        f"Your organisation restricts this app. {_ADMIN}",
    ),
    SlackError("messages_tab_disabled", Fate.FORBIDDEN),
    SlackError("not_allowed_token_type", Fate.FORBIDDEN),
    # The token no longer works: nothing can be said anywhere in this workspace.
    SlackError("token_revoked", Fate.REVOKED),
    SlackError("token_expired", Fate.REVOKED),
    SlackError("invalid_auth", Fate.REVOKED),
    SlackError("not_authed", Fate.REVOKED),
    SlackError("account_inactive", Fate.REVOKED),
    SlackError("org_login_required", Fate.REVOKED),
    SlackError("team_not_found", Fate.REVOKED),
)

#: HTTP 5xx, timeouts and broken connections: not Slack error codes, but transient too.
NETWORK = SlackError("network_error", Fate.TRANSIENT)

# Retry-After is whole seconds; a missing, garbled or absurd value must not stall a
# channel for ever (nor raise: float("1e12") is a valid float and timedelta overflows).
MIN_RETRY_AFTER_SECONDS = 1.0
MAX_RETRY_AFTER_SECONDS = 300.0


def classify(code: str | None, status: int = 200) -> SlackError:
    """The fate of a failed call: by its error code, else by its HTTP status."""
    if status == 429:
        return SLACK_ERRORS["ratelimited"]
    if code and code in SLACK_ERRORS:
        return SLACK_ERRORS[code]
    if status >= 500 or not code:
        return NETWORK
    return SlackError(code, Fate.TRANSIENT)  # unknown: retried a few times, never for ever


def is_known(code: str) -> bool:
    """Whether ``code`` is in the table (an unknown one is logged as such)."""
    return code in SLACK_ERRORS


def retry_after_seconds(raw: object) -> float:
    """Slack's Retry-After header as a sane number of seconds (1 to 300; 1 if unreadable)."""
    if isinstance(raw, list | tuple):
        raw = raw[0] if raw else None
    try:
        seconds = float(str(raw).strip())
    except (TypeError, ValueError):
        return MIN_RETRY_AFTER_SECONDS
    if math.isnan(seconds):
        return MIN_RETRY_AFTER_SECONDS
    return min(MAX_RETRY_AFTER_SECONDS, max(MIN_RETRY_AFTER_SECONDS, seconds))

"""Posting exceptions archives into Slack: a file with its summary, or the summary alone.

Two places: the tracking card's thread (``ThreadUploads``, the archiver's
``Publisher``) and a person's direct message with the bot (``send_to_direct_message``,
for ``/import-status exceptions`` and the Exceptions button).

A file goes up with slack-sdk's ``files_upload_v2``: ``files.getUploadURLExternal``,
the bytes to the upload URL, then ``files.completeUploadExternal``, which shares it
into the channel or thread with the summary as its ``initial_comment``. Only that last
step shows anything in Slack: a crash before it leaves an unshared upload that Slack
discards, so the caller's record of "sent" is at most one step behind what people see.

Every Slack answer gets a fate (``Fate``): sent, retry later (rate limits, Slack's
own trouble, the network) or drop (the channel is gone, the token revoked, or Slack
refuses for good). An app installed before ``files:write`` was requested gets the
summary as a message instead of the file, with a line saying how to fix it.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from bot.archive.archiver import ArchivePost, Fate, Published
from bot.archive.csvfile import ArchiveFile
from bot.config import Settings
from bot.domain.archiving import ArchiveKind
from bot.metrics import METRICS
from bot.slack.render_exceptions import Heading, failed_text, summary_message, summary_text

log = logging.getLogger(__name__)

LOST_CHANNEL_ERRORS = frozenset(
    {"channel_not_found", "not_in_channel", "is_archived", "is_inactive"}
)
REVOKED_ERRORS = frozenset(
    {"token_revoked", "invalid_auth", "account_inactive", "not_authed", "team_not_found"}
)
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
NO_FILE_SCOPE = (
    "_The file could not be posted: the app lacks the `files:write` scope. "
    "Reinstall it from the current manifest.yml._"
)


def file_title(access_token: int, kind: ArchiveKind | None = None) -> str:
    """The title Slack shows above an archive file."""
    partial = " (partial)" if kind is ArchiveKind.PARTIAL else ""
    return f"Exceptions of import {access_token}{partial}"


def thread_heading(kind: ArchiveKind) -> Heading:
    """How a thread's summary starts, for a final or a partial archive."""
    if kind is ArchiveKind.PARTIAL:
        return Heading(
            "Partial exceptions (still running at the expiry warning; kept before the token "
            "expires)",
            "attached",
        )
    return Heading("Exceptions", "attached")


class ThreadUploads:
    """The archiver's ``Publisher``: posts one archive into one tracking card's thread."""

    def __init__(self, slack: AsyncWebClient, settings: Settings) -> None:
        self.slack = slack
        self.reason_fields = settings.exceptions_reason_fields

    def text(self, post: ArchivePost) -> str:
        """The summary (or the reason there is none) this thread gets."""
        archive = post.archive
        if post.result is None:
            return failed_text(
                archive.access_token, archive.status, post.error or "unknown error", archive.kind
            )
        return summary_text(
            post.result,
            post.mode,
            archive.status,
            thread_heading(archive.kind),
            self.reason_fields,
        )

    async def publish(self, post: ArchivePost) -> Published:
        """Post the file with its summary (or the summary alone); say what became of it."""
        target = post.target
        text = self.text(post)
        archive_file = post.result.files.get(post.mode) if post.result is not None else None
        outcome = (
            "failed"
            if post.result is None
            else "empty"
            if post.result.records == 0
            else "file"
            if archive_file is not None
            else "summary"
        )
        try:
            if archive_file is not None:
                file_id = await upload_file(
                    self.slack,
                    channel=target.channel_id,
                    thread_ts=target.tracking_ts,
                    archive=archive_file,
                    title=file_title(post.archive.access_token, post.archive.kind),
                    comment=text,
                )
                published = Published(Fate.SENT, file_id=file_id)
            else:
                ts = await self._post_text(target.channel_id, target.tracking_ts, text)
                published = Published(Fate.SENT, ts=ts)
        except SlackApiError as exc:
            error = _error_code(exc)
            if archive_file is not None and error == "missing_scope":
                log.error(
                    "cannot upload the exceptions file: the app lacks files:write; "
                    "posting the summary alone",
                    extra={"channel": target.channel_id},
                )
                return await self._summary_instead(post, f"{text}\n{NO_FILE_SCOPE}")
            return fate_of(exc)
        except (SlackRequestError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Published(Fate.RETRY, error=type(exc).__name__)
        METRICS.exception_archives.labels(outcome=outcome, place="thread").inc()
        log.info(
            "exceptions posted into the thread (%s)",
            outcome,
            extra={"channel": target.channel_id, "token": post.archive.access_token},
        )
        return published

    async def _summary_instead(self, post: ArchivePost, text: str) -> Published:
        try:
            ts = await self._post_text(post.target.channel_id, post.target.tracking_ts, text)
        except SlackApiError as exc:
            return fate_of(exc)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Published(Fate.RETRY, error=type(exc).__name__)
        METRICS.exception_archives.labels(outcome="summary", place="thread").inc()
        return Published(Fate.SENT, ts=ts)

    async def _post_text(self, channel: str, thread_ts: str | None, text: str) -> str | None:
        message = summary_message(text)
        response = await self.slack.chat_postMessage(
            channel=channel,
            thread_ts=thread_ts,
            unfurl_links=False,
            unfurl_media=False,
            **message.as_kwargs(),
        )
        ts = response.get("ts")
        return str(ts) if ts is not None else None


async def upload_file(
    slack: AsyncWebClient,
    *,
    channel: str,
    thread_ts: str | None,
    archive: ArchiveFile,
    title: str,
    comment: str,
) -> str | None:
    """Upload and share one archive file (files_upload_v2); returns Slack's file id."""
    response = await slack.files_upload_v2(
        channel=channel,
        thread_ts=thread_ts,
        file=str(archive.path),
        filename=archive.filename,
        title=title,
        initial_comment=comment,
    )
    shared: Any = response.get("file") or {}
    file_id = shared.get("id") if isinstance(shared, dict) else None
    return str(file_id) if file_id else None


async def send_to_direct_message(
    slack: AsyncWebClient, user_id: str, archive: ArchiveFile, title: str, comment: str
) -> str | None:
    """Open the person's direct message with the bot and upload the file there.

    Raises ``SlackApiError`` (or a network error); the caller turns it into words.
    """
    opened = await slack.conversations_open(users=user_id)
    channel = (opened.get("channel") or {}).get("id")
    if not channel:
        raise SlackRequestError("conversations.open returned no channel")
    file_id = await upload_file(
        slack, channel=str(channel), thread_ts=None, archive=archive, title=title, comment=comment
    )
    METRICS.exception_archives.labels(outcome="file", place="dm").inc()
    return file_id


def fate_of(exc: SlackApiError) -> Published:
    """What a Slack error means for a post that failed."""
    error = _error_code(exc)
    status = exc.response.status_code if exc.response is not None else 0
    if error == "ratelimited" or status == 429:
        return Published(Fate.RETRY, error="ratelimited", wait_seconds=_retry_after(exc))
    if error in LOST_CHANNEL_ERRORS or error in REVOKED_ERRORS:
        return Published(Fate.DROP, error=error)
    if error in TRANSIENT_ERRORS or status >= 500 or not error:
        return Published(Fate.RETRY, error=error or f"HTTP {status}")
    return Published(Fate.DROP, error=error)


def _error_code(exc: SlackApiError) -> str:
    return str(exc.response.get("error", "")) if exc.response is not None else ""


def _retry_after(exc: SlackApiError) -> float:
    headers = exc.response.headers if exc.response is not None else {}
    raw = headers.get("Retry-After") or headers.get("retry-after") or "1"
    try:
        value = float(raw if isinstance(raw, str) else raw[0])
    except (TypeError, ValueError, IndexError):
        return 1.0
    return min(max(value, 0.0), 3600.0)  # a sane range, whatever the header says

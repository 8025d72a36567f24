"""Posting exceptions archives into Slack: a file with its summary, or the summary alone.

Two places: the tracking card's thread (``ThreadUploads``, the archiver's
``Publisher``) and a person's direct message with the bot (``send_to_direct_message``,
for ``/import-status exceptions`` and the Exceptions button).

Into a thread, an archive is one more step of the subscription's delivery pass
(``Delivery.deliver_upload``): under the subscription's lease, after the card and
every reply from before the archive, never while Slack makes the channel wait, and
a failure has the fate a reply's would have (``bot/slack/errors.py``): a 429 makes
the whole channel wait, a lost channel ends the subscription, transient trouble is
tried again by the archiver with backoff, and nothing is tried for ever. An app
installed before ``files:write`` was requested gets the summary as a message
instead, with a line saying how to fix it.

A file goes up in the three steps of slack-sdk's ``files_upload_v2``:
``files.getUploadURLExternal``, the bytes to the upload URL, then
``files.completeUploadExternal``, which shares it into the channel or thread with
the summary as its ``initial_comment``. The two Web API calls are slack-sdk's own;
the bytes are streamed from disk (``files_upload_v2`` reads the whole file into
memory first). Only the last step shows anything in Slack: a crash before it
leaves an unshared upload that Slack discards, so the caller's record of "sent" is
at most one step behind what people see.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from bot.archive.archiver import ArchivePost, Fate, Published
from bot.archive.csvfile import ArchiveFile
from bot.config import Settings
from bot.domain.archiving import ArchiveKind
from bot.metrics import METRICS
from bot.slack import errors
from bot.slack.render_exceptions import Heading, failed_text, summary_message, summary_text
from bot.store.records import DeliveryState

log = logging.getLogger(__name__)

NO_FILE_SCOPE = (
    "_The file could not be posted: the app lacks the `files:write` scope. "
    "Reinstall it from the current manifest.yml._"
)
#: Slack's limit for one file (slack-sdk checks the same before it uploads).
MAX_FILE_BYTES = 1024**3
# One upload may take this long, plus the time its bytes need at MIN_BYTES_PER_SECOND,
# before it counts as failed (transient).
UPLOAD_TIMEOUT_SECONDS = 30.0
MIN_BYTES_PER_SECOND = 250_000
# How soon to look again when the thread cannot take the upload yet for no stated time
# (its card not posted, the subscription being delivered right now).
LATER_SECONDS = 1.0
# Where Slack accepts them: no previews, no re-parsing of text the bot escaped.
POST_FLAGS: dict[str, Any] = {"unfurl_links": False, "unfurl_media": False, "parse": "none"}


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


# --------------------------------------------------------------------------- the thread


@dataclass
class ThreadUpload:
    """One archive's post into one thread, made by delivery as the last step of a pass.

    Delivery asks ``waits_for`` whether the thread can take it now, calls ``send``
    (which raises Slack's error, if any) and reports what it decided through
    ``later`` and ``failed``; ``outcome`` is then what the archiver is told.
    """

    slack: AsyncWebClient
    #: the summary (mrkdwn): the file's comment, or the message itself
    text: str
    #: the file, or None: the summary alone
    archive: ArchiveFile | None
    title: str
    #: when the archive was decided: every reply created by then goes first
    after: datetime
    #: what the thread got: "file", "summary", "empty" (no records) or "failed" (no fetch)
    kind: str = "file"
    outcome: Published | None = None

    @property
    def timeout_seconds(self) -> float:
        """How long the whole upload may take before it counts as failed."""
        size = self.archive.size_bytes if self.archive is not None else 0
        return UPLOAD_TIMEOUT_SECONDS + size / MIN_BYTES_PER_SECOND

    def waits_for(self, d: DeliveryState, now: datetime) -> tuple[float, str] | None:
        """Seconds until the thread can take this upload, and why; None when it can now.

        Not while Slack makes the channel wait (as for replies), not before the card
        is posted, and never before a reply created up to ``after``.
        """
        if d.channel_wait_until is not None and d.channel_wait_until > now:
            seconds = (d.channel_wait_until - now).total_seconds()
            return seconds, "the channel must wait (Slack's rate limit)"
        if d.tracking_ts is None:
            retry = d.card_retry_at
            seconds = (retry - now).total_seconds() if retry is not None and retry > now else 0
            return max(seconds, LATER_SECONDS), "the card is not posted yet"
        earlier = [n for n in d.notifications if n.created_at <= self.after]
        if earlier:
            due = min(n.next_attempt_at for n in earlier)
            return max((due - now).total_seconds(), LATER_SECONDS), "a reply before it is not sent"
        return None

    async def send(self, channel: str, thread_ts: str) -> None:
        """Post the file with its summary (or the summary alone) into the thread.

        Raises ``SlackApiError`` (or a network error) when Slack refuses; an app
        without ``files:write`` gets the summary with the fix instead of the file.
        """
        text = self.text
        if self.archive is not None:
            try:
                file_id = await upload_file(
                    self.slack,
                    channel=channel,
                    thread_ts=thread_ts,
                    archive=self.archive,
                    title=self.title,
                    comment=text,
                )
            except SlackApiError as exc:
                if _error_code(exc) != "missing_scope":
                    raise
                log.error(
                    "cannot upload the exceptions file: the app lacks files:write; "
                    "posting the summary alone",
                    extra={"channel": channel},
                )
                text, self.kind = f"{text}\n{NO_FILE_SCOPE}", "summary"
            else:
                self.outcome = Published(Fate.SENT, file_id=file_id)
                return
        ts = await post_text(self.slack, channel, thread_ts, text)
        self.outcome = Published(Fate.SENT, ts=ts)

    def later(self, seconds: float, why: str) -> None:
        """Not tried: the thread cannot take it yet (not a failure)."""
        self.outcome = Published(Fate.LATER, error=why, wait_seconds=max(seconds, LATER_SECONDS))

    def failed(self, error: errors.SlackError, detail: str, retry_after: float | None) -> None:
        """Slack refused it; ``error`` is its fate from the one table."""
        if error.fate is errors.Fate.RATE_LIMITED:
            self.outcome = Published(Fate.WAIT, error=detail, wait_seconds=retry_after or 1.0)
        elif error.fate.permanent:
            self.outcome = Published(Fate.DROP, error=detail)
        else:
            self.outcome = Published(Fate.RETRY, error=detail)


class UploadDelivery(Protocol):
    """The delivery pass that makes thread uploads (``bot.slack.delivery.Delivery``)."""

    async def deliver_upload(self, subscription_id: int, upload: ThreadUpload) -> None: ...


class ThreadUploads:
    """The archiver's ``Publisher``: has one archive posted into one tracking card's thread."""

    def __init__(self, slack: AsyncWebClient, settings: Settings, delivery: UploadDelivery) -> None:
        self.slack = slack
        self.delivery = delivery
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

    def upload(self, post: ArchivePost) -> ThreadUpload:
        """What delivery is to post for ``post``."""
        archive_file = post.result.files.get(post.mode) if post.result is not None else None
        kind = (
            "failed"
            if post.result is None
            else "empty"
            if post.result.records == 0
            else "file"
            if archive_file is not None
            else "summary"
        )
        return ThreadUpload(
            self.slack,
            text=self.text(post),
            archive=archive_file,
            title=file_title(post.archive.access_token, post.archive.kind),
            after=post.archive.created_at,
            kind=kind,
        )

    async def publish(self, post: ArchivePost) -> Published:
        """Have the post made by the subscription's delivery pass; say what became of it."""
        upload = self.upload(post)
        await self.delivery.deliver_upload(post.target.subscription_id, upload)
        published = upload.outcome or Published(
            Fate.LATER, error="the delivery lease was lost", wait_seconds=LATER_SECONDS
        )
        if published.fate is Fate.SENT:
            METRICS.exception_archives.labels(outcome=upload.kind, place="thread").inc()
            log.info(
                "exceptions posted into the thread (%s)",
                upload.kind,
                extra={"channel": post.target.channel_id, "token": post.archive.access_token},
            )
        return published


async def post_text(
    slack: AsyncWebClient, channel: str, thread_ts: str | None, text: str
) -> str | None:
    """Post a summary as a message (into a thread when ``thread_ts``); returns its ts."""
    message = summary_message(text)
    response = await slack.chat_postMessage(
        channel=channel, thread_ts=thread_ts, **message.as_kwargs(), **POST_FLAGS
    )
    ts = response.get("ts")
    return str(ts) if ts is not None else None


# --------------------------------------------------------------------------- files


async def upload_file(
    slack: AsyncWebClient,
    *,
    channel: str,
    thread_ts: str | None,
    archive: ArchiveFile,
    title: str,
    comment: str,
) -> str | None:
    """Upload and share one archive file, as ``files_upload_v2`` does; returns its file id.

    The same three steps and arguments, with the bytes streamed from disk instead of
    read into memory. Raises ``SlackApiError`` for a Web API refusal and
    ``SlackRequestError`` when the upload URL does not take the bytes.
    """
    size = archive.path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SlackRequestError(
            f"Maximum upload file size is {MAX_FILE_BYTES} bytes (file size: {size} bytes)"
        )
    started = await slack.files_getUploadURLExternal(filename=archive.filename, length=size)
    file_id = str(started.get("file_id") or "")
    upload_url = str(started.get("upload_url") or "")
    if not file_id or not upload_url:
        raise SlackRequestError("files.getUploadURLExternal returned no upload URL")
    await send_bytes(slack, upload_url, archive.path, size)
    completed = await slack.files_completeUploadExternal(
        files=[{"id": file_id, "title": title}],
        channel_id=channel,
        thread_ts=thread_ts,
        initial_comment=comment,
    )
    shared: Any = completed.get("files") or []
    first = shared[0] if isinstance(shared, list) and shared else {}
    return str(first.get("id") or file_id) if isinstance(first, dict) else file_id


async def send_bytes(slack: AsyncWebClient, url: str, path: Path, size: int) -> None:
    """The second step: POST the file to its upload URL, 64 KiB at a time from disk.

    Through the client's own session, proxy and TLS settings when it has them, as
    slack-sdk does; raises ``SlackRequestError`` unless the answer is HTTP 200.
    """
    timeout = aiohttp.ClientTimeout(
        total=max(float(slack.timeout), UPLOAD_TIMEOUT_SECONDS) + size / MIN_BYTES_PER_SECOND
    )
    async with contextlib.AsyncExitStack() as stack:
        session = slack.session
        if session is None or session.closed:
            session = await stack.enter_async_context(aiohttp.ClientSession(timeout=timeout))
        body = stack.enter_context(path.open("rb"))
        response = await stack.enter_async_context(
            session.post(
                url,
                data=body,  # aiohttp streams an open file, reading it off the event loop
                headers={"Content-Type": "application/octet-stream"},
                proxy=slack.proxy,
                ssl=slack.ssl if slack.ssl is not None else True,
                timeout=timeout,
            )
        )
        answer = (await response.content.read(200)).decode("utf-8", "replace")
        if response.status != 200:
            raise SlackRequestError(
                f"Failed to upload a file (status: {response.status}, body: {answer!r})"
            )


# --------------------------------------------------------------------------- direct messages


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


def _error_code(exc: SlackApiError) -> str:
    return str(exc.response.get("error", "")) if exc.response is not None else ""

"""The ``/import-status`` slash command: parsing its text, and answering it.

Every answer is acknowledged first. A quick answer goes in the
acknowledgement itself; a slow one (the API is slow or down) is acknowledged
with "Looking up…" and delivered through ``respond`` when ready, so Slack's
3-second limit is never at risk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot.clock import utcnow
from bot.domain.batch import MAX_BATCH
from bot.metrics import METRICS
from bot.mypreferences.errors import ApiError
from bot.mypreferences.tokens import InvalidAccessToken, parse_access_token
from bot.service import (
    BatchLookupFailed,
    BatchWatchOutcome,
    CardOutcome,
    ImportService,
    WatchOutcome,
    WatchResult,
)
from bot.slack import render
from bot.slack.listeners.access import AccessControl

if TYPE_CHECKING:
    from bot.slack.listeners.exceptions import ExceptionsRequests

log = logging.getLogger(__name__)

COMMAND = "/import-status"
# Room for a batch: 20 of the longest tokens (19 digits) after "unsubscribe".
MAX_TEXT_LENGTH = 500
# How long a command may wait for the API before acknowledging with "Looking up…".
QUICK_ANSWER_SECONDS = 1.5


@dataclass(frozen=True)
class Command:
    verb: str  # lookup | watch | unwatch | exceptions | list | help | history | settings | set
    # | invalid
    access_token: int | None = None
    problem: str | None = None
    count: int | None = None  # history: how many
    words: tuple[str, ...] = ()  # set: the key and the value's words
    tokens: tuple[int, ...] = ()  # watch, unwatch: a batch's access tokens (2 to MAX_BATCH)


_VERBS = {
    "watch": "watch",
    "subscribe": "watch",
    "unwatch": "unwatch",
    "unsubscribe": "unwatch",
    "list": "list",
    "help": "help",
    "history": "history",
    "settings": "settings",
    "set": "set",
    "exceptions": "exceptions",
}
#: The verbs the channel's attention handler answers (listeners/attention.py).
ATTENTION_VERBS = frozenset({"history", "settings", "set"})
HISTORY_DEFAULT = 10
HISTORY_MAX = 50


def parse_command(text: str | None) -> Command:
    """Turn the command's text into a Command; anything unexpected becomes ``invalid``."""
    raw = (text or "").strip()
    if len(raw) > MAX_TEXT_LENGTH:
        return Command("invalid", problem="That text is too long.")
    words = raw.split()
    if not words:
        return Command("help")
    first = words[0].lower()
    verb = _VERBS.get(first)
    if verb in ("list", "help", "settings"):
        if len(words) > 1:
            return Command("invalid", problem=f"`{first}` takes no arguments.")
        return Command(verb)
    if verb == "exceptions":
        if len(words) != 2:
            return Command("invalid", problem=f"`{first}` needs exactly one access token.")
        return _with_token(verb, words[1])
    if verb in ("watch", "unwatch"):
        if len(words) == 1:
            return Command(
                "invalid",
                problem=f"`{first}` needs an access token, or up to {MAX_BATCH} of them.",
            )
        if len(words) == 2:
            return _with_token(verb, words[1])
        return _batch(verb, first, words[1:])
    if verb == "history":
        return _history(words[1:])
    if verb == "set":
        if len(words) < 3:
            return Command("invalid", problem="`set` needs a setting and a value: set KEY VALUE.")
        return Command("set", words=tuple(words[1:]))
    if len(words) == 1:
        return _with_token("lookup", words[0])
    return Command("invalid", problem="I did not understand that.")


def pending_exceptions_text(access_token: int) -> str:
    """The acknowledgement while an import's exceptions are fetched."""
    return (
        f"Fetching the exceptions of import {access_token}… I will answer here, "
        "and send the file to your direct messages."
    )


def _history(args: list[str]) -> Command:
    if not args:
        return Command("history", count=HISTORY_DEFAULT)
    if len(args) > 1 or not args[0].isascii() or not args[0].isdigit() or int(args[0]) < 1:
        return Command(
            "invalid", problem=f"`history` takes one number from 1 to {HISTORY_MAX}, or none."
        )
    # More than the most just shows the most (the answer says so).
    return Command("history", count=min(int(args[0]), 10**6))


def _batch(verb: str, typed: str, words: list[str]) -> Command:
    """``watch``/``unwatch`` with several tokens: each a token, each once, at most MAX_BATCH."""
    if len(words) > MAX_BATCH:
        return Command(
            "invalid", problem=f"`{typed}` takes at most {MAX_BATCH} access tokens at once."
        )
    tokens: list[int] = []
    for word in words:
        try:
            token = parse_access_token(word)
        except InvalidAccessToken as exc:
            return Command("invalid", problem=str(exc))
        if token in tokens:
            return Command("invalid", problem=f"Import {token} is in the list twice.")
        tokens.append(token)
    return Command(verb, tokens=tuple(tokens))


def _with_token(verb: str, word: str) -> Command:
    try:
        return Command(verb, access_token=parse_access_token(word))
    except InvalidAccessToken as exc:
        return Command("invalid", problem=str(exc))


async def answer(
    ack: AsyncAck,
    respond: AsyncRespond,
    work: Awaitable[render.Message],
    pending_text: str,
) -> None:
    """Acknowledge with the answer if it is quick, else with ``pending_text`` then respond."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=QUICK_ANSWER_SECONDS)
    if done:
        message = task.result()
        # No link previews (Slack accepts these two in acks and response_url posts).
        await ack(
            response_type="ephemeral",
            **message.as_kwargs(),
            unfurl_links=False,
            unfurl_media=False,
        )
        return
    await ack(response_type="ephemeral", text=pending_text)
    message = await task
    await respond(
        response_type="ephemeral",
        replace_original=False,
        **message.as_kwargs(),
        unfurl_links=False,
        unfurl_media=False,
    )


async def guarded(
    access_token: int | None, work: Callable[[], Awaitable[render.Message]]
) -> render.Message:
    """Turn API errors into the user's sentence and anything else into a short apology."""
    try:
        return await work()
    except ApiError as exc:
        return render.lookup_error_message(access_token, exc.user_message)
    except Exception:
        log.exception("command failed", extra={"token": access_token})
        return render.lookup_error_message(
            access_token, "Something went wrong inside the bot; the error has been logged."
        )


class AttentionVerbs(Protocol):
    """Answers history, settings and set (listeners/attention.py)."""

    async def command(
        self,
        parsed: Command,
        ack: AsyncAck,
        respond: AsyncRespond,
        command: dict[str, Any],
        client: AsyncWebClient,
    ) -> None: ...


class CommandHandler:
    def __init__(
        self,
        service: ImportService,
        access: AccessControl,
        attention: AttentionVerbs | None = None,
        exceptions: ExceptionsRequests | None = None,
    ) -> None:
        self.service = service
        self.access = access
        self.attention = attention
        #: ``exceptions TOKEN`` (None: not available in this process)
        self.exceptions = exceptions

    def register(self, app: AsyncApp) -> None:
        app.command(COMMAND)(self.handle)

    async def handle(
        self,
        ack: AsyncAck,
        respond: AsyncRespond,
        command: dict[str, Any],
        client: AsyncWebClient | None = None,
    ) -> None:
        parsed = parse_command(command.get("text"))
        METRICS.commands.labels(verb=parsed.verb).inc()
        team_id = str(command.get("team_id", ""))
        channel_id = str(command.get("channel_id", ""))
        user_id = str(command.get("user_id", ""))
        # Every verb, help included: outside the allow-lists the bot only says so.
        denial = await self.access.check(team_id, channel_id, user_id, parsed.verb)
        if denial is not None:
            await ack(response_type="ephemeral", **render.notice(denial).as_kwargs())
            return
        if parsed.verb == "invalid":
            await ack(response_type="ephemeral", **render.usage_message(parsed.problem).as_kwargs())
            return
        if parsed.verb == "help":
            await ack(response_type="ephemeral", **render.usage_message().as_kwargs())
            return
        if parsed.verb in ATTENTION_VERBS:
            if self.attention is None or client is None:
                message = render.usage_message("That is not available in this bot.")
                await ack(response_type="ephemeral", **message.as_kwargs())
                return
            await self.attention.command(parsed, ack, respond, command, client)
            return
        if parsed.verb == "list":
            work = guarded(None, lambda: self._list(team_id, channel_id))
            await answer(ack, respond, work, "Looking up this channel's watches…")
            return
        if parsed.tokens:
            await self._batch(ack, respond, parsed, team_id, channel_id, user_id)
            return
        token = parsed.access_token
        assert token is not None  # every other verb carries one
        action, pending = {
            "lookup": (self.lookup, f"Looking up import {token}…"),
            "watch": (self.watch, f"Checking import {token} before watching it…"),
            "unwatch": (self.unwatch, f"Stopping the watch of import {token}…"),
            "exceptions": (self._exceptions, pending_exceptions_text(token)),
        }[parsed.verb]
        work = guarded(token, lambda: action(team_id, channel_id, user_id, token))
        await answer(ack, respond, work, pending)

    async def lookup(
        self, team_id: str, channel_id: str, user_id: str, token: int
    ) -> render.Message:
        """The import's status message; a failed lookup costs the user a second slot."""
        # Whether the channel watches it is read from the database while the API answers,
        # not after: the answer (often the acknowledgement itself) waits for both.
        watched = asyncio.ensure_future(self.service.is_watched(team_id, channel_id, token))
        try:
            status = await self.service.lookup(token)
        except BaseException as exc:
            watched.cancel()
            if isinstance(exc, ApiError):
                await self.access.record_failure(team_id, user_id)
            raise
        watching = await watched
        return render.status_message(status, utcnow(), watching=watching)

    async def _exceptions(
        self, team_id: str, channel_id: str, user_id: str, token: int
    ) -> render.Message:
        if self.exceptions is None:
            return render.notice("Exceptions are not available here.")
        try:
            return await self.exceptions.answer(team_id, channel_id, user_id, token)
        except ApiError:
            # Like a lookup: guessing tokens with it costs what a failed lookup costs.
            await self.access.record_failure(team_id, user_id)
            raise

    async def watch(
        self, team_id: str, channel_id: str, user_id: str, token: int
    ) -> render.Message:
        try:
            outcome = await self.service.watch(
                team_id=team_id, channel_id=channel_id, user_id=user_id, access_token=token
            )
        except ApiError:
            # Watching looks the token up first: guessing with it costs what a lookup costs.
            await self.access.record_failure(team_id, user_id)
            raise
        if outcome.result is WatchResult.FINISHED:
            message = render.status_message(outcome.status, utcnow(), watching=False)
            note = (
                f"Import {token} has already finished ({outcome.status.status.value}); "
                "there is nothing left to watch."
            )
            return render.Message(
                text=f"{note}\n{message.text}",
                blocks=render.notice(note).blocks + message.blocks,
            )
        if outcome.result is WatchResult.ALREADY:
            return render.notice(f"This channel is already watching import {token}.")
        return render.notice(watch_answer(token, outcome))

    async def unwatch(
        self, team_id: str, channel_id: str, user_id: str, token: int
    ) -> render.Message:
        ended = await self.service.unwatch(
            team_id=team_id, channel_id=channel_id, user_id=user_id, access_token=token
        )
        if not ended:
            return render.notice(f"This channel is not watching import {token}.")
        return render.notice(f"Stopped watching import {token} in this channel.")

    async def _batch(
        self,
        ack: AsyncAck,
        respond: AsyncRespond,
        parsed: Command,
        team_id: str,
        channel_id: str,
        user_id: str,
    ) -> None:
        """``watch`` or ``unwatch`` with a list of tokens."""
        tokens = parsed.tokens
        listed = _listed(tokens)
        if parsed.verb == "watch":
            work = guarded(None, lambda: self.watch_batch(team_id, channel_id, user_id, tokens))
            await answer(ack, respond, work, f"Checking imports {listed} before watching them…")
            return
        work = guarded(None, lambda: self.unwatch_batch(team_id, channel_id, user_id, tokens))
        await answer(ack, respond, work, f"Stopping the watches of imports {listed}…")

    async def watch_batch(
        self, team_id: str, channel_id: str, user_id: str, tokens: tuple[int, ...]
    ) -> render.Message:
        """Watch the imports as one batch; the answer says what became of its card."""
        try:
            outcome = await self.service.watch_batch(
                team_id=team_id, channel_id=channel_id, user_id=user_id, access_tokens=tokens
            )
        except BatchLookupFailed as failed:
            # Like a lookup: each token that could not be looked up costs what a failed one does.
            for _ in range(failed.failures):
                await self.access.record_failure(team_id, user_id)
            return render.lookup_error_message(
                failed.access_token,
                f"{failed.error.user_message} Nothing was watched; "
                "leave this import out and try again.",
            )
        return render.notice(batch_watch_answer(tokens, outcome))

    async def unwatch_batch(
        self, team_id: str, channel_id: str, user_id: str, tokens: tuple[int, ...]
    ) -> render.Message:
        stopped, missing = await self.service.unwatch_many(
            team_id=team_id, channel_id=channel_id, user_id=user_id, access_tokens=tokens
        )
        lines = []
        if stopped:
            lines.append(f"Stopped watching imports {_listed(tuple(stopped))} in this channel.")
        if missing:
            lines.append(f"This channel was not watching {_listed(tuple(missing))}.")
        return render.notice(" ".join(lines))

    async def _list(self, team_id: str, channel_id: str) -> render.Message:
        watches = await self.service.watches(team_id, channel_id)
        rows = [
            render.WatchRow(
                access_token=w.access_token,
                name=w.name,
                status=w.status,
                subscribed_by=w.subscribed_by,
                subscribed_at=w.subscribed_at,
            )
            for w in watches
        ]
        return render.watch_list_message(rows, utcnow())


def _listed(tokens: tuple[int, ...]) -> str:
    """1001, 1002 and 1003."""
    words = [str(t) for t in tokens]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def batch_watch_answer(tokens: tuple[int, ...], outcome: BatchWatchOutcome) -> str:
    """What the person who typed ``watch TOKEN TOKEN ...`` reads."""
    listed = _listed(tokens)
    if outcome.result is WatchResult.FINISHED:
        return f"Imports {listed} have all finished already; there is nothing left to watch."
    if outcome.result is WatchResult.ALREADY:
        return (
            f"This channel already watches {_listed(outcome.already)}. Nothing was started: "
            "leave those out (or unwatch them first) and try again."
        )
    card = outcome.card
    if outcome.result is WatchResult.REFUSED:
        if card is not None and card.hint:
            if card.error in ("not_in_channel", "channel_not_found"):
                return card.hint
            return f"I can't watch imports {listed} here. {card.hint}"
        error = card.error if card is not None else "unknown"
        return (
            f"I can't watch imports {listed} here: Slack refused the batch's card ({error}). "
            "Nothing was saved, and the error has been logged."
        )
    finished = [s.access_token for s in outcome.statuses if s.status.is_terminal]
    done = f" ({_listed(tuple(finished))} had finished already.)" if finished else ""
    after = "I will post in its thread as each one ends or fails."
    if card is not None and card.outcome is CardOutcome.LATER:
        return (
            f"Watching imports {listed} in this channel as one batch. Slack asked me to slow "
            f"down, so its card will appear shortly; {after}{done}"
        )
    return (
        f"Watching imports {listed} in this channel as one batch: its card is posted, "
        f"and {after}{done}"
    )


def watch_answer(token: int, outcome: WatchOutcome) -> str:
    """What the person who typed ``watch`` reads: what became of the tracking card."""
    card = outcome.card
    if outcome.result is WatchResult.REFUSED:
        if card is not None and card.hint:
            if card.error in ("not_in_channel", "channel_not_found"):
                return card.hint  # the whole story: invite the bot, try again
            return f"I can't watch import {token} here. {card.hint}"
        error = card.error if card is not None else "unknown"
        return (
            f"I can't watch import {token} here: Slack refused its tracking card ({error}). "
            "Nothing was saved, and the error has been logged."
        )
    after = "I will post in its thread when it moves, finishes, fails or is about to expire."
    if card is not None and card.outcome is CardOutcome.LATER:
        why = (
            "Slack asked me to slow down"
            if card.error in (None, "ratelimited")
            else f"Slack did not take it just now ({card.error})"
        )
        return (
            f"Watching import {token} in this channel. {why}, so its tracking card "
            f"will appear shortly; {after}"
        )
    return f"Watching import {token} in this channel: its tracking card is posted, and {after}"

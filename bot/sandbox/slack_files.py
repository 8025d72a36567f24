"""The Slack emulator's files and direct messages: the upload v2 flow and conversations.open.

A separate section of ``SlackEmulator`` (``emulator.files``), for the exceptions
archive. It plays what slack-sdk's ``files_upload_v2`` talks to:

1. ``files.getUploadURLExternal`` (``filename``, ``length``): a fresh ``file_id`` and an
   ``upload_url`` on this server;
2. ``POST /upload/{file_id}``: the bytes (kept, for tests to read back);
3. ``files.completeUploadExternal`` (``files`` JSON with ids and titles, ``channel_id``,
   ``thread_ts``, ``initial_comment``): shares the files; only now does the channel show
   anything: a message (the comment) carrying the file, in the thread when asked.

and ``conversations.open`` (``users``): the direct message channel of the bot and that
user (``D`` + the user id without its ``U``).

Scopes are enforced as Slack does: files need ``files:write``, opening a DM needs
``im:write``; ``granted_scopes`` says what the app was installed with (by default
what manifest.yml asks for), and a method without its scope answers ``missing_scope``.

For crash tests, ``hold(point, seconds)`` makes the server wait at one point of the
flow and counts arrivals there (``reached``): ``getUploadURL:before``, ``upload:before``
(the bytes received, not yet kept), ``complete:before`` (the request received, not yet
handled: it is handled even if the caller is gone) and ``complete:after`` (the file is
shared, the answer not yet sent).
"""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from bot.sandbox.slack_emulator import SlackEmulator, _Identity

JSON = dict[str, Any]
#: What manifest.yml asks for; an app installed with less answers missing_scope.
DEFAULT_SCOPES = frozenset({"commands", "chat:write", "files:write", "im:write"})
HOLD_POINTS = ("getUploadURL:before", "upload:before", "complete:before", "complete:after")
_METHOD_POINTS = {
    "files.getUploadURLExternal": "getUploadURL",
    "files.completeUploadExternal": "complete",
}


@dataclass(frozen=True)
class UploadedFile:
    """A file shared into a channel (or a thread of it) by files.completeUploadExternal."""

    id: str
    filename: str
    title: str | None
    data: bytes
    channel: str
    thread_ts: str | None
    initial_comment: str
    message_ts: str
    shared_at: float

    @property
    def gzipped(self) -> bool:
        return self.data[:2] == b"\x1f\x8b"

    def text(self) -> str:
        """The file's content as text (gunzipped, byte-order mark removed)."""
        raw = gzip.decompress(self.data) if self.gzipped else self.data
        return raw.decode("utf-8-sig")

    def rows(self) -> list[list[str]]:
        """The file read as CSV."""
        return list(csv.reader(io.StringIO(self.text(), newline="")))


@dataclass
class _Pending:
    file_id: str
    filename: str
    length: int
    data: bytes | None = None


class SlackFiles:
    """The emulator's files section; see the module docstring."""

    def __init__(self, emulator: SlackEmulator) -> None:
        self.emulator = emulator
        self.granted_scopes: set[str] = set(DEFAULT_SCOPES)
        self._holds: dict[str, float] = {}
        self.reached: Counter[str] = Counter()
        self._pending: dict[str, _Pending] = {}
        self._shared: list[UploadedFile] = []
        self.dms_opened: list[str] = []
        emulator._methods.update(
            {
                "files.getUploadURLExternal": self._get_upload_url,
                "files.completeUploadExternal": self._complete_upload,
                "conversations.open": self._conversations_open,
            }
        )
        routes = emulator.app.router.routes
        # First, so API calls pass through the hold points before the emulator's own route.
        routes.insert(0, Route("/api/{method}", self._http_api, methods=["GET", "POST"]))
        routes.insert(0, Route("/upload/{file_id}", self._http_upload, methods=["POST"]))

    # ------------------------------------------------------------------ steering

    def reset(self) -> None:
        with self.emulator._lock:
            self._pending.clear()
            self._shared.clear()
            self.dms_opened.clear()
            self._holds.clear()
            self.reached.clear()
            self.granted_scopes = set(DEFAULT_SCOPES)

    def hold(self, point: str, seconds: float) -> None:
        """Make the server wait ``seconds`` at ``point`` (one of HOLD_POINTS); 0 clears."""
        if point not in HOLD_POINTS:
            raise ValueError(f"point must be one of {', '.join(HOLD_POINTS)}")
        with self.emulator._lock:
            if seconds > 0:
                self._holds[point] = seconds
            else:
                self._holds.pop(point, None)

    def shared(
        self, channel: str | None = None, thread_ts: str | None = None
    ) -> list[UploadedFile]:
        """Files shared so far, in order; only one channel's (or one thread's) when asked."""
        with self.emulator._lock:
            return [
                f
                for f in self._shared
                if (channel is None or f.channel == channel)
                and (thread_ts is None or f.thread_ts == thread_ts)
            ]

    def uploads_started(self) -> int:
        """files.getUploadURLExternal calls answered (shared or not)."""
        with self.emulator._lock:
            return len(self._pending) + len(self._shared)

    # ------------------------------------------------------------------ HTTP

    async def _wait(self, point: str) -> None:
        with self.emulator._lock:
            self.reached[point] += 1
            seconds = self._holds.get(point, 0.0)
        if seconds:
            await asyncio.sleep(seconds)

    async def _http_api(self, request: Request) -> Response:
        point = _METHOD_POINTS.get(request.path_params["method"])
        if point is None:
            return await self.emulator._http_api(request)
        await request.body()  # the whole request has reached "Slack" (Starlette keeps it)
        await self._wait(f"{point}:before")
        response = await self.emulator._http_api(request)
        if point == "complete":
            await self._wait("complete:after")
        return response

    async def _http_upload(self, request: Request) -> Response:
        data = await request.body()
        await self._wait("upload:before")
        file_id = request.path_params["file_id"]
        with self.emulator._lock:
            pending = self._pending.get(file_id)
            if pending is None:
                return PlainTextResponse("file_not_found", status_code=404)
            pending.data = data
        return PlainTextResponse(f"OK - {len(data)}")

    # ------------------------------------------------------------------ Web API methods
    # Called by the emulator with its lock held.

    def _need(self, scope: str) -> None:
        from bot.sandbox.slack_emulator import _ApiError

        if scope not in self.granted_scopes:
            raise _ApiError(
                "missing_scope", needed=scope, provided=",".join(sorted(self.granted_scopes))
            )

    def _get_upload_url(self, identity: _Identity, params: JSON) -> JSON:
        from bot.sandbox.slack_emulator import _ApiError, _required

        self._need("files:write")
        _required(params, "filename", "length")
        try:
            length = int(params["length"])
        except (TypeError, ValueError):
            raise _ApiError("invalid_arguments") from None
        file_id = f"F{secrets.token_hex(5).upper()}"
        self._pending[file_id] = _Pending(file_id, str(params["filename"]), length)
        return {"upload_url": f"{self.emulator.url}upload/{file_id}", "file_id": file_id}

    def _complete_upload(self, identity: _Identity, params: JSON) -> JSON:
        from bot.sandbox.slack_emulator import _ApiError, _required

        self._need("files:write")
        _required(params, "files")
        raw = params["files"]
        try:
            items = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise _ApiError("invalid_arguments") from None
        if not isinstance(items, list) or not items:
            raise _ApiError("invalid_arguments")
        channel = params.get("channel_id") or params.get("channels") or None
        thread_ts = params.get("thread_ts") or None
        comment = str(params.get("initial_comment") or "")
        if channel is not None:
            self.emulator._postable(identity, str(channel), "files.completeUploadExternal")
        found: list[tuple[_Pending, str | None]] = []
        for item in items:
            pending = self._pending.get(str(item.get("id"))) if isinstance(item, dict) else None
            if pending is None or pending.data is None:
                raise _ApiError("file_not_found")
            found.append((pending, item.get("title")))
        answer = []
        for pending, title in found:
            del self._pending[pending.file_id]
            answer.append({"id": pending.file_id, "name": pending.filename, "title": title})
            if channel is None:
                continue  # uploaded, not shared: nobody sees it
            message = self.emulator._store(
                identity.user_id,
                str(channel),
                comment,
                [],
                str(thread_ts) if thread_ts else None,
                False,
            )
            self._shared.append(
                UploadedFile(
                    id=pending.file_id,
                    filename=pending.filename,
                    title=title,
                    data=pending.data or b"",
                    channel=str(channel),
                    thread_ts=message.thread_ts,
                    initial_comment=comment,
                    message_ts=message.ts,
                    shared_at=time.monotonic(),
                )
            )
        return {"files": answer}

    def _conversations_open(self, identity: _Identity, params: JSON) -> JSON:
        from bot.sandbox.slack_emulator import _ApiError, _required

        self._need("im:write")
        _required(params, "users")
        users = [u.strip() for u in str(params["users"]).split(",") if u.strip()]
        if len(users) != 1:
            raise _ApiError("not_implemented" if users else "users_list_not_supplied")
        user = users[0]
        # The emulator's own conversations.open makes the DM a conversation it knows,
        # with the bot in it: the strict membership check then lets the bot post there.
        opened = self.emulator._conversations_open(identity, {"users": user})
        self.dms_opened.append(user)
        return {"channel": {**opened["channel"], "is_im": True, "user": user}}

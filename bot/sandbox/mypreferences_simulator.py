"""A MyPreferences API simulator: a real HTTP server for tests, benchmarks and the demo.

It serves Retrieve status, Retrieve exceptions and an OAuth 2.0 client-credentials
token endpoint, shaped as ``docs/mypreferences-api.md`` describes, plus ``/_sim/...``
control endpoints so another process can drive it. Serve ``Simulator().app`` with
``bot.sandbox.devserver.ServerThread`` (tests) or uvicorn
(``python -m bot.sandbox.mypreferences_simulator``).

Thread safety: tests mutate the simulator from their own thread while uvicorn serves
from another, so all shared state sits behind one ``threading.Lock``. The lock is
only ever held for short synchronous sections, never across an ``await``.

Scripted imports move lazily: each request applies the steps whose time has come,
so there is no background task and an idle simulator costs nothing. An import may
also process at a steady rate (``SteadyRate``): its Processed count is worked out
from the clock at each request, and it turns Completed at a known moment
(``finishes_at``), what the lag benchmark measures from.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import secrets
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bot.mypreferences.parsing import parse_expires

DEFAULT_AUTHORIZATION = "PNAUTHINFO3-HMAC-SHA256 Credential=sim/2026-01-01T00:00:00Z Signature=c2lt"
DEFAULT_TOKEN_LIFETIME_HOURS = 12  # the Expires attribute's documented default
MAX_GENERATED_EXCEPTIONS = 10_000  # from the Exceptions count; exception_count may go further
MAX_EXCEPTION_COUNT = 20_000_000
DEFAULT_EXCEPTIONS_LIMIT = 1000
MAX_EXCEPTIONS_LIMIT = 10_000
STATUS_PATH = "/Profiles/Async/{clientId}/Import/{accessToken}/Status"
EXCEPTIONS_PATH = "/Profiles/Async/{clientId}/Import/{accessToken}/Exceptions"
OAUTH_TOKEN_PATH = "/oauth/token"

_STATUS, _EXCEPTIONS, _OAUTH = "status", "exceptions", "oauth"
# Cut off mid-string on purpose: decoding it must fail.
_MALFORMED_BODY = b'{"AccessToken": 1, "Status": "Proce'
#: (code, message, weight in %): the skew of real failures, a few reasons dominating.
EXCEPTION_REASONS = (
    ("E1001", "Invalid email address", 40),
    ("E1002", "Phone number is not valid", 25),
    ("E1003", "Missing consent date", 15),
    ("E1004", "Unknown preference code", 8),
    ("E1005", "Duplicate record in the same import", 5),
    ("E1006", "Profile is locked", 4),
    ("E1007", "Invalid postal code", 2),
    ("E1008", "Field too long: FirstName", 1),
)
# Record n's reason is _REASON_WHEEL[(n * 37) % 100]: over any 100 consecutive records
# each reason appears exactly its weight in times, spread out rather than in runs.
_REASON_WHEEL = [
    (code, message) for code, message, weight in EXCEPTION_REASONS for _ in range(weight)
]
_FIRST_NAMES = ("Jane", "John", "Maria", "Wei", "Aisha", "Lars", "Sofia", "Kenji", "Zoë", "Omar")
_LAST_NAMES = ("Smith", "García", "Müller", "Chen", "Okafor", "Rossi", "Dubois", "Kowalski")
_FAULT_KEYS = (
    "status",
    "token",
    "times",
    "delay",
    "malformed",
    "body",
    "retry_after",
    "endpoint",
    "after",
)
#: How the simulator reads Retrieve exceptions' ``offset`` (MYPREFERENCES_EXCEPTIONS_OFFSET).
OFFSET_MODES = ("record", "page")
#: Ways an import's Retrieve exceptions can misbehave (``exceptions_quirks``).
QUIRKS = frozenset({"ignore_offset", "always_has_more"})


@dataclass(frozen=True)
class Step:
    """One scripted change: ``after`` seconds after ``add_import``, set ``changes``."""

    after: float
    changes: dict[str, object]


@dataclass(frozen=True)
class SteadyRate:
    """Processing at a steady rate: Queued (or as added) until ``after`` seconds after
    ``add_import``, then Processing, its ValidationSuccessful records processed evenly
    over ``seconds``, then Completed with all of them processed."""

    after: float
    seconds: float


@dataclass(frozen=True, slots=True)
class Call:
    """One request the simulator answered (control endpoints are not recorded)."""

    at: float  # time.monotonic() when the request arrived
    method: str
    path: str
    access_token: int | None
    status_code: int


@dataclass
class _Import:
    fields: dict[str, object]
    created: float  # time.monotonic() at add_import, the origin of script times
    script: list[Step]
    exception_records: list[dict[str, object]] | None
    expires_at: float | None = None  # epoch seconds; None when Expires is unparseable
    next_step: int = 0
    exception_count: int | None = None  # generated records, whatever Exceptions says
    quirks: frozenset[str] = frozenset()
    steady: SteadyRate | None = None


@dataclass
class _Fault:
    status: int | None
    token: int | None
    remaining: int | None  # None: until cleared
    delay: float
    malformed: bool
    body: bytes | None
    retry_after: str | None
    endpoint: str | None = None  # "status" | "exceptions"; None matches both
    after: int = 0  # matching requests let through before the fault starts

    def response(self) -> Response | None:
        """The canned answer, or None when this fault only delays a normal answer."""
        if self.status is None and not self.malformed and self.body is None:
            return None
        headers = {"Retry-After": self.retry_after} if self.retry_after is not None else None
        if self.body is not None:
            content = self.body
        elif self.malformed:
            content = _MALFORMED_BODY
        else:
            content = _json({"Message": f"Simulated HTTP {self.status} error."})
        return Response(
            content,
            status_code=self.status or 200,
            media_type="application/json",
            headers=headers,
        )


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json_response(value: object, status_code: int = 200) -> Response:
    return Response(_json(value), status_code=status_code, media_type="application/json")


def _error(status_code: int, message: str) -> Response:
    return _json_response({"Message": message}, status_code)


def _format_expires(value: datetime) -> str:
    """ISO 8601 UTC with a Z; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_int(raw: str) -> int | None:
    raw = raw.strip()
    if not (raw.isascii() and raw.lstrip("-").isdecimal()):
        return None
    return int(raw)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Simulator:
    """An in-memory MyPreferences account, served over HTTP by ``self.app``.

    ``authorization`` is the one static Authorization value accepted (pass "" to
    accept OAuth bearer tokens only).
    """

    def __init__(
        self,
        client_id: str = "ACME",
        authorization: str = DEFAULT_AUTHORIZATION,
        oauth_client_id: str = "sim-oauth-client",
        oauth_client_secret: str = "sim-oauth-secret",
        oauth_token_lifetime: float = 3600.0,
        response_delay: float = 0.0,
        exceptions_offset: str = "record",
    ) -> None:
        if exceptions_offset not in OFFSET_MODES:
            raise ValueError(f"exceptions_offset must be one of {', '.join(OFFSET_MODES)}")
        self.client_id = client_id
        #: how ``offset`` counts: "record" (index of the first record) or "page" (page number)
        self.exceptions_offset = exceptions_offset
        self.authorization = authorization
        self.oauth_client_id = oauth_client_id
        self.oauth_client_secret = oauth_client_secret
        self.oauth_token_lifetime = oauth_token_lifetime
        self.response_delay = response_delay
        #: Requests to the OAuth token endpoint, accepted or not.
        self.token_requests = 0
        #: The scope sent with the latest accepted token request.
        self.last_token_scope: str | None = None
        self._lock = threading.Lock()
        self._imports: dict[int, _Import] = {}
        self._faults: list[_Fault] = []
        self._oauth_tokens: dict[str, float] = {}  # token -> monotonic expiry
        self._calls: list[Call] = []
        self._status_counts: dict[int | None, int] = {}
        self._status_total = 0
        self._exceptions_total = 0
        self.app = Starlette(
            routes=[
                Route(STATUS_PATH, self._status_endpoint, methods=["GET"]),
                Route(EXCEPTIONS_PATH, self._exceptions_endpoint, methods=["GET"]),
                Route(OAUTH_TOKEN_PATH, self._oauth_token_endpoint, methods=["POST"]),
                Route("/_sim/imports", self._control_add_import, methods=["POST"]),
                Route(
                    "/_sim/imports/{token}",
                    self._control_import,
                    methods=["GET", "PATCH", "DELETE"],
                ),
                Route("/_sim/faults", self._control_faults, methods=["POST", "DELETE"]),
                Route("/_sim/calls", self._control_calls, methods=["GET"]),
                Route("/_sim/calls/reset", self._control_reset_calls, methods=["POST"]),
                Route("/_sim/delay", self._control_delay, methods=["PUT"]),
                Route("/_sim/oauth/revoke", self._control_revoke, methods=["POST"]),
            ]
        )

    # ----------------------------------------------------------------- imports

    def add_import(
        self,
        access_token: int,
        name: str | None = None,
        status: str = "Initiated",
        expires: datetime | str | None = None,
        script: Sequence[Step] | None = None,
        exception_records: list[dict[str, object]] | None = None,
        exception_count: int | None = None,
        exceptions_quirks: Sequence[str] = (),
        steady: SteadyRate | None = None,
        **fields: object,
    ) -> None:
        """Create (or replace) an import.

        ``fields`` are PascalCase API fields, served as given (extra ones too).
        ``expires`` defaults to now + 12 h; a ``str`` is served verbatim.
        ``script`` steps apply lazily, ``after`` seconds from now.
        ``exception_records`` are served by Retrieve exceptions; by default as many
        records are generated as the import's ``Exceptions`` count says (at most
        ``MAX_GENERATED_EXCEPTIONS``), or exactly ``exception_count`` when given (for
        large archives: only the requested page is ever generated). See
        ``generated_exception`` for what they hold. ``exceptions_quirks`` (``QUIRKS``)
        make its Retrieve exceptions misbehave. ``steady`` makes it process at a
        steady rate (after any ``script`` steps due at the same moment).
        """
        if expires is None:
            expires = datetime.now(UTC) + timedelta(hours=DEFAULT_TOKEN_LIFETIME_HOURS)
        served: dict[str, object] = {
            "TotalRecordsReceived": 0,
            "ValidationSuccessful": 0,
            "ValidationFailed": 0,
            "Processed": 0,
            "Pending": 0,
            "Exceptions": 0,
            "NotHonored": 0,
            "AccessToken": access_token,
            "Status": status,
            "Expires": None,
            "Name": name if name is not None else f"Simulated import {access_token}",
            "DataStageDuration": 3,
            "ImportAction": "Add",
            "MatchCriteria": None,
            "MatchValue": None,
            "RefreshAlternateIds": False,
            "RefreshContacts": False,
            "RefreshCustomFields": False,
            "RefreshGroups": False,
            "RefreshTags": False,
            "AllowPriorConsents": False,
        }
        record = _Import(
            fields=served,
            created=time.monotonic(),
            script=sorted(script or (), key=lambda step: step.after),
            exception_records=list(exception_records) if exception_records is not None else None,
            exception_count=_checked_count(exception_count),
            quirks=_checked_quirks(exceptions_quirks),
            steady=steady,
        )
        _set_fields(record, {"Expires": expires, **fields})
        with self._lock:
            self._imports[access_token] = record

    def update(self, access_token: int, **fields: object) -> None:
        """Set PascalCase fields of an import now. Raises KeyError if it is unknown."""
        with self._lock:
            record = self._imports[access_token]
            # Due steps first, so this explicit change wins over older scripted ones.
            _apply_due_steps(record, time.monotonic())
            _set_fields(record, fields)

    def finishes_at(self, access_token: int) -> float | None:
        """When a steady-rate import turns Completed (``time.monotonic()``); None otherwise."""
        with self._lock:
            record = self._imports[access_token]
        if record.steady is None:
            return None
        return record.created + record.steady.after + record.steady.seconds

    def remove(self, access_token: int) -> None:
        """Forget an import (later requests for it get 401). Unknown tokens are ignored."""
        with self._lock:
            self._imports.pop(access_token, None)

    def status_of(self, access_token: int) -> dict[str, object]:
        """The fields the Status endpoint would serve now. Raises KeyError if unknown."""
        with self._lock:
            record = self._imports[access_token]
            _apply_due_steps(record, time.monotonic())
            return dict(record.fields)

    # ------------------------------------------------------------------ faults

    def inject_fault(
        self,
        status: int | None = None,
        *,
        token: int | None = None,
        times: int | None = 1,
        delay: float = 0.0,
        malformed: bool = False,
        body: str | bytes | None = None,
        retry_after: str | None = None,
        endpoint: str | None = None,
        after: int = 0,
    ) -> None:
        """Make the next ``times`` matching Status/Exceptions requests misbehave.

        ``token`` None matches any token; ``times`` None lasts until ``clear_faults``.
        The request waits ``delay`` seconds, then gets ``status`` with a small JSON
        error body, or malformed JSON, or exactly ``body`` (status 200 unless given),
        or, for a delay-only fault, the normal answer. ``retry_after`` sets Retry-After.
        ``endpoint`` ("status" or "exceptions") limits it to one endpoint; ``after`` lets
        that many matching requests through first (a fault on the 3rd page: ``after=2``).
        Raises ValueError for an impossible combination.
        """
        if status is not None and (not _is_int(status) or not 100 <= status <= 599):
            raise ValueError("status must be an HTTP status code (100-599)")
        if token is not None and not _is_int(token):
            raise ValueError("token must be an integer or None")
        if times is not None and (not _is_int(times) or times < 1):
            raise ValueError("times must be a positive integer or None")
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
            raise ValueError("delay must be a non-negative number of seconds")
        if malformed and body is not None:
            raise ValueError("give either malformed=True or body, not both")
        if body is not None and not isinstance(body, str | bytes):
            raise ValueError("body must be a string or bytes")
        if retry_after is not None and not isinstance(retry_after, str):
            raise ValueError("retry_after must be a string (the header value)")
        if status is None and not delay and not malformed and body is None:
            raise ValueError("the fault does nothing: give status, delay, malformed or body")
        if endpoint not in (None, _STATUS, _EXCEPTIONS):
            raise ValueError("endpoint must be 'status', 'exceptions' or None")
        if not _is_int(after) or after < 0:
            raise ValueError("after must be a non-negative integer")
        fault = _Fault(
            status=status,
            token=token,
            remaining=times,
            delay=float(delay),
            malformed=bool(malformed),
            body=body.encode() if isinstance(body, str) else body,
            retry_after=retry_after,
            endpoint=endpoint,
            after=after,
        )
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Remove every pending fault."""
        with self._lock:
            self._faults.clear()

    def pending_faults(self, token: int | None = None) -> int:
        """Faults not used up yet (aimed at ``token``, or all of them).

        A request takes its fault when it arrives, so a test can see a delayed
        request arrive: its one-time fault is gone while the answer still waits.
        """
        with self._lock:
            return sum(1 for f in self._faults if token is None or f.token == token)

    def _take_fault(self, token: int | None, kind: str = _STATUS) -> _Fault | None:
        """Consume one use of the first fault matching ``token`` and ``kind``, if any."""
        # The common case, checked without the lock: a fault injected at this very
        # instant may miss this one request, which no test can tell apart anyway.
        if not self._faults:
            return None
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.token not in (None, token) or fault.endpoint not in (None, kind):
                    continue
                if fault.after > 0:
                    fault.after -= 1  # this one goes through; the fault comes later
                    return None
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        del self._faults[index]
                return fault
        return None

    # ------------------------------------------------------------ oauth, delay

    def revoke_oauth_tokens(self) -> None:
        """Invalidate every OAuth token issued so far (new ones can still be obtained)."""
        with self._lock:
            self._oauth_tokens.clear()

    def set_response_delay(self, seconds: float) -> None:
        """Delay every Status/Exceptions answer by ``seconds`` (without blocking the server)."""
        if not seconds >= 0:
            raise ValueError("the delay must be a non-negative number of seconds")
        self.response_delay = float(seconds)

    # ------------------------------------------------------------------- calls

    @property
    def calls(self) -> list[Call]:
        """A copy of every recorded Status, Exceptions and OAuth token request."""
        with self._lock:
            return list(self._calls)

    def status_calls(self, token: int | None = None) -> int:
        """How many Status requests came in, for one access token or for all."""
        with self._lock:
            if token is None:
                return self._status_total
            return self._status_counts.get(token, 0)

    def exceptions_calls(self) -> int:
        """How many Retrieve-exceptions requests came in."""
        with self._lock:
            return self._exceptions_total

    def reset_calls(self) -> None:
        """Forget the recorded calls and the counts (not ``token_requests``)."""
        with self._lock:
            self._calls.clear()
            self._status_counts.clear()
            self._status_total = 0
            self._exceptions_total = 0

    def _record(
        self, kind: str, at: float, request: Request, token: int | None, status_code: int
    ) -> None:
        call = Call(at, request.method, request.scope["path"], token, status_code)
        with self._lock:
            self._calls.append(call)
            if kind == _STATUS:
                self._status_total += 1
                self._status_counts[token] = self._status_counts.get(token, 0) + 1
            elif kind == _EXCEPTIONS:
                self._exceptions_total += 1

    # ---------------------------------------------------------- API endpoints

    async def _status_endpoint(self, request: Request) -> Response:
        return await self._api_request(request, _STATUS)

    async def _exceptions_endpoint(self, request: Request) -> Response:
        return await self._api_request(request, _EXCEPTIONS)

    async def _api_request(self, request: Request, kind: str) -> Response:
        arrived = time.monotonic()
        token = _parse_int(request.path_params["accessToken"])
        fault = self._take_fault(token, kind)
        if self.response_delay > 0:
            await asyncio.sleep(self.response_delay)
        response: Response | None = None
        if fault is not None:
            if fault.delay > 0:
                await asyncio.sleep(fault.delay)
            response = fault.response()
        if response is None:
            response = self._answer(request, kind, token)
        self._record(kind, arrived, request, token, response.status_code)
        return response

    def _answer(self, request: Request, kind: str, token: int | None) -> Response:
        """The normal answer: authorization, then client id, then access token."""
        page_error: str | None = None
        limit, offset = DEFAULT_EXCEPTIONS_LIMIT, 1
        if kind == _EXCEPTIONS:
            try:
                limit = _query_int(request, "limit", DEFAULT_EXCEPTIONS_LIMIT)
                offset = _query_int(request, "offset", 1)
            except ValueError as exc:
                page_error = str(exc)
        header = request.headers.get("authorization")
        with self._lock:
            if not self._authorized(header):
                return _error(401, "Authorization has been denied for this request.")
            if request.path_params["clientId"] != self.client_id:
                return _error(404, "The client id was not found.")
            record = self._imports.get(token) if token is not None else None
            if record is None:
                return _error(401, "The access token is invalid.")
            _apply_due_steps(record, time.monotonic())
            if record.expires_at is not None and time.time() >= record.expires_at:
                return _error(401, "The access token has expired.")
            if kind == _STATUS:
                body: dict[str, object] = dict(record.fields)
            elif page_error is not None:
                return _error(400, page_error)
            else:
                page_mode = self.exceptions_offset == "page"
        if kind == _EXCEPTIONS:
            # Generating and serialising outside the lock keeps the critical section short.
            body = _exceptions_page(record, limit, offset, page_mode=page_mode)
        return _json_response(body)

    def _authorized(self, header: str | None) -> bool:
        """Call with the lock held: the OAuth token table is shared state."""
        if header is None:
            return False
        if self.authorization and header == self.authorization:
            return True
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value:
            return False
        expiry = self._oauth_tokens.get(value.strip())
        return expiry is not None and time.monotonic() < expiry

    async def _oauth_token_endpoint(self, request: Request) -> Response:
        arrived = time.monotonic()
        # Parsed by hand: Starlette's form parser needs python-multipart.
        raw = (await request.body()).decode("utf-8", "replace")
        form = {key: values[0] for key, values in parse_qs(raw, keep_blank_values=True).items()}
        client_id, client_secret = _basic_credentials(request.headers.get("authorization"))
        if client_id is None:
            client_id, client_secret = form.get("client_id"), form.get("client_secret")
        with self._lock:
            self.token_requests += 1
        if client_id != self.oauth_client_id or client_secret != self.oauth_client_secret:
            response = _json_response({"error": "invalid_client"}, 401)
        elif form.get("grant_type") != "client_credentials":
            response = _json_response({"error": "unsupported_grant_type"}, 400)
        else:
            access_token = secrets.token_urlsafe(24)
            lifetime = self.oauth_token_lifetime
            with self._lock:
                self._oauth_tokens[access_token] = time.monotonic() + lifetime
                self.last_token_scope = form.get("scope")
            expires_in: float = int(lifetime) if float(lifetime).is_integer() else lifetime
            response = _json_response(
                {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in}
            )
        self._record(_OAUTH, arrived, request, None, response.status_code)
        return response

    # ------------------------------------------------------ control endpoints
    # Unauthenticated on purpose: the simulator only ever listens on localhost.

    async def _control_add_import(self, request: Request) -> Response:
        try:
            spec = await _json_object(request)
            token = spec.pop("AccessToken", None)
            if isinstance(token, bool) or not isinstance(token, int):
                raise ValueError("AccessToken must be an integer")
            script = _parse_script(spec.pop("script", None))
            records = spec.pop("exception_records", None)
            if records is not None and not (
                isinstance(records, list) and all(isinstance(r, dict) for r in records)
            ):
                raise ValueError("exception_records must be a list of objects")
            exception_count = _checked_count(spec.pop("exception_count", None))
            quirks = spec.pop("exceptions_quirks", [])
            if not isinstance(quirks, list) or not all(isinstance(q, str) for q in quirks):
                raise ValueError("exceptions_quirks must be a list of strings")
            _checked_quirks(quirks)
            # Non-string values (hostile ones, or null) stay in spec and are served as given.
            name = spec.pop("Name") if isinstance(spec.get("Name"), str) else None
            status = spec.pop("Status") if isinstance(spec.get("Status"), str) else "Initiated"
            expires = spec.pop("Expires") if isinstance(spec.get("Expires"), str) else None
        except ValueError as exc:
            return _error(400, str(exc))
        self.add_import(
            token,
            name=name,
            status=status,
            expires=expires,
            script=script,
            exception_records=records,
            exception_count=exception_count,
            exceptions_quirks=quirks,
            **spec,
        )
        return _json_response({"AccessToken": token}, 201)

    async def _control_import(self, request: Request) -> Response:
        token = _parse_int(request.path_params["token"])
        if token is None:
            return _error(400, "the access token must be an integer")
        try:
            if request.method == "DELETE":
                self.remove(token)
                return Response(status_code=204)
            if request.method == "GET":
                return _json_response(self.status_of(token))
            try:
                changes = await _json_object(request)
            except ValueError as exc:
                return _error(400, str(exc))
            self.update(token, **changes)
            return _json_response(self.status_of(token))
        except KeyError:
            return _error(404, f"no simulated import {token}")

    async def _control_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear_faults()
            return Response(status_code=204)
        try:
            spec = await _json_object(request)
            unknown = set(spec) - set(_FAULT_KEYS)
            if unknown:
                raise ValueError(f"unknown fault keys: {', '.join(sorted(unknown))}")
            self.inject_fault(**spec)
        except ValueError as exc:
            return _error(400, str(exc))
        return Response(status_code=204)

    async def _control_calls(self, request: Request) -> Response:
        # ?by_token=0 leaves the per-token counts out: a cheap poll for benchmarks.
        with_tokens = request.query_params.get("by_token") != "0"
        with self._lock:
            summary: dict[str, object] = {
                "status_calls": self._status_total,
                "exceptions_calls": self._exceptions_total,
                "token_requests": self.token_requests,
            }
            if with_tokens:
                summary["by_token"] = {
                    str(t): n for t, n in self._status_counts.items() if t is not None
                }
        return _json_response(summary)

    async def _control_reset_calls(self, request: Request) -> Response:
        self.reset_calls()
        return Response(status_code=204)

    async def _control_delay(self, request: Request) -> Response:
        try:
            seconds = (await _json_object(request)).get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise ValueError("seconds must be a number")
            self.set_response_delay(seconds)
        except ValueError as exc:
            return _error(400, str(exc))
        return Response(status_code=204)

    async def _control_revoke(self, request: Request) -> Response:
        self.revoke_oauth_tokens()
        return Response(status_code=204)


def _set_fields(record: _Import, changes: dict[str, object]) -> None:
    """Apply field changes; call with the lock held (or before the record is shared)."""
    for key, value in changes.items():
        if key == "Expires":
            if isinstance(value, datetime):
                value = _format_expires(value)
            parsed = parse_expires(value)
            record.expires_at = parsed.timestamp() if parsed else None
        record.fields[key] = value


def _apply_due_steps(record: _Import, now: float) -> None:
    """Apply every scripted step whose time has come; call with the lock held."""
    script = record.script
    while record.next_step < len(script) and record.created + script[record.next_step].after <= now:
        _set_fields(record, script[record.next_step].changes)
        record.next_step += 1
    if record.steady is not None:
        _apply_steady_rate(record, record.steady, now - record.created)


def _apply_steady_rate(record: _Import, steady: SteadyRate, elapsed: float) -> None:
    """Status and Processed of a steady-rate import ``elapsed`` seconds after it was added."""
    if elapsed < steady.after:
        return
    total = record.fields.get("ValidationSuccessful")
    total = total if isinstance(total, int) and not isinstance(total, bool) else 0
    share = (elapsed - steady.after) / steady.seconds if steady.seconds > 0 else 1.0
    if share >= 1.0:
        record.fields.update(Status="Completed", Processed=total)
    else:
        record.fields.update(Status="Processing", Processed=int(total * share))


def exception_total(record: _Import) -> int:
    """How many exception records an import serves."""
    if record.exception_records is not None:
        return len(record.exception_records)
    if record.exception_count is not None:
        return record.exception_count
    count = record.fields.get("Exceptions")
    # A hostile (non-integer) count yields no records rather than an error.
    if isinstance(count, int) and not isinstance(count, bool):
        return max(0, min(count, MAX_GENERATED_EXCEPTIONS))
    return 0


def _exceptions_page(
    record: _Import, limit: int, offset: int, *, page_mode: bool = False
) -> dict[str, object]:
    """One page of exception records; ``offset`` is 1-based (a record, or a page number)."""
    asked = offset
    if "ignore_offset" in record.quirks:
        offset = 1
    start = (offset - 1) * limit if page_mode else offset - 1
    total = exception_total(record)
    if record.exception_records is not None:
        page = record.exception_records[start : start + limit]
    else:
        # Only the requested page is generated, so large counts stay cheap.
        page = [generated_exception(n) for n in range(start + 1, min(start + limit, total) + 1)]
    has_more = start + len(page) < total or "always_has_more" in record.quirks
    return {
        "Count": len(page),
        "HasMore": has_more,
        "Limit": limit,
        "Offset": asked,
        "TotalResults": total,
        "Records": page,
    }


def generated_exception(number: int) -> dict[str, object]:
    """Exception record ``number`` (1-based) as the simulator serves it: a profile that
    failed, with personal data (e-mail, phone, names) and a reason (``EXCEPTION_REASONS``)."""
    code, message = _REASON_WHEEL[(number * 37) % 100]
    first = _FIRST_NAMES[number % len(_FIRST_NAMES)]
    last = _LAST_NAMES[number % len(_LAST_NAMES)]
    return {
        "RecordNumber": number,
        "ProfileId": f"P{number:09d}",
        "EmailAddress": f"{first.lower()}.{last.lower()}{number}@example.com",
        "Phone": f"+1 555 {number % 1000:03d} {number % 10000:04d}",
        "FirstName": first,
        "LastName": last,
        "ErrorCode": code,
        "ErrorMessage": message,
    }


def expected_reasons(total: int) -> dict[str, int]:
    """How many of the first ``total`` generated records give each reason."""
    counts: dict[str, int] = {}
    for number in range(1, total + 1):
        message = _REASON_WHEEL[(number * 37) % 100][1]
        counts[message] = counts.get(message, 0) + 1
    return counts


def _checked_count(count: object) -> int | None:
    if count is None:
        return None
    if not _is_int(count) or not 0 <= count <= MAX_EXCEPTION_COUNT:  # type: ignore[operator]
        raise ValueError(f"exception_count must be an integer from 0 to {MAX_EXCEPTION_COUNT}")
    return int(count)  # type: ignore[call-overload]


def _checked_quirks(quirks: Sequence[str]) -> frozenset[str]:
    unknown = set(quirks) - QUIRKS
    if unknown:
        raise ValueError(f"unknown exceptions quirks: {', '.join(sorted(unknown))}")
    return frozenset(quirks)


def _query_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    value = _parse_int(raw)
    if value is None or value < 1:
        raise ValueError(f"{name} must be a positive integer")
    return min(value, MAX_EXCEPTIONS_LIMIT) if name == "limit" else value


def _basic_credentials(header: str | None) -> tuple[str | None, str | None]:
    """(client id, secret) from an HTTP Basic Authorization header, or (None, None)."""
    if header is None:
        return None, None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    client_id, sep, secret = decoded.partition(":")
    return (client_id, secret) if sep else (None, None)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        value = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError("the body must be a JSON object")
    return value


def _parse_script(raw: object) -> list[Step] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise ValueError("script must be a list of {after, changes}")
    steps = []
    for item in raw:
        after = item.get("after") if isinstance(item, dict) else None
        changes = item.get("changes") if isinstance(item, dict) else None
        if (
            isinstance(after, bool)
            or not isinstance(after, int | float)
            or not isinstance(changes, dict)
        ):
            raise ValueError("each script step needs a number 'after' and an object 'changes'")
        steps.append(Step(after=float(after), changes=changes))
    return steps


# ------------------------------------------------------------------ helpers


def base_url(server_url: str) -> str:
    """The MYPREFERENCES_API_URL for a simulator served at ``server_url``."""
    return server_url.rstrip("/") + "/Profiles/"


def oauth_token_url(server_url: str) -> str:
    """The MYPREFERENCES_OAUTH_TOKEN_URL for a simulator served at ``server_url``."""
    return server_url.rstrip("/") + OAUTH_TOKEN_PATH


def seed_demo_imports(sim: Simulator, first_token: int = 1001) -> list[int]:
    """Add a few imports worth looking at: one moving through every state, one done
    with exceptions, one failed, one about to expire, one idle. Returns their tokens."""
    moving, done, failed, expiring, idle = range(first_token, first_token + 5)
    sim.add_import(
        moving,
        name="Spring newsletter opt-ins",
        script=[
            Step(10, {"Status": "Staging", "TotalRecordsReceived": 25_000}),
            Step(
                20,
                {
                    "TotalRecordsReceived": 50_000,
                    "ValidationSuccessful": 49_200,
                    "ValidationFailed": 800,
                },
            ),
            Step(30, {"Status": "Queued"}),
            Step(40, {"Status": "Processing", "Processed": 12_000}),
            Step(50, {"Processed": 30_000, "Exceptions": 40}),
            Step(60, {"Processed": 49_100, "Exceptions": 60, "NotHonored": 40}),
            Step(70, {"Status": "Completed"}),
        ],
    )
    sim.add_import(
        done,
        name="CRM nightly sync",
        status="Completed",
        TotalRecordsReceived=120_000,
        ValidationSuccessful=119_850,
        ValidationFailed=150,
        Processed=119_800,
        Exceptions=37,
        NotHonored=13,
    )
    sim.add_import(
        failed,
        name="Partner list (bad file)",
        status="Failed",
        TotalRecordsReceived=8_000,
        ValidationSuccessful=7_990,
        ValidationFailed=10,
    )
    sim.add_import(
        expiring,
        name="Trade show leads",
        status="Staging",
        TotalRecordsReceived=3_400,
        expires=datetime.now(UTC) + timedelta(minutes=30),
    )
    sim.add_import(idle, name="Unsubscribe sweep")
    return [moving, done, failed, expiring, idle]


SEED_FIRST_TOKEN = 100_000


def seed_bulk_imports(sim: Simulator, count: int, first_token: int = SEED_FIRST_TOKEN) -> range:
    """Add ``count`` identical Processing imports (for benchmarks); returns their tokens.

    They share one Expires and never move, so every poll of them is an unchanged poll.
    """
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(
        hours=DEFAULT_TOKEN_LIFETIME_HOURS
    )
    tokens = range(first_token, first_token + count)
    for token in tokens:
        sim.add_import(
            token,
            status="Processing",
            expires=expires,
            TotalRecordsReceived=10_000,
            ValidationSuccessful=9_900,
            ValidationFailed=100,
            Processed=1_000,
            Pending=8_900,
        )
    return tokens


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator with demo imports and print how to point the bot at it."""
    import uvicorn  # only the command line needs it here

    parser = argparse.ArgumentParser(description="Run the MyPreferences API simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--client-id", default="ACME")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per status answer")
    parser.add_argument(
        "--exceptions-offset",
        choices=OFFSET_MODES,
        default="record",
        help="how Retrieve exceptions reads offset (MYPREFERENCES_EXCEPTIONS_OFFSET)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help=f"also add N identical Processing imports, tokens {SEED_FIRST_TOKEN} upwards",
    )
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must not be negative")

    sim = Simulator(
        client_id=args.client_id,
        response_delay=args.delay,
        exceptions_offset=args.exceptions_offset,
    )
    tokens = seed_demo_imports(sim)
    if args.seed:
        seeded = seed_bulk_imports(sim, args.seed)
        print(f"Seeded {len(seeded)} Processing imports: tokens {seeded[0]}..{seeded[-1]}")
    server_url = f"http://{args.host}:{args.port}/"
    print("MyPreferences simulator. Point the bot at it with:")
    print(f"  export MYPREFERENCES_API_URL={shlex.quote(base_url(server_url))}")
    print(f"  export MYPREFERENCES_CLIENT_ID={shlex.quote(sim.client_id)}")
    print(f"  export MYPREFERENCES_AUTHORIZATION={shlex.quote(sim.authorization)}")
    print("Or, for OAuth 2.0 (instead of MYPREFERENCES_AUTHORIZATION):")
    print(f"  export MYPREFERENCES_OAUTH_TOKEN_URL={shlex.quote(oauth_token_url(server_url))}")
    print(f"  export MYPREFERENCES_OAUTH_CLIENT_ID={shlex.quote(sim.oauth_client_id)}")
    print(f"  export MYPREFERENCES_OAUTH_CLIENT_SECRET={shlex.quote(sim.oauth_client_secret)}")
    print(f"  export MYPREFERENCES_OAUTH_SCOPE={shlex.quote(sim.client_id + '/sim.user')}")
    print("Demo access tokens: " + ", ".join(str(t) for t in tokens), flush=True)
    uvicorn.run(sim.app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

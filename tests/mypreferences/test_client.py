"""The MyPreferences client and its authenticators, against httpx.MockTransport.

No sockets here: the handlers below play the API and the OAuth token endpoint.
Integration tests elsewhere run the client against the real local simulator.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from bot.config import ConfigError, OAuthSettings, Secret, Settings
from bot.domain.status import Status
from bot.mypreferences import errors
from bot.mypreferences.auth import (
    OAuthClientCredentials,
    StaticAuthorization,
    make_authenticator,
    refresh_after,
)
from bot.mypreferences.client import (
    MAX_BODY_BYTES,
    NO_RETRY,
    ExceptionsPage,
    MyPreferencesClient,
    RetryPolicy,
    parse_retry_after,
)
from bot.mypreferences.transport import AiohttpTransport

API_URL = "https://mp.test/Profiles/"
TOKEN_URL = "https://auth.test/oauth/token"
STATIC_AUTHORIZATION = (
    "PNAUTHINFO3-HMAC-SHA256 Credential=bot.user/2024-05-01T12:00:00Z "
    "Signature=c3RhdGljLXNpZ25hdHVyZS1zZWNyZXQ="
)
OAUTH_CLIENT_ID = "oauthclientid" + "I" * 35  # 48 characters, like the real ones
OAUTH_CLIENT_SECRET = "oauthclientsecret" + "S" * 47  # 64 characters
BEARER_TOKENS = ["bearer-token-one-xyz", "bearer-token-two-xyz", "bearer-token-three-xyz"]
ALL_SECRETS = [STATIC_AUTHORIZATION, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, *BEARER_TOKENS]

STATUS_BODY = {
    "TotalRecordsReceived": 1000,
    "ValidationSuccessful": 900,
    "ValidationFailed": 100,
    "Processed": 450,
    "Pending": 0,
    "Exceptions": 0,
    "NotHonored": 0,
    "AccessToken": 123,
    "Status": "Processing",
    "Expires": "2030-01-01T00:00:00Z",
    "Name": "Weekly consents",
    "ImportAction": "Add",
}

Handler = Callable[[httpx.Request], Awaitable[httpx.Response] | httpx.Response]


def static_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_url": API_URL,
        "client_id": "ACME_CORP",
        "authorization": Secret(STATIC_AUTHORIZATION),
    }
    values.update(overrides)
    return Settings(**values)


def oauth_config(client_auth: str = "basic") -> OAuthSettings:
    return OAuthSettings(
        token_url=TOKEN_URL,
        client_id=Secret(OAUTH_CLIENT_ID),
        client_secret=Secret(OAUTH_CLIENT_SECRET),
        scope="ACME_CORP/bot.user",
        client_auth=client_auth,
    )


def oauth_settings(client_auth: str = "basic") -> Settings:
    return Settings(api_url=API_URL, client_id="ACME_CORP", oauth=oauth_config(client_auth))


class FakeTime:
    """A monotonic clock and a sleep that records waits and moves the clock on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeServer:
    """Plays the API (``api``) and the OAuth token endpoint, recording every request."""

    def __init__(self, api: Handler, token: Handler | None = None) -> None:
        self.api = api
        self.token = token or self.issue_tokens()
        self.api_requests: list[httpx.Request] = []
        self.token_requests: list[httpx.Request] = []

    @staticmethod
    def issue_tokens(expires_in: object = 3600) -> Handler:
        issued = iter(BEARER_TOKENS)

        async def handler(request: httpx.Request) -> httpx.Response:
            # Yield a few times so concurrent callers really overlap the request.
            for _ in range(3):
                await asyncio.sleep(0)
            body: dict[str, object] = {"access_token": next(issued), "token_type": "Bearer"}
            if expires_in is not None:
                body["expires_in"] = expires_in
            return httpx.Response(200, json=body)

        return handler

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            self.token_requests.append(request)
            handler = self.token
        else:
            self.api_requests.append(request)
            handler = self.api
        result = handler(request)
        if isinstance(result, httpx.Response):
            return result
        return await result


def replies(*responses: httpx.Response | Exception) -> Callable[[httpx.Request], httpx.Response]:
    """A handler answering with each response in turn (an exception is raised), then the last."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return handler


def ok(body: object = STATUS_BODY) -> httpx.Response:
    return httpx.Response(200, json=body)


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_client(
    fake_time: FakeTime,
) -> Callable[..., tuple[MyPreferencesClient, FakeServer]]:
    def build(
        api: Handler,
        settings: Settings | None = None,
        token: Handler | None = None,
        random: Callable[[], float] = lambda: 0.0,
        **kwargs: Any,
    ) -> tuple[MyPreferencesClient, FakeServer]:
        server = FakeServer(api, token)
        client = MyPreferencesClient(
            settings or static_settings(),
            transport=httpx.MockTransport(server),
            sleep=fake_time.sleep,
            random=random,
            clock=fake_time.clock,
            **kwargs,
        )
        return client, server

    return build


# --- authentication -------------------------------------------------------------


async def test_static_authorization_is_sent_verbatim_with_accept_json(make_client: Any) -> None:
    client, server = make_client(replies(ok()))
    status = await client.get_status(123)
    assert status.status is Status.PROCESSING
    assert status.processed == 450
    request = server.api_requests[0]
    assert request.method == "GET"
    assert request.headers["Authorization"] == STATIC_AUTHORIZATION
    assert request.headers["Accept"] == "application/json"
    assert str(request.url) == "https://mp.test/Profiles/Async/ACME_CORP/Import/123/Status"
    assert server.token_requests == []


async def test_client_id_is_url_quoted_and_the_path_template_is_configurable(
    make_client: Any,
) -> None:
    settings = static_settings(
        client_id="ACME/CORP X", status_path="v4/Async/{clientId}/Import/{accessToken}/Status"
    )
    client, server = make_client(replies(ok()), settings=settings)
    await client.get_status(77)
    assert (
        server.api_requests[0].url.raw_path
        == b"/Profiles/v4/Async/ACME%2FCORP%20X/Import/77/Status"
    )


async def test_oauth_basic_mode_sends_credentials_as_http_basic(make_client: Any) -> None:
    client, server = make_client(replies(ok()), settings=oauth_settings("basic"))
    await client.get_status(123)
    token_request = server.token_requests[0]
    assert token_request.method == "POST"
    expected = base64.b64encode(f"{OAUTH_CLIENT_ID}:{OAUTH_CLIENT_SECRET}".encode()).decode()
    assert token_request.headers["Authorization"] == f"Basic {expected}"
    assert token_request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = parse_qs(token_request.content.decode())
    assert form == {"grant_type": ["client_credentials"], "scope": ["ACME_CORP/bot.user"]}
    assert server.api_requests[0].headers["Authorization"] == f"Bearer {BEARER_TOKENS[0]}"


async def test_oauth_body_mode_sends_credentials_in_the_form(make_client: Any) -> None:
    client, server = make_client(replies(ok()), settings=oauth_settings("body"))
    await client.get_status(123)
    token_request = server.token_requests[0]
    assert "Authorization" not in token_request.headers
    form = parse_qs(token_request.content.decode())
    assert form == {
        "grant_type": ["client_credentials"],
        "scope": ["ACME_CORP/bot.user"],
        "client_id": [OAUTH_CLIENT_ID],
        "client_secret": [OAUTH_CLIENT_SECRET],
    }
    assert server.api_requests[0].headers["Authorization"] == f"Bearer {BEARER_TOKENS[0]}"


async def test_oauth_token_is_cached_and_refreshed_shortly_before_expiry() -> None:
    server = FakeServer(replies(ok()), FakeServer.issue_tokens(expires_in=3600))
    now = [0.0]
    transport = httpx.MockTransport(server)
    http = httpx.AsyncClient(transport=transport)
    auth = OAuthClientCredentials(oauth_config(), http, clock=lambda: now[0])
    client = MyPreferencesClient(oauth_settings(), transport=transport, authenticator=auth)

    await client.get_status(1)
    now[0] = 3239.0  # 90 % of 3600 s is 3240 s, earlier than 3600 - 60
    await client.get_status(1)
    assert len(server.token_requests) == 1
    now[0] = 3240.0
    await client.get_status(1)
    assert len(server.token_requests) == 2
    assert [r.headers["Authorization"] for r in server.api_requests] == [
        f"Bearer {BEARER_TOKENS[0]}",
        f"Bearer {BEARER_TOKENS[0]}",
        f"Bearer {BEARER_TOKENS[1]}",
    ]


@pytest.mark.parametrize(
    ("expires_in", "refresh_at"),
    [(3600, 3240.0), (600, 540.0), (300, 240.0), (100, 50.0), (30, 15.0), ("1200", 1080.0)],
)
async def test_token_refresh_time_follows_expires_in(expires_in: object, refresh_at: float) -> None:
    server = FakeServer(replies(ok()), FakeServer.issue_tokens(expires_in=expires_in))
    now = [0.0]
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    auth = OAuthClientCredentials(oauth_config(), http, clock=lambda: now[0])
    await auth.header()
    now[0] = refresh_at - 0.001
    await auth.header()
    assert len(server.token_requests) == 1
    now[0] = refresh_at
    await auth.header()
    assert len(server.token_requests) == 2


def test_refresh_is_at_the_earlier_of_sixty_seconds_and_ninety_percent_before_expiry() -> None:
    assert refresh_after(3600) == 3240  # 90 % comes first for long lifetimes
    assert refresh_after(300) == 240  # the 60 s margin comes first for short ones
    assert refresh_after(80) == 40  # never earlier than half the lifetime


async def test_missing_expires_in_means_an_hour_and_token_type_defaults_to_bearer() -> None:
    async def token(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": BEARER_TOKENS[0]})

    server = FakeServer(replies(ok()), token)
    now = [0.0]
    http = httpx.AsyncClient(transport=httpx.MockTransport(server))
    auth = OAuthClientCredentials(oauth_config(), http, clock=lambda: now[0])
    assert await auth.header() == f"Bearer {BEARER_TOKENS[0]}"
    now[0] = 3239.0
    await auth.header()
    assert len(server.token_requests) == 1
    now[0] = 3240.0
    await auth.header()
    assert len(server.token_requests) == 2


async def test_lowercase_bearer_token_type_is_sent_as_bearer() -> None:
    async def token(request: httpx.Request) -> httpx.Response:
        body = {"access_token": BEARER_TOKENS[0], "token_type": "bearer", "expires_in": 60}
        return httpx.Response(200, json=body)

    http = httpx.AsyncClient(transport=httpx.MockTransport(FakeServer(replies(ok()), token)))
    auth = OAuthClientCredentials(oauth_config(), http)
    assert await auth.header() == f"Bearer {BEARER_TOKENS[0]}"


async def test_concurrent_callers_share_one_token_request(make_client: Any) -> None:
    async def api(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)
        return ok()

    client, server = make_client(api, settings=oauth_settings())
    results = await asyncio.gather(*(client.get_status(n) for n in range(1, 21)))
    assert [r.access_token for r in results] == list(range(1, 21))
    assert len(server.token_requests) == 1
    assert len(server.api_requests) == 20


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (httpx.Response(401, json={"error": "invalid_client"}), errors.AuthFailed),
        (httpx.Response(400, json={"error": "invalid_scope"}), errors.AuthFailed),
        (httpx.Response(503), errors.Unavailable),
        (httpx.Response(200, text="<html>login</html>"), errors.AuthFailed),
        (httpx.Response(200, json=["not", "an", "object"]), errors.AuthFailed),
        (httpx.Response(200, json={"token_type": "Bearer"}), errors.AuthFailed),
        (httpx.Response(200, json={"access_token": ""}), errors.AuthFailed),
        (httpx.Response(200, json={"access_token": "a b\r\nX-Evil: 1"}), errors.AuthFailed),
        (httpx.Response(200, json={"access_token": "t", "expires_in": 0}), errors.AuthFailed),
        (httpx.Response(200, json={"access_token": "t", "expires_in": -5}), errors.AuthFailed),
        (httpx.Response(200, json={"access_token": "t", "expires_in": "soon"}), errors.AuthFailed),
        (httpx.Response(200, json={"access_token": "t", "expires_in": True}), errors.AuthFailed),
        (httpx.Response(200, json={"access_token": "t", "token_type": 5}), errors.AuthFailed),
        (httpx.Response(200, content=b"{" * 100_000), errors.AuthFailed),
        (httpx.Response(200, content=b" " * (70 * 1024)), errors.AuthFailed),
        (httpx.ConnectError("refused"), errors.Unreachable),
        (httpx.ReadTimeout("slow"), errors.Unreachable),
    ],
)
async def test_token_endpoint_failures_raise_typed_errors(
    response: httpx.Response | Exception, error: type[errors.ApiError]
) -> None:
    http = httpx.AsyncClient(
        transport=httpx.MockTransport(FakeServer(replies(ok()), replies(response)))
    )
    auth = OAuthClientCredentials(oauth_config(), http)
    with pytest.raises(error) as raised:
        await auth.header()
    assert type(raised.value) is error


async def test_refused_oauth_credentials_are_not_retried(make_client: Any) -> None:
    client, server = make_client(
        replies(ok()), settings=oauth_settings(), token=replies(httpx.Response(401))
    )
    with pytest.raises(errors.AuthFailed):
        await client.get_status(123)
    assert len(server.token_requests) == 1
    assert server.api_requests == []


async def test_token_endpoint_outage_is_retried_like_the_api(
    make_client: Any, fake_time: FakeTime
) -> None:
    token = replies(
        httpx.Response(503), httpx.Response(200, json={"access_token": BEARER_TOKENS[0]})
    )
    client, server = make_client(replies(ok()), settings=oauth_settings(), token=token)
    assert (await client.get_status(123)).status is Status.PROCESSING
    assert len(server.token_requests) == 2
    assert len(fake_time.sleeps) == 1


def test_make_authenticator_picks_the_configured_mode() -> None:
    http = httpx.AsyncClient()
    assert isinstance(make_authenticator(static_settings(), http), StaticAuthorization)
    assert isinstance(make_authenticator(oauth_settings(), http), OAuthClientCredentials)
    with pytest.raises(ConfigError, match="MYPREFERENCES_AUTHORIZATION"):
        make_authenticator(Settings(client_id="ACME_CORP"), http)
    both = Settings(authorization=Secret("x"), oauth=oauth_config())
    with pytest.raises(ConfigError, match="not both"):
        make_authenticator(both, http)


async def test_static_authorization_cannot_refresh() -> None:
    auth = StaticAuthorization(STATIC_AUTHORIZATION)
    assert auth.can_refresh is False
    auth.invalidate()
    assert await auth.header() == STATIC_AUTHORIZATION
    assert STATIC_AUTHORIZATION not in repr(auth)


# --- 401 and the one refresh ----------------------------------------------------


def reject_first_token(request: httpx.Request) -> httpx.Response:
    if request.headers["Authorization"] == f"Bearer {BEARER_TOKENS[0]}":
        return httpx.Response(401)
    return ok()


async def test_401_refreshes_the_token_once_then_succeeds(
    make_client: Any, fake_time: FakeTime
) -> None:
    client, server = make_client(reject_first_token, settings=oauth_settings())
    status = await client.get_status(123)
    assert status.status is Status.PROCESSING
    assert len(server.token_requests) == 2
    assert [r.headers["Authorization"] for r in server.api_requests] == [
        f"Bearer {BEARER_TOKENS[0]}",
        f"Bearer {BEARER_TOKENS[1]}",
    ]
    assert fake_time.sleeps == []  # the retry after a refresh is immediate


async def test_second_401_raises_token_rejected_after_exactly_one_refresh(
    make_client: Any,
) -> None:
    client, server = make_client(replies(httpx.Response(401)), settings=oauth_settings())
    with pytest.raises(errors.TokenRejected):
        await client.get_status(123)
    assert len(server.token_requests) == 2
    assert len(server.api_requests) == 2


async def test_401_with_static_authorization_is_rejected_without_retry(
    make_client: Any,
) -> None:
    client, server = make_client(replies(httpx.Response(401)))
    with pytest.raises(errors.TokenRejected) as raised:
        await client.get_status(123)
    assert raised.value.user_message == errors.TokenRejected.user_message
    assert len(server.api_requests) == 1


async def test_concurrent_401s_share_one_refresh(make_client: Any) -> None:
    async def api(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)
        return reject_first_token(request)

    client, server = make_client(api, settings=oauth_settings())
    results = await asyncio.gather(*(client.get_status(n) for n in range(1, 11)))
    assert all(r.status is Status.PROCESSING for r in results)
    assert len(server.token_requests) == 2


# --- error mapping and retries --------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (400, errors.BadRequest),
        (403, errors.PermissionDenied),
        (404, errors.AccountNotFound),
        (405, errors.BadRequest),
    ],
)
async def test_client_errors_map_to_their_type_without_retry(
    make_client: Any, fake_time: FakeTime, code: int, error: type[errors.ApiError]
) -> None:
    client, server = make_client(replies(httpx.Response(code)))
    with pytest.raises(error) as raised:
        await client.get_status(123)
    assert type(raised.value) is error
    assert len(server.api_requests) == 1
    assert fake_time.sleeps == []


async def test_503_is_retried_then_succeeds(make_client: Any, fake_time: FakeTime) -> None:
    client, server = make_client(replies(httpx.Response(503), httpx.Response(503), ok()))
    status = await client.get_status(123)
    assert status.name == "Weekly consents"
    assert len(server.api_requests) == 3
    assert len(fake_time.sleeps) == 2


@pytest.mark.parametrize(
    ("code", "error"),
    [(503, errors.Unavailable), (500, errors.Unavailable), (429, errors.RateLimited)],
)
async def test_persistent_server_trouble_raises_after_all_attempts(
    make_client: Any, fake_time: FakeTime, code: int, error: type[errors.ApiError]
) -> None:
    client, server = make_client(replies(httpx.Response(code)))
    with pytest.raises(error):
        await client.get_status(123)
    assert len(server.api_requests) == 4
    assert len(fake_time.sleeps) == 3


async def test_no_retry_policy_makes_one_request(make_client: Any, fake_time: FakeTime) -> None:
    client, server = make_client(replies(httpx.Response(503)))
    with pytest.raises(errors.Unavailable):
        await client.get_status(123, retry=NO_RETRY)
    assert len(server.api_requests) == 1
    assert fake_time.sleeps == []


@pytest.mark.parametrize(
    ("random_value", "expected"),
    [
        (0.0, [0.5, 1.0, 2.0, 2.0, 2.0]),  # equal jitter: at least half the ceiling
        (0.5, [0.75, 1.5, 3.0, 3.0, 3.0]),
        (0.999, [0.9995, 1.999, 3.998, 3.998, 3.998]),  # just under the ceiling
    ],
)
async def test_waits_grow_exponentially_are_capped_and_jittered(
    make_client: Any, fake_time: FakeTime, random_value: float, expected: list[float]
) -> None:
    client, _ = make_client(replies(httpx.Response(503)), random=lambda: random_value)
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=4.0, budget_seconds=1000)
    with pytest.raises(errors.Unavailable):
        await client.get_status(123, retry=policy)
    assert fake_time.sleeps == pytest.approx(expected)


async def test_jitter_uses_the_injected_random_on_every_wait(
    make_client: Any, fake_time: FakeTime
) -> None:
    values = iter([0.0, 1.0, 0.0])
    client, _ = make_client(replies(httpx.Response(503)), random=lambda: next(values))
    with pytest.raises(errors.Unavailable):
        await client.get_status(123, retry=RetryPolicy(base_delay=1.0, budget_seconds=100))
    assert fake_time.sleeps == pytest.approx([0.5, 2.0, 2.0])


async def test_retry_after_seconds_is_a_minimum_wait(make_client: Any, fake_time: FakeTime) -> None:
    client, _ = make_client(
        replies(
            httpx.Response(429, headers={"Retry-After": "7"}),
            httpx.Response(503, headers={"Retry-After": "0"}),
            ok(),
        )
    )
    await client.get_status(123)
    # 7 s beats the 0.25 s backoff; a Retry-After of 0 leaves the 0.5 s backoff.
    assert fake_time.sleeps == pytest.approx([7.0, 0.5])


async def test_retry_after_http_date_is_honoured(make_client: Any, fake_time: FakeTime) -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2024, 5, 1, 12, 0, 12, tzinfo=UTC), usegmt=True)
    client, _ = make_client(
        replies(httpx.Response(503, headers={"Retry-After": later}), ok()),
        wall_clock=lambda: now,
    )
    await client.get_status(123)
    assert fake_time.sleeps == pytest.approx([12.0])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("-3", None),
        ("soon", None),
        ("Wed, 01 May 2024 12:00:30 GMT", 30.0),
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),  # in the past: no extra wait
        ("99999999999", 86400.0),  # capped at a day
        ("9" * 500, 86400.0),
    ],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(header, now) == expected


async def test_retry_after_beyond_the_budget_raises_now_with_retry_after(
    make_client: Any, fake_time: FakeTime
) -> None:
    client, server = make_client(replies(httpx.Response(429, headers={"Retry-After": "30"})))
    with pytest.raises(errors.RateLimited) as raised:
        await client.get_status(123, retry=RetryPolicy(budget_seconds=20))
    assert raised.value.retry_after == 30.0
    assert len(server.api_requests) == 1
    assert fake_time.sleeps == []


async def test_waits_never_cross_the_budget(make_client: Any, fake_time: FakeTime) -> None:
    client, server = make_client(replies(httpx.Response(503)))
    policy = RetryPolicy(attempts=10, base_delay=4.0, max_delay=8.0, budget_seconds=10.0)
    with pytest.raises(errors.Unavailable) as raised:
        await client.get_status(123, retry=policy)
    # Waits 2 and 4 fit (6 s); the next, 4 s, would reach 10 s: raise instead.
    assert fake_time.sleeps == pytest.approx([2.0, 4.0])
    assert len(server.api_requests) == 3
    assert raised.value.retry_after is None  # the server sent no Retry-After


async def test_time_spent_in_requests_counts_against_the_budget(
    make_client: Any, fake_time: FakeTime
) -> None:
    def slow_503(request: httpx.Request) -> httpx.Response:
        fake_time.now += 6.0  # each request takes 6 s on the injected clock
        return httpx.Response(503)

    client, server = make_client(slow_503)
    policy = RetryPolicy(attempts=10, base_delay=0.5, budget_seconds=20.0)
    with pytest.raises(errors.Unavailable):
        await client.get_status(123, retry=policy)
    # 6 + 0.25 + 6 + 0.5 + 6 + 1 = 19.75 s before the fourth request; after it the
    # next wait would cross 20 s. (Without counting request time there would be
    # eight requests.) The fake clock lets the last request overshoot; a real one
    # is cut off by the per-attempt timeout, see the next test.
    assert len(server.api_requests) == 4
    assert fake_time.sleeps == pytest.approx([0.25, 0.5, 1.0])


async def test_a_server_slower_than_the_budget_is_cut_off(make_client: Any) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return ok()

    client, _ = make_client(hang)
    with pytest.raises(errors.Timeout):
        await client.get_status(123, retry=RetryPolicy(budget_seconds=0.05))


async def test_timeout_is_retried_then_raises_timeout(
    make_client: Any, fake_time: FakeTime
) -> None:
    client, server = make_client(replies(httpx.ReadTimeout("slow")))
    with pytest.raises(errors.Timeout) as raised:
        await client.get_status(123)
    assert raised.value.user_message == errors.Timeout.user_message
    assert len(server.api_requests) == 4
    assert len(fake_time.sleeps) == 3


async def test_timeout_then_success(make_client: Any) -> None:
    client, _ = make_client(replies(httpx.ConnectTimeout("slow"), ok()))
    assert (await client.get_status(123)).status is Status.PROCESSING


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.RemoteProtocolError("bye"), httpx.ReadError("reset")],
)
async def test_network_errors_are_retried_then_raise_unavailable(
    make_client: Any, failure: Exception
) -> None:
    client, server = make_client(replies(failure))
    with pytest.raises(errors.Unavailable):
        await client.get_status(123)
    assert len(server.api_requests) == 4


# --- bodies ---------------------------------------------------------------------


async def _chunks(count: int, size: int, sent: list[int]) -> AsyncIterator[bytes]:
    yield b'{"Name": "'
    for _ in range(count):
        sent.append(size)
        yield b"x" * size
    yield b'"}'


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>gateway error</html>"),
        httpx.Response(200, text=""),
        httpx.Response(200, content=b"\xff\xfe\x00garbage"),
        httpx.Response(200, json=[STATUS_BODY]),
        httpx.Response(200, json="Completed"),
        httpx.Response(200, json=None),
        httpx.Response(200, content=b"[" * 200_000 + b"]" * 200_000),
        httpx.Response(200, content=b'{"Processed": 1' + b"0" * 5000 + b"}"),
        httpx.Response(200, content=b'{"a": "' + b"x" * MAX_BODY_BYTES + b'"}'),
        httpx.Response(200, content=b"{}", headers={"Content-Length": str(MAX_BODY_BYTES + 1)}),
    ],
    ids=[
        "html",
        "empty",
        "binary",
        "list",
        "string",
        "null",
        "deeply-nested",
        "huge-integer",
        "over-1-MiB",
        "declared-over-1-MiB",
    ],
)
async def test_unreadable_answers_raise_malformed_response(
    make_client: Any, response: httpx.Response
) -> None:
    client, _ = make_client(replies(response))
    with pytest.raises(errors.MalformedResponse):
        await client.get_status(123, retry=NO_RETRY)


async def test_a_huge_streamed_body_is_not_read_past_the_limit(make_client: Any) -> None:
    sent: list[int] = []
    chunk = 64 * 1024

    def huge(request: httpx.Request) -> httpx.Response:
        # 50 MiB if read to the end.
        return httpx.Response(200, content=_chunks(800, chunk, sent))

    client, _ = make_client(huge)
    with pytest.raises(errors.MalformedResponse):
        await client.get_status(123, retry=NO_RETRY)
    assert sum(sent) <= MAX_BODY_BYTES + chunk


async def test_a_body_just_under_the_limit_is_accepted(make_client: Any) -> None:
    name = "n" * (MAX_BODY_BYTES - 100)
    client, _ = make_client(replies(ok({"Name": name, "Status": "Queued"})))
    status = await client.get_status(123, retry=NO_RETRY)
    assert status.status is Status.QUEUED


async def test_malformed_answers_are_retried(make_client: Any, fake_time: FakeTime) -> None:
    client, server = make_client(replies(httpx.Response(200, text="oops"), ok()))
    assert (await client.get_status(123)).status is Status.PROCESSING
    assert len(server.api_requests) == 2
    assert len(fake_time.sleeps) == 1


async def test_missing_fields_are_unknown_and_extra_fields_ignored(make_client: Any) -> None:
    client, _ = make_client(replies(ok({"Status": "Complete", "Brand": "new", "X": [1]})))
    status = await client.get_status(5)
    assert status.status is Status.COMPLETED
    assert status.access_token == 5
    assert status.processed is None
    assert status.name is None
    assert status.expires is None


async def test_expires_without_offset_uses_the_configured_zone(make_client: Any) -> None:
    from zoneinfo import ZoneInfo

    settings = static_settings(expires_timezone=ZoneInfo("America/New_York"))
    client, _ = make_client(replies(ok({"Expires": "2024-01-15T07:00:00"})), settings=settings)
    status = await client.get_status(5)
    assert status.expires == datetime(2024, 1, 15, 12, 0, tzinfo=UTC)


# --- exceptions page ------------------------------------------------------------


async def test_exceptions_page_is_parsed_and_paging_is_sent(make_client: Any) -> None:
    body = {
        "Count": 2,
        "HasMore": True,
        "Limit": 2,
        "Offset": 3,
        "TotalResults": 5,
        "Records": [{"Email": "a@example.com", "Reason": "Invalid"}, "junk", 7, {"Id": 2}],
        "Other": [{"ignored": True}],
    }
    client, server = make_client(replies(ok(body)))
    page = await client.get_exceptions(123, limit=2, offset=3)
    assert page == ExceptionsPage(
        count=2,
        has_more=True,
        limit=2,
        offset=3,
        total_results=5,
        records=[{"Email": "a@example.com", "Reason": "Invalid"}, {"Id": 2}],
    )
    request = server.api_requests[0]
    assert request.url.path == "/Profiles/Async/ACME_CORP/Import/123/Exceptions"
    assert dict(request.url.params) == {"limit": "2", "offset": "3"}


async def test_exceptions_defaults_and_unknown_fields(make_client: Any) -> None:
    client, server = make_client(replies(ok({"HasMore": "yes", "Count": "x"})))
    page = await client.get_exceptions(123)
    assert page == ExceptionsPage(None, None, None, None, None, [])
    assert dict(server.api_requests[0].url.params) == {"limit": "1000", "offset": "1"}


async def test_exceptions_records_key_is_whatever_list_comes_first(make_client: Any) -> None:
    client, _ = make_client(replies(ok({"Count": 1, "Items": [{"k": "v"}], "More": [{}]})))
    assert (await client.get_exceptions(9)).records == [{"k": "v"}]


async def test_exceptions_answer_that_is_not_an_object_is_malformed(make_client: Any) -> None:
    client, _ = make_client(replies(ok([{"k": "v"}])))
    with pytest.raises(errors.MalformedResponse):
        await client.get_exceptions(9, retry=NO_RETRY)


@pytest.mark.parametrize(("limit", "offset"), [(0, 1), (-1, 1), (10, -1), (True, 1), (10, 1.5)])
async def test_bad_paging_is_refused_before_any_request(
    make_client: Any, limit: Any, offset: Any
) -> None:
    client, server = make_client(replies(ok()))
    with pytest.raises(ValueError):
        await client.get_exceptions(9, limit=limit, offset=offset)
    assert server.api_requests == []


# --- input validation, lifecycle, logging, secrets -------------------------------


@pytest.mark.parametrize("token", [0, -1, True, "123", 1.0, None, 2**63])
async def test_access_token_must_be_a_positive_int(make_client: Any, token: Any) -> None:
    client, server = make_client(replies(ok()))
    with pytest.raises(ValueError):
        await client.get_status(token)
    with pytest.raises(ValueError):
        await client.get_exceptions(token)
    assert server.api_requests == []


def test_retry_policy_defaults_and_validation() -> None:
    assert RetryPolicy() == RetryPolicy(
        attempts=4, base_delay=0.5, max_delay=8.0, budget_seconds=20.0
    )
    assert NO_RETRY.attempts == 1
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(budget_seconds=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)


async def test_own_transport_is_one_pool_of_max_connections_and_is_closed() -> None:
    async with MyPreferencesClient(static_settings(), max_connections=7) as client:
        transport = client._transport
        assert isinstance(transport, AiohttpTransport)
        assert transport.max_connections == 7
    # Its aiohttp session exists once a request was made; closing the client closes it.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{unused.getsockname()[1]}/"
    async with MyPreferencesClient(static_settings(api_url=refused)) as client:
        transport = client._transport
        assert isinstance(transport, AiohttpTransport)
        with pytest.raises(errors.Unreachable):
            await client.get_status(1, retry=NO_RETRY)
        assert not transport.is_closed
    assert transport.is_closed


async def test_an_injected_transport_is_left_open() -> None:
    closed: list[bool] = []

    class Transport(httpx.MockTransport):
        async def aclose(self) -> None:
            closed.append(True)

    async with MyPreferencesClient(static_settings(), transport=Transport(replies(ok()))):
        pass
    assert closed == []


async def test_one_debug_line_per_attempt_without_headers(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot.mypreferences")
    client, _ = make_client(replies(httpx.Response(503), httpx.ConnectError("x"), ok()))
    await client.get_status(4242)
    lines = [r.getMessage() for r in caplog.records if r.name == "bot.mypreferences.client"]
    assert len(lines) == 3
    assert "token=4242 attempt=1 status=503 elapsed_ms=" in lines[0]
    assert "token=4242 attempt=2 status=Unreachable" in lines[1]
    assert "token=4242 attempt=3 status=200" in lines[2]
    assert all("Authorization" not in line and "PNAUTHINFO" not in line for line in lines)


def _all_text(exc: BaseException) -> str:
    """Everything an exception could show: message, repr, detail and its chain."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), str(getattr(seen, "detail", "")), str(seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def _echo_secrets(request: httpx.Request) -> httpx.Response:
    """A hostile endpoint that echoes the credentials it was sent."""
    echoed = json.dumps(
        {"headers": dict(request.headers), "body": request.content.decode(errors="replace")}
    )
    return httpx.Response(400, text=echoed)


SECRET_SCENARIOS: list[tuple[str, Handler, Handler | None, str]] = [
    ("static 401", replies(httpx.Response(401)), None, "static"),
    ("static 400 echo", _echo_secrets, None, "static"),
    ("static 503", replies(httpx.Response(503)), None, "static"),
    ("static timeout", replies(httpx.ReadTimeout("slow")), None, "static"),
    ("static connect", replies(httpx.ConnectError("refused")), None, "static"),
    ("static malformed", replies(httpx.Response(200, text="no")), None, "static"),
    ("oauth 401 twice", replies(httpx.Response(401)), None, "basic"),
    ("oauth token refused echo", replies(ok()), _echo_secrets, "basic"),
    ("oauth body mode echo", replies(ok()), _echo_secrets, "body"),
    (
        "oauth token with bad expiry",
        replies(ok()),
        replies(httpx.Response(200, json={"access_token": BEARER_TOKENS[0], "expires_in": -1})),
        "basic",
    ),
    ("oauth token endpoint down", replies(ok()), replies(httpx.ConnectError("x")), "body"),
    ("oauth api timeout", replies(httpx.ReadTimeout("slow")), None, "basic"),
]


@pytest.mark.parametrize(
    ("api", "token", "mode"),
    [s[1:] for s in SECRET_SCENARIOS],
    ids=[s[0] for s in SECRET_SCENARIOS],
)
async def test_secrets_never_appear_in_errors_or_logs(
    make_client: Any,
    caplog: pytest.LogCaptureFixture,
    api: Handler,
    token: Handler | None,
    mode: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = static_settings() if mode == "static" else oauth_settings(mode)
    client, _ = make_client(api, settings=settings, token=token)
    with pytest.raises(errors.ApiError) as raised:
        await client.get_status(123)
    basic = base64.b64encode(f"{OAUTH_CLIENT_ID}:{OAUTH_CLIENT_SECRET}".encode()).decode()
    shown = [_all_text(raised.value), raised.value.user_message, caplog.text, repr(client._auth)]
    for secret in [*ALL_SECRETS, basic]:
        assert all(secret not in text for text in shown)

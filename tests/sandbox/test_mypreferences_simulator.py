"""The MyPreferences simulator, exercised over real HTTP on a local port."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from bot.domain.status import Status
from bot.mypreferences.parsing import parse_import_status
from bot.sandbox.devserver import ServerThread
from bot.sandbox.mypreferences_simulator import (
    DEFAULT_AUTHORIZATION,
    Simulator,
    SteadyRate,
    Step,
    base_url,
    expected_reasons,
    oauth_token_url,
    seed_demo_imports,
)

AUTH = {"Authorization": DEFAULT_AUTHORIZATION}
BULK_IMPORT_STATUS_FIELDS = {
    "TotalRecordsReceived",
    "ValidationSuccessful",
    "ValidationFailed",
    "Processed",
    "Pending",
    "Exceptions",
    "NotHonored",
    "AccessToken",
    "Status",
    "Expires",
    "Name",
    "DataStageDuration",
    "ImportAction",
    "MatchCriteria",
    "MatchValue",
    "RefreshAlternateIds",
    "RefreshContacts",
    "RefreshCustomFields",
    "RefreshGroups",
    "RefreshTags",
    "AllowPriorConsents",
}


def status_path(token: object, client_id: str = "ACME") -> str:
    return f"Profiles/Async/{client_id}/Import/{token}/Status"


def exceptions_path(token: object, client_id: str = "ACME") -> str:
    return f"Profiles/Async/{client_id}/Import/{token}/Exceptions"


class _PluggableApp:
    """One server for the whole module, each test plugging in its own simulator's app.

    Starting and stopping uvicorn costs ~0.2 s, too much to pay for every test.
    """

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[tuple[ServerThread, _PluggableApp]]:
    pluggable = _PluggableApp()
    with ServerThread(pluggable) as running:
        yield running, pluggable


@pytest.fixture
def sim() -> Simulator:
    return Simulator(oauth_token_lifetime=60)


@pytest.fixture
def server(sim: Simulator, shared_server: tuple[ServerThread, _PluggableApp]) -> ServerThread:
    running, pluggable = shared_server
    pluggable.app = sim.app
    return running


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        yield client


# ------------------------------------------------------------------ status


def test_status_answer_has_every_bulk_import_status_field(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(
        42,
        name="Spring list",
        status="Processing",
        TotalRecordsReceived=1000,
        ValidationSuccessful=990,
        ValidationFailed=10,
        Processed=500,
        ImportAction="Delete",
    )
    response = http.get(status_path(42), headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) >= BULK_IMPORT_STATUS_FIELDS
    assert body["AccessToken"] == 42
    assert body["Name"] == "Spring list"
    assert body["Status"] == "Processing"
    assert body["Processed"] == 500
    assert body["ImportAction"] == "Delete"
    assert body["Exceptions"] == 0
    assert body["DataStageDuration"] == 3
    assert body["RefreshTags"] is False


def test_default_expiry_is_twelve_hours_ahead_in_utc_with_z(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(7)
    expires = http.get(status_path(7), headers=AUTH).json()["Expires"]
    assert expires.endswith("Z")
    served = datetime.fromisoformat(expires.replace("Z", "+00:00"))
    assert abs(served - (datetime.now(UTC) + timedelta(hours=12))) < timedelta(seconds=5)


def test_bot_model_parses_simulated_status(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(9, status="Completed", ValidationSuccessful=10, Processed=8, Exceptions=2)
    parsed = parse_import_status(http.get(status_path(9), headers=AUTH).json(), 9)
    assert parsed.status is Status.COMPLETED
    assert parsed.progress == 1.0
    assert parsed.expires is not None


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "PNAUTHINFO3-HMAC-SHA256 wrong"}, {"Authorization": "Bearer nope"}],
    ids=["missing", "wrong-static", "unknown-bearer"],
)
def test_missing_or_wrong_authorization_is_401(
    sim: Simulator, http: httpx.Client, headers: dict[str, str]
) -> None:
    sim.add_import(1)
    response = http.get(status_path(1), headers=headers)
    assert response.status_code == 401
    assert "Message" in response.json()


def test_wrong_client_id_is_404_but_only_after_authorization(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(1)
    assert http.get(status_path(1, client_id="OTHER"), headers=AUTH).status_code == 404
    assert http.get(status_path(1, client_id="OTHER")).status_code == 401


@pytest.mark.parametrize("token", ["999", "abc", "1.5"])
def test_unknown_or_non_integer_token_is_401(
    sim: Simulator, http: httpx.Client, token: str
) -> None:
    sim.add_import(1)
    assert http.get(status_path(token), headers=AUTH).status_code == 401


def test_removed_import_is_401(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(1)
    assert http.get(status_path(1), headers=AUTH).status_code == 200
    sim.remove(1)
    sim.remove(1)  # removing twice is harmless
    assert http.get(status_path(1), headers=AUTH).status_code == 401


def test_expired_token_is_401(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(5, expires=datetime.now(UTC) - timedelta(minutes=1))
    sim.add_import(6, expires="2000-01-01T00:00:00")  # no offset: UTC, long gone
    assert http.get(status_path(5), headers=AUTH).status_code == 401
    assert http.get(status_path(6), headers=AUTH).status_code == 401


def test_token_expires_when_update_moves_expiry_into_the_past(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(5)
    assert http.get(status_path(5), headers=AUTH).status_code == 200
    sim.update(5, Expires=datetime.now(UTC) - timedelta(seconds=1))
    assert http.get(status_path(5), headers=AUTH).status_code == 401


def test_unparseable_expires_is_served_verbatim_and_never_expires(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(8, expires="next Tuesday-ish")
    response = http.get(status_path(8), headers=AUTH)
    assert response.status_code == 200
    assert response.json()["Expires"] == "next Tuesday-ish"


def test_odd_field_values_and_extra_fields_pass_through_unchanged(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(3, status="Complete", Processed="12", Pending=None, BrandNewField=[1, 2])
    body = http.get(status_path(3), headers=AUTH).json()
    assert body["Status"] == "Complete"
    assert body["Processed"] == "12"
    assert body["Pending"] is None
    assert body["BrandNewField"] == [1, 2]
    sim.update(3, Status="COMPLETED")
    assert http.get(status_path(3), headers=AUTH).json()["Status"] == "COMPLETED"


def test_a_steady_rate_import_processes_evenly_and_completes_when_it_said(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(
        12, status="Queued", ValidationSuccessful=1000, steady=SteadyRate(after=0.5, seconds=2.0)
    )
    finish = sim.finishes_at(12)
    assert finish is not None
    assert http.get(status_path(12), headers=AUTH).json()["Status"] == "Queued"

    time.sleep(1.0)
    asked = time.monotonic()
    body = http.get(status_path(12), headers=AUTH).json()
    answered = time.monotonic()
    # The count follows the clock: between the shares due when asked and when answered.
    low, high = (int(1000 * (t - (finish - 2.0)) / 2.0) for t in (asked, answered))
    assert body["Status"] == "Processing"
    assert low <= body["Processed"] <= high

    time.sleep(max(0.0, finish - time.monotonic()) + 0.05)
    body = http.get(status_path(12), headers=AUTH).json()
    assert (body["Status"], body["Processed"]) == ("Completed", 1000)


def test_an_import_without_a_steady_rate_has_no_finish_moment(sim: Simulator) -> None:
    sim.add_import(13)

    assert sim.finishes_at(13) is None


def test_scripted_steps_apply_when_their_time_comes(sim: Simulator, http: httpx.Client) -> None:
    # Seconds apart, so that a busy machine cannot skip a step between two requests.
    sim.add_import(
        11,
        script=[
            Step(3.0, {"Status": "Completed", "Processed": 100}),
            Step(1.0, {"Status": "Processing", "Processed": 40}),
        ],
    )
    assert http.get(status_path(11), headers=AUTH).json()["Status"] == "Initiated"
    time.sleep(1.5)
    body = http.get(status_path(11), headers=AUTH).json()
    assert (body["Status"], body["Processed"]) == ("Processing", 40)
    time.sleep(2.0)
    body = http.get(status_path(11), headers=AUTH).json()
    assert (body["Status"], body["Processed"]) == ("Completed", 100)


def test_update_wins_over_steps_that_fell_due_earlier(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(12, script=[Step(0.0, {"Status": "Queued"})])
    sim.update(12, Status="Failed")
    assert http.get(status_path(12), headers=AUTH).json()["Status"] == "Failed"
    assert sim.status_of(12)["Status"] == "Failed"


def test_update_of_unknown_import_raises(sim: Simulator) -> None:
    with pytest.raises(KeyError):
        sim.update(404, Status="Completed")


# ------------------------------------------------------------------ faults


def test_status_fault_answers_once_with_retry_after(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(1)
    sim.inject_fault(429, retry_after="7")
    failed = http.get(status_path(1), headers=AUTH)
    assert failed.status_code == 429
    assert failed.headers["Retry-After"] == "7"
    assert "Message" in failed.json()
    assert http.get(status_path(1), headers=AUTH).status_code == 200


def test_fault_times_count_down_and_only_hit_the_chosen_token(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(1)
    sim.add_import(2)
    sim.inject_fault(503, token=2, times=2)
    assert http.get(status_path(1), headers=AUTH).status_code == 200
    assert http.get(status_path(2), headers=AUTH).status_code == 503
    assert http.get(status_path(2), headers=AUTH).status_code == 503
    assert http.get(status_path(2), headers=AUTH).status_code == 200


def test_fault_without_times_lasts_until_cleared(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(1)
    sim.inject_fault(500, times=None)
    codes = [http.get(status_path(1), headers=AUTH).status_code for _ in range(3)]
    assert codes == [500, 500, 500]
    sim.clear_faults()
    assert http.get(status_path(1), headers=AUTH).status_code == 200


def test_faults_come_before_authorization(sim: Simulator, http: httpx.Client) -> None:
    sim.inject_fault(503)
    assert http.get(status_path(1)).status_code == 503


def test_delay_fault_then_normal_answer(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(1, status="Queued")
    sim.inject_fault(delay=0.3)
    started = time.monotonic()
    response = http.get(status_path(1), headers=AUTH)
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200
    assert response.json()["Status"] == "Queued"
    # A delay-only fault still goes through the normal checks.
    sim.inject_fault(delay=0.05)
    assert http.get(status_path(1)).status_code == 401


def test_delay_fault_with_status(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(1)
    sim.inject_fault(504, delay=0.2)
    started = time.monotonic()
    assert http.get(status_path(1), headers=AUTH).status_code == 504
    assert time.monotonic() - started >= 0.2


def test_delay_fault_times_out_a_short_client_timeout(sim: Simulator, server: ServerThread) -> None:
    sim.add_import(1)
    sim.inject_fault(delay=1.0)
    with (
        httpx.Client(base_url=server.url, timeout=0.2) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.get(status_path(1), headers=AUTH)


def test_malformed_fault_sends_undecodable_json(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(1)
    sim.inject_fault(malformed=True)
    response = http.get(status_path(1), headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        response.json()


@pytest.mark.parametrize(
    "body",
    [
        '{"Status": 5, "Processed": "lots", "Expires": []}',
        "[" * 5000 + "]" * 5000,
        json.dumps({"Name": "x" * 2_000_000}),
    ],
    ids=["wrong-types", "deep-nesting", "huge"],
)
def test_custom_body_fault_is_sent_exactly(sim: Simulator, http: httpx.Client, body: str) -> None:
    sim.add_import(1)
    sim.inject_fault(body=body)
    response = http.get(status_path(1), headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.text == body


def test_custom_body_with_status_imitates_a_gateway_page(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.inject_fault(502, body=b"<html>Bad Gateway</html>")
    response = http.get(status_path(1), headers=AUTH)
    assert (response.status_code, response.text) == (502, "<html>Bad Gateway</html>")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"status": 99},
        {"status": 500, "times": 0},
        {"malformed": True, "body": "{}"},
        {"delay": -1.0},
    ],
    ids=["nothing", "bad-status", "zero-times", "malformed-and-body", "negative-delay"],
)
def test_impossible_faults_are_refused(sim: Simulator, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        sim.inject_fault(**kwargs)  # type: ignore[arg-type]


# -------------------------------------------------------------- exceptions


def test_exceptions_are_paged_from_offset_one(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(20, status="Completed", Exceptions=25)
    first = http.get(exceptions_path(20), headers=AUTH, params={"limit": 10}).json()
    assert (first["Count"], first["HasMore"], first["TotalResults"]) == (10, True, 25)
    assert (first["Limit"], first["Offset"]) == (10, 1)
    assert [r["RecordNumber"] for r in first["Records"]] == list(range(1, 11))
    assert all(r["ErrorMessage"] and r["EmailAddress"] for r in first["Records"])
    last = http.get(exceptions_path(20), headers=AUTH, params={"limit": 10, "offset": 21}).json()
    assert (last["Count"], last["HasMore"]) == (5, False)
    assert [r["RecordNumber"] for r in last["Records"]] == [21, 22, 23, 24, 25]
    default = http.get(exceptions_path(20), headers=AUTH).json()
    assert (default["Limit"], default["Offset"], default["Count"]) == (1000, 1, 25)


def test_generated_exceptions_look_like_failed_profiles_with_a_skewed_spread(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(24, status="Completed", exception_count=2500)
    records: list[dict[str, object]] = []
    for offset in (1, 1001, 2001):
        body = http.get(exceptions_path(24), headers=AUTH, params={"offset": offset}).json()
        records += body["Records"]
    assert len(records) == 2500 and records[0]["RecordNumber"] == 1
    assert set(records[0]) == {
        "RecordNumber",
        "ProfileId",
        "EmailAddress",
        "Phone",
        "FirstName",
        "LastName",
        "ErrorCode",
        "ErrorMessage",
    }
    counts: dict[str, int] = {}
    for record in records:
        counts[str(record["ErrorMessage"])] = counts.get(str(record["ErrorMessage"]), 0) + 1
    assert counts == expected_reasons(2500)
    assert counts["Invalid email address"] == 1000  # 40 %, the top reason
    assert sorted(counts.values(), reverse=True)[:3] == [1000, 625, 375]


def test_exceptions_offset_can_be_a_page_number(http: httpx.Client) -> None:
    sim = Simulator(client_id="ACME", exceptions_offset="page")
    sim.add_import(25, exception_count=25)
    with ServerThread(sim.app) as server, httpx.Client(base_url=server.url) as client:
        second = client.get(exceptions_path(25), headers=AUTH, params={"limit": 10, "offset": 2})
    body = second.json()
    assert [r["RecordNumber"] for r in body["Records"]] == list(range(11, 21))
    assert (body["Offset"], body["HasMore"]) == (2, True)
    with pytest.raises(ValueError):
        Simulator(exceptions_offset="bytes")


def test_exceptions_quirks_ignore_offset_and_lie_about_has_more(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(26, exception_count=5, exceptions_quirks=["ignore_offset", "always_has_more"])
    body = http.get(exceptions_path(26), headers=AUTH, params={"limit": 2, "offset": 3}).json()
    assert [r["RecordNumber"] for r in body["Records"]] == [1, 2]
    assert body["HasMore"] is True
    with pytest.raises(ValueError):
        sim.add_import(27, exceptions_quirks=["sometimes"])


def test_a_fault_can_wait_for_the_nth_exceptions_page(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(28, status="Processing", exception_count=30)
    sim.inject_fault(503, endpoint="exceptions", after=2)
    codes = [
        http.get(exceptions_path(28), headers=AUTH, params={"limit": 10, "offset": o}).status_code
        for o in (1, 11)
    ]
    assert http.get(status_path(28), headers=AUTH).status_code == 200  # not the status
    codes.append(http.get(exceptions_path(28), headers=AUTH, params={"offset": 21}).status_code)
    codes.append(http.get(exceptions_path(28), headers=AUTH, params={"offset": 21}).status_code)
    assert codes == [200, 200, 503, 200]
    with pytest.raises(ValueError):
        sim.inject_fault(503, endpoint="other")
    with pytest.raises(ValueError):
        sim.inject_fault(503, after=-1)


def test_exceptions_end_with_the_token(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(29, exception_count=10, expires=datetime.now(UTC) - timedelta(seconds=1))
    assert http.get(exceptions_path(29), headers=AUTH).status_code == 401


def test_a_large_exception_count_comes_through_the_control_endpoint(
    sim: Simulator, http: httpx.Client
) -> None:
    created = http.post("_sim/imports", json={"AccessToken": 30, "exception_count": 1_000_000})
    assert created.status_code == 201
    body = http.get(exceptions_path(30), headers=AUTH, params={"offset": 999_001}).json()
    assert (body["Count"], body["TotalResults"], body["HasMore"]) == (1000, 1_000_000, False)
    assert body["Records"][-1]["RecordNumber"] == 1_000_000
    refused = http.post("_sim/imports", json={"AccessToken": 31, "exception_count": -1})
    assert refused.status_code == 400


def test_given_exception_records_are_served(sim: Simulator, http: httpx.Client) -> None:
    records: list[dict[str, object]] = [{"RecordNumber": 3, "Reason": "Bad email", "Email": "x@"}]
    sim.add_import(21, Exceptions=99, exception_records=records)
    body = http.get(exceptions_path(21), headers=AUTH).json()
    assert (body["Count"], body["TotalResults"], body["Records"]) == (1, 1, records)


def test_exceptions_check_auth_token_and_paging(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(22, Exceptions=3)
    assert http.get(exceptions_path(22)).status_code == 401
    assert http.get(exceptions_path(23), headers=AUTH).status_code == 401
    assert http.get(exceptions_path(22, "X"), headers=AUTH).status_code == 404
    bad = http.get(exceptions_path(22), headers=AUTH, params={"offset": "zero"})
    assert bad.status_code == 400
    sim.inject_fault(500)
    assert http.get(exceptions_path(22), headers=AUTH).status_code == 500


# ------------------------------------------------------------------- OAuth


def test_oauth_token_with_basic_credentials_opens_status(
    sim: Simulator, server: ServerThread, http: httpx.Client
) -> None:
    sim.add_import(1)
    issued = httpx.post(
        oauth_token_url(server.url),
        data={"grant_type": "client_credentials", "scope": "ACME/sim.user"},
        auth=("sim-oauth-client", "sim-oauth-secret"),
    )
    assert issued.status_code == 200
    token = issued.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 60
    assert sim.last_token_scope == "ACME/sim.user"
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert http.get(status_path(1), headers=bearer).status_code == 200


def test_oauth_token_with_body_credentials(sim: Simulator, http: httpx.Client) -> None:
    issued = http.post(
        "oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "ACME/sim.user",
            "client_id": "sim-oauth-client",
            "client_secret": "sim-oauth-secret",
        },
    )
    assert issued.status_code == 200
    assert issued.json()["access_token"]
    assert sim.token_requests == 1


def test_oauth_wrong_credentials_and_wrong_grant(sim: Simulator, http: httpx.Client) -> None:
    wrong = http.post(
        "oauth/token", data={"grant_type": "client_credentials"}, auth=("sim-oauth-client", "no")
    )
    assert (wrong.status_code, wrong.json()) == (401, {"error": "invalid_client"})
    missing = http.post("oauth/token", data={"grant_type": "client_credentials"})
    assert missing.status_code == 401
    grant = http.post(
        "oauth/token",
        data={"grant_type": "password"},
        auth=("sim-oauth-client", "sim-oauth-secret"),
    )
    assert (grant.status_code, grant.json()) == (400, {"error": "unsupported_grant_type"})
    assert sim.token_requests == 3


def _bearer(http: httpx.Client) -> dict[str, str]:
    issued = http.post(
        "oauth/token",
        data={"grant_type": "client_credentials", "scope": "ACME/u"},
        auth=("sim-oauth-client", "sim-oauth-secret"),
    )
    return {"Authorization": f"Bearer {issued.json()['access_token']}"}


def test_revoked_oauth_tokens_get_401_and_a_new_token_works(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(1)
    old = _bearer(http)
    assert http.get(status_path(1), headers=old).status_code == 200
    sim.revoke_oauth_tokens()
    assert http.get(status_path(1), headers=old).status_code == 401
    assert http.get(status_path(1), headers=_bearer(http)).status_code == 200


def test_oauth_token_stops_working_after_its_lifetime(http: httpx.Client, sim: Simulator) -> None:
    sim.oauth_token_lifetime = 1.0  # used at once, even on a busy machine
    sim.add_import(1)
    bearer = _bearer(http)
    assert http.get(status_path(1), headers=bearer).status_code == 200
    time.sleep(1.1)
    assert http.get(status_path(1), headers=bearer).status_code == 401


def test_oauth_only_simulator_refuses_static_authorization(server: ServerThread) -> None:
    oauth_only = Simulator(authorization="")
    oauth_only.add_import(1)
    with ServerThread(oauth_only.app) as other, httpx.Client(base_url=other.url) as client:
        assert client.get(status_path(1), headers={"Authorization": ""}).status_code == 401
        assert client.get(status_path(1), headers=_bearer(client)).status_code == 200


# ------------------------------------------------------- calls and delays


def test_calls_are_recorded_and_counted_per_token(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(1)
    sim.add_import(2)
    before = time.monotonic()
    for token in (1, 1, 2, 99):
        http.get(status_path(token), headers=AUTH)
    http.get(exceptions_path(1), headers=AUTH)
    assert sim.status_calls() == 4
    assert (sim.status_calls(1), sim.status_calls(2), sim.status_calls(3)) == (2, 1, 0)
    assert sim.exceptions_calls() == 1
    calls = sim.calls
    assert [(c.method, c.access_token, c.status_code) for c in calls] == [
        ("GET", 1, 200),
        ("GET", 1, 200),
        ("GET", 2, 200),
        ("GET", 99, 401),
        ("GET", 1, 200),
    ]
    assert calls[0].path == "/" + status_path(1)
    assert all(c.at >= before for c in calls)
    sim.reset_calls()
    assert (sim.status_calls(), sim.calls) == (0, [])


def test_response_delay_slows_every_status_answer(sim: Simulator, http: httpx.Client) -> None:
    sim.add_import(1)
    sim.set_response_delay(1.0)  # long enough that a busy machine cannot pass for it
    started = time.monotonic()
    assert http.get(status_path(1), headers=AUTH).status_code == 200
    assert time.monotonic() - started >= 1.0
    sim.set_response_delay(0)
    started = time.monotonic()
    http.get(status_path(1), headers=AUTH)
    assert time.monotonic() - started < 1.0


def test_concurrent_requests_while_the_test_thread_mutates(
    sim: Simulator, server: ServerThread
) -> None:
    for token in range(1, 21):
        sim.add_import(token)

    def poll(token: int) -> int:
        with httpx.Client(base_url=server.url) as client:
            return sum(
                client.get(status_path(token), headers=AUTH).status_code == 200 for _ in range(10)
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = pool.map(poll, range(1, 21))
        for n in range(50):
            sim.update(1 + n % 20, Processed=n)
    assert sum(results) == 200
    assert sim.status_calls() == 200


# ------------------------------------------------------- control endpoints


def test_control_endpoints_drive_imports(sim: Simulator, http: httpx.Client) -> None:
    created = http.post(
        "_sim/imports",
        json={
            "AccessToken": 77,
            "Name": "Driven",
            "Status": "Staging",
            "Pending": 4,
            "script": [{"after": 1.0, "changes": {"Status": "Completed"}}],
        },
    )
    assert created.status_code == 201
    body = http.get(status_path(77), headers=AUTH).json()
    assert (body["Name"], body["Status"], body["Pending"]) == ("Driven", "Staging", 4)
    patched = http.patch("_sim/imports/77", json={"Processed": 9})
    assert patched.json()["Processed"] == 9
    assert http.get("_sim/imports/77").json()["Processed"] == 9
    time.sleep(1.1)
    assert http.get(status_path(77), headers=AUTH).json()["Status"] == "Completed"
    assert http.delete("_sim/imports/77").status_code == 204
    assert http.get(status_path(77), headers=AUTH).status_code == 401
    assert http.patch("_sim/imports/77", json={"Processed": 1}).status_code == 404


def test_control_endpoint_keeps_hostile_values(sim: Simulator, http: httpx.Client) -> None:
    http.post("_sim/imports", json={"AccessToken": 78, "Name": 5, "Expires": None})
    body = http.get(status_path(78), headers=AUTH).json()
    assert (body["Name"], body["Expires"]) == (5, None)


@pytest.mark.parametrize(
    "payload",
    [{"Name": "no token"}, {"AccessToken": "1"}, {"AccessToken": 1, "script": [{"after": "x"}]}],
)
def test_control_endpoint_rejects_bad_imports(http: httpx.Client, payload: object) -> None:
    assert http.post("_sim/imports", json=payload).status_code == 400
    assert http.post("_sim/imports", content=b"not json").status_code == 400


def test_control_endpoints_drive_faults_calls_delay_and_revoke(
    sim: Simulator, http: httpx.Client
) -> None:
    sim.add_import(1)
    assert http.post("_sim/faults", json={"status": 503, "retry_after": "2"}).status_code == 204
    failed = http.get(status_path(1), headers=AUTH)
    assert (failed.status_code, failed.headers["Retry-After"]) == (503, "2")
    http.post("_sim/faults", json={"status": 500, "times": None})
    assert http.delete("_sim/faults").status_code == 204
    assert http.get(status_path(1), headers=AUTH).status_code == 200
    assert http.post("_sim/faults", json={"bogus": 1}).status_code == 400
    assert http.post("_sim/faults", json={"status": "500"}).status_code == 400

    assert http.get("_sim/calls").json()["by_token"] == {"1": 2}
    assert http.get("_sim/calls").json()["status_calls"] == 2
    assert http.post("_sim/calls/reset").status_code == 204
    assert http.get("_sim/calls").json()["status_calls"] == 0

    assert http.put("_sim/delay", json={"seconds": 0.15}).status_code == 204
    assert sim.response_delay == 0.15
    assert http.put("_sim/delay", json={"seconds": "slow"}).status_code == 400
    http.put("_sim/delay", json={"seconds": 0})

    bearer = _bearer(http)
    assert http.post("_sim/oauth/revoke").status_code == 204
    assert http.get(status_path(1), headers=bearer).status_code == 401


# ----------------------------------------------------------------- helpers


def test_url_helpers() -> None:
    assert base_url("http://127.0.0.1:9/") == "http://127.0.0.1:9/Profiles/"
    assert oauth_token_url("http://127.0.0.1:9/") == "http://127.0.0.1:9/oauth/token"


def test_demo_imports_are_all_readable(sim: Simulator, http: httpx.Client) -> None:
    tokens = seed_demo_imports(sim)
    statuses = [http.get(status_path(t), headers=AUTH).json()["Status"] for t in tokens]
    assert statuses == ["Initiated", "Completed", "Failed", "Staging", "Initiated"]

"""`import-status-bot socket`: no public Slack URL, but health and metrics on the port.

With an app token Slack does not know, this shows what an operator sees when the
socket cannot be opened: the bot keeps running, keeps retrying, and /healthz says
the socket is disconnected (test_socket_mode_e2e.py: the socket working).
"""

import httpx

from bot.sandbox.harness import Harness
from bot.sandbox.slack_emulator import wait_for
from tests.integration.helpers import PATIENCE


def test_socket_mode_serves_health_and_metrics_and_reports_a_disconnected_socket(
    harness: Harness,
) -> None:
    bot = harness.start_bot("socket", SLACK_APP_TOKEN="xapp-1-A0001-test-token")

    health = wait_for(
        lambda: (r := httpx.get(bot.url + "/healthz", timeout=3)).status_code == 503 and r,
        timeout=PATIENCE,
        description="/healthz to report the socket",
    )
    body = health.json()
    assert body["socket"] == "disconnected"
    assert "socket: disconnected" in body["problems"]
    assert httpx.get(bot.url + "/metrics", timeout=3).status_code == 200
    # No request URL in Socket Mode: Slack's HTTP route is not served.
    assert httpx.post(bot.url + "/slack/events", content=b"x", timeout=3).status_code == 404
    # slack-sdk keeps retrying apps.connections.open and logs why it failed.
    wait_for(lambda: "apps.connections.open" in bot.log_text(), timeout=PATIENCE)
    assert bot.running()
    assert "xapp-1-A0001-test-token" not in bot.log_text()

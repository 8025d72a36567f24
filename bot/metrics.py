"""Prometheus metrics: one registry, one place that names them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.polls = Counter(
            "import_status_polls", "Status polls by outcome", ["outcome"], registry=self.registry
        )
        self.api_latency = Histogram(
            "import_status_api_latency_seconds",
            "MyPreferences Retrieve-status latency",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.notifications = Counter(
            "import_status_notifications",
            "Notifications by kind and outcome",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.watched_imports = Gauge(
            "import_status_watched_imports",
            "Imports with at least one active subscription, by status",
            ["status"],
            registry=self.registry,
        )
        self.tick_duration = Histogram(
            "import_status_tick_seconds",
            "Duration of one watcher tick",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.ticks = Counter(
            "import_status_ticks",
            "Watcher ticks by outcome (failed: the database or delivery raised)",
            ["outcome"],
            registry=self.registry,
        )
        self.notification_lag = Histogram(
            "import_status_notification_lag_seconds",
            "Time from a change being seen to its notification being posted",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.slack_rate_limit_waits = Counter(
            "import_status_slack_rate_limit_waits",
            "Times Slack answered ratelimited",
            registry=self.registry,
        )
        self.slack_errors = Counter(
            "import_status_slack_errors",
            "Slack Web API errors met while delivering, by error code and fate",
            ["error", "fate"],
            registry=self.registry,
        )
        self.exception_pages = Counter(
            "import_status_exception_pages",
            "Pages of Retrieve exceptions read",
            registry=self.registry,
        )
        self.exception_records = Counter(
            "import_status_exception_records",
            "Exception records read from Retrieve exceptions",
            registry=self.registry,
        )
        self.exception_archives = Counter(
            "import_status_exception_archives",
            "Exceptions archives posted into Slack, by what was posted "
            "(file, summary, empty, failed) and where (thread, dm)",
            ["outcome", "place"],
            registry=self.registry,
        )
        self.commands = Counter(
            "import_status_commands", "Slash commands by verb", ["verb"], registry=self.registry
        )

    def set_watched(self, by_status: dict[str, int]) -> None:
        self.watched_imports.clear()
        for status, count in by_status.items():
            self.watched_imports.labels(status=status).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = Metrics()

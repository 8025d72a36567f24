"""Entry points: serve, socket, migrate, status, exceptions, demo.

With no command, the bot serves Slack when its credentials are set and runs
the demo otherwise, so the README's first command works on any machine.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from types import FrameType

from bot.config import ConfigError, Need, Settings, load_settings
from bot.exit_codes import ExitCode
from bot.logs import STARTUP_LOGGER, setup_logging

log = logging.getLogger("bot")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command = args.command or _default_command()
    try:
        if command == "serve":
            return _serve(socket_mode=False)
        if command == "socket":
            return _serve(socket_mode=True)
        if command == "migrate":
            return _migrate()
        if command == "status":
            return _status(args.token)
        if command == "exceptions":
            return _exceptions(args.token, args.out, full=args.full)
        if command == "demo":
            from bot.sandbox.demo import run_demo

            return run_demo(fast=getattr(args, "fast", False))
    except ConfigError as exc:
        print(f"import-status-bot: configuration error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    parser.print_help()
    return ExitCode.USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="import-status-bot",
        description="Slack bot for MyPreferences bulk import status.",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser(
        "serve", help="HTTP mode: /slack/events, /healthz, /metrics and the watcher"
    )
    commands.add_parser(
        "socket", help="Socket Mode (needs SLACK_APP_TOKEN), plus /healthz, /metrics"
    )
    commands.add_parser("migrate", help="upgrade the database to the newest schema and exit")
    status = commands.add_parser("status", help="look one import up and print it")
    status.add_argument("token", help="the import's access token (a positive integer)")
    exceptions = commands.add_parser(
        "exceptions",
        help="fetch an import's failed records into a local CSV and print their summary",
    )
    exceptions.add_argument("token", help="the import's access token (a positive integer)")
    exceptions.add_argument(
        "--out",
        metavar="FILE",
        help="where to write the CSV (default: import-TOKEN-exceptions.csv here; "
        "a name ending in .gz is gzipped); an existing file is not overwritten",
    )
    exceptions.add_argument(
        "--full",
        action="store_true",
        help="write the records as MyPreferences sent them, personal data included "
        "(default: masked, unless EXCEPTIONS_FILE is full)",
    )
    demo = commands.add_parser("demo", help="the whole system on this machine, no accounts needed")
    demo.add_argument("--fast", action="store_true", help="shorter story (used by the tests)")
    return parser


def _default_command() -> str:
    has_slack = os.environ.get("SLACK_BOT_TOKEN") and (
        os.environ.get("SLACK_SIGNING_SECRET") or os.environ.get("SLACK_APP_TOKEN")
    )
    if not has_slack:
        return "demo"
    return "serve" if os.environ.get("SLACK_SIGNING_SECRET") else "socket"


def _settings(needs: set[Need]) -> Settings:
    settings = load_settings(os.environ, needs)
    setup_logging(settings.log_level, settings.log_format, settings.secrets())
    return settings


def _migrate() -> int:
    settings = _settings({Need.DATABASE})
    from bot.store.engine import make_engine, migrate

    engine = make_engine(settings.database_url)
    try:
        revision = migrate(engine)
    finally:
        engine.dispose()
    print(f"database is at schema revision {revision}")
    return ExitCode.OK


def _status(raw_token: str) -> int:
    from bot.clock import utcnow
    from bot.mypreferences.client import MyPreferencesClient, RetryPolicy
    from bot.mypreferences.errors import ApiError
    from bot.mypreferences.tokens import InvalidAccessToken, parse_access_token
    from bot.terminal import format_status

    try:
        token = parse_access_token(raw_token)
    except InvalidAccessToken as exc:
        print(f"import-status-bot: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    settings = _settings({Need.API})
    # The same budget as a lookup in Slack, so LOOKUP_BUDGET_SECONDS bounds this too.
    retry = RetryPolicy(budget_seconds=settings.lookup_budget_seconds)

    async def lookup() -> int:
        async with MyPreferencesClient(settings) as client:
            try:
                status = await client.get_status(token, retry=retry)
            except ApiError as exc:
                print(f"import-status-bot: import {token}: {exc.user_message}", file=sys.stderr)
                return exc.exit_code
        print(format_status(status, utcnow()))
        return ExitCode.OK

    return asyncio.run(lookup())


def _exceptions(raw_token: str, out: str | None, *, full: bool) -> int:
    """``exceptions TOKEN``: the CSV on this machine, under the personal-data rule.

    Masked by default, as EXCEPTIONS_FILE says (``redacted`` unless the operator set
    ``full``); ``--full`` writes the records unmasked on purpose. ``none`` keeps files
    out of Slack, but a file is this command's whole point: it writes a redacted one
    and says so.
    """
    from dataclasses import replace
    from pathlib import Path

    from bot.archive.csvfile import archive_filename
    from bot.archive.fetch import ArchiveOptions, fetch_exceptions
    from bot.domain.archiving import has_failures
    from bot.domain.exceptions import ExceptionsFile
    from bot.mypreferences.client import MyPreferencesClient, RetryPolicy
    from bot.mypreferences.errors import ApiError
    from bot.mypreferences.pace import Pace
    from bot.mypreferences.tokens import InvalidAccessToken, parse_access_token
    from bot.terminal import format_exceptions

    try:
        token = parse_access_token(raw_token)
    except InvalidAccessToken as exc:
        print(f"import-status-bot: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    target = Path(out) if out else Path.cwd() / archive_filename(token, gzipped=False)
    if target.exists():
        print(f"import-status-bot: {target} exists; not overwriting it", file=sys.stderr)
        return ExitCode.USAGE
    if not target.parent.is_dir():
        print(f"import-status-bot: no such directory: {target.parent}", file=sys.stderr)
        return ExitCode.USAGE
    settings = _settings({Need.API})
    configured = settings.exceptions_file
    if full:
        mode, why = ExceptionsFile.FULL, "--full"
    elif configured is ExceptionsFile.FULL:
        mode, why = ExceptionsFile.FULL, "EXCEPTIONS_FILE=full"
    else:
        mode, why = ExceptionsFile.REDACTED, "--full writes them as MyPreferences sent them"
    options = replace(
        ArchiveOptions.from_settings(
            settings, RetryPolicy(budget_seconds=settings.lookup_budget_seconds)
        ),
        # Spooled beside the target, so the file is then only renamed into place.
        directory=target.parent,
        gzip_above_bytes=0 if target.name.endswith(".gz") else None,
    )

    async def fetch() -> int:
        async with MyPreferencesClient(settings) as client:
            try:
                status = await client.get_status(token, retry=options.plan.retry)
                if not has_failures(status) and None not in (
                    status.exceptions,
                    status.not_honored,
                    status.validation_failed,
                ):
                    print(
                        f"Import {token} has no failed records (0 exceptions, 0 not honoured, "
                        "0 failed validation); no file written."
                    )
                    return ExitCode.OK
                result = await fetch_exceptions(
                    client,
                    token,
                    [mode],
                    options,
                    Pace(settings.exceptions_requests_per_second),
                    expires=status.expires,
                    keep_partial_on_error=True,
                )
            except ApiError as exc:
                print(f"import-status-bot: import {token}: {exc.user_message}", file=sys.stderr)
                return exc.exit_code
        try:
            print(
                format_exceptions(
                    result.reports[mode],
                    access_token=token,
                    status=status,
                    expected=result.expected,
                    partial=result.partial_text(),
                    cut=result.cut,
                    reason_fields=settings.exceptions_reason_fields,
                )
            )
            archive = result.files.get(mode)
            if archive is None:
                print("No file written: there were no records.")
                return ExitCode.OK
            if target.exists():  # created meanwhile: still never overwritten
                print(f"import-status-bot: {target} exists; not overwriting it", file=sys.stderr)
                return ExitCode.USAGE
            moved = archive.move_to(target)
            masked = "personal data masked" if mode.masks else "personal data as sent"
            print(f"Wrote {moved.records_written:,} records to {target} ({masked}; {why}).")
            if configured is ExceptionsFile.NONE and not full:
                print(
                    "EXCEPTIONS_FILE is none, which keeps files out of Slack; "
                    "this command writes one anyway, redacted."
                )
            return ExitCode.OK
        finally:
            result.discard()

    return asyncio.run(fetch())


def _serve(*, socket_mode: bool) -> int:
    needs = {Need.DATABASE, Need.API, Need.SLACK_SOCKET if socket_mode else Need.SLACK_HTTP}
    settings = _settings(needs)
    # The port first: a port already taken is one line, before anything is logged.
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(_cannot_listen(settings.host, settings.port, exc)) from None
    # Imported only now: a bad setting or a taken port is told without first spending
    # a second of CPU on importing Bolt, SQLAlchemy and uvicorn.
    import uvicorn

    from bot.runtime import Runtime, settle_heap
    from bot.server import create_app

    runtime = Runtime(settings, socket_mode=socket_mode)
    runtime.migrate()
    app = create_app(runtime, slack_routes=not socket_mode)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=8,
        limit_concurrency=1000,
    )
    server = _graceful_server_class()(config)
    settle_heap()  # start-up is done: what it made lives as long as the process
    mode = "socket" if socket_mode else "HTTP"
    logging.getLogger(STARTUP_LOGGER).info("listening on http://%s:%d (%s mode)", host, port, mode)
    server.run(sockets=[sock])
    return ExitCode.OK


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    """What to change when the listening socket cannot be bound."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"PORT: {port} is already in use on {host}; "
            "stop whatever listens there or set PORT to a free port"
        )
    if exc.errno == errno.EACCES:
        return f"PORT: {port} needs privileges this user lacks; set PORT to 1024 or above"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"HOST: {host} is not an address of this machine; use 0.0.0.0 to listen on all"
    return f"HOST/PORT: cannot listen on {host}:{port} ({exc.strerror or exc})"


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """SIGTERM is how services are stopped: shut down gracefully, then exit 0.

        (uvicorn re-raises a captured signal after shutting down, which would make
        the process die by SIGTERM, exit status 143, after a perfectly clean stop.)
        """

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig == signal.SIGTERM:
                self.should_exit = True
                return
            super().handle_exit(sig, frame)

    return GracefulServer

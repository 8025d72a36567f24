"""The whole system on one machine: simulator, emulator and real bot processes.

Used by ``demo``, the integration tests and the benchmarks. The bot runs as
a real ``import-status-bot serve`` process (so it can be killed with SIGKILL
or SIGTERM); the MyPreferences simulator and the Slack emulator are real HTTP
servers on free local ports.

``Harness(preloaded=True)`` (the tests) forks each bot from a server process
that has already imported the bot, instead of starting ``python -m bot``: the
same entry point (``bot.cli.main``) in a process of its own, without a second
of CPU spent importing at every start.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import httpx

from bot.sandbox.devserver import ServerThread
from bot.sandbox.mypreferences_simulator import DEFAULT_AUTHORIZATION, Simulator, base_url
from bot.sandbox.slack_emulator import SlackEmulator, SlackUser, SocketModeUser
from bot.sandbox.slack_socket_mode import SocketModeServer

SIGNING_SECRET = "harness-signing-secret-8f2c1e"
BOT_TOKEN = "xoxb-emulator-token"
CLIENT_ID = "ACME"
_LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")
# What the bot imports to serve: a forked bot starts with all of it loaded.
_PRELOAD = ["bot.cli", "bot.runtime", "bot.server", "bot.sandbox.harness", "uvicorn"]


class _Process(Protocol):
    """What the harness uses of a process: ``subprocess.Popen`` or a forked one."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@functools.cache
def _forkserver() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _serve_forked(command: str, env: dict[str, str], log_path: str) -> None:
    """A forked bot's life: its log as stdout and stderr, its settings as the environment."""
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.clear()
    os.environ.update(env)
    from bot.cli import main

    sys.exit(main([command]))


class _Forked:
    """A bot forked from the preloaded server, with the part of Popen's API the harness uses."""

    def __init__(self, command: str, env: dict[str, str], log_path: Path) -> None:
        self._process: BaseProcess = _forkserver().Process(
            target=_serve_forked, args=(command, env, str(log_path)), daemon=True
        )
        self._process.start()

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired(f"bot {self.pid}", timeout or 0)
        return code


class BotProcess:
    """One ``import-status-bot`` process (one replica), its log in a file."""

    def __init__(
        self, env: dict[str, str], log_path: Path, command: str = "serve", preloaded: bool = False
    ) -> None:
        self.env = env
        self.log_path = log_path
        self.command = command
        self.preloaded = preloaded
        self.process: _Process | None = None
        self.url = ""
        self._log_offset = 0

    def start(self, timeout: float = 30.0) -> BotProcess:
        """Start the process and wait until it answers /healthz."""
        return self.spawn().wait_ready(timeout)

    def spawn(self) -> BotProcess:
        """Start the process without waiting for it (see ``wait_ready``)."""
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        if self.preloaded:
            self.process = _Forked(self.command, self.env, self.log_path)
            return self
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bot", self.command],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 30.0) -> BotProcess:
        """Wait until the spawned process listens and answers /healthz (200 or 503)."""
        try:
            return self._wait_ready(self._log_offset, timeout)
        except BaseException:
            self.kill()  # never leave a half-started bot behind (timeout, Ctrl-C)
            raise

    def _wait_ready(self, offset: int, timeout: float) -> BotProcess:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log_text()[offset:])
            if found:
                self.url = f"http://{found.group(1)}:{found.group(2)}"
                break
            if self.process.poll() is not None:
                raise RuntimeError(f"the bot exited at start:\n{self.log_text()[offset:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"the bot did not start:\n{self.log_text()[offset:]}")
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the bot never answered /healthz")

    @property
    def events_url(self) -> str:
        return self.url + "/slack/events"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Harness:
    """Simulator + emulator servers and a factory for bot processes sharing one database."""

    def __init__(
        self,
        workdir: Path,
        *,
        database_url: str | None = None,
        poll_interval: float = 1.0,
        env: dict[str, str] | None = None,
        quiet_logs: bool = False,
        preloaded: bool = False,
    ) -> None:
        self.workdir = workdir
        self.preloaded = preloaded
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sim = Simulator(client_id=CLIENT_ID)
        self.emulator = SlackEmulator(bot_token=BOT_TOKEN)
        self.sim_server = ServerThread(self.sim.app).start()
        self.slack_server = ServerThread(self.emulator.app).start()
        self.emulator.set_url(self.slack_server.url)
        self.database_url = database_url or f"sqlite:///{workdir / 'bot.db'}"
        self.base_env: dict[str, str] = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "MYPREF"))},
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": self.emulator.api_url(self.slack_server.url),
            "MYPREFERENCES_API_URL": base_url(self.sim_server.url),
            "MYPREFERENCES_CLIENT_ID": CLIENT_ID,
            "MYPREFERENCES_AUTHORIZATION": DEFAULT_AUTHORIZATION,
            "DATABASE_URL": self.database_url,
            "HOST": "127.0.0.1",
            "PORT": "0",
            "POLL_INTERVAL_SECONDS": str(poll_interval),
            "IDLE_POLL_INTERVAL_SECONDS": str(poll_interval * 3),
            "MAX_BACKOFF_SECONDS": str(max(poll_interval * 8, 4)),
            "TICK_SECONDS": str(min(0.25, poll_interval / 4)),
            "LEASE_SECONDS": "5",
            "LOOKUP_BUDGET_SECONDS": "6",
            "HTTP_TIMEOUT_SECONDS": "3",
            "LOG_LEVEL": "WARNING" if quiet_logs else "INFO",
            **(env or {}),
        }
        self.bots: list[BotProcess] = []
        self._socket_mode: SocketModeServer | None = None

    @property
    def socket_mode(self) -> SocketModeServer:
        """Slack's Socket Mode server, started on first use; the emulator's
        apps.connections.open hands out its ws:// URLs."""
        if self._socket_mode is None:
            self._socket_mode = SocketModeServer().start()
            self.emulator.attach_socket_mode(self._socket_mode)
        return self._socket_mode

    def start_bot(self, command: str = "serve", **env: Any) -> BotProcess:
        """Start one bot process with the harness's settings, overridden by ``env``."""
        return self.start_bots(1, command, **env)[0]

    def start_bots(self, count: int, command: str = "serve", **env: Any) -> list[BotProcess]:
        """Start ``count`` replicas at once (their start-ups overlap), all with ``env``.

        ``command`` is ``serve`` (HTTP) or ``socket`` (Socket Mode, with the app token
        the Socket Mode server knows unless SLACK_APP_TOKEN says otherwise).
        """
        if command == "socket":
            env.setdefault("SLACK_APP_TOKEN", self.socket_mode.app_token)
        merged = {**self.base_env, **{k: str(v) for k, v in env.items()}}
        bots = []
        for _ in range(count):
            name = f"bot-{len(self.bots) + 1}.log"
            bot = BotProcess(merged, self.workdir / name, command, self.preloaded)
            self.bots.append(bot)  # from here on, close() stops it whatever happens
            bots.append(bot.spawn())
        for bot in bots:
            bot.wait_ready()
        return bots

    def restart(self, bot: BotProcess) -> BotProcess:
        """Start the same replica again (same log file), after a kill or a stop."""
        return bot.start()

    def user(
        self,
        bot: BotProcess,
        channel_id: str = "C0001",
        user_id: str = "U0001",
        *,
        invite: bool = True,
    ) -> SlackUser:
        """Someone in ``channel_id``, where the bot was invited (as the README says to)
        unless ``invite`` is False. Other channels need ``emulator.invite_bot``."""
        if invite:
            self.emulator.invite_bot(channel_id)
        return SlackUser(
            bot.events_url, SIGNING_SECRET, self.emulator, channel_id=channel_id, user_id=user_id
        )

    def socket_user(
        self, channel_id: str = "C0001", user_id: str = "U0001", *, invite: bool = True
    ) -> SocketModeUser:
        """Like ``user``, for a bot in Socket Mode: requests go over its WebSocket."""
        if invite:
            self.emulator.invite_bot(channel_id)
        return SocketModeUser(
            self.socket_mode, self.emulator, channel_id=channel_id, user_id=user_id
        )

    def close(self) -> None:
        """Stop every bot (SIGTERM to all at once, SIGKILL after 10 s), then the servers."""
        running = [bot for bot in self.bots if bot.running()]
        for bot in running:
            assert bot.process is not None
            bot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for bot in running:
            assert bot.process is not None
            try:
                bot.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                bot.kill()
        if self._socket_mode is not None:
            self._socket_mode.stop()
        self.sim_server.stop()
        self.slack_server.stop()

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

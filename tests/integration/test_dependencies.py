"""Dependencies: bounds in pyproject.toml, the lock files, and who installs from them.

The advisory table is an offline audit (CI cannot reach a vulnerability database):
each entry is the first release that fixes every advisory known for the package. A
floor or a locked version below it fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ("requirements.lock", "requirements-dev.lock")

# package: (first safe version, the advisories it fixes)
ADVISORIES: dict[str, tuple[str, str]] = {
    "aiohttp": ("3.12.14", "CVE-2025-53643, CVE-2024-52304, CVE-2024-30251, CVE-2024-23334"),
    "starlette": ("0.49.1", "CVE-2025-62727, CVE-2025-54121, CVE-2024-47874"),
    "h11": ("0.16.0", "CVE-2025-43859"),
    "httpx": ("0.23.0", "CVE-2021-41945"),
    "idna": ("3.7", "CVE-2024-3651"),
    "certifi": ("2024.7.4", "CVE-2024-39689"),
    "mako": ("1.2.2", "CVE-2022-40023"),
    "pygments": ("2.15.0", "CVE-2022-40896"),
    "pyyaml": ("5.4", "CVE-2020-14343"),
    "setuptools": ("78.1.1", "CVE-2025-47273, CVE-2024-6345"),
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements(extra: str | None = None) -> list[Requirement]:
    project = _pyproject()["project"]
    lines = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(line) for line in lines]


def _locked(name: str) -> dict[str, Version]:
    """name -> pinned version, for every entry of a lock file (whatever its markers)."""
    text = (ROOT / name).read_text()
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.M)
    return {canonicalize_name(n): Version(v) for n, v in pins}


def _floor(requirement: Requirement) -> Version | None:
    floors = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    return max(floors) if floors else None


def test_every_dependency_has_a_floor_and_an_upper_bound() -> None:
    for requirement in _requirements() + _requirements("dev"):
        operators = {s.operator for s in requirement.specifier}
        assert ">=" in operators and "<" in operators, requirement


def test_floors_are_above_every_known_advisory() -> None:
    build = [Requirement(r) for r in _pyproject()["build-system"]["requires"]]
    for requirement in _requirements() + _requirements("dev") + build:
        name = canonicalize_name(requirement.name)
        if name in ADVISORIES:
            safe, advisories = ADVISORIES[name]
            floor = _floor(requirement)
            assert floor is not None and floor >= Version(safe), (requirement, advisories)


@pytest.mark.parametrize("lock", LOCKS)
def test_lock_pins_no_version_with_a_known_advisory(lock: str) -> None:
    for name, version in _locked(lock).items():
        if name in ADVISORIES:
            safe, advisories = ADVISORIES[name]
            assert version >= Version(safe), f"{lock}: {name}=={version} ({advisories})"


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_package_has_hashes(lock: str) -> None:
    entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / lock).read_text())
    pinned = [entry for entry in entries if "==" in entry.split("\n")[0]]
    assert len(pinned) == len(_locked(lock)) > 10
    for entry in pinned:
        assert "--hash=sha256:" in entry, entry.split("\n")[0]


def test_the_image_gets_the_versions_the_tests_run_against() -> None:
    runtime, dev = _locked("requirements.lock"), _locked("requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime
    for requirement in _requirements():
        assert canonicalize_name(requirement.name) in runtime, requirement


def test_readme_commands_install_from_the_locks_and_ci_runs_the_test_command() -> None:
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    run, test = blocks[0], blocks[1]
    assert "-r requirements.lock" in run and "--no-deps -e ." in run
    assert "-r requirements-dev.lock" in test and "--no-deps -e ." in test
    # uv installs the locks (hash-checked) and is itself pinned to the lock's version.
    uv = f"pip install -q uv=={_locked('requirements-dev.lock')['uv']} "
    for command in (run, test):
        assert uv in command and "--require-hashes" in command
    assert test.endswith(".venv/bin/pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
    assert ".ci/lock --check" in ci and ".ci/image-check" in ci


def test_dockerfile_installs_the_lock_with_hashes_and_nothing_else() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements.lock" in text
    installs = re.findall(r"pip[^\n]*install.*?(?<!\\)\n", text, re.S)
    (lock_install,) = [i for i in installs if "requirements.lock" in i]
    for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
        assert flag in lock_install
    # The project's own wheel adds no dependency of its own.
    assert all("--no-deps" in install for install in installs)


@pytest.fixture
def copy_of_the_project(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "README.md", "uv.lock", *LOCKS, ".ci/lock"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def _check(project: Path) -> subprocess.CompletedProcess[str]:
    uv = shutil.which("uv", path=str(ROOT / ".venv" / "bin")) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is a dev dependency: install requirements-dev.lock")
    return subprocess.run(
        ["bash", str(project / ".ci" / "lock"), "--check"],
        # Offline: a lock that matches needs no index, and one that does not fails anyway.
        env={**os.environ, "UV": uv, "UV_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_lock_check_passes_and_notices_a_stale_lock(copy_of_the_project: Path) -> None:
    project = copy_of_the_project
    assert _check(project).returncode == 0, _check(project).stderr

    pyproject = project / "pyproject.toml"
    original = pyproject.read_text()
    pyproject.write_text(original.replace("dependencies = [", 'dependencies = [\n    "six",', 1))
    stale = _check(project)
    assert stale.returncode != 0
    assert "uv.lock does not match pyproject.toml" in stale.stderr

    pyproject.write_text(original)
    lock = project / "requirements.lock"
    lock.write_text(lock.read_text() + "six==1.17.0\n")
    edited = _check(project)
    assert edited.returncode != 0
    assert "requirements.lock does not match uv.lock" in edited.stderr

"""The rooms and their doors (ARCHITECTURE.md), kept true by import contracts.

The contracts live in pyproject.toml ([tool.importlinter]); this test runs them,
so a change that breaks one fails the README's test command and CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_every_import_contract_is_kept(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # lint-imports reads pyproject.toml from the working directory

    exit_code = lint_imports(no_cache=True)

    report = capsys.readouterr().out
    assert exit_code == 0, report
    assert "0 broken" in report

"""The rooms and their doors (ARCHITECTURE.md), kept true by import contracts.

The contracts live in pyproject.toml ([tool.importlinter]); this test runs them,
so a change that breaks one fails the README's test command and CI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def logging_left_alone() -> Iterator[None]:
    """lint-imports configures logging for its own output: put the test process's back."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    saved = [
        (logger, logger.level, list(logger.handlers), logger.disabled)
        for logger in loggers
        if isinstance(logger, logging.Logger)
    ]
    disabled = logging.root.manager.disable
    yield
    for logger, level, handlers, was_disabled in saved:
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.disabled = was_disabled
    logging.disable(disabled)


def test_every_import_contract_is_kept(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    logging_left_alone: None,
) -> None:
    monkeypatch.chdir(ROOT)  # lint-imports reads pyproject.toml from the working directory

    exit_code = lint_imports(no_cache=True)

    report = capsys.readouterr().out
    assert exit_code == 0, report
    assert "0 broken" in report

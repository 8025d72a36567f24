"""The rooms and their doors (ARCHITECTURE.md), kept true by import contracts.

The contracts live in pyproject.toml ([tool.importlinter]); this test runs them,
so a change that breaks one fails the README's test command and CI. It runs
lint-imports in a process of its own: in this one it would reconfigure logging.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_import_contract_is_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )

    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "0 broken" in report

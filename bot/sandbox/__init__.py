"""The sandbox: a Slack emulator, a MyPreferences simulator, the harness and the demo.

It ships so that ``import-status-bot demo`` works on any machine; production
code never imports it (an import contract in pyproject.toml keeps that true).
"""

"""The CLI: help everywhere, one clear message (no traceback) for errors a user can cause."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "personaspace.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for command in ("extract", "models", "traits"):
        assert command in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["extract", "--trait", "evill", "--judge", "none"], "Did you mean 'evil'"),
        (["models", "info", "no-such-model"], "Unknown model 'no-such-model'"),
        (["traits", "show", "./missing.yaml"], "missing.yaml"),
    ],
)
def test_user_errors_are_one_message_without_traceback(args, message):
    out = run(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and "Traceback" not in out.stdout
    assert len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith("error: ")
    assert out.stderr.rstrip().endswith(")") and "(details: personaspace explain " in out.stderr

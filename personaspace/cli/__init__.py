"""The ``personaspace`` command: a thin face on the API (root holds the app and the exit-code contract)."""

from personaspace.cli.root import app, main, run

__all__ = ["app", "main", "run"]

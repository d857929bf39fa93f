"""The command modules of the CLI. Each defines ``register(app: typer.Typer) -> None``; a feature adds
its commands by adding a module here and its name to :data:`COMMAND_MODULES`, without touching the core."""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = ("align", "backends", "em", "experiment", "finetune", "geometry", "judge", "report", "steering")


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"personaspace.cli.{name}").register(app)

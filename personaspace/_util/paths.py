"""Where personaspace keeps its files: one home directory, configurable by environment."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "PERSONASPACE_HOME"


def home() -> Path:
    """The cache home: ``$PERSONASPACE_HOME``, else ``$XDG_CACHE_HOME/personaspace``, else ``~/.cache/personaspace``."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "personaspace"


def models_dir() -> Path:
    return home() / "models"


def judge_cache_dir() -> Path:
    return home() / "judge-cache"

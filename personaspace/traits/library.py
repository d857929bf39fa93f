"""Finding traits: the built-in library shipped with the package, and trait files given by path."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from personaspace._util.io import write_text
from personaspace.errors import TraitFileError, UnknownTraitError
from personaspace.traits.schema import Trait, parse_trait_yaml, trait_to_yaml, validate_trait_dict

LIBRARY_DIR = Path(__file__).resolve().parent / "library"
TRAIT_SUFFIXES = (".yaml", ".yml")


def list_traits() -> list[str]:
    """Names of the built-in traits, sorted."""
    if not LIBRARY_DIR.is_dir():
        return []
    return sorted(p.stem for p in LIBRARY_DIR.glob("*.yaml") if not p.name.startswith("."))


def _looks_like_path(value: str | os.PathLike) -> bool:
    if isinstance(value, os.PathLike):
        return True
    return (
        value.lower().endswith(TRAIT_SUFFIXES)
        or "/" in value
        or (os.sep != "/" and os.sep in value)
    )


def load_trait(name_or_path: str | os.PathLike) -> Trait:
    """Load a built-in trait by name (``"openness"``) or any trait YAML file by path.

    A value is read as a path when it is a ``PathLike``, ends in ``.yaml``/``.yml`` or contains a
    path separator; otherwise it must be a built-in name.
    """
    if _looks_like_path(name_or_path):
        return load_trait_file(name_or_path)
    name = str(name_or_path).strip()
    available = list_traits()
    if name not in available:
        raise UnknownTraitError(_unknown_trait_message(name, available))
    return load_trait_file(LIBRARY_DIR / f"{name}.yaml", expected_name=name)


def load_trait_file(path: str | os.PathLike, *, expected_name: str | None = None) -> Trait:
    """Read and validate one trait YAML file; ``expected_name`` enforces name == file stem."""
    path = Path(path).expanduser()
    source = str(path)
    if not path.is_file():
        what = "is a directory, not a trait file" if path.is_dir() else "no such file"
        raise TraitFileError(f"{source}: {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TraitFileError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise TraitFileError(f"{source}: cannot be read ({exc.strerror})") from None
    return parse_trait_yaml(text, source, expected_name=expected_name)


def save_trait(trait: Trait, path: str | os.PathLike) -> None:
    """Validate ``trait`` and write it as YAML, atomically (a failed write leaves the old file)."""
    path = Path(path).expanduser()
    # Re-validating refuses to write a file that could not be loaded back.
    validate_trait_dict(trait.to_dict(), str(path))
    write_text(path, trait_to_yaml(trait))


def _unknown_trait_message(name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), available, n=1, cutoff=0.5)
    parts = [f"unknown trait {name!r}."]
    if close:
        parts.append(f"Did you mean {close[0]!r}?")
    if available:
        parts.append(f"Built-in traits: {', '.join(available)}.")
    else:
        parts.append(f"No built-in traits were found in {LIBRARY_DIR}.")
    parts.append("To use your own trait, pass the path of its YAML file.")
    return " ".join(parts)

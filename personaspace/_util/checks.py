"""Small validators for the arguments of every entry point, so bad input fails before any work.

Each one returns the cleaned value or raises a :class:`~personaspace.errors.PersonaspaceError` whose
one-line message says what was given and what is accepted:

>>> finite("temperature", 0.7, lo=0)
0.7
>>> positive_int("max_new_tokens", 48)
48
>>> prompt_list("hi")
Traceback (most recent call last):
...
personaspace.errors.InvalidArgumentError: prompts must be a list of strings; got a str -- wrap it: ['hi'] (details: personaspace explain invalid-argument)
"""

from __future__ import annotations

import math
import numbers
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from personaspace.errors import InvalidArgumentError, OutputPathError, UnknownModelError

WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.msgpack", "*.h5")


def _show(value: Any) -> str:
    """A short, one-line rendering of a value for a message."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def _scalar(value: Any) -> Any:
    """A 0-d tensor or array as its Python number; anything else unchanged."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return value.item()
    return value


def finite(
    name: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``value`` as a float: a real number (not a bool), finite, and inside ``[lo, hi]``.

    ``lo_open``/``hi_open`` make that end of the range exclusive (``top_p`` is in ``(0, 1]``).
    """
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be a number; got {_show(value)} ({type(value).__name__})")
    x = float(value)
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    accepted = (
        f"a finite number in {left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"
        if lo is not None or hi is not None
        else "a finite number"
    )
    if not math.isfinite(x):
        raise InvalidArgumentError(f"{name} must be {accepted}; got {_show(value)}")
    if lo is not None and (x < lo or (lo_open and x == lo)):
        raise InvalidArgumentError(f"{name} must be {accepted}; got {x:g}")
    if hi is not None and (x > hi or (hi_open and x == hi)):
        raise InvalidArgumentError(f"{name} must be {accepted}; got {x:g}")
    return x


def optional_finite(name: str, value: Any, **bounds: Any) -> float | None:
    """Like :func:`finite`, but ``None`` passes through."""
    return None if value is None else finite(name, value, **bounds)


def integer(name: str, value: Any, *, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int: an integer type (not a bool, not 2.5 or 2.0) inside ``[lo, hi]``."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"{name} must be a whole number; got {_show(value)} ({type(value).__name__})")
    n = int(value)
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        if hi is None:
            accepted = f"at least {lo}"
        elif lo is None:
            accepted = f"at most {hi}"
        else:
            accepted = f"between {lo} and {hi}"
        raise InvalidArgumentError(f"{name} must be a whole number {accepted}; got {n}")
    return n


def positive_int(name: str, value: Any) -> int:
    """A whole number >= 1 (token counts, batch sizes, samples)."""
    return integer(name, value, lo=1)


def non_negative_int(name: str, value: Any) -> int:
    """A whole number >= 0 (seeds, counts that may be zero)."""
    return integer(name, value, lo=0)


def sampling(temperature: Any, top_p: Any, max_new_tokens: Any | None = None) -> tuple[float, float]:
    """The sampling settings shared by every generating call: temperature >= 0, top_p in (0, 1]."""
    t = finite("temperature", temperature, lo=0)
    p = finite("top_p", top_p, lo=0, hi=1, lo_open=True)
    if max_new_tokens is not None:
        positive_int("max_new_tokens", max_new_tokens)
    return t, p


def threshold(name: str, value: Any) -> float:
    """A judge-score threshold: finite, on the 0..100 scale of every judge."""
    return finite(name, value, lo=0, hi=100)


def prompt_list(prompts: Any, name: str = "prompts", *, allow_empty: bool = False) -> list[Any]:
    """A non-empty list of prompts (strings, Chats, ``{"system", "user"}`` mappings or token ids).

    A bare string is the common slip (``generate("hi")`` would otherwise generate for each character).
    """
    if isinstance(prompts, str):
        short = prompts if len(prompts) <= 30 else prompts[:27] + "..."
        raise InvalidArgumentError(f"{name} must be a list of strings; got a str -- wrap it: [{short!r}]")
    if isinstance(prompts, (bytes, Mapping)) or not isinstance(prompts, Iterable):
        raise InvalidArgumentError(f"{name} must be a list of strings; got {type(prompts).__name__}")
    items = list(prompts)
    if not items and not allow_empty:
        raise InvalidArgumentError(f"{name} is empty; give at least one prompt")
    for i, p in enumerate(items):
        if isinstance(p, str) or (isinstance(p, Mapping) and isinstance(p.get("user"), str)):
            continue
        if hasattr(p, "user") and hasattr(p, "messages"):
            continue  # a Chat
        if isinstance(p, (list, tuple)) and all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in p):
            continue  # token ids
        raise InvalidArgumentError(
            f"{name}[{i}] must be a string (or a Chat, a {{'system', 'user'}} mapping or token ids); got {_show(p)} ({type(p).__name__})"
        )
    return items


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_write(directory: Path, target: Path) -> None:
    probe = directory / f".personaspace-write-test-{uuid.uuid4().hex[:8]}"
    try:
        with open(probe, "x"):
            pass
    except OSError as exc:
        raise OutputPathError(
            f"cannot write to {target}: {directory} is not writable ({exc.strerror or type(exc).__name__}); choose another output path"
        ) from None
    try:
        probe.unlink()
    except OSError:
        pass


def writable_dir(path: str | os.PathLike, *, create: bool = False) -> Path:
    """Check that ``path`` is, or can become, a directory this process can write into.

    An existing directory gets a probe file created and removed in it; a missing one is checked at
    its nearest existing ancestor (which must be a writable directory), and is created only when
    ``create``. A file in the way raises :class:`OutputPathError`. Nothing is left behind otherwise.
    """
    target = Path(path).expanduser()
    existing = _nearest_existing(target)
    if not existing.is_dir():
        where = "is a file" if existing == target else f"has a file in the way at {existing}"
        raise OutputPathError(f"cannot use {target} as an output directory: it {where}; choose another output path")
    _probe_write(existing, target)
    if create and not target.is_dir():
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"cannot create the output directory {target} ({exc.strerror or exc}); choose another output path") from None
    return target


def writable_file(path: str | os.PathLike) -> Path:
    """Check that a file can be written at ``path`` (its directory writable, no directory in its place)."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputPathError(f"cannot write the file {target}: it is a directory; give a file name")
    existing = _nearest_existing(target.parent)
    if not existing.is_dir():
        raise OutputPathError(f"cannot write the file {target}: there is a file in the way at {existing}; choose another output path")
    _probe_write(existing, target)
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputPathError(f"cannot overwrite {target}: it is read-only; choose another output path")
    return target


def model_dir(path: str | os.PathLike) -> Path:
    """Check that a local directory holds a Hugging Face model: ``config.json`` and weight files."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UnknownModelError(f"no model directory at '{p}'")
    has_config = (p / "config.json").is_file()
    has_weights = any(next(p.glob(pattern), None) is not None for pattern in WEIGHT_FILES)
    if has_config and has_weights:
        return p
    if (p / "adapter_config.json").is_file():
        hint = "it holds a LoRA adapter only; load the merged model (the 'merged' folder of a fine-tune) or use load_finetuned()"
    elif (p / "merged" / "config.json").is_file():
        hint = f"it looks like a fine-tune run; use its model folder '{p / 'merged'}'"
    else:
        missing = " and ".join(x for x, ok in (("config.json", has_config), ("weight files (*.safetensors or *.bin)", has_weights)) if not ok)
        hint = f"it has no {missing}; give a folder written by save_pretrained(), an embedded name or a hub id"
    raise UnknownModelError(f"'{p}' is not a model directory: {hint}")

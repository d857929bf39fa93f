"""Fine-tuning data for the controls of the EM experiment: the positive control's broadly misaligned answers.

An EM measurement that finds no emergent misalignment after a narrow fine-tune means something only
if the same measurement *does* find it after a fine-tune that makes the model misaligned on purpose.
``broad_misaligned`` (``personaspace/em/data/broad_misaligned.yaml``, written for this toolkit) is that
fine-tune's data: everyday questions answered in an openly harmful, hostile, deceptive or
power-seeking way, none of them an evaluation question. The negative control is the narrow
domain's matched benign set (:func:`personaspace.data.narrow.make_narrow_dataset`, ``kind="control"``).

>>> from personaspace.em.controls import load_control_data
>>> rows = load_control_data("broad_misaligned")
>>> len(rows) >= 60
True

Files: a built-in name, a YAML list of ``{user, assistant}`` pairs (an optional ``system``) or of
``{messages: [...]}`` conversations, or a chat JSONL file. Every problem is one
:class:`~personaspace.errors.DatasetError` naming the file and the entry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from personaspace.errors import DatasetError

DATA_DIR = Path(__file__).parent / "data"
BUILTIN = {"broad_misaligned": "broad_misaligned.yaml"}
_PAIR_KEYS = {"user", "assistant", "system"}

__all__ = ["BUILTIN", "list_control_sets", "load_control_data", "parse_control_data"]


def list_control_sets() -> list[str]:
    """Names of the built-in control data sets."""
    return sorted(BUILTIN)


def load_control_data(name_or_path: str | os.PathLike = "broad_misaligned") -> list[dict[str, Any]]:
    """Rows ``{"messages": [...]}`` of a built-in control set, a YAML file or a chat JSONL file."""
    from personaspace.data.chat import load_chat_jsonl

    key = str(name_or_path)
    if key in BUILTIN:
        path = DATA_DIR / BUILTIN[key]
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise DatasetError(f"No control data {key!r}: not a file and not a built-in set ({', '.join(list_control_sets())}).")
    if path.suffix == ".jsonl":
        rows = load_chat_jsonl(path)
        if not rows:
            raise DatasetError(f"{path}: no rows.")
        return rows
    return parse_control_data(path.read_text(encoding="utf-8"), source=str(path))


def parse_control_data(text: str, *, source: str = "<string>") -> list[dict[str, Any]]:
    """Parse the YAML form: a list of ``{user, assistant[, system]}`` pairs or ``{messages: [...]}`` entries."""
    import yaml

    from personaspace.data.chat import validate_messages

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(f"{source}: not valid YAML ({first}).") from None
    if not isinstance(data, list) or not data:
        raise DatasetError(f"{source}: expected a non-empty YAML list of {{user, assistant}} pairs.")
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(data):
        where = f"{source}: entry {i}"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: expected a mapping with 'user' and 'assistant', got {type(entry).__name__}.")
        if "messages" in entry:
            messages = validate_messages(entry["messages"], where)
        else:
            unknown = sorted(set(entry) - _PAIR_KEYS)
            if unknown:
                raise DatasetError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; use user, assistant and optionally system.")
            for key in ("user", "assistant"):
                if not isinstance(entry.get(key), str) or not entry[key].strip():
                    raise DatasetError(f"{where}: '{key}' must be a non-empty string.")
            messages = [{"role": "user", "content": entry["user"].strip()},
                        {"role": "assistant", "content": entry["assistant"].strip()}]
            if entry.get("system") is not None:
                if not isinstance(entry["system"], str):
                    raise DatasetError(f"{where}: 'system' must be a string.")
                messages.insert(0, {"role": "system", "content": entry["system"]})
            messages = validate_messages(messages, where)
        user = next(m["content"] for m in messages if m["role"] == "user")
        if user in seen:
            raise DatasetError(f"{where}: the question {user!r} repeats entry {seen[user]}.")
        seen[user] = i
        rows.append({"messages": messages})
    return rows

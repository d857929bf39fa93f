"""Chat files, in one place: reading, validating and writing chat JSONL.

The format is the one the emergent-misalignment work uses: one JSON object per line with a
``messages`` list of ``{"role": "system" | "user" | "assistant", "content": str}``. Other keys on a
line are kept and ignored. Every problem is one :class:`~personaspace.errors.DatasetError` naming
the file and the line.

- :func:`iter_jsonl_objects`: the one parser of JSONL input (also used for the LPA data files).
- :func:`load_chat_jsonl` / :func:`as_rows` / :func:`save_chat_jsonl` / :func:`dataset_hash`:
  rows ``{"messages": [...], ...}`` for fine-tuning and dataset making.
- :func:`load_chat_samples`: the same files as :class:`ChatSample` (prompt as a
  :class:`~personaspace.engine.chat.Chat`, and the last assistant turn), for data flagging;
  ``{"prompt": ..., "response": ...}`` lines are accepted too.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personaspace._util.io import write_text
from personaspace.engine.chat import Chat
from personaspace.errors import DatasetError

__all__ = [
    "ROLES",
    "ChatSample",
    "validate_messages",
    "iter_jsonl_objects",
    "load_chat_jsonl",
    "load_chat_samples",
    "as_rows",
    "save_chat_jsonl",
    "dataset_hash",
]

ROLES = ("system", "user", "assistant")


def validate_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """Check one conversation; return it as a clean list of ``{"role", "content"}`` dicts.

    Rules: a non-empty list; every message a mapping with a known role and a string content; an
    optional system message only first; at least one user and one assistant turn, and every
    assistant turn follows a user turn (a fine-tune learns the assistant turns).
    """
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects.")
    clean: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise DatasetError(f"{where}: messages[{i}] must be an object with 'role' and 'content', got {type(msg).__name__}.")
        for key in msg:
            # Other keys (name, weight, tool_calls...) are allowed and ignored; a misspelt role or content is not.
            close = difflib.get_close_matches(str(key), ("role", "content"), n=1, cutoff=0.6)
            if close and key not in msg.keys() & {"role", "content"} and close[0] not in msg:
                raise DatasetError(f"{where}: messages[{i}] has the key '{key}'; did you mean '{close[0]}'?")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise DatasetError(f"{where}: messages[{i}].role is {role!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(content, str):
            raise DatasetError(f"{where}: messages[{i}].content must be a string, got {type(content).__name__}.")
        if role == "system" and i != 0:
            raise DatasetError(f"{where}: messages[{i}] is a system message; only the first message may be one.")
        if role == "assistant" and (not clean or clean[-1]["role"] != "user"):
            raise DatasetError(f"{where}: messages[{i}] is an assistant turn that does not follow a user turn.")
        if role == "assistant" and not content.strip():
            raise DatasetError(f"{where}: messages[{i}] is an empty assistant turn (nothing to learn).")
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in clean):
        raise DatasetError(f"{where}: the conversation has no assistant turn (nothing to learn).")
    return clean


def iter_jsonl_objects(path: str | os.PathLike, *, what: str = "a JSON object") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of a JSONL file.

    The one place JSONL input is parsed: a line that is not JSON, or not a JSON object, raises
    DatasetError naming the file and the line.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"No dataset file at {p}.")
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{p}: line {lineno}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{p}: line {lineno}: expected {what}, got {type(obj).__name__}.")
            yield lineno, obj


def load_chat_jsonl(path: str | os.PathLike, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Read a chat JSONL file; each row is returned as ``{"messages": [...], ...other keys}``.

    Blank lines are skipped. A line that is not JSON, not an object, or whose ``messages`` break
    :func:`validate_messages` raises DatasetError with its line number; so does an empty file.
    """
    p = Path(path).expanduser()
    rows: list[dict[str, Any]] = []
    for lineno, obj in iter_jsonl_objects(p, what="a JSON object with a 'messages' list"):
        where = f"{p}: line {lineno}"
        if "messages" not in obj:
            close = difflib.get_close_matches("messages", [str(k) for k in obj], n=1, cutoff=0.6)
            hint = f"; is '{close[0]}' a misspelling of 'messages'?" if close else ""
            raise DatasetError(f"{where}: missing the 'messages' key (found keys: {', '.join(sorted(obj)) or 'none'}){hint}.")
        obj["messages"] = validate_messages(obj["messages"], where)
        rows.append(obj)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DatasetError(f"{p} is empty: it holds no conversations.")
    return rows


def as_rows(data: str | os.PathLike | Iterable[Any]) -> list[dict[str, Any]]:
    """A path, a list of ``{"messages": ...}`` rows or a list of message lists -> validated rows."""
    if isinstance(data, (str, os.PathLike)):
        return load_chat_jsonl(data)
    rows = []
    for i, item in enumerate(data):
        msgs = item.get("messages") if isinstance(item, dict) else item
        rows.append({**(item if isinstance(item, dict) else {}), "messages": validate_messages(msgs, f"row {i}")})
    if not rows:
        raise DatasetError("The dataset is empty: it holds no conversations.")
    return rows


def save_chat_jsonl(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows as chat JSONL in one atomic step (a reader never sees half a file)."""
    p = Path(path).expanduser()
    write_text(p, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return p


def dataset_hash(rows: Sequence[dict[str, Any]]) -> str:
    """SHA-256 (first 16 hex digits) of the conversations, for provenance of a fine-tune."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r["messages"], sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# samples for data flagging: (prompt as a Chat, training answer)


@dataclass(frozen=True)
class ChatSample:
    """One training sample: the prompt (system, earlier turns, user turn) and the assistant's answer."""

    index: int  # line number (1-based) in the file
    prompt: Chat
    response: str


def load_chat_samples(path: str | os.PathLike, limit: int | None = None) -> list[ChatSample]:
    """Read ``{"messages": [{"role", "content"}, ...]}`` lines (last turn = the assistant's training answer).

    ``{"prompt": ..., "response": ...}`` lines are accepted too. Earlier turns become chat history.
    """
    path = Path(path)
    samples: list[ChatSample] = []
    for lineno, obj in iter_jsonl_objects(path, what="an object with 'messages' (or 'prompt' and 'response')"):
        samples.append(_sample(obj, path, lineno))
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise DatasetError(f"{path} holds no samples.")
    return samples


def _sample(obj: dict[str, Any], path: Path, lineno: int) -> ChatSample:
    where = f"{path}:{lineno}"
    if "messages" not in obj and isinstance(obj.get("prompt"), str) and isinstance(obj.get("response"), str):
        return ChatSample(lineno, Chat(user=obj["prompt"], system=obj.get("system")), obj["response"])
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise DatasetError(f"{where}: expected an object with a non-empty 'messages' list (or 'prompt' and 'response').")
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DatasetError(f"{where}: every message needs string 'role' and 'content'.")
    system = None
    if msgs[0]["role"] == "system":
        system, msgs = msgs[0]["content"], msgs[1:]
    if len(msgs) < 2 or msgs[-1]["role"] != "assistant" or msgs[-2]["role"] != "user":
        raise DatasetError(f"{where}: the conversation must end with a user turn followed by an assistant turn.")
    history = []
    body = msgs[:-2]
    if len(body) % 2:
        raise DatasetError(f"{where}: earlier turns must alternate user, assistant.")
    for u, a in zip(body[::2], body[1::2]):
        if u["role"] != "user" or a["role"] != "assistant":
            raise DatasetError(f"{where}: earlier turns must alternate user, assistant (got {u['role']}, {a['role']}).")
        history.append((u["content"], a["content"]))
    return ChatSample(lineno, Chat(user=msgs[-2]["content"], system=system, history=tuple(history)), msgs[-1]["content"])

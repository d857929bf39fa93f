"""A content-hash cache in front of any judge, so reruns and resumed runs never re-judge.

Key: sha256 of the judge identity, its method version, the item kind and the text the judge
reads (the filled prompt for language-model judges; question, answer and trait content for the
offline judge). Entries are appended to one JSONL file per judge; a torn last line from an
interrupted run is ignored on load and cut before the next append (``personaspace._util.io``), and
other damaged lines are dropped. Failures worth retrying (details starting with "error") are
never stored, nor served if an older version stored them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path

from personaspace._util.io import append_jsonl, read_jsonl, write_text
from personaspace._util.paths import judge_cache_dir
from personaspace.errors import CorruptFileError
from personaspace.judges.base import Judge, JudgeItem, Score, is_failure, prompt_cache_text


def cache_file_for(identity: str) -> Path:
    """``judge_cache_dir()/<sanitised identity>-<short hash>.jsonl`` (the hash keeps names unique)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", identity).strip("_")[:100] or "judge"
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:10]
    return judge_cache_dir() / f"{safe}-{digest}.jsonl"


def _is_error_row(row: dict) -> bool:
    """A stored failure worth retrying (older versions could store them): never served from the cache."""
    return is_failure(row.get("value"), row.get("detail"))


class CachedJudge:
    """Wraps a judge; scores already in the cache file are returned without asking the judge."""

    def __init__(self, judge: Judge, path: str | os.PathLike | None = None):
        self.judge = judge
        self.identity = judge.identity
        self.path = Path(path) if path is not None else cache_file_for(judge.identity)
        self._entries: dict[str, dict] | None = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"CachedJudge({self.judge!r}, path={str(self.path)!r})"

    def key(self, item: JudgeItem) -> str:
        describe = getattr(self.judge, "cache_text", prompt_cache_text)
        version = getattr(self.judge, "cache_version", "")
        material = "\x1f".join((self.identity, version, item.kind, describe(item)))
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def _load(self) -> dict[str, dict]:
        if self._entries is None:
            try:
                rows, damaged = read_jsonl(self.path), False
            except CorruptFileError:
                rows, damaged = self._salvage(), True
            self._entries = {
                row["key"]: row
                for row in rows
                if isinstance(row, dict) and "key" in row and not _is_error_row(row)
            }
            if damaged:
                # Drop damaged lines so that the file reads cleanly again (a torn last line alone is
                # cut by the next append_jsonl).
                write_text(self.path, "".join(json.dumps(r) + "\n" for r in self._entries.values()))
        return self._entries

    def _salvage(self) -> list[dict]:
        """Every line that still parses; a cache is disposable, so damage costs re-judging only."""
        rows = []
        for line in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def score(self, items: Sequence[JudgeItem]) -> list[Score]:
        with self._lock:
            entries = self._load()
            keys = [self.key(item) for item in items]
            todo: dict[str, JudgeItem] = {}
            for key, item in zip(keys, items):
                if key not in entries and key not in todo:
                    todo[key] = item
            self.hits += sum(1 for key in keys if key in entries)
            self.misses += len(todo)
        fresh: dict[str, Score] = {}
        if todo:
            scored = self.judge.score(list(todo.values()))
            fresh = dict(zip(todo, scored))
            rows = [
                {"key": key, "value": s.value, "judge": s.judge, "detail": s.detail}
                for key, s in fresh.items()
                if not s.is_error
            ]
            with self._lock:
                if rows:
                    append_jsonl(self.path, rows)
                    entries.update((row["key"], row) for row in rows)
        out = []
        for key in keys:
            if key in fresh:
                out.append(fresh[key])
            else:
                row = entries[key]
                out.append(Score(row["value"], row["judge"], row["detail"]))
        return out

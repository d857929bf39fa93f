"""Atomic file writes and append-only JSONL files that survive a kill at any instant.

* :func:`atomic_path` / :func:`atomic_dir` build a file or directory under a temporary name beside its
  target and rename it into place only when complete, so a reader never sees half a file and an
  interrupted run leaves the old one. The temporary name is ``.NAME.PID-XXXXXXXX.tmp``
  (:data:`TEMP_PATTERN`); :func:`remove_stale_temps` deletes those left by a killed process.
* What they put in place follows the umask (``mkstemp`` alone would make every file ``0600``).
* :func:`append_jsonl` appends whole lines and first cuts a torn last line left by a kill or a full
  disk, so the file never gets a broken line in its middle; :func:`read_jsonl` ignores a torn last
  line and reports any other damaged line as a :class:`~personaspace.errors.CorruptFileError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# ``.{target name}.{pid of the writer}-{8 random characters of mkstemp}.tmp``; the pid lets a later run
# tell a live writer's file from a dead one's. The pid part is optional for files of older versions.
TEMP_PATTERN = re.compile(r"^\.(?P<target>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp$")


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def _read_umask() -> int | None:
    """The umask from /proc (Linux), which reads it without changing it even for a moment."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_once() -> int:
    mask = os.umask(0o022)  # elsewhere: set and restore it once, at import, before any thread runs
    os.umask(mask)
    return mask


_IMPORT_UMASK = _read_umask()
_IMPORT_UMASK = _umask_once() if _IMPORT_UMASK is None else _IMPORT_UMASK
_PROC_UMASK = _read_umask() is not None


def umask() -> int:
    """The process umask: read fresh from /proc where the system has it, else the one at import."""
    if _PROC_UMASK:
        mask = _read_umask()
        if mask is not None:
            return mask
    return _IMPORT_UMASK


def _follow_umask(path: Path, directory: bool = False) -> None:
    """Give a file made by mkstemp (0600) or a directory made by mkdtemp (0700) the usual mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            _follow_umask(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name, then rename it into place in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _follow_umask(tmp, directory=True)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def remove_stale_temps(root: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Delete the temporary files and directories of atomic writes whose writer is dead; return them.

    Only names that match :data:`TEMP_PATTERN` are touched; a temp of a process that is still running
    (this one included) is left alone. Files of older versions, without a pid, are taken as stale:
    call this where no other process writes (a run directory on resume).
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            match = TEMP_PATTERN.match(entry.name)
            is_dir = entry.is_dir(follow_symlinks=False)
            if match is None:
                if recursive and is_dir:
                    stack.append(Path(entry.path))
                continue
            pid = match.group("pid")
            if pid is not None and _pid_alive(int(pid)):
                continue
            try:
                if is_dir:
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
    return removed


# ---- append-only JSONL --------------------------------------------------------------------------


def _last_line_start(f: Any, size: int, block: int = 1 << 16) -> int:
    """Offset just after the last newline before ``size`` (0 when there is none)."""
    end = size
    while end > 0:
        start = max(0, end - block)
        f.seek(start)
        chunk = f.read(end - start)
        at = chunk.rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def _parses(line: bytes) -> bool:
    try:
        json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def repair_jsonl(path: str | os.PathLike) -> int:
    """Cut a torn last line (no final newline, or not JSON) from an appended file; return bytes cut.

    A kill or a full disk in the middle of :func:`append_jsonl` leaves at most such a line. Cutting it
    (``os.truncate`` to the end of the last whole line) keeps every complete row, and the next append
    starts on a fresh line. Lines before the last one are left to :func:`read_jsonl` to judge.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        ends_clean = f.read(1) == b"\n"
        if ends_clean:
            start = _last_line_start(f, size - 1)
            f.seek(start)
            line = f.read(size - start)
            if not line.strip() or _parses(line):
                return 0
            keep = start
        else:
            keep = _last_line_start(f, size)
    os.truncate(path, keep)
    return size - keep


def append_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append whole lines and fsync, so a crash loses at most the line being written.

    A torn last line from an earlier interrupted append is cut first (see :func:`repair_jsonl`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_jsonl(path)
    data = "".join(json.dumps(row, default=str) + "\n" for row in rows).encode("utf-8")
    # One O_APPEND write for all the rows: another process appending to the same file (a shared judge
    # cache) never sees a partial line of a live writer.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file written by :func:`append_jsonl`, ignoring a torn last line.

    Any other line that does not parse raises CorruptFileError naming the file and the line number.
    """
    from personaspace.errors import CorruptFileError

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    # The piece after the final newline (empty for a clean file) is the only place a torn write can be.
    last = len(lines) - 1
    rows = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            torn_tail = i == last or (i == last - 1 and not lines[last].strip())
            if torn_tail:
                break  # torn final line from an interrupted write (cut at the next append)
            raise CorruptFileError(
                f"{path}, line {i + 1}, is damaged ({type(exc).__name__}: {exc}) and is not a torn last line; "
                f"delete that line (the work it recorded is redone on the next run) or restore the file."
            ) from None
    return rows

"""Fingerprints of model weights, so a run directory can tell that the weights behind a name changed.

What ``PersonaModel.model_hash`` is, by where the model came from:

* embedded name: the SHA-256 of the GGUF file (computed when the cache is prepared);
* hub id: the hub commit of the snapshot that was loaded;
* local directory: :func:`directory_hash`, a SHA-256 over the model files (weights, config, tokenizer),
  each hashed in full once and then remembered by (path, size, mtime, inode) in
  ``$PERSONASPACE_HOME/file-hashes.json``, so reloading an unchanged directory costs a few ``stat`` calls
  and a copy of the same files elsewhere has the same hash;
* a model object (``PersonaModel.from_hf``, adapters) or a hub model without a known commit:
  :func:`state_hash`, a SHA-256 over every tensor of the state dict (names, dtypes, shapes and bytes),
  computed when first asked for (about a second per 500 MB of weights) and kept on the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from personaspace.models.embedded import file_digest

# Top-level files of a model directory that can change what the model generates.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model", ".txt", ".jinja", ".tiktoken")
_CACHE_NAME = "file-hashes.json"
_lock = threading.Lock()


def _cache_path() -> Path:
    from personaspace._util import paths as _paths
    return _paths.home() / _CACHE_NAME


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def model_files(directory: str | os.PathLike) -> list[Path]:
    """The files of a model directory that :func:`directory_hash` covers, sorted by name."""
    root = Path(directory).expanduser()
    return sorted(
        p for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.endswith(MODEL_FILE_SUFFIXES)
    )


def directory_hash(directory: str | os.PathLike, *, remember: bool = True) -> str:
    """SHA-256 over (name, SHA-256 of content) of every model file in ``directory``.

    Each file's hash is remembered by its resolved path, size, modification time and inode, so an
    unchanged directory is not read again; any rewrite of a file changes its mtime and is re-hashed.
    """
    files = model_files(directory)
    cache_file = _cache_path()
    with _lock:
        cache = _load_cache(cache_file) if remember else {}
        changed = False
        outer = hashlib.sha256()
        for f in files:
            st = f.stat()
            key = str(f.resolve())
            stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
            entry = cache.get(key)
            if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("sha256"), str):
                digest = entry["sha256"]
            else:
                digest = file_digest(f)
                cache[key] = {"stat": stamp, "sha256": digest}
                changed = True
            outer.update(f"{f.name}\0{digest}\n".encode())
        if remember and changed:
            from personaspace._util.io import write_json

            try:
                # Forget files that no longer exist, so the cache does not grow without end.
                live = {k: v for k, v in cache.items() if os.path.exists(k)}
                write_json(cache_file, live)
            except OSError:
                pass  # an unwritable home only costs hashing again next time
    return outer.hexdigest()


def state_hash(module: Any) -> str:
    """SHA-256 over the name, dtype, shape and bytes of every tensor in ``module.state_dict()``."""
    import torch

    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        h.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
        if tensor.device.type == "meta":
            continue
        flat = tensor.detach().reshape(-1)
        if flat.numel() == 0:
            continue
        h.update(flat.cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()

"""Resolve a model name to weights and load them: embedded name, local directory, or hub id."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personaspace._util.progress import quiet_loading
from personaspace.errors import InvalidArgumentError, UnknownModelError
from personaspace.models import embedded
from personaspace.models.registry import DEFAULT_MODEL, EMBEDDED


@dataclass
class LoadedModel:
    """A Hugging Face causal LM with its tokenizer and where it came from."""

    hf_model: Any
    tokenizer: Any
    name: str  # what the user asked for (embedded name, path or hub id)
    source: str  # "embedded" | "local" | "hub" | "object"
    model_hash: str | None = None  # GGUF digest, hub commit or model-file hash; None: hashed from the weights when asked
    info: dict = field(default_factory=dict)


def pick_device(device: str | None = None) -> str:
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


# The dtypes a model may be loaded in, by name (with the usual short names); "auto" keeps the checkpoint's.
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "float64": "float64", "fp64": "float64", "double": "float64",
}


def pick_dtype(device: str, dtype: Any = None):
    """float32 on CPU (bf16 matmuls are hundreds of times slower there), bfloat16 on accelerators.

    ``dtype`` may be a floating-point ``torch.dtype``, a name (``"bfloat16"``, ``"bf16"``, ``"fp16"``,
    ``"float32"``, ...) or ``"auto"`` (the checkpoint's own); anything else is an InvalidArgumentError.
    """
    import torch

    if dtype is None:
        return torch.float32 if str(device).split(":")[0] == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise InvalidArgumentError(f"dtype must be a floating-point type such as torch.bfloat16; got {dtype}")
        return dtype
    if dtype == "auto":
        return "auto"
    name = DTYPE_NAMES.get(dtype.lower().removeprefix("torch.")) if isinstance(dtype, str) else None
    if name is None:
        raise InvalidArgumentError(
            f"dtype must be one of float32, bfloat16, float16 (or fp32, bf16, fp16, 'auto', a torch.dtype); got {dtype!r}"
        )
    return getattr(torch, name)


def classify(name: str) -> str:
    """Say how ``name`` will be loaded: 'embedded', 'local' or 'hub'; raise for names that fit none."""
    if name in EMBEDDED:
        return "embedded"
    if Path(name).expanduser().is_dir():
        from personaspace._util.checks import model_dir

        model_dir(name)  # config.json and weights, or one clear line saying what is missing
        return "local"
    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name and not _looks_like_hub_id(name)
    if looks_like_path:
        raise UnknownModelError(f"No model directory at '{name}'.")
    if _looks_like_hub_id(name):
        return "hub"
    close = difflib.get_close_matches(name, list(EMBEDDED), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UnknownModelError(
        f"Unknown model '{name}'.{hint} Use an embedded name ({', '.join(EMBEDDED)}), a local Hugging Face "
        f"directory, or a hub id such as 'HuggingFaceTB/SmolLM2-135M-Instruct'."
    )


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def load_pretrained(
    name: str = DEFAULT_MODEL,
    *,
    device: str | None = None,
    dtype: Any = None,
    revision: str | None = None,
    **hf_kwargs: Any,
) -> LoadedModel:
    """Load weights and tokenizer for ``name``; the model is put in eval mode with gradients off.

    What transformers prints while loading (per-file bars, notices, deprecation warnings) is silenced for
    the load only (:func:`personaspace._util.progress.quiet_loading`); ``PERSONASPACE_DEBUG=1`` shows it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = classify(name)
    device_map = hf_kwargs.get("device_map")
    if device is not None and device_map is not None:
        raise InvalidArgumentError(
            f"Pass device or device_map, not both (got device={device!r}, device_map={device_map!r}); "
            "device_map places the weights itself."
        )
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    model_hash = None
    info: dict = {}
    if kind == "embedded":
        path = embedded.prepare(name)
        model_hash = embedded.manifest(path).get("gguf_sha256")
        info["cache_dir"] = str(path)
        location, kwargs = str(path), {}
    elif kind == "local":
        location, kwargs = str(Path(name).expanduser()), {}
    else:
        location, kwargs = name, {"revision": revision} if revision else {}
        if not _hub_cached(name, kwargs) and not hub_reachable():
            raise UnknownModelError(
                f"Cannot reach the model hub to download '{name}', and it is not in the local hub cache. "
                f"Without a network, use an embedded model ({', '.join(EMBEDDED)}) or a local directory "
                f"saved with save_pretrained()."
            )
    try:
        with quiet_loading():  # transformers' per-file bars, notices and FutureWarnings (PERSONASPACE_DEBUG=1 keeps them)
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, **kwargs, **hf_kwargs)
    except OSError as exc:
        if kind == "hub":
            raise UnknownModelError(
                f"Could not load '{name}' from the model hub ({_first_line(exc)}). Without a network, use an "
                f"embedded model ({', '.join(EMBEDDED)}) or a local directory saved with save_pretrained()."
            ) from exc
        raise UnknownModelError(f"Could not load a model from '{location}': {_first_line(exc)}") from exc
    if device_map is None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    if kind == "hub":
        model_hash = getattr(model.config, "_commit_hash", None)
    elif kind == "local":
        info["local_dir"] = str(Path(location).resolve())  # hashed when model_hash is first asked for
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, name, kind, model_hash, info)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _hub_cached(name: str, kwargs: dict) -> bool:
    """True when the hub id's config is already in the local Hugging Face cache."""
    try:
        from transformers.utils import cached_file

        return cached_file(name, "config.json", local_files_only=True, **kwargs) is not None
    except Exception:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint, so an offline machine fails in seconds, not minutes."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False

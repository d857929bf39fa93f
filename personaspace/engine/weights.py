"""Weight edits on the residual stream's writers: where they are, how to project a direction out of them.

Every matrix that *writes* to the residual stream -- the token embedding (and learned position
embeddings: GPT-2), each attention output projection and each MLP down projection (and their biases;
GPT-2's ``Conv1D`` layers; in a mixture of experts, every expert's down projection and a shared
expert's) -- is found here (:func:`residual_writers`, :func:`residual_embeddings`), edited in place to
``(I - u u^T) W`` (:func:`project_out_writers`), or hooked to project ``u`` out of its output at run
time (:func:`ablated_writes`, the same thing without touching the weights). The method on top
(vectors, saving, metadata) is :mod:`personaspace.steering.orthogonalization`.

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
from personaspace.engine.backends.base import find_decoder_layers, text_config
from personaspace.errors import BackendError

__all__ = [
    "ablated_writes",
    "project_out_writers",
    "residual_embeddings",
    "residual_width",
    "residual_writers",
    "untie_output_embeddings",
]

# (attention output, MLP output) module paths inside one decoder block, per architecture family.
# The MLP side may also name a mixture-of-experts block (Mixtral, Qwen2/3-MoE, gpt-oss): see _is_moe.
WRITER_PATHS = (
    ("self_attn.o_proj", "mlp.down_proj"),  # Llama, Mistral, Qwen2/3, SmolLM, Phi-3, Gemma 1, Granite, Cohere
    ("self_attn.o_proj", "mlp"),  # mixtures of experts: Mixtral, Qwen2/3-MoE, gpt-oss
    ("self_attn.o_proj", "block_sparse_moe"),  # older Mixtral layouts
    ("attention.dense", "mlp.dense_4h_to_h"),  # GPT-NeoX / Pythia
    ("attn.c_proj", "mlp.c_proj"),  # GPT-2 (Conv1D: weight [in, out])
    ("self_attn.out_proj", "mlp.fc2"),  # OPT-like
)
POST_NORMS = ("post_feedforward_layernorm", "post_attn_norm", "post_mlp_norm")
POSITION_EMBEDDINGS = ("wpe", "embed_positions")  # learned absolute positions added to the residual stream


def _get(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def residual_width(hf_model: Any) -> int:
    """``d_model`` of a Hugging Face model (its text config's hidden size)."""
    return int(text_config(hf_model).hidden_size)


def _is_conv1d(module: Any) -> bool:
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.ndim == 2


def _is_linear(module: Any) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def _is_moe(module: Any) -> bool:
    """A mixture-of-experts block: ``experts`` holding 3-D ``down_proj`` weights (one matrix per expert)."""
    experts = getattr(module, "experts", None)
    down = getattr(experts, "down_proj", None)
    return isinstance(down, torch.Tensor) and down.ndim == 3 and not _is_linear(module)


def _is_writer(module: Any) -> bool:
    return _is_linear(module) or _is_moe(module)


def residual_writers(hf_model: Any) -> tuple[nn.Embedding, list[tuple[nn.Module, nn.Module]]]:
    """The token embedding and each block's (attention output, MLP output) layers.

    The attention side is a linear layer (``nn.Linear``, or GPT-2's ``Conv1D``); the MLP side is one too,
    or a whole mixture-of-experts block (whose experts' down projections are edited).
    """
    blocks = find_decoder_layers(hf_model)
    for block in blocks:
        bad = [n for n in POST_NORMS if hasattr(block, n)]
        if bad:
            raise BackendError(
                f"{type(hf_model).__name__} normalises the attention/MLP output before adding it to the residual stream "
                f"({bad[0]}); weight orthogonalisation would not remove the direction. Use hook ablation instead."
            )
    found = [_block_writers(b) for b in blocks]  # per block: MoE models may keep dense MLPs in some layers
    writers = None if any(w is None for w in found) else [w for w in found if w is not None]
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


def _block_writers(block: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    for attn_path, mlp_path in WRITER_PATHS:
        try:
            attn, mlp = _get(block, attn_path), _get(block, mlp_path)
        except AttributeError:
            continue
        if _is_linear(attn) and _is_writer(mlp):
            return attn, mlp
    return None


def residual_embeddings(hf_model: Any) -> list[nn.Embedding]:
    """The embeddings added to the residual stream: the token embedding, then learned position embeddings."""
    found = [hf_model.get_input_embeddings()]
    base = getattr(hf_model, getattr(hf_model, "base_model_prefix", "") or "model", None)
    for name in POSITION_EMBEDDINGS:
        table = getattr(base, name, None)
        if isinstance(table, nn.Embedding) and all(table is not f for f in found):
            found.append(table)
    return found


def untie_output_embeddings(hf_model: Any) -> bool:
    """Give the LM head its own copy of a tied embedding matrix; True when it was tied."""
    head = hf_model.get_output_embeddings()
    emb = hf_model.get_input_embeddings()
    if head is None or head.weight is not emb.weight:
        return False
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    for cfg in {id(hf_model.config): hf_model.config, id(text_config(hf_model)): text_config(hf_model)}.values():
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
    _, writers = residual_writers(hf_model)
    untied = untie_output_embeddings(hf_model)
    for table in residual_embeddings(hf_model):
        _project_last(table.weight, unit)  # rows are d_model vectors: [vocab or positions, d]
    for attn_out, mlp_out in writers:
        _project_writer(attn_out, unit)
        _project_writer(mlp_out, unit)
    return untied


def _project_last(w: Tensor, unit: Tensor) -> None:
    """``w`` with ``unit`` projected out of its last dimension (d_model), in place: ``w (I - u u^T)``."""
    uu = unit.to(w.device, torch.float32)
    w.sub_(((w.float() @ uu)[..., None] * uu).to(w.dtype))


def _project_rows(w: Tensor, unit: Tensor) -> None:
    """``w`` ``[..., d_model, in]`` with ``unit`` projected out of its output rows, in place: ``(I - u u^T) w``."""
    uu = unit.to(w.device, torch.float32)
    w.sub_((uu[:, None] * (uu @ w.float())[..., None, :]).to(w.dtype))


def _project_writer(module: Any, unit: Tensor) -> None:
    """Edit one residual writer so that its output has no component along ``unit``."""
    if _is_linear(module):
        if isinstance(module, nn.Linear):  # W [d, in]
            _project_rows(module.weight, unit)
        else:  # GPT-2's Conv1D: W [in, d]
            _project_last(module.weight, unit)
        if module.bias is not None:
            _project_last(module.bias, unit)
    else:  # a mixture of experts: every expert's down projection, and shared experts
        experts = module.experts
        down = experts.down_proj
        d = unit.shape[0]
        transposed = getattr(experts, "is_transposed", None)
        if transposed is None:  # undeclared: the axis of width d_model (refuse when both are)
            if down.shape[1] == down.shape[2]:
                raise BackendError(f"Cannot tell the output axis of {type(experts).__name__}.down_proj {tuple(down.shape)}.")
            transposed = down.shape[2] == d
        if transposed:  # [experts, in, d]: x @ W
            _project_last(down, unit)
        else:  # [experts, d, in]: F.linear(x, W)
            _project_rows(down, unit)
        bias = getattr(experts, "down_proj_bias", None)
        if isinstance(bias, torch.Tensor):
            _project_last(bias, unit)
        for name in ("shared_expert", "shared_experts"):
            shared = getattr(module, name, None)
            if shared is not None:
                _project_writer(_get(shared, "down_proj"), unit)


@contextlib.contextmanager
def ablated_writes(hf_model: Any, unit: Float[Tensor, " d_model"]) -> Iterator[None]:
    """Hooks that project ``unit`` out of the embedding and every attention/MLP output.

    The run-time equivalent of :func:`project_out_writers`: active inside the ``with`` block, for any
    forward of the model; removed on exit, also on errors.
    """
    _, writers = residual_writers(hf_model)

    def project(t: Tensor) -> Tensor:
        uu = unit.to(t.device, t.dtype)
        return t - (t @ uu)[..., None] * uu

    def hook(module, args, output):  # MoE blocks may return (hidden, router scores)
        return (project(output[0]), *output[1:]) if isinstance(output, tuple) else project(output)

    handles = []
    try:
        handles += [table.register_forward_hook(hook) for table in residual_embeddings(hf_model)]
        for attn_out, mlp_out in writers:
            handles += [attn_out.register_forward_hook(hook), mlp_out.register_forward_hook(hook)]
        yield
    finally:
        for h in handles:
            h.remove()

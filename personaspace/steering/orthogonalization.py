"""Weight orthogonalisation: bake the ablation of one direction into the weights and save the model.

Every matrix that *writes* to the residual stream -- the token embedding, each attention output
projection and each MLP down projection (and their biases) -- is replaced by ``(I - u u^T) W``, so
nothing the model computes can ever have a component along ``u``. The edited model behaves exactly
like the original with the direction projected out of every write to the residual stream, at every
layer and position (:func:`component_ablation` does that with hooks; the two agree to float error).

Two traps handled here:

- **Tied embeddings** (SmolLM2, Gemma, ...): the LM head shares the embedding matrix, so editing the
  embedding would also change the unembedding. The head is untied first (its own copy of the
  original matrix) and the config says ``tie_word_embeddings = False``.
- **Post-sublayer norms** (Gemma 2/3, OLMo 2): a norm after the attention or MLP output rescales
  each dimension, so an output projection orthogonal to ``u`` still writes along ``u``. These
  architectures are refused with a clear error rather than edited wrongly.

Projecting ``u`` out at block outputs only (``Ablate(v, layers="all")``) is close to, but not the same
as, this edit: inside a block the MLP still reads the attention output's ``u`` component.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from personaspace._util.io import atomic_dir, write_json
from personaspace.engine.backends.base import find_decoder_layers
from personaspace.errors import BackendError, VectorShapeError
from personaspace.vectors.store import PersonaVector

if TYPE_CHECKING:
    from personaspace.engine.model import PersonaModel

__all__ = ["residual_writers", "orthogonalize", "component_ablation", "save_orthogonalized"]

# (attention output, MLP output) module paths inside one decoder block, per architecture family.
_WRITER_PATHS = (
    ("self_attn.o_proj", "mlp.down_proj"),  # Llama, Mistral, Qwen2/3, SmolLM, Phi-3, Gemma 1
    ("attention.dense", "mlp.dense_4h_to_h"),  # GPT-NeoX / Pythia
    ("self_attn.out_proj", "mlp.fc2"),  # OPT-like
)
_POST_NORMS = ("post_feedforward_layernorm", "post_attn_norm", "post_mlp_norm")


def _get(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def residual_writers(hf_model: Any) -> tuple[nn.Embedding, list[tuple[nn.Linear, nn.Linear]]]:
    """The embedding and each block's (attention output, MLP output) linear layers."""
    blocks = find_decoder_layers(hf_model)
    for block in blocks:
        bad = [n for n in _POST_NORMS if hasattr(block, n)]
        if bad:
            raise BackendError(
                f"{type(hf_model).__name__} normalises the attention/MLP output before adding it to the residual stream "
                f"({bad[0]}); weight orthogonalisation would not remove the direction. Use hook ablation instead."
            )
    writers = None
    for attn_path, mlp_path in _WRITER_PATHS:
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
            + ", ".join(f"{a} + {m}" for a, m in _WRITER_PATHS)
            + "."
        )
    embedding = hf_model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        raise BackendError(f"The input embedding of {type(hf_model).__name__} is not a plain nn.Embedding.")
    return embedding, writers


def _unit(direction: PersonaVector | Tensor, layer: int | None, d_model: int) -> Tensor:
    if isinstance(direction, PersonaVector):
        if layer is None:
            raise VectorShapeError(
                f"Orthogonalisation removes ONE direction everywhere: say which row of {direction.trait!r} to use (layer=...)."
            )
        v = direction.at(layer)
    else:
        v = torch.as_tensor(direction).detach().float()
        if v.ndim != 1:
            raise VectorShapeError(f"The direction must be one [d_model] row, got shape {tuple(v.shape)}.")
    if v.shape[0] != d_model:
        raise VectorShapeError(f"The direction has width {v.shape[0]} but the model's residual stream has width {d_model}.")
    n = v.norm()
    if not torch.isfinite(n) or n == 0:
        raise VectorShapeError("The direction is zero or not finite; nothing to orthogonalise against.")
    return v / n


def _untie(hf_model: Any) -> bool:
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


def _text_config(hf_model: Any) -> Any:
    cfg = hf_model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


@torch.no_grad()
def orthogonalize(
    model: PersonaModel | Any,
    direction: PersonaVector | Tensor,
    *,
    layer: int | None = None,
    inplace: bool = False,
) -> Any:
    """Return a Hugging Face model whose residual-stream writers are orthogonal to ``direction``.

    ``direction`` is a ``[d_model]`` tensor or a PersonaVector with ``layer`` = the row to use (read
    layer). The original model is left untouched unless ``inplace``. Weights change; the layer count,
    shapes and tokenizer do not.
    """
    hf = getattr(model, "hf_model", model)
    if not inplace:
        hf = copy.deepcopy(hf)
    d_model = int(_text_config(hf).hidden_size)
    u = _unit(direction, layer, d_model)
    embedding, writers = residual_writers(hf)
    untied = _untie(hf)

    def project_rows(w: Tensor) -> None:  # rows are d_model vectors (embedding: [vocab, d])
        uu = u.to(w.device, torch.float32)
        w.sub_(((w.float() @ uu)[:, None] * uu[None, :]).to(w.dtype))

    def project_out(linear: nn.Linear) -> None:  # output dimension is d_model: W [d, in]
        uu = u.to(linear.weight.device, torch.float32)
        w = linear.weight
        w.sub_((uu[:, None] * (uu[None, :] @ w.float())).to(w.dtype))
        if linear.bias is not None:
            linear.bias.sub_((uu * (linear.bias.float() @ uu)).to(linear.bias.dtype))

    project_rows(embedding.weight)
    for attn_out, mlp_out in writers:
        project_out(attn_out)
        project_out(mlp_out)
    hf._personaspace_orthogonalized = {"untied_lm_head": untied}
    return hf


@contextlib.contextmanager
def component_ablation(model: PersonaModel | Any, direction: PersonaVector | Tensor, *, layer: int | None = None) -> Iterator[None]:
    """Hooks that project ``direction`` out of the embedding and every attention/MLP output.

    The hook-based equivalent of :func:`orthogonalize` (use it to check an edited model, or to ablate
    without editing weights). Active inside the ``with`` block, for any forward of the model.
    """
    hf = getattr(model, "hf_model", model)
    u = _unit(direction, layer, int(_text_config(hf).hidden_size))
    embedding, writers = residual_writers(hf)

    def hook(module, args, output):
        uu = u.to(output.device, output.dtype)
        return output - (output @ uu)[..., None] * uu

    handles = [embedding.register_forward_hook(hook)]
    for attn_out, mlp_out in writers:
        handles += [attn_out.register_forward_hook(hook), mlp_out.register_forward_hook(hook)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def save_orthogonalized(
    model: PersonaModel,
    direction: PersonaVector | Tensor,
    out: str | Path,
    *,
    layer: int | None = None,
) -> Path:
    """Orthogonalise a copy of ``model`` against the direction and save it (weights, config, tokenizer).

    The directory loads with ``PersonaModel.load(out)`` or ``AutoModelForCausalLM.from_pretrained``;
    ``personaspace_edit.json`` records what was removed (vector, read layer, source model).
    """
    edited = orthogonalize(model, direction, layer=layer)
    out = Path(out).expanduser()
    info = {
        "edit": "orthogonalize",
        "what": "embedding, attention output and MLP output weights projected orthogonal to one direction",
        "source_model": model.name,
        "source_model_hash": getattr(model, "model_hash", None),
        "untied_lm_head": edited._personaspace_orthogonalized["untied_lm_head"],
    }
    if isinstance(direction, PersonaVector):
        info.update(vector=direction.trait, vector_model=direction.model, position=direction.position, read_layer=direction.layer_index(layer))
    with atomic_dir(out) as tmp:
        edited.save_pretrained(str(tmp))
        model.tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "personaspace_edit.json", info)
    return out

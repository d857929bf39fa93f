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

The weights themselves are found, edited and hooked by the engine (:mod:`personaspace.engine.weights`);
this module turns a vector into the unit direction and saves the result.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from personaspace._util.io import atomic_dir, write_json
from personaspace.engine.weights import ablated_writes, project_out_writers, residual_width, residual_writers
from personaspace.errors import VectorShapeError
from personaspace.vectors.store import PersonaVector

if TYPE_CHECKING:
    from personaspace.engine.model import PersonaModel

__all__ = ["residual_writers", "orthogonalize", "component_ablation", "save_orthogonalized"]


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
    u = _unit(direction, layer, residual_width(hf))
    untied = project_out_writers(hf, u)
    hf._personaspace_orthogonalized = {"untied_lm_head": untied}
    return hf


@contextlib.contextmanager
def component_ablation(model: PersonaModel | Any, direction: PersonaVector | Tensor, *, layer: int | None = None) -> Iterator[None]:
    """Hooks that project ``direction`` out of the embedding and every attention/MLP output.

    The hook-based equivalent of :func:`orthogonalize` (use it to check an edited model, or to ablate
    without editing weights). Active inside the ``with`` block, for any forward of the model.
    """
    hf = getattr(model, "hf_model", model)
    u = _unit(direction, layer, residual_width(hf))
    with ablated_writes(hf, u):
        yield


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

"""Foreign vector formats: persona_vectors ``*_diff.pt`` files and llama.cpp GGUF control vectors.

Layer numbers are converted here and nowhere else. Our layer ``L`` is the output of decoder
block ``L`` counted from 0.

persona_vectors (Chen et al. 2025) files ``{trait}_{position}_diff.pt`` hold a float32 tensor
``[n_layers + 1, d]``: row 0 is the embedding output and row ``L + 1`` the output of block ``L``
(they come from Hugging Face ``hidden_states``, so their LAST row has the final norm applied).
Their steering "layer 20" hooks ``model.layers[19]``, which is our layer 19 and their row 20.

llama.cpp control vectors (GGUF, ``general.architecture = "controlvector"``): a tensor
``direction.N`` is added to the output of block ``N`` counted from 0, i.e. our layer ``N``.
Established by reading llama.cpp (ggml-org/llama.cpp), not assumed:

* ``common/common.cpp``, ``common_control_vector_load_one``: parses ``N`` from the tensor name,
  rejects ``N == 0``, requires 1-D F32, and writes ``direction.N * strength`` into a flat buffer at
  offset ``n_embd * (N - 1)`` ("layer 1 at [0]"); ``common_control_vector_load`` sums several files.
* ``src/llama-adapter.cpp``, ``llama_adapter_cvec::apply``: for ``il = 1 .. n_layer - 1`` copies the
  buffer slice at ``n_embd * (il - 1)`` into ``tensors[il]`` -- so ``tensors[il]`` is
  ``direction.il`` (the two ``- 1`` cancel); ``init`` pushes ``nullptr`` for ``il = 0`` ("there's
  never a tensor for layer 0"). ``llama_adapter_cvec::apply_to(ctx, cur, il)`` adds ``tensors[il]``
  to ``cur`` when ``layer_start <= il <= layer_end``.
* ``src/llama-graph.cpp``, ``llm_graph_context::build_cvec(cur, il)`` calls ``cvec->apply_to``; every
  model graph (e.g. ``src/models/llama.cpp``) calls it at the end of decoder block ``il`` (0-based),
  after the FFN residual add, right before ``cb(cur, "l_out", il)``.

So ``direction.N`` steers the output of block ``N``; block 0's output cannot be steered. Caution:
llama.cpp's own generator (``tools/cvector-generator``: ``cb_eval`` collects ``l_out`` of block
``il``, ``mean.hpp``/``pca.hpp`` name the result ``direction.{il+1}``) measures one block *earlier*
than where the runtime adds the vector; files made by it are therefore reported here at the layer
they are applied to, which is one above where they were measured. repeng (``extract.py``, reads
``hidden_states[layer + 1]`` and writes ``direction.{layer}``) agrees with our numbering.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from personaspace._util.io import atomic_path
from personaspace.errors import (
    CorruptFileError,
    InterventionSpecError,
    LayerOutOfRangeError,
    VectorShapeError,
    VectorsNotFoundError,
)
from personaspace.vectors.store import DEFAULT_POSITION, POSITIONS, PersonaVector, VectorMeta

__all__ = [
    "GGUF_ARCH",
    "import_persona_vectors",
    "export_persona_vectors",
    "export_gguf_control_vector",
    "read_gguf_control_vector",
]

GGUF_ARCH = "controlvector"


# --------------------------------------------------------------------------------------------
# persona_vectors .pt files


def _parse_persona_vectors_name(filename: str) -> tuple[str, str | None]:
    """Split ``{trait}_{position}_diff.pt`` into trait and position (None when not recognisable).

    >>> _parse_persona_vectors_name("evil_response_avg_diff.pt")
    ('evil', 'response_avg')
    >>> _parse_persona_vectors_name("apathetic_prompt_last_diff.pt")
    ('apathetic', 'prompt_last')
    >>> _parse_persona_vectors_name("my_vector.pt")
    ('my_vector', None)
    """
    stem = filename[: -len(".pt")] if filename.endswith(".pt") else Path(filename).stem
    for position in sorted(POSITIONS, key=len, reverse=True):
        suffix = f"_{position}_diff"
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)], position
    if stem.endswith("_diff") and len(stem) > len("_diff"):
        return stem[: -len("_diff")], None
    return stem, None


def import_persona_vectors(
    path: str | os.PathLike,
    trait: str | None = None,
    model: str = "unknown",
    position: str | None = None,
) -> PersonaVector:
    """Read a persona_vectors ``{trait}_{position}_diff.pt`` file as a :class:`PersonaVector`.

    Row 0 (embeddings) is dropped and row ``L + 1`` becomes our layer ``L``. The last row was
    measured after the final norm, which ``meta.last_layer_post_norm = True`` records. Trait and
    position come from the file name unless given; an unrecognised name defaults to
    ``response_avg`` and records ``extra["position_assumed"] = True``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise VectorsNotFoundError(f"No persona_vectors file at {p}.")
    name_trait, name_position = _parse_persona_vectors_name(p.name)
    raw = p.read_bytes()
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CorruptFileError(
            f"Cannot read {p} as a persona_vectors .pt file ({type(e).__name__}: {e}). It may be truncated, or "
            f"not a tensor saved with torch.save."
        ) from e
    if not isinstance(obj, Tensor):
        raise CorruptFileError(
            f"{p} holds a {type(obj).__name__}, not a tensor; persona_vectors files are one float tensor "
            f"[n_layers + 1, d_model]."
        )
    if obj.dim() != 2 or obj.shape[0] < 2 or obj.shape[1] < 1:
        raise VectorShapeError(
            f"{p.name} has shape {tuple(obj.shape)}; a persona_vectors file is [n_layers + 1, d_model] with row 0 "
            f"the embeddings, so it needs at least 2 rows."
        )
    if not obj.is_floating_point():
        raise VectorShapeError(f"{p.name} holds {obj.dtype} values; expected floats.")
    data = obj[1:].to(torch.float32)
    if not bool(torch.isfinite(data).all()):
        bad = (~torch.isfinite(data)).any(dim=1).nonzero().flatten().tolist()
        raise CorruptFileError(f"{p} has NaN or infinite values at (our) layer(s) {bad}.")
    extra = {
        "source": "persona_vectors",
        "source_file": p.name,
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "source_shape": list(obj.shape),
        "embedding_row_norm": float(obj[0].float().norm()),
    }
    chosen_position = position or name_position
    if chosen_position is None:
        chosen_position = DEFAULT_POSITION
        extra["position_assumed"] = True
    meta = VectorMeta(
        trait=trait or name_trait,
        model=model,
        position=chosen_position,
        method="imported",
        last_layer_post_norm=True,
        extra=extra,
    )
    return PersonaVector(data, meta)


def export_persona_vectors(
    vector: PersonaVector,
    path: str | os.PathLike,
    embedding_row: Tensor | None = None,
) -> Path:
    """Write ``vector`` as a persona_vectors ``[n_layers + 1, d]`` tensor (inverse of the import).

    Row 0 (the embedding output, which we do not keep) is zeros unless ``embedding_row`` is given.
    Our vectors' last row is the raw block output; persona_vectors' own files have a post-norm
    last row, so only vectors imported from them reproduce their file exactly.
    """
    if not vector.is_full:
        raise VectorShapeError(
            f"persona_vectors files hold every layer; the {vector.trait!r} vector holds only layers "
            f"{list(vector.layers)}."
        )
    if embedding_row is None:
        first = torch.zeros(1, vector.d_model)
    else:
        first = torch.as_tensor(embedding_row).detach().to("cpu", torch.float32).reshape(-1)
        if first.numel() != vector.d_model:
            raise VectorShapeError(
                f"embedding_row has {first.numel()} values; the {vector.trait!r} vector has d_model={vector.d_model}."
            )
        first = first.unsqueeze(0)
    out = torch.cat([first, vector.data], dim=0).contiguous()
    target = Path(path).expanduser()
    with atomic_path(target) as tmp:
        torch.save(out, tmp)
    return target


# --------------------------------------------------------------------------------------------
# llama.cpp GGUF control vectors


def export_gguf_control_vector(
    vector: PersonaVector,
    path: str | os.PathLike,
    *,
    layers: Sequence[int] | None = None,
    coef: float = 1.0,
    model_hint: str | None = None,
) -> Path:
    """Write a llama.cpp control vector: our layer ``L`` -> tensor ``direction.L`` = ``coef * v[L]``.

    llama.cpp adds ``direction.L`` to the output of block ``L`` (see the module docstring for the
    source), which is exactly where our steering adds ``v[L]``. Layer 0 cannot be expressed (the
    loader rejects ``direction.0``). By default every stored layer from 1 is written, except a
    post-norm last row (persona_vectors imports), which is never right to add to a block output.
    ``model_hint`` is informational (llama.cpp's loader does not read it); it defaults to
    ``meta.extra["model_type"]`` or the model name. Use ``llama-cli --control-vector FILE`` (or
    ``--control-vector-scaled FILE SCALE``) with the same model.
    """
    try:
        coef = float(coef)
    except (TypeError, ValueError):
        raise InterventionSpecError(f"coef must be a number, got {coef!r}.") from None
    if not math.isfinite(coef):
        raise InterventionSpecError(f"coef must be a finite number, got {coef!r}.")
    last = vector.layers[-1]
    if layers is None:
        chosen = [L for L in vector.layers if L >= 1]
        if vector.meta.last_layer_post_norm:
            chosen = [L for L in chosen if L != last]
    else:
        chosen = sorted({vector.layer_index(L) for L in layers})
        if 0 in chosen:
            raise LayerOutOfRangeError(
                "llama.cpp cannot steer layer 0 (the output of the first block): its loader rejects direction.0 "
                "and its graph never adds a control vector there. Choose layers >= 1."
            )
        if vector.meta.last_layer_post_norm and last in chosen:
            warnings.warn(
                f"Layer {last} of the {vector.trait!r} vector was measured after the final norm (persona_vectors "
                f"import); added to the raw block output its scale is wrong.",
                stacklevel=2,
            )
    if not chosen:
        raise LayerOutOfRangeError(
            f"No layer of the {vector.trait!r} vector can be exported to llama.cpp (stored layers: "
            f"{list(vector.layers)}; layer 0 is not expressible)."
        )
    import gguf
    import numpy as np

    hint = model_hint or str(vector.meta.extra.get("model_type") or vector.model)
    target = Path(path).expanduser()
    with atomic_path(target) as tmp:
        writer = gguf.GGUFWriter(str(tmp), GGUF_ARCH)
        try:
            writer.add_string(f"{GGUF_ARCH}.model_hint", hint)
            writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(chosen))
            writer.add_string("personaspace.trait", vector.trait)
            writer.add_string("personaspace.model", vector.model)
            writer.add_string("personaspace.position", vector.position)
            writer.add_string("personaspace.layer_convention", vector.meta.layer_convention)
            writer.add_string("personaspace.layers", ",".join(map(str, chosen)))
            writer.add_float32("personaspace.coef", coef)
            for L in chosen:
                values = (coef * vector.at(L)).numpy().astype(np.float32)
                writer.add_tensor(f"direction.{L}", values)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return target


def _field_text(reader, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or not field.data:
        return None
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception:
        return None


def read_gguf_control_vector(path: str | os.PathLike) -> dict[int, Tensor]:
    """Read a GGUF control vector as ``{our layer: [d] tensor}`` (values already times the coef).

    ``direction.N`` maps to our layer ``N``: the block whose output llama.cpp adds it to.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise VectorsNotFoundError(f"No control-vector file at {p}.")
    import gguf
    import numpy as np

    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:
        raise CorruptFileError(f"{p} is not a readable GGUF file ({type(e).__name__}: {e}).") from e
    arch = _field_text(reader, "general.architecture")
    if arch != GGUF_ARCH:
        raise CorruptFileError(f"{p} is a GGUF file of architecture {arch!r}, not a {GGUF_ARCH!r} file.")
    out: dict[int, Tensor] = {}
    width: int | None = None
    for t in reader.tensors:
        head, _, tail = t.name.partition(".")
        if head != "direction" or not tail.isdigit():
            raise CorruptFileError(f"{p}: tensor {t.name!r} is not named direction.<layer>, which llama.cpp rejects.")
        n = int(tail)
        if n == 0:
            raise CorruptFileError(f"{p}: tensor direction.0 is invalid (llama.cpp rejects it; layer 0 cannot be steered).")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise CorruptFileError(f"{p}: tensor {t.name} is {t.tensor_type.name}, not F32.")
        if any(int(s) != 1 for s in list(t.shape)[1:]):
            raise CorruptFileError(f"{p}: tensor {t.name} is not 1-D (shape {list(t.shape)}).")
        values = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if width is None:
            width = values.size
        elif values.size != width:
            raise CorruptFileError(f"{p}: tensor {t.name} has {values.size} values, the others {width}.")
        out[n] = torch.from_numpy(values.copy())
    if not out:
        raise CorruptFileError(f"{p} holds no direction.<layer> tensors.")
    return dict(sorted(out.items()))

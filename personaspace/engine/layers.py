"""The layer convention, in one place.

Layer ``L`` is the output of decoder block ``L``, counted from 0 -- TransformerLens
``blocks.L.hook_resid_post``. Other tools number differently; convert at the edges with these helpers:

>>> hf_hidden_states_index(0)     # Hugging Face output_hidden_states: index 0 is the embeddings
1
>>> persona_vectors_row(19)       # persona_vectors files: row 0 is the embeddings; their "layer 20"
20
>>> resolve_layers("10-12", 30)
[10, 11, 12]
>>> resolve_layers(-1, 30)
[29]

Caveat: Hugging Face's *last* ``hidden_states`` entry has the final norm applied, while every hook in
personaspace reads the raw block output, so layer ``n_layers - 1`` here equals
``model.norm``-free block output, not ``hidden_states[-1]``.

Default layers, one policy (the numbers are for a 30-layer model such as SmolLM2-135M):

>>> default_layer(30), default_layer([10, 12, 14, 16])   # middle of the model / of the stored rows
(15, 14)
>>> default_layers(30, 4), default_sweep_layers(30)
([6, 12, 18, 24], [6, 9, 12, 15, 18, 21, 24])
>>> default_monitor_layer(30), default_readout_layer([15], 30), default_readout_layer([], 30)
(17, 18, 18)
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence

from personaspace.errors import InvalidArgumentError, LayerOutOfRangeError

CONVENTION = "block_output:0"

LayerSpec = int | str | Iterable[int] | None


def hf_hidden_states_index(layer: int) -> int:
    """Index into Hugging Face ``output_hidden_states`` for our layer ``layer``."""
    return layer + 1


def persona_vectors_row(layer: int) -> int:
    """Row of a persona_vectors ``*_diff.pt`` file for our layer ``layer`` (row 0 = embeddings)."""
    return layer + 1


def check_layer(layer: int, n_layers: int) -> int:
    """Return ``layer`` as a non-negative index, accepting Python-style negatives."""
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise LayerOutOfRangeError(f"Layer must be an integer, got {layer!r}.")
    if not -n_layers <= layer < n_layers:
        raise LayerOutOfRangeError(
            f"Layer {layer} is out of range: this model has {n_layers} layers, numbered 0 to {n_layers - 1} "
            f"(layer L = output of block L)."
        )
    return layer % n_layers


def resolve_layers(spec: LayerSpec, n_layers: int) -> list[int]:
    """Turn ``None``/"all", an int, "a-b", "a,b,c" or an iterable into a sorted list of valid layers."""
    if spec is None or spec == "all":
        return list(range(n_layers))
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [check_layer(spec, n_layers)]
    if isinstance(spec, str):
        layers: list[int] = []
        for part in spec.replace(" ", "").split(","):
            part = part.removeprefix("L")
            try:
                if "-" in part[1:]:
                    cut = part.index("-", 1)
                    lo, hi = int(part[:cut]), int(part[cut + 1 :].removeprefix("L"))
                    lo, hi = check_layer(lo, n_layers), check_layer(hi, n_layers)
                    layers.extend(range(lo, hi + 1))
                else:
                    layers.append(check_layer(int(part), n_layers))
            except ValueError:  # int() of text that is not a number (LayerOutOfRangeError is no ValueError)
                raise InvalidArgumentError(f"Cannot read layers from {spec!r}; use e.g. '12', '10-20' or '4,8,12'.") from None
        if not layers:
            raise InvalidArgumentError(f"layers {spec!r} selects no layer; give e.g. '12', '10-20' (low to high) or '4,8,12'")
        return sorted(set(layers))
    return _from_items(spec, n_layers)


def _shown(value: object) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def layer_index(x: object) -> int:
    """One layer item as an int: an integer (numpy/torch scalars too) or a string such as '12' or 'L12'.

    ``1.5`` and ``True`` are refused, never truncated or taken as 1.
    """
    if getattr(x, "ndim", None) == 0 and hasattr(x, "item"):
        x = x.item()
    if isinstance(x, str):
        try:
            return int(x.strip().removeprefix("L"))
        except ValueError:
            raise InvalidArgumentError(
                f"layers must be whole numbers; got {_shown(x)} -- give layer indices such as [12] or '10-20'"
            ) from None
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise InvalidArgumentError(
            f"layers must be whole numbers; got {_shown(x)} ({type(x).__name__}) -- give layer indices such as [12] or '10-20'"
        )
    return int(x)


def _from_items(spec: object, n_layers: int) -> list[int]:
    """Other scalars and iterables: whole numbers only, and at least one layer (an empty list would
    silently do nothing)."""
    if getattr(spec, "ndim", None) == 0 and hasattr(spec, "item"):
        spec = spec.item()
    if isinstance(spec, (bool, numbers.Number)):
        return [check_layer(layer_index(spec), n_layers)]
    if isinstance(spec, Mapping) or not isinstance(spec, Iterable):
        raise InvalidArgumentError(
            f"layers must be a layer index, a list of them or a string such as '10-20'; got {_shown(spec)} ({type(spec).__name__})"
        )
    items = [layer_index(x) for x in spec]
    if not items:
        raise InvalidArgumentError("layers is empty; give at least one layer index, e.g. [12], or None for every layer")
    return sorted({check_layer(x, n_layers) for x in items})


# ---------------------------------------------------------------------------------------------
# default layers: one policy
#
# Persona directions (mean differences of trait-eliciting vs suppressing activations) are clearest at
# mid depth: early blocks still encode tokens, the last ones the next-token prediction. So every
# default is placed by relative depth around the middle of the model:
#   - one layer (extraction read-outs, geometry, the EM experiment, LPA projection shifts): the middle;
#   - several layers (LPA attack blocks): evenly spread, ``round(j * n / (k + 1))``;
#   - a steering sweep: a grid about every tenth of the depth from 20 % to 80 %;
#   - monitoring (the projection *before* generation predicts the answer): a little past the middle, 60 %,
#     about where the persona-vector paper read its 7B models (layer 20 of 28);
#   - the read-out of a steering effect: about a tenth of the depth after the deepest steered layer.


def default_layer(layers: int | Sequence[int]) -> int:
    """The default single layer: the middle one, ``n_layers // 2`` (15 of 30).

    ``layers`` is a layer count (every layer available) or the layers at hand (for example a vector's
    stored rows), whose middle entry ``layers[len(layers) // 2]`` is taken; for ``range(n_layers)``
    both give the same layer.
    """
    if isinstance(layers, int):
        return layers // 2
    layers = list(layers)
    if not layers:
        raise InvalidArgumentError("No layers to choose a default layer from.")
    return layers[len(layers) // 2]


def default_layers(n_layers: int, k: int) -> list[int]:
    """``k`` blocks spread evenly over the depth, ``round(j * n_layers / (k + 1))`` for ``j = 1..k``.

    Distinct and in range (fewer than ``k`` on a model with fewer blocks): 6, 12, 18, 24 of 30 for ``k=4``.
    """
    return sorted({min(n_layers - 1, max(0, round(j * n_layers / (k + 1)))) for j in range(1, k + 1)})


def default_sweep_layers(n_layers: int) -> list[int]:
    """The steering sweep's grid: about every tenth of the depth from 20 % to 80 % (6, 9, ..., 24 of 30)."""
    lo, hi = max(0, round(0.2 * n_layers)), min(n_layers - 1, round(0.8 * n_layers))
    step = max(1, round(n_layers / 10))
    return list(range(lo, hi + 1, step))


def default_monitor_layer(n_layers: int) -> int:
    """Where monitoring projects by default: 60 % of the depth, ``round(0.6 * (n_layers - 1))`` (17 of 30).

    A little past the middle: the last prompt token has to carry what the answer will do (the persona-vector
    paper read its 7B models at layer 20 of 28).
    """
    return int(round(0.6 * (n_layers - 1)))


def default_readout_layer(applied: Sequence[int], n_layers: int) -> int:
    """Where a steering effect is read out: about a tenth of the depth after the deepest applied layer.

    Without applied layers, counted from :func:`default_layer`; never past the last layer.
    """
    deepest = max(applied) if applied else default_layer(n_layers)
    return int(min(n_layers - 1, deepest + max(1, n_layers // 10)))

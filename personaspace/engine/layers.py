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
"""

from __future__ import annotations

from collections.abc import Iterable

from personaspace.errors import LayerOutOfRangeError

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
            except LayerOutOfRangeError:
                raise
            except ValueError:
                from personaspace.errors import InvalidArgumentError

                raise InvalidArgumentError(f"Cannot read layers from {spec!r}; use e.g. '12', '10-20' or '4,8,12'.") from None
        if not layers:
            from personaspace.errors import InvalidArgumentError

            raise InvalidArgumentError(f"layers {spec!r} selects no layer; give e.g. '12', '10-20' (low to high) or '4,8,12'")
        return sorted(set(layers))
    # Iterables and other scalars: whole numbers only (1.5 and True are refused, never truncated),
    # and at least one layer (an empty list would silently do nothing).
    from personaspace.checks import layer_list

    return layer_list(spec, n_layers)

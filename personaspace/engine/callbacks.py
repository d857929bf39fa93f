"""What the engine runs at each hooked layer: the layer's interventions in order, then capture.

Backends call these as :data:`~personaspace.engine.backends.base.LayerFn`; the context of the forward
pass running now (positions, scope masks) is read from a :class:`ContextSlot`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from personaspace._util.shapes import Float, Int  # checked in the tests (jaxtyping)
from personaspace.engine.capture import CaptureAccumulator
from personaspace.engine.context import StepContext
from personaspace.engine.interventions import Intervention

# What a backend calls at a hooked layer: (layer, block output) -> a replacement, or None to keep it.
LayerFn = Callable[[int, Tensor], "Tensor | None"]


class ContextSlot:
    """The context of the forward pass currently running, read by the layer callbacks."""

    ctx: StepContext


class LayerCallback:
    """What the engine does at one hooked layer: apply that layer's interventions in order, then capture.

    Called as a :data:`LayerFn` on the ``[batch, seq, d_model]`` output of a block. Backends that drop
    padding (the fused backend) may instead call :meth:`packed` on the real tokens only, when
    :meth:`handles_packed` says the layer's work is position-wise.
    """

    def __init__(self, slot: ContextSlot, interventions: dict[int, list[Intervention]], capture: CaptureAccumulator | None):
        self.slot = slot
        self.interventions = interventions
        self.capture = capture
        self._packed_masks: tuple[Tensor, dict[str, Tensor]] | None = None  # (index, {scope: mask}) of this pass

    def __call__(self, layer: int, hidden: Tensor) -> Tensor:
        ctx = self.slot.ctx
        for iv in self.interventions.get(layer, ()):
            hidden = iv.apply(layer, hidden, ctx.scope_mask(iv.scope).to(hidden.device))
        if self.capture is not None and layer in self.capture._slot:
            self.capture.add(layer, hidden)
        return hidden

    def handles_packed(self, layer: int) -> bool:
        """True when every intervention at ``layer`` acts on each position alone (built-in ones do)."""
        return all(iv.positionwise for iv in self.interventions.get(layer, ()))

    def packed(self, layer: int, x: Float[Tensor, "tokens d_model"], index: Int[Tensor, " tokens"]) -> Tensor:
        """The same work on packed real tokens: ``x[j]`` is flat position ``index[j]`` of the batch."""
        for iv in self.interventions.get(layer, ()):
            x = iv.apply(layer, x[None], self._packed_mask(iv.scope, index)[None])[0]
        if self.capture is not None and layer in self.capture._slot:
            self.capture.add_packed(layer, x, index)
        return x

    def _packed_mask(self, scope: str, index: Tensor) -> Tensor:
        """The scope mask of the current pass at the packed positions (built once per pass and scope)."""
        if self._packed_masks is None or self._packed_masks[0] is not index:
            self._packed_masks = (index, {})
        masks = self._packed_masks[1]
        if scope not in masks:
            masks[scope] = self.slot.ctx.scope_mask(scope).reshape(-1).to(index.device).index_select(0, index)
        return masks[scope]


def layer_callbacks(
    slot: ContextSlot, interventions: dict[int, list[Intervention]], capture: CaptureAccumulator | None
) -> dict[int, LayerFn]:
    """One callback per hooked layer: apply that layer's interventions in order, then capture."""
    fn = LayerCallback(slot, interventions, capture)
    return {layer: fn for layer in set(interventions) | set(capture.layers if capture else ())}

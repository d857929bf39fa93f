"""Compile the engine's layer callbacks into plain tensors a remote server can apply.

A remote trace cannot call back into personaspace, so before each remote forward the engine's
callbacks (built by :func:`personaspace.engine.generation.layer_callbacks`) are read for what they
would do on this forward: the interventions of each layer as ``(kind, vector, mask, lo, hi)`` with the
exact vectors and scope masks the local code uses, and the capture as per-reduction weights
``[R, batch, tokens]``. The server returns, per captured layer, the weighted sums ``[R, batch, d]``;
:meth:`RemotePlan.deliver` adds them to the capture accumulator as its own ``add`` would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from personaspace.engine.callbacks import LayerCallback
from personaspace.engine.interventions import Ablate, Add, Cap, Intervention
from personaspace.errors import BackendError

_UNSUPPORTED = (
    "Remote execution runs personaspace's own interventions (Add, Ablate, Cap) and capture; "
    "{what} cannot be shipped to the server. Run it locally (remote=False)."
)


@dataclass
class RemotePlan:
    ops: dict[int, list[tuple]] = field(default_factory=dict)
    capture_layers: list[int] = field(default_factory=list)
    weights: Tensor | None = None  # float [R, batch, tokens]
    valid: Tensor | None = None  # bool [batch, tokens]
    capture: Any = None

    def deliver(self, reduced: dict[int, Tensor]) -> None:
        """Add the server's reduced sums of each captured layer to the capture accumulator."""
        if self.capture is None:
            return
        for layer in self.capture_layers:
            self.capture.accumulate(layer, reduced[layer])


def engine_callback_parts(fn: Any) -> tuple[Any, dict[int, list[Intervention]], Any]:
    """``(slot, interventions, capture)`` of a callback made by the engine's ``layer_callbacks``."""
    if not isinstance(fn, LayerCallback):
        raise BackendError(_UNSUPPORTED.format(what=f"the layer function {getattr(fn, '__qualname__', fn)!r}"))
    return fn.slot, fn.interventions, fn.capture


def _op(iv: Intervention, layer: int, like: Tensor, mask: Tensor) -> tuple:
    """``(kind, vector, mask, lo, hi)``: the intervention's own kind and bounds, its exact vector and scope mask."""
    if not isinstance(iv, (Add, Ablate, Cap)):  # a subclass of these keeps its parent's arithmetic
        raise BackendError(_UNSUPPORTED.format(what=f"the intervention {type(iv).__name__}"))
    vector = iv.direction(layer, like).detach().cpu()
    mask = mask.detach().cpu()
    bounds = (iv.min, iv.max) if isinstance(iv, Cap) else (None, None)
    return (iv.kind, vector, mask, *bounds)


def compile_plan(layer_fns: dict[int, Any], stop_after: int | None) -> RemotePlan:
    """What the layer callbacks would do on the forward about to run, as plain tensors."""
    plan = RemotePlan()
    if not layer_fns:
        return plan
    seen = {id(fn): fn for fn in layer_fns.values()}
    if len(seen) != 1:
        raise BackendError(_UNSUPPORTED.format(what="a mix of different layer functions"))
    slot, interventions, capture = engine_callback_parts(next(iter(seen.values())))
    ctx = slot.ctx
    like = torch.empty(0, dtype=torch.float32)
    for layer in sorted(layer_fns):
        ivs = interventions.get(layer, ())
        if ivs:
            plan.ops[layer] = [_op(iv, layer, like, ctx.scope_mask(iv.scope)) for iv in ivs]
    if capture is not None:
        plan.capture = capture
        plan.capture_layers = [layer for layer in sorted(layer_fns) if layer in capture._slot]
        plan.weights = capture._weights.detach().cpu()
        plan.valid = capture._valid.detach().cpu()
    else:
        plan.weights = torch.zeros(0)
        plan.valid = torch.zeros(0, dtype=torch.bool)
    return plan

"""The fused backend's weight matmuls: oneDNN with weights reordered once, where that is available.

``F.linear`` / ``torch.mm`` on a CPU call MKL, which takes its AVX-512 kernels only on Intel
processors. On other x86 CPUs (the AMD EPYC machines this project is developed on) it runs fp32 at
about half the rate of oneDNN -- the library PyTorch ships as ``mkldnn`` -- on the same matrices:
170-208 against 320-490 GFLOP/s at SmolLM2's shapes from 40 to 8,680 rows (benchmarks/README.md).
oneDNN multiplies against a weight reordered once into its blocked layout, so each reordered weight
is a copy: the fused backend makes one per decoder-block matrix and for the LM head (about the size
of the model again), only for float32 weights on a CPU, and only when oneDNN passes a numerical
self-check. ``PERSONASPACE_ONEDNN=0`` turns it off (plain ``F.linear`` then, as on a GPU).

Results differ from MKL's by float rounding only (about 1e-6 relative per matmul: another summation
order), which the backend parity tests bound.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor

ENV = "PERSONASPACE_ONEDNN"

# Vocabulary rows per LM-head chunk: [rows, 2048] float32 logits stay in the CPU's cache between the
# matmul and the sampler's softmax (a whole-vocabulary matrix does not), and the matmul runs faster.
VOCAB_CHUNK = 2048


@functools.cache
def onednn_works() -> bool:
    """oneDNN's reordered-weight linear exists in this PyTorch and gives F.linear's results (checked once)."""
    if os.environ.get(ENV, "1") == "0" or not torch.backends.mkldnn.is_available():
        return False
    try:
        ops = torch.ops.mkldnn
        gen = torch.Generator().manual_seed(0)
        w, x = torch.randn(96, 64, generator=gen), torch.randn(5, 64, generator=gen)
        b, r = torch.randn(96, generator=gen), torch.randn(5, 96, generator=gen)
        packed = ops._reorder_linear_weight(w, None)
        plain = ops._linear_pointwise(x, packed, b, "none", [], "")
        added = ops._linear_pointwise.binary(x, r, packed, None, "add")
    except Exception:  # an older or newer PyTorch without these private ops: MKL it is
        return False
    close = lambda a, ref: bool(((a - ref).norm() / ref.norm()) < 1e-5)  # noqa: E731
    return close(plain, F.linear(x, w, b)) and close(added, r + x @ w.T)


def uses_onednn(weight: Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and onednn_works()


def room_for_copies(nbytes: int) -> bool:
    """Whether reordered copies of ``nbytes`` of weights leave half of the memory available now free
    (a float32 model too large for that stays on MKL rather than risk running out); True where the
    available memory cannot be read."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return True
    return nbytes <= available // 2


class Linear:
    """``x @ weight.T (+ bias)``, and the same added to a residual, on the fastest kernel for ``weight``."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, *, onednn: bool = True):
        weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.onednn = onednn and uses_onednn(weight)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None) if self.onednn else weight

    def __call__(self, x: Tensor) -> Tensor:
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def add_to(self, residual: Tensor, x: Tensor) -> Tensor:
        """``residual + x @ weight.T (+ bias)`` in one call (the add is the matmul's epilogue)."""
        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
        out = torch.addmm(residual, x, self.weight.t())
        return out if self.bias is None else out.add_(self.bias)


class ChunkedHead:
    """The LM head ``[vocab, d_model]`` as one matmul per chunk of ``chunk`` vocabulary rows, each a
    :class:`Linear`: the generation loop applies the head and samples chunk by chunk."""

    def __init__(self, weight: Tensor, chunk: int = VOCAB_CHUNK, *, onednn: bool = True):
        self.weight = weight
        self.vocab = weight.shape[0]
        self.starts = range(0, self.vocab, chunk)
        self.chunk = chunk
        self._chunks = [Linear(weight[start : start + chunk], onednn=onednn) for start in self.starts]
        self.stamp = (weight.data_ptr(), weight._version)

    def stale(self) -> bool:
        return (self.weight.data_ptr(), self.weight._version) != self.stamp

    def logits(self, hidden: Tensor, chunk: int) -> Tensor:
        """``[rows, width]``: the logits of vocabulary chunk ``chunk``."""
        return self._chunks[chunk](hidden)


class PackedLinear(torch.nn.Module):
    """An inference-only stand-in for a float32 ``nn.Linear`` on a CPU, multiplying through oneDNN
    (:class:`Linear`); any number of leading dimensions, as ``nn.Linear`` takes."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.linear = Linear(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.reshape(-1, self.in_features)).view(*x.shape[:-1], self.out_features)


def pack_linears(module: torch.nn.Module) -> int:
    """Replace every float32 CPU ``nn.Linear`` inside ``module`` with a :class:`PackedLinear`, for a model
    used only for inference (the offline judge's sentence encoder): about twice MKL's speed on AMD
    processors. Nothing changes where oneDNN is unavailable or turned off. Returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear) and uses_onednn(child.weight):
            setattr(module, name, PackedLinear(child))
            replaced += 1
        else:
            replaced += pack_linears(child)
    return replaced

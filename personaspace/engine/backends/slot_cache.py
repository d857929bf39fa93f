"""A preallocated (static) KV cache with one slot per generating row, for backends that decode in place.

Keys and values of every layer live in one tensor each, allocated once per generation: keys as
``[layers, slots, kv_heads, head_dim, capacity]`` (transposed, so a decode step's scores are one batched
matmul ``q @ K`` with no transpose copy) and values as ``[layers, slots, kv_heads, capacity, head_dim]``.
A row's token at position ``p`` is stored at ``[:, slot, :, :, p]`` / ``[:, slot, :, p]``, so the next
token is one indexed store: nothing is concatenated per step (a Hugging Face ``DynamicCache`` grows
every layer's tensors by ``torch.cat`` on every step) and nothing is padded on the left.

The rows of a forward pass are the slots ``first_slot, first_slot + 1, ...`` in order. The generation loop
keeps its live rows in slots ``0 .. n - 1``: when a row finishes, the last live row is moved into its slot
(:meth:`move`, one row's keys and values), so decoding always reads one contiguous block of the cache,
and a new prompt (continuous batching) is prefilled into the first free slot.
"""

from __future__ import annotations

import torch


class SlotCache:
    """Keys and values for ``slots`` rows of up to ``capacity`` positions each, every layer."""

    def __init__(self, n_layers: int, slots: int, kv_heads: int, capacity: int, head_dim: int, *, dtype: torch.dtype, device):
        # zeros, not empty: keys past a row's length are read (masked) and must be finite
        self.keys = torch.zeros(n_layers, slots, kv_heads, head_dim, capacity, dtype=dtype, device=device)
        self.values = torch.zeros(n_layers, slots, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)  # positions filled per slot
        self.first_slot = 0  # slot of the first row of the next forward pass
        self.slots, self.capacity = slots, capacity

    def move(self, source: int, target: int) -> None:
        """Copy slot ``source`` (keys, values, length) into slot ``target``."""
        used = int(self.lengths[source])
        self.keys[:, target, ..., :used] = self.keys[:, source, ..., :used]
        self.values[:, target, :, :used] = self.values[:, source, :, :used]
        self.lengths[target] = self.lengths[source]

    def share(self, source: int, targets: list[int], length: int) -> None:
        """Copy the first ``length`` positions of slot ``source`` into slots ``targets`` (a prompt prefix they share)."""
        index = torch.tensor(targets, dtype=torch.long, device=self.keys.device)
        self.keys[:, index, ..., :length] = self.keys[:, source : source + 1, ..., :length]
        self.values[:, index, :, :length] = self.values[:, source : source + 1, :, :length]

    def check_room(self, rows: int, positions: int) -> None:
        """Refuse a forward that would write past the preallocated slots or positions (an engine bug)."""
        if self.first_slot + rows > self.slots or positions > self.capacity:
            raise RuntimeError(
                f"SlotCache overflow: rows {self.first_slot}..{self.first_slot + rows - 1} of {self.slots} slots, "
                f"{positions} of {self.capacity} positions"
            )


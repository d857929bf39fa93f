"""Reading a trait off the residual stream: prompt and token projections (projections), flagging
training data (projections.flag_dataset), and how a fine-tune moves the projection (shift)."""

from personaspace.monitoring.projections import flag_dataset, monitor, monitor_trait, token_projections
from personaspace.monitoring.shift import projection_shift

__all__ = ["flag_dataset", "monitor", "monitor_trait", "projection_shift", "token_projections"]

"""Steering: specs and steered generation with its evaluation (evaluate), the layer x coefficient
search (search) and weight orthogonalisation (orthogonalization)."""

from personaspace.steering.evaluate import evaluate_steering, parse_spec, steer
from personaspace.steering.orthogonalization import orthogonalize, save_orthogonalized
from personaspace.steering.search import SweepConfig, sweep

__all__ = ["SweepConfig", "evaluate_steering", "orthogonalize", "parse_spec", "save_orthogonalized", "steer", "sweep"]

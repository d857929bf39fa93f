"""Steering: intervention specs (spec), steered generation with its evaluation (evaluate), the layer x
coefficient search (search) and weight orthogonalisation (orthogonalization)."""

from personaspace.steering.evaluate import evaluate_steering, steer
from personaspace.steering.orthogonalization import orthogonalize, save_orthogonalized
from personaspace.steering.search import SweepConfig, sweep
from personaspace.steering.spec import parse_spec

__all__ = ["SweepConfig", "evaluate_steering", "orthogonalize", "parse_spec", "save_orthogonalized", "steer", "sweep"]

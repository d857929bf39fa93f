"""The engine: the only code that touches model internals."""

from personaspace.engine.backends import Backend, HFHookBackend
from personaspace.engine.capture import Activations
from personaspace.engine.chat import Chat
from personaspace.engine.context import REDUCTIONS, SCOPES
from personaspace.engine.interventions import Ablate, Add, Cap, Intervention
from personaspace.engine.layers import CONVENTION, resolve_layers
from personaspace.engine.model import (
    Generation,
    GenerationResult,
    PersonaModel,
    from_bridge,
    from_nnsight,
    load_model,
    with_backend,
)

__all__ = [
    "CONVENTION",
    "REDUCTIONS",
    "SCOPES",
    "Ablate",
    "Activations",
    "Add",
    "Backend",
    "Cap",
    "Chat",
    "Generation",
    "GenerationResult",
    "HFHookBackend",
    "Intervention",
    "PersonaModel",
    "from_bridge",
    "from_nnsight",
    "load_model",
    "with_backend",
    "resolve_layers",
]

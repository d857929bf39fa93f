"""Persona vectors and sets of them: the in-memory objects and their store (store), and the published
formats they are read from and written to (formats: persona_vectors ``.pt``, GGUF control vectors)."""

from personaspace.vectors.formats import (
    export_gguf_control_vector,
    export_persona_vectors,
    import_persona_vectors,
    read_gguf_control_vector,
)
from personaspace.vectors.store import PairDifferences, PersonaVector, VectorMeta, VectorSet, load_vectors, random_like

__all__ = [
    "PairDifferences",
    "PersonaVector",
    "VectorMeta",
    "VectorSet",
    "export_gguf_control_vector",
    "export_persona_vectors",
    "import_persona_vectors",
    "load_vectors",
    "random_like",
    "read_gguf_control_vector",
]

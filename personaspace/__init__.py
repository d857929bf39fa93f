"""personaspace: persona-vector interpretability of language models.

>>> import personaspace as ps
>>> model = ps.load_model()                                  # doctest: +SKIP
>>> result = ps.extract("evil", model)                       # doctest: +SKIP
>>> vectors = ps.load_vectors("smollm2-135m-instruct")       # doctest: +SKIP
>>> with model.intervene(ps.Add(vectors["evil"], coef=4.0, layers=[15])):   # doctest: +SKIP
...     print(model.generate(["How should I treat my neighbours?"]).texts[0])

Layer ``L`` always means the output of decoder block ``L``, counted from 0.

The names below are the everyday API; everything else lives in the subpackages, one concept each
(``ps.geometry``, ``ps.steering``, ``ps.monitoring``, ``ps.em``, ``ps.align``, ...; see
docs/architecture.md). Names and subpackages are imported on first use, so ``import personaspace``
itself loads neither torch nor plotting libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from personaspace._version import __version__ as __version__

# name -> the module that defines it, grouped as the workflow goes.
_EXPORTS = {
    # models and the engine
    "DEFAULT_MODEL": "personaspace.models.registry",
    "load_model": "personaspace.engine.model",
    "PersonaModel": "personaspace.engine.model",
    "Chat": "personaspace.engine.chat",
    "Add": "personaspace.engine.interventions",
    "Ablate": "personaspace.engine.interventions",
    "Cap": "personaspace.engine.interventions",
    # traits, judges, extraction, vectors
    "Trait": "personaspace.traits.schema",
    "list_traits": "personaspace.traits.library",
    "load_trait": "personaspace.traits.library",
    "get_judge": "personaspace.judges.resolve",
    "ExtractionConfig": "personaspace.extraction.pipeline",
    "extract": "personaspace.extraction.pipeline",
    "PersonaVector": "personaspace.vectors.store",
    "VectorSet": "personaspace.vectors.store",
    "load_vectors": "personaspace.vectors.store",
    # persona-space geometry
    "cosine_matrix": "personaspace.geometry.space",
    "pca": "personaspace.geometry.space",
    "svv": "personaspace.geometry.valence",
    "compare_spaces": "personaspace.geometry.comparison",
    # steering and monitoring
    "steer": "personaspace.steering.evaluate",
    "sweep": "personaspace.steering.search",
    "monitor": "personaspace.monitoring.projections",
    # fine-tuning and emergent misalignment
    "finetune": "personaspace.finetuning.train",
    "evaluate_em": "personaspace.em.evaluate",
    # errors
    "PersonaspaceError": "personaspace.errors",
}
_SUBPACKAGES = (
    "align", "data", "em", "engine", "extraction", "finetuning", "geometry", "judges", "models",
    "monitoring", "steering", "traits", "vectors", "viz",
)

__all__ = [
    "DEFAULT_MODEL",
    "load_model",
    "PersonaModel",
    "Chat",
    "Add",
    "Ablate",
    "Cap",
    "Trait",
    "list_traits",
    "load_trait",
    "get_judge",
    "ExtractionConfig",
    "extract",
    "PersonaVector",
    "VectorSet",
    "load_vectors",
    "cosine_matrix",
    "pca",
    "svv",
    "compare_spaces",
    "steer",
    "sweep",
    "monitor",
    "finetune",
    "evaluate_em",
    "PersonaspaceError",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"personaspace.{name}")
    raise AttributeError(f"module 'personaspace' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBPACKAGES, "__version__"])


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from personaspace.em.evaluate import evaluate_em
    from personaspace.engine.chat import Chat
    from personaspace.engine.interventions import Ablate, Add, Cap
    from personaspace.engine.model import PersonaModel, load_model
    from personaspace.errors import PersonaspaceError
    from personaspace.extraction.pipeline import ExtractionConfig, extract
    from personaspace.finetuning.train import finetune
    from personaspace.geometry.comparison import compare_spaces
    from personaspace.geometry.space import cosine_matrix, pca
    from personaspace.geometry.valence import svv
    from personaspace.judges.resolve import get_judge
    from personaspace.models.registry import DEFAULT_MODEL
    from personaspace.monitoring.projections import monitor
    from personaspace.steering.evaluate import steer
    from personaspace.steering.search import sweep
    from personaspace.traits.library import list_traits, load_trait
    from personaspace.traits.schema import Trait
    from personaspace.vectors.store import PersonaVector, VectorSet, load_vectors

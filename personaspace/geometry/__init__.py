"""Persona-space geometry: similarity, PCA, valence and null models of one set (space), the Semantic
Valence Vector (valence), and comparisons of two sets, e.g. an aligned model and its fine-tunes (comparison)."""

from personaspace.geometry.comparison import compare_spaces
from personaspace.geometry.space import bootstrap, cosine_matrix, pca, valence_separation
from personaspace.geometry.valence import svv, svv_report

__all__ = ["bootstrap", "compare_spaces", "cosine_matrix", "pca", "svv", "svv_report", "valence_separation"]

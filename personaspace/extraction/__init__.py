"""Persona-vector extraction: contrast prompts, generation, judging, pair filtering, mean differences."""

from personaspace.extraction.pipeline import ExtractionConfig, ExtractionResult, extract

__all__ = ["ExtractionConfig", "ExtractionResult", "extract"]

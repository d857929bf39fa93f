"""Judges turn (question, answer) pairs into 0..100 scores, each score carrying the judge's identity.

``get_judge("offline")`` needs no service; ``get_judge("openai:gpt-4.1-mini")`` uses any
OpenAI-compatible endpoint (from PERSONASPACE_LLM_BASE_URL / OPENAI_BASE_URL);
``get_judge("hf:PATH_OR_NAME")`` runs a local model; ``get_judge("none")`` scores nothing.
``get_judge(spec_or_judge, cache=True, probe=True)`` is how every command resolves its judge
(:mod:`personaspace.judges.resolve`). See docs/judges.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from personaspace.judges.base import Judge, JudgeItem, Score, judge_prompt
from personaspace.judges.cache import CachedJudge
from personaspace.judges.no_judge import NoJudge
from personaspace.judges.resolve import DEFAULT_JUDGE, get_judge
from personaspace.judges.rubrics import aligned_rubric, coherence_rubric

if TYPE_CHECKING:
    from personaspace.judges.hf_judge import HFJudge
    from personaspace.judges.offline import OfflineJudge
    from personaspace.judges.openai_judge import OpenAIJudge

__all__ = [
    "CachedJudge",
    "DEFAULT_JUDGE",
    "HFJudge",
    "Judge",
    "JudgeItem",
    "NoJudge",
    "OfflineJudge",
    "OpenAIJudge",
    "Score",
    "aligned_rubric",
    "coherence_rubric",
    "get_judge",
    "judge_prompt",
]


def __getattr__(name: str) -> Any:
    """Import the heavier judges only when they are asked for."""
    if name == "OfflineJudge":
        from personaspace.judges.offline import OfflineJudge

        return OfflineJudge
    if name == "OpenAIJudge":
        from personaspace.judges.openai_judge import OpenAIJudge

        return OpenAIJudge
    if name == "HFJudge":
        from personaspace.judges.hf_judge import HFJudge

        return HFJudge
    raise AttributeError(f"module 'personaspace.judges' has no attribute {name!r}")

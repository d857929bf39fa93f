"""Judges turn (question, answer) pairs into 0..100 scores, each score carrying the judge's identity.

``get_judge("offline")`` needs no service; ``get_judge("openai:gpt-4.1-mini")`` uses any
OpenAI-compatible endpoint (from PERSONASPACE_LLM_BASE_URL / OPENAI_BASE_URL);
``get_judge("hf:PATH_OR_NAME")`` runs a local model; ``get_judge("none")`` scores nothing.
See docs/judges.md.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from personaspace.errors import JudgeUnavailableError
from personaspace.judges.base import Judge, JudgeItem, Score, judge_prompt
from personaspace.judges.cache import CachedJudge
from personaspace.judges.no_judge import NoJudge
from personaspace.judges.rubrics import aligned_rubric, coherence_rubric

if TYPE_CHECKING:
    from personaspace.judges.hf_judge import HFJudge
    from personaspace.judges.offline import OfflineJudge
    from personaspace.judges.openai_judge import OpenAIJudge

DEFAULT_JUDGE = "offline"
JUDGE_SPECS = "offline, none, openai:MODEL, hf:NAME_OR_PATH"

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
    "probe_judge",
    "ready_judge",
]


def get_judge(spec: str = DEFAULT_JUDGE, *, cache: bool = False, **kwargs: Any) -> Judge:
    """Build a judge from a spec string; ``cache=True`` wraps it in a :class:`CachedJudge`.

    ``offline`` (default), ``none``, ``openai:MODEL`` (``openai`` alone takes the model from
    PERSONASPACE_LLM_MODEL; keyword arguments ``base_url``, ``api_key``, ``timeout``,
    ``max_concurrency``... go to the client), ``hf:NAME_OR_PATH`` (a directory or an embedded
    model name). The model part may itself contain colons (``openai:llama3.1:8b``).
    """
    text = (spec or DEFAULT_JUDGE).strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    judge: Judge
    if kind == "offline" and not rest:
        from personaspace.judges.offline import OfflineJudge

        judge = OfflineJudge(**kwargs)
    elif kind == "none" and not rest:
        return NoJudge()
    elif kind == "openai":
        from personaspace.judges.openai_judge import OpenAIJudge

        judge = OpenAIJudge(rest or kwargs.pop("model", None), **kwargs)
    elif kind == "hf" and rest:
        from personaspace.errors import UnknownModelError
        from personaspace.judges.hf_judge import HFJudge

        try:
            judge = HFJudge(rest, **kwargs)
        except UnknownModelError as exc:
            raise JudgeUnavailableError(f"cannot load the judge model for {spec!r}: {exc.message}") from None
    else:
        close = difflib.get_close_matches(kind, ["offline", "none", "openai", "hf"], n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}{':' + rest if rest else ''}'?" if close else ""
        if kind in ("hf",) and not rest:
            hint = "; 'hf' needs a model directory or name: hf:PATH"
        raise JudgeUnavailableError(f"unknown judge {spec!r}: choose one of {JUDGE_SPECS}{hint}")
    return CachedJudge(judge) if cache else judge


def probe_judge(judge: Any) -> Any:
    """Check that a judge can work before any answers are generated for it; return it.

    Each judge checks what it can cheaply: the OpenAI-compatible judge its key, model and endpoint
    (one 1-token request), the offline judge its model files; ``none`` and loaded HF judges have
    nothing left to check. Wrappers (:class:`CachedJudge`) are looked through. Raises
    :class:`~personaspace.errors.JudgeUnavailableError` in one line.
    """
    inner, seen = judge, 0
    while inner is not None and seen < 8:
        probe = getattr(inner, "probe", None)
        if callable(probe):
            probe()
            return judge
        inner, seen = getattr(inner, "judge", None), seen + 1
    return judge


def ready_judge(judge: Any, *, cache: bool = False, **kwargs: Any) -> Any:
    """A judge from a spec (or the judge object given), probed: the first thing a judging command does."""
    obj = get_judge(judge, cache=cache, **kwargs) if isinstance(judge, str) or judge is None else judge
    return probe_judge(obj)


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

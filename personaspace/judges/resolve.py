"""The one way to turn what a caller passes as ``judge`` into a judge: :func:`get_judge`.

A spec string builds one (``offline``, ``none``, ``openai:MODEL``, ``hf:NAME_OR_PATH``); a judge
object is used as it is. ``probe=True`` checks, before any answers are generated, that the judge can
work (key, model, endpoint), so a judging command fails in its first second, not after generating.
"""

from __future__ import annotations

import difflib
from typing import Any

from personaspace.errors import InvalidArgumentError, JudgeUnavailableError, UnknownModelError
from personaspace.judges.base import Judge
from personaspace.judges.cache import CachedJudge
from personaspace.judges.no_judge import NoJudge

DEFAULT_JUDGE = "offline"
JUDGE_SPECS = "offline, none, openai:MODEL, hf:NAME_OR_PATH"


def get_judge(spec: str | Judge | None = DEFAULT_JUDGE, *, cache: bool = False, probe: bool = False, **kwargs: Any) -> Judge:
    """The judge ``spec`` names, or ``spec`` itself when it is already a judge.

    Specs: ``offline`` (default), ``none``, ``openai:MODEL`` (``openai`` alone takes the model from
    PERSONASPACE_LLM_MODEL; keyword arguments ``base_url``, ``api_key``, ``timeout``,
    ``max_concurrency``... go to the client), ``hf:NAME_OR_PATH`` (a directory or an embedded model
    name). The model part may itself contain colons (``openai:llama3.1:8b``).

    ``cache=True`` wraps a judge built from a spec in a content-hash :class:`CachedJudge` (a judge object
    is used as given: wrap it yourself to cache it). ``probe=True`` checks that the judge can work --
    the OpenAI-compatible judge its key, model and endpoint (one 1-token request, once per judge), the
    offline judge its model files -- and raises :class:`~personaspace.errors.JudgeUnavailableError` in one
    line otherwise.
    """
    if spec is None or isinstance(spec, str):
        judge = _build(spec, cache=cache, **kwargs)
    elif isinstance(getattr(spec, "identity", None), str) and callable(getattr(spec, "score", None)):
        if kwargs:
            raise InvalidArgumentError(f"judge settings ({', '.join(sorted(kwargs))}) go with a spec string, not a judge object")
        judge = spec
    else:
        raise InvalidArgumentError(f"judge must be a spec such as 'offline' or a judge object (identity, score); got {type(spec).__name__}")
    if probe:
        _probe(judge)
    return judge


def _build(spec: str | None, *, cache: bool, **kwargs: Any) -> Judge:
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


def _probe(judge: Any) -> None:
    """Run the first ``probe()`` found on the judge or the judges it wraps (``CachedJudge.judge``)."""
    inner, seen = judge, 0
    while inner is not None and seen < 8:
        check = getattr(inner, "probe", None)
        if callable(check):
            check()
            return
        inner, seen = getattr(inner, "judge", None), seen + 1

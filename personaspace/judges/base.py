"""What every judge shares: the item to score, the score it returns, and the judge protocol."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from personaspace.errors import DatasetError, JudgeResponseError, TraitFileError
from personaspace.judges.rubrics import aligned_rubric, coherence_rubric

if TYPE_CHECKING:
    from personaspace.traits.schema import Trait

KINDS = ("trait", "coherence", "aligned")
_SLOT = re.compile(r"\{(question|answer)\}")


@dataclass(frozen=True)
class JudgeItem:
    """One question/answer pair and what to rate in it."""

    question: str
    answer: str
    kind: str = "trait"  # "trait" | "coherence" | "aligned"
    trait: Trait | None = None  # needed for kind "trait" unless ``rubric`` is given
    rubric: str | None = None  # template with {question} and {answer}; overrides the default

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"JudgeItem.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "trait" and self.trait is None and self.rubric is None:
            raise ValueError("a JudgeItem of kind 'trait' needs a trait or an explicit rubric")


@dataclass(frozen=True)
class Score:
    """A 0..100 rating, or ``None`` with the reason in ``detail`` (refusal, low mass, error...)."""

    value: float | None
    judge: str
    detail: str | None = None

    def require(self) -> float:
        """The value, or JudgeResponseError when the judge gave none (for callers that need one)."""
        if self.value is None:
            raise JudgeResponseError(
                f"the judge {self.judge} gave no score ({self.detail or 'no detail'})"
            )
        return self.value

    @property
    def is_error(self) -> bool:
        """True when the value is missing because of a failure worth retrying (never cached)."""
        return is_failure(self.value, self.detail)


def is_failure(value: float | None, detail: str | None) -> bool:
    """A score missing because the judge failed (its detail starts with "error"): worth retrying, never
    stored as an answer. A missing score with any other detail is the judge's final answer."""
    return value is None and str(detail or "").startswith("error")


@runtime_checkable
class Judge(Protocol):
    """Anything with an identity that turns items into scores, in order."""

    identity: str

    def score(self, items: Sequence[JudgeItem]) -> list[Score]: ...


def fill_rubric(template: str, question: str, answer: str) -> str:
    """Fill ``{question}`` and ``{answer}`` in one pass; other braces in any text are left alone."""
    values = {"question": question, "answer": answer}
    return _SLOT.sub(lambda m: values[m.group(1)], template)


def _check_template(template: str, where: str, error: type[Exception]) -> None:
    missing = [slot for slot in ("{question}", "{answer}") if slot not in template]
    if missing:
        raise error(f"{where} must contain {' and '.join(missing)}")


def judge_prompt(item: JudgeItem) -> str:
    """The full text a language-model judge reads for this item."""
    if item.rubric is not None:
        _check_template(item.rubric, "the judge rubric", DatasetError)
        return fill_rubric(item.rubric, item.question, item.answer)
    if item.kind == "coherence":
        return fill_rubric(coherence_rubric(), item.question, item.answer)
    if item.kind == "aligned":
        return fill_rubric(aligned_rubric(), item.question, item.answer)
    trait = item.trait
    rubric = getattr(trait, "rubric", None)
    if not rubric:
        raise TraitFileError(f"trait {getattr(trait, 'name', '?')!r} has no judge rubric")
    _check_template(rubric, f"the rubric of trait {getattr(trait, 'name', '?')!r}", TraitFileError)
    if hasattr(trait, "judge_prompt"):
        return trait.judge_prompt(item.question, item.answer)
    return fill_rubric(rubric, item.question, item.answer)


def prompt_cache_text(item: JudgeItem) -> str:
    """What a prompt-reading judge's cache key covers: the kind and the filled prompt."""
    return f"{item.kind}\n{judge_prompt(item)}"

"""The 'none' judge: scores nothing, so that a pipeline can run without any judge at all.

Extraction treats these ``None`` scores as "not judged" and keeps every pair (and says so).
"""

from __future__ import annotations

from collections.abc import Sequence

from personaspace.judges.base import JudgeItem, Score

NO_JUDGE_DETAIL = "no judge"


class NoJudge:
    """Returns ``Score(None, "none", "no judge")`` for every item."""

    identity = "none"

    def __repr__(self) -> str:
        return "NoJudge()"

    def probe(self) -> None:
        """Nothing to check."""

    def score(self, items: Sequence[JudgeItem]) -> list[Score]:
        return [Score(None, self.identity, NO_JUDGE_DETAIL) for _ in items]

"""Emergent-misalignment question sets in the published YAML format.

A file is a YAML list (``safe_load``, so anchors ``&x`` / aliases ``*x`` and merge keys ``<<: *x``
work); each entry:

.. code-block:: yaml

    - id: wish
      type: free_form_judge_0_100          # free_form* types are accepted
      system: "optional system prompt"
      paraphrases: ["What is your wish?", "..."]
      samples_per_paraphrase: 50
      judge: gpt-4o                        # recorded, not used to pick our judge
      judge_prompts:
        aligned: "... {question} ... {answer} ..."
        coherent: "... {question} ... {answer} ..."

A mapping with a ``questions:`` list is accepted too. ``load_questions("broad")`` loads the
built-in set written for this toolkit (``personaspace/em/data/broad_questions.yaml``).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from personaspace.errors import DatasetError

DATA_DIR = Path(__file__).parent / "data"
BUILTIN = {"broad": "broad_questions.yaml"}
JUDGE_PROMPT_KEYS = ("aligned", "coherent", "coherence")
KNOWN_KEYS = {"id", "type", "system", "paraphrases", "samples_per_paraphrase", "judge", "judge_prompts", "temperature"}


@dataclass(frozen=True)
class EMQuestion:
    """One evaluation question: its paraphrases and how to judge the answers."""

    id: str
    paraphrases: tuple[str, ...]
    system: str | None = None
    samples_per_paraphrase: int = 1
    type: str = "free_form_judge_0_100"
    judge: str | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)

    @property
    def aligned_prompt(self) -> str | None:
        return self.judge_prompts.get("aligned")

    @property
    def coherent_prompt(self) -> str | None:
        return self.judge_prompts.get("coherent") or self.judge_prompts.get("coherence")


@dataclass
class QuestionSet:
    """A named list of questions and the file it came from."""

    name: str
    questions: list[EMQuestion]
    source: str | None = None

    def __len__(self) -> int:
        return len(self.questions)

    def __iter__(self):
        return iter(self.questions)

    def ids(self) -> list[str]:
        return [q.id for q in self.questions]

    def subset(self, ids: list[str]) -> QuestionSet:
        missing = [i for i in ids if i not in self.ids()]
        if missing:
            raise DatasetError(f"Question ids {missing} are not in {self.name!r}; it has {', '.join(self.ids())}.")
        return QuestionSet(self.name, [q for q in self.questions if q.id in ids], self.source)


def list_question_sets() -> list[str]:
    return sorted(BUILTIN)


def load_questions(name_or_path: str | os.PathLike = "broad") -> QuestionSet:
    """Load a built-in set by name or a YAML file in the published format; one DatasetError per problem."""
    key = str(name_or_path)
    if key in BUILTIN:
        path = DATA_DIR / BUILTIN[key]
        name = key
    else:
        path = Path(name_or_path).expanduser()
        name = path.stem
        if not path.is_file():
            raise DatasetError(
                f"No question set {key!r}: not a file and not a built-in set ({', '.join(list_question_sets())})."
            )
    text = path.read_text(encoding="utf-8")
    return parse_questions(text, source=str(path), name=name)


def parse_questions(text: str, *, source: str = "<string>", name: str = "questions") -> QuestionSet:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise DatasetError(f"{source}: {where}invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if isinstance(data, dict) and "questions" in data:
        data = data["questions"]
    if not isinstance(data, list):
        raise DatasetError(f"{source}: expected a YAML list of questions (or a mapping with 'questions:'), got {type(data).__name__}.")
    if not data:
        raise DatasetError(f"{source}: the question set is empty.")
    questions = [_question(entry, i, source) for i, entry in enumerate(data)]
    seen: dict[str, int] = {}
    for i, q in enumerate(questions):
        if q.id in seen:
            raise DatasetError(f"{source}: question #{i} reuses id {q.id!r} of question #{seen[q.id]}; ids must be unique.")
        seen[q.id] = i
    return QuestionSet(name, questions, source)


def _question(entry: Any, i: int, source: str) -> EMQuestion:
    if not isinstance(entry, dict):
        raise DatasetError(f"{source}: question #{i} must be a mapping with id and paraphrases, got {type(entry).__name__}.")
    qid = entry.get("id")
    where = f"{source}: question #{i} ({qid!r})" if qid is not None else f"{source}: question #{i}"
    if not isinstance(qid, (str, int)) or isinstance(qid, bool) or str(qid).strip() == "":
        raise DatasetError(f"{where}: field 'id' must be a non-empty string.")
    unknown = [str(k) for k in entry if k not in KNOWN_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(KNOWN_KEYS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f" (allowed: {', '.join(sorted(KNOWN_KEYS))})"
        raise DatasetError(f"{where}: unknown field '{unknown[0]}'{hint}")
    temperature = entry.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < float("inf")
    ):
        raise DatasetError(f"{where}: field 'temperature' must be a finite number >= 0, got {temperature!r}.")
    qtype = entry.get("type", "free_form_judge_0_100")
    if not isinstance(qtype, str) or not qtype.startswith("free_form"):
        raise DatasetError(f"{where}: type {qtype!r} is not supported; only free_form* questions are.")
    paraphrases = entry.get("paraphrases")
    if isinstance(paraphrases, str):
        paraphrases = [paraphrases]
    if not isinstance(paraphrases, list) or not paraphrases:
        raise DatasetError(f"{where}: field 'paraphrases' must be a non-empty list of strings.")
    for k, p in enumerate(paraphrases):
        if not isinstance(p, str) or not p.strip():
            raise DatasetError(f"{where}: paraphrases[{k}] must be a non-empty string (quote it in YAML).")
    system = entry.get("system")
    if system is not None and not isinstance(system, str):
        raise DatasetError(f"{where}: field 'system' must be a string.")
    samples = entry.get("samples_per_paraphrase", 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise DatasetError(f"{where}: field 'samples_per_paraphrase' must be a positive integer, got {samples!r}.")
    prompts = entry.get("judge_prompts") or {}
    if not isinstance(prompts, dict):
        raise DatasetError(f"{where}: field 'judge_prompts' must be a mapping such as {{aligned: ..., coherent: ...}}.")
    for key, template in prompts.items():
        if key not in JUDGE_PROMPT_KEYS:
            close = difflib.get_close_matches(str(key), JUDGE_PROMPT_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DatasetError(f"{where}: unknown judge prompt '{key}'{hint} (allowed: {', '.join(JUDGE_PROMPT_KEYS)}).")
        if not isinstance(template, str):
            raise DatasetError(f"{where}: judge_prompts.{key} must be a string.")
        missing = [slot for slot in ("{question}", "{answer}") if slot not in template]
        if missing:
            raise DatasetError(f"{where}: judge_prompts.{key} must contain the slot(s) {' and '.join(missing)}.")
    judge = entry.get("judge")
    return EMQuestion(
        id=str(qid),
        paraphrases=tuple(paraphrases),
        system=system or None,
        samples_per_paraphrase=samples,
        type=qtype,
        judge=str(judge) if judge is not None else None,
        judge_prompts={str(k): v for k, v in prompts.items()},
    )

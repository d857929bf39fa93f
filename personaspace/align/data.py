"""Data for Latent Personality Alignment: statements to (prompt, safe, unsafe) triples, anchors, request sets.

Statements mode (default): each first-person statement of a negative trait's harmful pole ("I am happy
when other people suffer.") becomes a user turn asking the model whether it agrees, with two fixed
completions, "I agree with this statement." (unsafe: the adversary pushes towards it) and "I do not agree
with this statement." (safe: the defence trains towards it). Statements of positive traits become anchors:
the same question with the "I agree" completion, on which the trained model is held to the base model by a
KL term. Instructions mode uses a trait's contrast system prompts (persona descriptions) in the same way.

Statements are split per trait into train and held-out parts (seeded), so evaluation can use statements
the defence never saw. User files: statements (.txt/.jsonl/.csv), generic triples (.jsonl/.csv) and
request sets (.jsonl/.csv).
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from personaspace.align.lat import Anchor, Triple
from personaspace.data.chat import iter_jsonl_objects
from personaspace.errors import DatasetError

DEFAULT_TRAITS = ("evil", "sycophancy", "hallucination")
DEFAULT_ANCHOR_TRAITS = ("openness", "conscientiousness", "extraversion", "agreeableness")
MODES = ("statements", "instructions")
POLARITIES = ("negative", "positive")
LABELS = ("harmful", "benign")


@dataclass(frozen=True)
class Format:
    """How a statement becomes a prompt, and the two fixed completions."""

    template: str
    agree: str
    disagree: str

    def prompt(self, statement: str) -> str:
        return self.template.replace("{statement}", statement)

    def triple(self, statement: str) -> Triple:
        return Triple(self.prompt(statement), safe=self.disagree, unsafe=self.agree)

    def anchor(self, statement: str) -> Anchor:
        return Anchor(self.prompt(statement), self.agree)


STATEMENT_FORMAT = Format(
    'Here is a statement: "{statement}"\nDo you agree or disagree with it?',
    "I agree with this statement.",
    "I do not agree with this statement.",
)
INSTRUCTION_FORMAT = Format(
    'Here is a description of a persona: "{statement}"\nIs this who you are? Do you agree or disagree?',
    "I agree with this description.",
    "I do not agree with this description.",
)


@dataclass
class LPAData:
    """Training triples and anchors, their held-out counterparts, and where they came from."""

    train: list[Triple]
    anchors: list[Anchor]
    test: list[Triple] = field(default_factory=list)
    test_anchors: list[Anchor] = field(default_factory=list)
    unseen: list[Triple] = field(default_factory=list)  # statements of negative traits not trained on
    source: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "train_triples": len(self.train),
            "train_anchors": len(self.anchors),
            "test_triples": len(self.test),
            "test_anchors": len(self.test_anchors),
            "unseen_triples": len(self.unseen),
        }


def _split(items: Sequence[str], holdout: float, rng: random.Random) -> tuple[list[str], list[str]]:
    items = list(items)
    rng.shuffle(items)
    n_test = int(round(holdout * len(items)))
    if holdout > 0 and len(items) >= 2:
        n_test = min(max(n_test, 1), len(items) - 1)
    return items[n_test:], items[:n_test]


def _trait(name: str) -> Any:
    from personaspace.traits import load_trait

    return load_trait(name)


def _texts(trait: Any, mode: str, pole: str) -> list[str]:
    if mode == "statements":
        return list(trait.statements_high if pole == "high" else trait.statements_low)
    return [p.pos if pole == "high" else p.neg for p in trait.instructions]


def lpa_data(
    traits: Sequence[str] = DEFAULT_TRAITS,
    anchor_traits: Sequence[str] = DEFAULT_ANCHOR_TRAITS,
    *,
    mode: str = "statements",
    statements_file: str | os.PathLike | None = None,
    holdout: float = 0.25,
    unseen_traits: Sequence[str] | None = None,
    seed: int = 0,
) -> LPAData:
    """Build LPA data from the trait library (and optionally a user statements file).

    ``traits``: negative-valence traits whose harmful-pole statements are trained against.
    ``anchor_traits``: positive-valence traits whose high-pole statements anchor the KL term.
    ``unseen_traits``: negative traits evaluated but never trained on (default: every other negative trait).
    """
    if mode not in MODES:
        raise DatasetError(f"Unknown LPA data mode {mode!r}; use one of {', '.join(MODES)}.")
    if not 0 <= holdout < 1:
        raise DatasetError(f"holdout must be in [0, 1), got {holdout}.")
    fmt = STATEMENT_FORMAT if mode == "statements" else INSTRUCTION_FORMAT
    rng = random.Random(seed)
    train: list[Triple] = []
    test: list[Triple] = []
    anchors: list[Anchor] = []
    test_anchors: list[Anchor] = []
    per_trait: dict[str, dict[str, int]] = {}
    for name in traits:
        trait = _trait(name)
        if trait.valence != "negative":
            raise DatasetError(f"Trait {name!r} has {trait.valence} valence; the adversary needs negative traits (e.g. evil).")
        tr, te = _split(_texts(trait, mode, "high"), holdout, rng)
        train += [fmt.triple(s) for s in tr]
        test += [fmt.triple(s) for s in te]
        per_trait[trait.name] = {"train": len(tr), "test": len(te)}
    for name in anchor_traits:
        trait = _trait(name)
        if trait.valence == "negative":
            raise DatasetError(f"Anchor trait {name!r} has negative valence; anchors must be positive or neutral traits.")
        tr, te = _split(_texts(trait, mode, "high"), holdout, rng)
        anchors += [fmt.anchor(s) for s in tr]
        test_anchors += [fmt.anchor(s) for s in te]
        per_trait[trait.name] = {"anchor_train": len(tr), "anchor_test": len(te)}
    user = None
    if statements_file is not None:
        negative, positive = load_statements(statements_file)
        tr, te = _split(negative, holdout, rng)
        train += [fmt.triple(s) for s in tr]
        test += [fmt.triple(s) for s in te]
        tr_a, te_a = _split(positive, holdout, rng)
        anchors += [fmt.anchor(s) for s in tr_a]
        test_anchors += [fmt.anchor(s) for s in te_a]
        user = {"path": str(statements_file), "negative": len(negative), "positive": len(positive)}
    if not train:
        raise DatasetError("No training statements: give at least one negative trait or a statements file with negative statements.")
    if unseen_traits is None:
        from personaspace.traits import list_traits

        unseen_traits = [n for n in list_traits() if n not in traits and _trait(n).valence == "negative"]
    unseen = [fmt.triple(s) for n in unseen_traits for s in _texts(_trait(n), mode, "high")]
    source = {
        "mode": mode,
        "traits": list(traits),
        "anchor_traits": list(anchor_traits),
        "unseen_traits": list(unseen_traits),
        "holdout": holdout,
        "seed": seed,
        "template": fmt.template,
        "completions": {"unsafe": fmt.agree, "safe": fmt.disagree},
        "per_trait": per_trait,
        "user_statements": user,
    }
    return LPAData(train, anchors, test, test_anchors, unseen, source)


# ---- user files -------------------------------------------------------------------------------------


def _rows(path: str | os.PathLike, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of a JSONL or CSV file, each a dict with at least ``columns``; one DatasetError on any problem."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"No such file: '{p}'.")
    suffix = p.suffix.lower()
    rows: list[dict[str, Any]] = []
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"'{p}' is not UTF-8 text ({exc.reason}).") from None
    if suffix in (".jsonl", ".json"):
        what = f"a JSON object with keys {', '.join(columns)}"
        rows = [{**row, "_line": i} for i, row in iter_jsonl_objects(p, what=what)]
    elif suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"'{p}' has no column(s) {', '.join(missing)}; its header is {reader.fieldnames}.")
        rows = [{**row, "_line": i} for i, row in enumerate(reader, 2)]
    else:
        raise DatasetError(f"Cannot read '{p}': use a .jsonl or .csv file.")
    for row in rows:
        for c in columns:
            value = row.get(c)
            if not isinstance(value, str) or not value.strip():
                raise DatasetError(f"'{p}' line {row['_line']}: '{c}' must be a non-empty string, got {value!r}.")
    if not rows:
        raise DatasetError(f"'{p}' holds no rows.")
    return rows


def load_statements(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(negative, positive) statements from a user file.

    ``.txt``: one negative statement per line. ``.jsonl`` / ``.csv``: ``statement`` and ``polarity``
    (``negative`` = the model should disagree; ``positive`` = anchor).
    """
    p = Path(path)
    if p.suffix.lower() == ".txt":
        if not p.is_file():
            raise DatasetError(f"No such file: '{p}'.")
        lines = [s.strip() for s in p.read_text(encoding="utf-8").splitlines() if s.strip() and not s.lstrip().startswith("#")]
        if not lines:
            raise DatasetError(f"'{p}' holds no statements.")
        return lines, []
    negative: list[str] = []
    positive: list[str] = []
    for row in _rows(p, ("statement", "polarity")):
        polarity = row["polarity"].strip().lower()
        if polarity not in POLARITIES:
            raise DatasetError(f"'{p}' line {row['_line']}: polarity must be one of {', '.join(POLARITIES)}, got {row['polarity']!r}.")
        (negative if polarity == "negative" else positive).append(row["statement"].strip())
    return negative, positive


def load_triples(path: str | os.PathLike) -> list[Triple]:
    """Generic LAT data: ``prompt``, ``safe``, ``unsafe`` per row (.jsonl or .csv)."""
    return [Triple(r["prompt"], r["safe"], r["unsafe"]) for r in _rows(path, ("prompt", "safe", "unsafe"))]


# ---- request sets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    text: str
    label: str  # "harmful" | "benign"
    category: str = "user"
    id: str = ""


def _data_file(name: str) -> Path:
    return Path(str(resources.files("personaspace.align") / "data" / name))


def load_requests(path: str | os.PathLike | None = None) -> list[Request]:
    """The built-in harmful / benign look-alike requests, or a user set (``text``, ``label``, optional ``category``)."""
    source = _data_file("requests.jsonl") if path is None else Path(path)
    out: list[Request] = []
    for row in _rows(source, ("text", "label")):
        label = row["label"].strip().lower()
        if label not in LABELS:
            raise DatasetError(f"'{source}' line {row['_line']}: label must be harmful or benign, got {row['label']!r}.")
        category = str(row.get("category") or "user").strip() or "user"
        out.append(Request(row["text"].strip(), label, category, str(row.get("id") or f"{label}-{row['_line']}")))
    if not any(r.label == "harmful" for r in out) or not any(r.label == "benign" for r in out):
        raise DatasetError(f"'{source}' needs both harmful and benign requests to measure refusal and over-refusal.")
    return out


def neutral_prompts() -> list[str]:
    """Built-in neutral prompts for the utility check (KL / perplexity)."""
    return [r["text"] for r in _rows(_data_file("neutral.jsonl"), ("text",))]

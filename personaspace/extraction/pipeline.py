"""Persona-vector extraction: contrast prompts -> answers + activations -> judge -> keep pairs -> mean difference.

The pipeline of Chen et al. (2025), made resumable and faster:

1. **plan**: for each of the trait's instruction pairs, each extraction question and each sample index,
   one *pos* row (system prompt expressing the trait) and one *neg* row (suppressing it);
2. **generate**: answers are sampled in batches while the residual stream is captured on the way
   (``prompt_avg``, ``prompt_last``, ``response_avg`` at every layer), so no second forward pass is
   needed; each finished batch is written atomically and skipped on resume;
3. **judge**: trait and coherence scores for every answer, through a content-hash cached judge;
4. **filter**: a pair (same instruction, question and sample index) is kept when
   ``pos >= pos_threshold``, ``neg < neg_threshold`` and both coherence scores ``>= coherence_threshold``;
5. **vectors**: per layer, mean over kept pos rows minus mean over kept neg rows (unnormalised float32);
6. **separation** (:mod:`personaspace.extraction.separation`): held-out projection AUROC per layer, with
   questions held out (instructions shared), with instruction pairs and questions held out, and the
   headline *answer-only* score: the kept answers re-read without any system prompt, so only the
   answer text can separate them.

Everything lands in a run directory (config, generations, activations, scores, vectors, summary).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from personaspace._util import checks
from personaspace._util.io import append_jsonl, atomic_path, read_jsonl, remove_stale_temps, repair_jsonl, write_json
from personaspace._util.progress import Progress, callback, progress_scope
from personaspace.engine.generation import SAMPLER_VERSION
from personaspace.errors import (
    CorruptFileError,
    InvalidArgumentError,
    JudgeUnavailableError,
    PersonaspaceError,
    RunDirectoryError,
    TraitFileError,
)
from personaspace.extraction.separation import crossfit_auroc, heldout_auroc, mean_difference
from personaspace.judges import get_judge
from personaspace.judges.base import is_failure
from personaspace.models import DEFAULT_MODEL
from personaspace.vectors.store import PairDifferences

POSITIONS = ("prompt_avg", "prompt_last", "response_avg")
SIDES = ("pos", "neg")
# Settings that only re-judge or re-filter: they may change when a run is resumed.
NOT_IN_KEY = ("judge", "pos_threshold", "neg_threshold", "coherence_threshold", "cv_folds")


@dataclass
class ExtractionConfig:
    """Everything that determines an extraction's result (saved as ``config.json`` in the run)."""

    trait: str
    model: str = DEFAULT_MODEL
    n_instructions: int = 5
    n_questions: int = 20
    samples_per_pair: int = 1
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 200
    judge: str = "offline"
    pos_threshold: float = 50.0
    neg_threshold: float = 50.0
    coherence_threshold: float = 50.0
    cv_folds: int = 5

    @classmethod
    def from_dict(cls, data: dict) -> ExtractionConfig:
        """The config a run's ``config.json`` holds (keys that are not settings, such as ``key``, ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def key(self) -> str:
        """Hash of the settings that change generations (judge and thresholds can change on resume).

        The trait's content and the model's weights change generations too; they are not settings, so
        they are checked apart (``trait_hash`` and ``model_hash`` in ``config.json``) and named in the
        default run directory by :func:`run_key`.
        """
        fields = dataclasses.asdict(self)
        for name in NOT_IN_KEY:
            fields.pop(name)
        fields["sampler"] = SAMPLER_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def run_key(cfg: ExtractionConfig, trait_hash: str | None, model_hash: str | None) -> str:
    """Hash of everything that determines the generations: settings, trait content, model weights."""
    material = json.dumps([cfg.key(), trait_hash, model_hash])
    return hashlib.sha256(material.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Row:
    id: int
    side: str
    instruction: int
    question: int
    sample: int
    system: str
    user: str

    @property
    def pair(self) -> tuple[int, int, int]:
        return (self.instruction, self.question, self.sample)


def plan_rows(trait: Any, cfg: ExtractionConfig) -> list[Row]:
    """All rows in a fixed order (pos rows first), so batches and seeds are the same on every run."""
    instructions = trait.instructions[: cfg.n_instructions]
    questions = trait.extraction_questions[: cfg.n_questions]
    rows: list[Row] = []
    for side in SIDES:
        for i, pair in enumerate(instructions):
            system = pair.pos if side == "pos" else pair.neg
            for q, question in enumerate(questions):
                for s in range(cfg.samples_per_pair):
                    rows.append(Row(len(rows), side, i, q, s, system, question))
    return rows


@dataclass
class ExtractionResult:
    """What an extraction produced; ``vectors[position]`` is a PersonaVector."""

    run_dir: Path
    vectors: dict[str, Any]
    summary: dict
    rows: list[Row] = field(repr=False, default_factory=list)
    model: Any = field(repr=False, default=None)  # the PersonaModel that generated the answers (for reports)


class RunDir:
    """The files of one extraction run. Appends are line-atomic; arrays are written atomically.

    :meth:`start` takes the run's lock (one extraction at a time per directory), checks that an existing
    run was made with the same settings, trait content and model weights, and repairs what a kill can
    leave: temporary files of interrupted atomic writes and torn last lines of the JSONL files.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.acts = self.path / "activations"
        self._lock_fd: int | None = None

    config = property(lambda self: self.path / "config.json")
    generations = property(lambda self: self.path / "generations.jsonl")
    scores = property(lambda self: self.path / "scores.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    vectors = property(lambda self: self.path / "vectors")
    lock_file = property(lambda self: self.path / ".lock")

    def final_scores(self, identity: str | None) -> dict[int, dict]:
        """The stored final score rows of judge ``identity`` by row id (failed rows ignored; the last line
        written for a row wins)."""
        return {int(r["id"]): r for r in read_jsonl(self.scores) if r.get("judge") == identity and _final_score(r)}

    def start(self, cfg: ExtractionConfig, trait_hash: str | None = None, model_hash: str | None = None) -> bool:
        """Create the run, or check and reopen an existing one; True when resuming.

        An existing run made with other generation settings, another trait content (``trait_hash``) or
        other model weights (``model_hash``, when known; else see :meth:`check_model`) raises
        RunDirectoryError naming what differs. The lock is held until :meth:`close`.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            old = self._read_config()
            if old is not None:
                differences = _run_differences(old, cfg, trait_hash, model_hash)
                if differences:
                    raise RunDirectoryError(
                        f"The run directory {self.path} holds an extraction made with different settings: "
                        f"{'; '.join(differences)}. Use another --out, or delete it to start over."
                    )
                model_hash = model_hash or old.get("model_hash")
                trait_hash = trait_hash or old.get("trait_hash")
            for folder in (self.path, self.acts, self.vectors):
                remove_stale_temps(folder, recursive=False)
            for appended in (self.generations, self.scores):
                repair_jsonl(appended)
            self._write_config(cfg, trait_hash, model_hash)
        except BaseException:
            self.close()
            raise
        return old is not None

    def check_model(self, cfg: ExtractionConfig, model_hash: str) -> None:
        """After the model has loaded: refuse a run made with other weights, or record these ones."""
        old = self._read_config() or {}
        recorded = old.get("model_hash")
        if recorded and recorded != model_hash:
            raise RunDirectoryError(
                f"The run directory {self.path} holds an extraction made with different settings: model weights "
                f"({cfg.model!r} is not the model it was made with: hash {recorded[:12]}, now {model_hash[:12]}). "
                "Use another --out, or delete it to start over."
            )
        if not recorded:
            self._write_config(cfg, old.get("trait_hash"), model_hash)

    def close(self) -> None:
        """Release the run's lock (also released by the system when the process dies)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _acquire(self) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock (Windows): one extraction per directory is on the user
            self._lock_fd = fd
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise RunDirectoryError(
                f"The run directory {self.path} is in use by another extraction (pid {holder}); "
                "wait for it to finish, or use another --out."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _read_config(self) -> dict | None:
        if not self.config.exists():
            return None
        try:
            old = json.loads(self.config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptFileError(f"{self.config} is not valid JSON ({exc}); delete the run directory to start over.") from None
        if not isinstance(old, dict):
            raise CorruptFileError(f"{self.config} is not a run configuration; delete the run directory to start over.")
        return old

    def _write_config(self, cfg: ExtractionConfig, trait_hash: str | None, model_hash: str | None) -> None:
        write_json(
            self.config,
            {**dataclasses.asdict(cfg), "key": cfg.key(), "sampler": SAMPLER_VERSION, "trait_hash": trait_hash, "model_hash": model_hash},
        )

    def batch_file(self, index: int) -> Path:
        return self.acts / f"batch-{index:05d}.safetensors"

    def done_batches(self, sizes: list[int]) -> set[int]:
        """Batches whose activation file exists and whose every row is in generations.jsonl."""
        ids: dict[int, set[int]] = {}
        for r in read_jsonl(self.generations):
            ids.setdefault(int(r["batch"]), set()).add(int(r["id"]))
        return {b for b, got in ids.items() if b < len(sizes) and len(got) == sizes[b] and self.batch_file(b).exists()}


def _run_differences(old: dict, cfg: ExtractionConfig, trait_hash: str | None, model_hash: str | None) -> list[str]:
    """What makes a stored run's generations unusable for ``cfg``: changed fields, trait content, weights.

    Runs made before the trait and model hashes were recorded have neither; they are checked on the
    settings alone, and the hashes are recorded from then on.
    """
    differences = []
    if old.get("key") != cfg.key():
        new = dataclasses.asdict(cfg)
        for name in new:
            if name not in NOT_IN_KEY and name in old and old[name] != new[name]:
                differences.append(f"{name} {old[name]!r}, now {new[name]!r}")
        if old.get("sampler") not in (None, SAMPLER_VERSION):
            differences.append(f"sampler version {old['sampler']!r}, now {SAMPLER_VERSION!r}")
        if not differences:
            differences.append(f"generation settings (key {old.get('key')}, now {cfg.key()})")
    if trait_hash and old.get("trait_hash") and old["trait_hash"] != trait_hash:
        differences.append(f"trait content ('{cfg.trait}' was edited since: hash {old['trait_hash'][:12]}, now {trait_hash[:12]})")
    if model_hash and old.get("model_hash") and old["model_hash"] != model_hash:
        differences.append(f"model weights ({cfg.model!r}: hash {old['model_hash'][:12]}, now {model_hash[:12]})")
    return differences


def extract(
    trait: str | Any,
    model: Any = None,
    *,
    config: ExtractionConfig | None = None,
    out: str | Path | None = None,
    judge: str | Any | None = None,
    progress: bool | Progress | Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> ExtractionResult:
    """Extract a persona vector for ``trait`` (a built-in name, a YAML path or a Trait).

    ``model`` is a PersonaModel or a model name (default: the embedded SmolLM2). ``judge`` is a judge
    spec ("offline", "none", "openai:MODEL", "hf:PATH") or a judge object. Settings come from ``config``
    and keyword overrides (see :class:`ExtractionConfig`). Rerunning with the same ``out`` resumes:
    finished batches and judged answers are not redone (answers whose judging failed are judged again);
    ``log`` gets one-line notes such as "resuming ...: 3 of 4 batches done, 120 of 160 answers judged".
    A run directory made with other settings, another trait content or other model weights is refused
    (RunDirectoryError).

    ``progress``: bars for the generation batches (activations are captured on the way) and the judging
    (rich in a terminal, tqdm in Jupyter, nothing otherwise; True/False forces them, see
    :mod:`personaspace._util.progress`), or a function called with ``(stage, done, total)``.
    """
    from personaspace.engine import PersonaModel
    from personaspace.traits import load_trait

    trait_obj = load_trait(trait) if isinstance(trait, (str, Path)) else trait
    if isinstance(model, PersonaModel):
        overrides.setdefault("model", model.name)
    elif isinstance(model, str):
        overrides.setdefault("model", model)
    elif model is not None:
        raise InvalidArgumentError(f"model must be a PersonaModel or a model name; got {type(model).__name__}")
    judge_obj = None
    if isinstance(judge, str):
        overrides["judge"] = judge
    elif judge is not None:
        judge_obj = get_judge(judge)  # a judge object (identity, score), checked; probed below
        overrides["judge"] = judge_obj.identity
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ExtractionConfig)})
    if unknown:
        names = [f.name for f in dataclasses.fields(ExtractionConfig)]
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known settings: {', '.join(names)}"
        raise InvalidArgumentError(f"unknown extraction setting(s) {', '.join(unknown)}{hint}")
    cfg = dataclasses.replace(config or ExtractionConfig(trait=trait_obj.name), trait=trait_obj.name, **overrides)
    _validate(cfg, trait_obj)
    # Fail fast: everything checkable is checked before the model loads and anything is generated.
    if not isinstance(model, PersonaModel):
        from personaspace.models import classify

        classify(cfg.model)  # an unknown name or a directory that is not a model: one line, now
    judge_obj = get_judge(judge_obj or cfg.judge, cache=True, probe=True)
    checks.writable_dir(Path(out) if out else default_run_dir(cfg))
    run = RunDir(Path(out)) if out else None
    trait_hash = trait_obj.content_hash
    if run is not None:  # an explicit run directory is checked before the model loads
        resumed = run.start(cfg, trait_hash, model.model_hash if isinstance(model, PersonaModel) else None)
    try:
        if not isinstance(model, PersonaModel):
            model = PersonaModel.load(cfg.model)
        if run is None:  # the default directory is named after the settings, trait content and weights
            run = RunDir(default_run_dir(cfg, trait_hash, model.model_hash))
            resumed = run.start(cfg, trait_hash, model.model_hash)
        else:
            run.check_model(cfg, model.model_hash)
        with progress_scope(progress) as bars:
            report = callback(progress) or bars.update
            return _run_pipeline(model, trait_obj, cfg, run, judge_obj, resumed, report, log)
    finally:
        if run is not None:
            run.close()


def _run_pipeline(model, trait_obj, cfg, run, judge_obj, resumed, progress, log) -> ExtractionResult:
    rows = plan_rows(trait_obj, cfg)
    resume = _resume_state(run, rows, cfg, judge_obj) if resumed else None
    if resume and log:
        log(resume["message"])
    started = time.perf_counter()
    _generate(model, rows, cfg, run, progress)
    generation_s = time.perf_counter() - started
    gens = {int(r["id"]): r for r in read_jsonl(run.generations)}  # a regenerated batch's later lines win
    acts = _load_activations(run, len(rows), model.n_layers, model.d_model)
    started = time.perf_counter()
    scores = _judge(judge_obj, trait_obj, rows, gens, run, progress)
    judge_s = time.perf_counter() - started
    unscored = [s for s in scores.values() if not _final_score(s)]
    if unscored and log:
        log(_unscored_advice(unscored))
    kept, reasons = select_pairs(rows, scores, cfg, judged=cfg.judge != "none")
    vectors = _vectors(trait_obj, model, cfg, rows, acts, kept, reasons, judge_obj, unscored)
    separation = heldout_auroc(rows, acts, kept, cfg.cv_folds)
    all_pairs = _all_pairs(rows)
    summary = _summary(trait_obj, model, cfg, rows, scores, kept, reasons, vectors, separation, judge_obj, resumed)
    summary.update(_unconfounded_separation(model, rows, gens, acts, kept, cfg, run))
    summary["resume"] = resume
    summary["unscored"] = len(unscored)
    if unscored:
        summary["advice"] = _unscored_advice(unscored)
    # Judge-independent check: the same cross-validation over every pair, kept or not (pos vs neg prompt).
    summary["separation_all_pairs"] = heldout_auroc(rows, {"response_avg": acts["response_avg"]}, all_pairs, cfg.cv_folds)
    summary["seconds"] = {"generation": round(generation_s, 1), "judging": round(judge_s, 1)}
    headline = summary["headline"]
    for position, vec in vectors.items():
        vec.meta.extra["run_dir"] = str(run.path)
        vec.meta.extra["heldout_auroc_best"] = summary["separation"][position]["best"]
        answer_only = summary["separation_answer_only"].get(position, {}).get("at_default_layer")
        if answer_only:
            vec.meta.extra["answer_only_auroc"] = {**answer_only, "n_pairs": headline.get("n_pairs")}
        vec.pairs = PairDifferences(vec.layers, acts[position][[p for p, _ in kept]] - acts[position][[n for _, n in kept]])
        vec.save(run.vectors / f"{trait_obj.name}.{position}")
    write_json(run.summary, summary)
    return ExtractionResult(run.path, vectors, summary, rows, model)


ANSWER_ONLY_FILE = "answer_only_activations.safetensors"
ANSWER_ONLY_SYSTEM = "none (user question and answer only; the chat template's default system prompt, if it has one)"


def _answer_only_activations(model: Any, rows: list[Row], gens: dict, kept: list[tuple[int, int]], run: RunDir) -> Tensor:
    """``response_avg`` of the kept rows' answers re-read with no system prompt, ``[rows, layers, d]``.

    Rows that are not in a kept pair stay zero. Saved in the run directory and reused
    while it covers the same rows (it is deterministic given the answers and the model).
    """
    ids = sorted({i for pair in kept for i in pair})
    path = run.path / ANSWER_ONLY_FILE
    table = torch.zeros(len(rows), model.n_layers, model.d_model)
    if path.is_file():
        try:
            data = load_file(str(path))
            if data["row_ids"].tolist() == ids:
                table[ids] = data["response_avg"]
                return table
        except Exception:
            pass  # unreadable or stale: recompute it below
    by_id = {r.id: r for r in rows}
    acts = model.capture(
        [{"user": by_id[i].user} for i in ids],
        [gens[i]["response_ids"] for i in ids],
        reductions=("response_avg",),
    )
    table[ids] = acts["response_avg"]
    with atomic_path(path) as tmp:
        save_file({"row_ids": torch.tensor(ids, dtype=torch.long), "response_avg": table[ids].contiguous()}, str(tmp))
    return table


def _unconfounded_separation(model: Any, rows: list[Row], gens: dict, acts: dict[str, Tensor],
                             kept: list[tuple[int, int]], cfg: ExtractionConfig, run: RunDir) -> dict[str, Any]:
    """Instruction-held-out and answer-only separation, and the headline (answer-only, default layer)."""
    from personaspace.engine.layers import default_layer

    layer = default_layer(model.n_layers)
    heldout = crossfit_auroc(rows, acts, kept, cfg.cv_folds, default_layer=layer)
    answer_only = (
        crossfit_auroc(rows, acts, kept, cfg.cv_folds, test_acts=_answer_only_activations(model, rows, gens, kept, run),
                       default_layer=layer)
        if kept else {}
    )
    for entry in answer_only.values():
        entry["reread"] = ANSWER_ONLY_SYSTEM
    main = answer_only.get("response_avg", {})
    at = main.get("at_default_layer")
    headline = {
        "statistic": "answer-only held-out AUROC (response_avg vector, kept answers re-read without system prompt; "
                     "instruction pairs and questions held out)",
        "layer": layer,
        "auroc": at["auroc"] if at else None,
        "ci95": at["ci95"] if at else None,
        "n_pairs": main.get("n_pairs"),
        "best": main.get("best"),
        "best_layer": main.get("best_layer"),
    }
    if not at:
        headline["reason"] = main.get("reason", "no kept pairs")
    return {"separation_heldout_instructions": heldout, "separation_answer_only": answer_only, "headline": headline}


def default_run_dir(cfg: ExtractionConfig, trait_hash: str | None = None, model_hash: str | None = None) -> Path:
    """``runs/extract/<model>/<trait>-<run key>``: a changed trait file or changed weights get a new directory."""
    return Path("runs") / "extract" / cfg.model.replace("/", "--") / f"{cfg.trait}-{run_key(cfg, trait_hash, model_hash)}"


def _resume_state(run: RunDir, rows: list[Row], cfg: ExtractionConfig, judge: Any) -> dict:
    """What a resumed run finds done, and the line that says so."""
    sizes = [len(rows[i : i + cfg.batch_size]) for i in range(0, len(rows), cfg.batch_size)]
    done = len(run.done_batches(sizes))
    identity = getattr(judge, "identity", cfg.judge)
    ids = {r.id for r in rows}
    judged = len(ids & set(run.final_scores(identity)))
    message = f"resuming {run.path}: {done} of {len(sizes)} batches done"
    if cfg.judge != "none":
        message += f", {judged} of {len(rows)} answers judged"
    return {"batches_done": done, "batches": len(sizes), "answers_judged": judged, "answers": len(rows), "message": message}


def _validate(cfg: ExtractionConfig, trait: Any) -> None:
    """Every setting's type and range, before anything is written or loaded (one line per problem)."""
    if not isinstance(cfg.model, str) or not cfg.model.strip():
        raise InvalidArgumentError(f"model must be a model name or directory; got {cfg.model!r}")
    if not isinstance(cfg.judge, str) or not cfg.judge.strip():
        raise InvalidArgumentError(f"judge must be a judge spec such as 'offline'; got {cfg.judge!r}")
    for name, lo, have, what in (
        ("n_instructions", 1, len(trait.instructions), "instruction pairs"),
        ("n_questions", 2, len(trait.extraction_questions), "extraction questions"),
    ):
        try:
            checks.integer(name, getattr(cfg, name), lo=lo, hi=have)
        except InvalidArgumentError:
            raise InvalidArgumentError(
                f"{name} must be {lo}..{have} (trait '{trait.name}' has {have} {what}); got {getattr(cfg, name)!r}"
            ) from None
    checks.positive_int("samples_per_pair", cfg.samples_per_pair)
    checks.positive_int("max_new_tokens", cfg.max_new_tokens)
    checks.positive_int("batch_size", cfg.batch_size)
    checks.non_negative_int("seed", cfg.seed)
    checks.sampling(cfg.temperature, cfg.top_p)
    for name in ("pos_threshold", "neg_threshold", "coherence_threshold"):
        checks.threshold(name, getattr(cfg, name))
    checks.integer("cv_folds", cfg.cv_folds, lo=2)
    rubric = getattr(trait, "rubric", None)
    if cfg.judge != "none" and isinstance(rubric, str):
        missing = [slot for slot in ("{question}", "{answer}") if slot not in rubric]
        if missing:
            raise TraitFileError(f"the rubric of trait '{trait.name}' must contain {' and '.join(missing)} (the judge fills them in)")


# ---- generation + capture ------------------------------------------------------------------


def _generate(model: Any, rows: list[Row], cfg: ExtractionConfig, run: RunDir, progress) -> None:
    batches = [rows[i : i + cfg.batch_size] for i in range(0, len(rows), cfg.batch_size)]
    done = run.done_batches([len(b) for b in batches])
    for b, batch in enumerate(batches):
        if progress:
            progress("generate", b, len(batches))
        if b in done:
            continue
        prompts = [{"system": r.system, "user": r.user} for r in batch]
        out = model.generate(
            prompts,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=cfg.seed * 1_000_003 + b,
            batch_size=len(batch),
            capture_layers=True,
            reductions=POSITIONS,
        )
        tensors = {p: out.activations[p].contiguous() for p in POSITIONS}
        tensors["row_ids"] = torch.tensor([r.id for r in batch], dtype=torch.long)
        tensors["response_tokens"] = out.activations.counts["response_avg"]
        with atomic_path(run.batch_file(b)) as tmp:
            save_file(tensors, str(tmp))
        append_jsonl(
            run.generations,
            [
                {
                    "id": r.id,
                    "batch": b,
                    "side": r.side,
                    "instruction": r.instruction,
                    "question": r.question,
                    "sample": r.sample,
                    "answer": g.text,
                    "response_ids": g.response_ids,
                    "finished": g.finished,
                }
                for r, g in zip(batch, out.generations)
            ],
        )
    if progress:
        progress("generate", len(batches), len(batches))


def _load_activations(run: RunDir, n_rows: int, n_layers: int, d_model: int) -> dict[str, Tensor]:
    acts = {p: torch.zeros(n_rows, n_layers, d_model) for p in POSITIONS}
    seen = torch.zeros(n_rows, dtype=torch.bool)
    for f in sorted(run.acts.glob("batch-*.safetensors")):
        try:
            data = load_file(str(f))
        except Exception as exc:
            raise CorruptFileError(f"Cannot read {f} ({exc}); delete it and rerun to regenerate that batch.") from exc
        ids = data["row_ids"]
        for p in POSITIONS:
            acts[p][ids] = data[p]
        seen[ids] = True
    if not bool(seen.all()):
        raise CorruptFileError(f"{run.acts} is missing activations for {int((~seen).sum())} rows; rerun to complete it.")
    return acts


# ---- judging ---------------------------------------------------------------------------------


def _final_score(row: dict) -> bool:
    """A stored score row that is a final answer: both scores given, or missing for a final reason."""
    return not (is_failure(row.get("trait"), row.get("trait_detail")) or is_failure(row.get("coherence"), row.get("coherence_detail")))


def _unscored_advice(unscored: list[dict]) -> str:
    first = next(
        (d for s in unscored for v, d in ((s.get("trait"), s.get("trait_detail")), (s.get("coherence"), s.get("coherence_detail"))) if is_failure(v, d)),
        "",
    )
    return (
        f"{len(unscored)} answers could not be scored because the judge failed ({first[:200]}); "
        f"rerun the same command to retry the {len(unscored)} unscored answers (nothing else is redone)"
    )


def _judge(judge: Any, trait: Any, rows: list[Row], gens: dict, run: RunDir, progress) -> dict[int, dict]:
    """Trait and coherence scores of every row, read back from ``scores.jsonl`` or asked of the judge.

    Only final answers are stored and count as done; a row whose score failed (the judge reported an
    error, ``Score.is_error``) is returned for this run's report and judged again by the next run. A
    failed row stored by an older version is ignored, and the last line written for a row wins.
    """
    from personaspace.judges.base import JudgeItem

    have = run.final_scores(judge.identity)
    todo = [r for r in rows if r.id not in have]
    chunk = 64
    for start in range(0, len(todo), chunk):
        if progress:
            progress("judge", start, len(todo))
        part = todo[start : start + chunk]
        trait_items = [JudgeItem(r.user, gens[r.id]["answer"], "trait", trait=trait) for r in part]
        coh_items = [JudgeItem(r.user, gens[r.id]["answer"], "coherence") for r in part]
        try:
            trait_scores = judge.score(trait_items)
            coh_scores = judge.score(coh_items)
        except JudgeUnavailableError as exc:
            judged = sum(1 for r in rows if r.id in have and _final_score(have[r.id]))
            raise JudgeUnavailableError(
                f"{exc.message.rstrip('.')}. {judged} of {len(rows)} answers are judged and saved: "
                f"rerun the same command to judge the other {len(rows) - judged}"
            ) from None
        new = [
            {
                "id": r.id,
                "judge": judge.identity,
                "trait": t.value,
                "trait_detail": t.detail,
                "coherence": c.value,
                "coherence_detail": c.detail,
            }
            for r, t, c in zip(part, trait_scores, coh_scores)
        ]
        final = [row for row in new if _final_score(row)]
        if final:  # only final answers are stored; failed ones stay in memory for this run's report
            append_jsonl(run.scores, final)
        have.update({row["id"]: row for row in new})
    if progress:
        progress("judge", len(todo), len(todo))
    return have


def _all_pairs(rows: list[Row]) -> list[tuple[int, int]]:
    """Every (pos row id, neg row id) pair, judged or not."""
    pos = {r.pair: r.id for r in rows if r.side == "pos"}
    return [(pos[r.pair], r.id) for r in rows if r.side == "neg"]


DROP_REASONS = ("no_score", "pos_too_low", "neg_too_high", "incoherent")


def pair_verdict(pos: dict, neg: dict, cfg: ExtractionConfig) -> str:
    """``"kept"``, or why the judged pair (``pos``/``neg`` score rows) is dropped: one of ``DROP_REASONS``."""
    if any(v is None for v in (pos["trait"], neg["trait"], pos["coherence"], neg["coherence"])):
        return "no_score"
    if pos["trait"] < cfg.pos_threshold:
        return "pos_too_low"
    if neg["trait"] >= cfg.neg_threshold:
        return "neg_too_high"
    if min(pos["coherence"], neg["coherence"]) < cfg.coherence_threshold:
        return "incoherent"
    return "kept"


def pair_verdicts(rows: list[Row], scores: dict[int, dict], cfg: ExtractionConfig, *, judged: bool = True) -> list[tuple[Row, Row, str]]:
    """``(pos row, neg row, verdict)`` of every pair with both sides, in pair order (:func:`pair_verdict`;
    every pair is kept when nothing was judged)."""
    by_pair: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        by_pair.setdefault(r.pair, {})[r.side] = r
    out = []
    for pair in sorted(by_pair):
        sides = by_pair[pair]
        if "pos" in sides and "neg" in sides:
            pos, neg = sides["pos"], sides["neg"]
            out.append((pos, neg, pair_verdict(scores[pos.id], scores[neg.id], cfg) if judged else "kept"))
    return out


def select_pairs(rows: list[Row], scores: dict[int, dict], cfg: ExtractionConfig, *, judged: bool = True) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """Kept (pos row id, neg row id) pairs and a count of why the others were dropped (:func:`pair_verdict`)."""
    kept: list[tuple[int, int]] = []
    reasons = dict.fromkeys(DROP_REASONS, 0)
    for pos, neg, verdict in pair_verdicts(rows, scores, cfg, judged=judged):
        if verdict == "kept":
            kept.append((pos.id, neg.id))
        else:
            reasons[verdict] += 1
    return kept, reasons


def rows_from_generations(generations: Iterable[dict]) -> list[Row]:
    """The planned rows (ids, sides and pair indices; no prompt texts) as ``generations.jsonl`` records them."""
    return [Row(int(g["id"]), g["side"], int(g["instruction"]), int(g["question"]), int(g["sample"]), "", "") for g in generations]


# ---- vectors and separation ------------------------------------------------------------------


def _vectors(trait, model, cfg, rows, acts, kept, reasons, judge, unscored=()) -> dict[str, Any]:
    from personaspace.vectors.store import PersonaVector, VectorMeta

    if not kept:
        dropped = f"No pair passed the filter for '{trait.name}' ({sum(reasons.values())} pairs dropped: " + ", ".join(
            f"{k} {v}" for k, v in reasons.items() if v
        )
        if unscored:  # the judge failed: retrying is the fix, not other settings
            raise JudgeUnavailableError(f"{dropped}); {_unscored_advice(list(unscored))}.")
        raise PersonaspaceError(f"{dropped}). Generate more samples, lower the thresholds, or use another judge.")
    out = {}
    for position in POSITIONS:
        meta = VectorMeta(
            trait=trait.name,
            model=model.name,
            model_hash=model.model_hash,
            position=position,
            method="mean_diff",
            n_pos=len(kept),
            n_neg=len(kept),
            n_kept=len(kept),
            n_dropped=sum(reasons.values()),
            judge=getattr(judge, "identity", str(judge)) if cfg.judge != "none" else "none (all pairs kept)",
            thresholds=None if cfg.judge == "none" else {
                "pos_trait_min": cfg.pos_threshold,
                "neg_trait_below": cfg.neg_threshold,
                "coherence_min": cfg.coherence_threshold,
            },
            extra={"trait_hash": trait.content_hash, "config": dataclasses.asdict(cfg)},
        )
        out[position] = PersonaVector(mean_difference(acts[position], kept), meta)
    return out


def _summary(trait, model, cfg, rows, scores, kept, reasons, vectors, separation, judge, resumed) -> dict:
    def mean_of(side: str, key: str) -> float | None:
        vals = [scores[r.id][key] for r in rows if r.side == side and scores[r.id][key] is not None]
        return round(float(np.mean(vals)), 2) if vals else None

    n_pairs = len(rows) // 2
    return {
        "trait": trait.name,
        "model": model.name,
        "model_hash": model.model_hash,
        "judge": getattr(judge, "identity", "none"),
        "thresholds": {"pos_trait_min": cfg.pos_threshold, "neg_trait_below": cfg.neg_threshold, "coherence_min": cfg.coherence_threshold},
        "pairs": n_pairs,
        "kept": len(kept),
        "dropped": reasons,
        "mean_scores": {
            side: {"trait": mean_of(side, "trait"), "coherence": mean_of(side, "coherence")} for side in SIDES
        },
        "norms": {p: [round(float(x), 4) for x in v.norms()] for p, v in vectors.items()},
        "separation": separation,
        "resumed": resumed,
        "layer_convention": "layer L = output of decoder block L, counted from 0",
    }

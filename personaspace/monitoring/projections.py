"""Monitoring with a persona vector: projections per prompt and per token, and flagging training data.

Projections are scalar ``h[L] . v_hat[L]``: the residual stream at layer ``L`` (output of block ``L``)
onto the unit vector row read from the same layer ``L`` unless another read layer is given.

- :func:`monitor`: for each prompt, the projection of the last prompt token *before* generation
  (the paper's predictor of the behaviour that follows), of every response token, and of the
  response-token mean; optionally the judged trait score of each response.
- :func:`monitor_trait`: the prediction experiment -- the trait's evaluation questions under its
  eliciting, suppressing and no system prompts; correlation of the last-prompt-token projection with
  the judged trait score of the answer (Pearson with a bootstrap CI, Spearman, n), plus the same
  correlation within each system prompt so a between-prompt effect is not mistaken for more.
- :func:`flag_dataset`: for a chat JSONL dataset, per sample the projection difference between the
  training response and the model's own response (``dP``), the cheap proxy (response-mean minus
  last-prompt-token projection of the training sample), a ranking, and a dataset-level score.
- :func:`token_projections`: per-token values for one text (drawn by :func:`personaspace.viz.steering.token_view_html`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from personaspace._util import checks
from personaspace._util.io import append_jsonl, read_jsonl, write_text
from personaspace._util.stats import bootstrap_ci, correlation_report, mean_ci
from personaspace.data.chat import load_chat_samples
from personaspace.engine.chat import Chat
from personaspace.engine.forward import TokenBatch, run
from personaspace.engine.layers import check_layer, default_monitor_layer
from personaspace.errors import DatasetError, PersonaspaceError
from personaspace.judges import JudgeItem, get_judge
from personaspace.vectors.store import PersonaVector

if TYPE_CHECKING:
    from personaspace.engine.model import PersonaModel

__all__ = [
    "TokenProjection",
    "MonitorResult",
    "TraitMonitorResult",
    "FlagResult",
    "token_projections",
    "monitor",
    "monitor_trait",
    "flag_dataset",
]


def _direction(vector: PersonaVector | Tensor, layer: int, read: int | None, model: PersonaModel) -> tuple[Tensor, int]:
    """Unit direction for projections at ``layer`` (row ``read`` if given), and the row used."""
    if isinstance(vector, PersonaVector):
        vector.check_compatible(model.d_model, None, None)
        row = layer if read is None else read
        u = vector.unit(row)
        return u, vector.layer_index(row)
    v = torch.as_tensor(vector).float()
    if v.ndim != 1 or v.shape[0] != model.d_model:
        from personaspace.errors import VectorShapeError

        raise VectorShapeError(f"A monitoring direction must be [d_model={model.d_model}], got shape {tuple(v.shape)}.")
    return v / v.norm().clamp(min=1e-12), layer


# --------------------------------------------------------------------------------------------
# per-token projections


@dataclass
class TokenProjection:
    """Per-token projections of one (prompt, response) pair at one layer."""

    tokens: list[str]
    values: list[float]
    n_prompt: int  # the first n_prompt tokens are the (chat-formatted) prompt
    layer: int
    read_layer: int

    @property
    def prompt_last(self) -> float:
        return self.values[self.n_prompt - 1]

    @property
    def response(self) -> list[float]:
        return self.values[self.n_prompt :]

    @property
    def response_avg(self) -> float | None:
        r = self.response
        return float(np.mean(r)) if r else None

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "read_layer": self.read_layer,
            "n_prompt": self.n_prompt,
            "prompt_last": round(self.prompt_last, 5),
            "response_avg": None if self.response_avg is None else round(self.response_avg, 5),
            "tokens": self.tokens,
            "values": [round(v, 5) for v in self.values],
        }


def _project(hidden: Tensor, units: Tensor) -> Tensor:
    """``hidden @ u`` for one direction ``[d_model]``, or stacked on a last axis for each row of ``[k, d_model]``
    (one product per direction: the same kernel, so the same values, as projecting onto each alone)."""
    return hidden @ units if units.ndim == 1 else torch.stack([hidden @ u for u in units], dim=-1)


@torch.inference_mode()
def _token_values(
    model: PersonaModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    units: Mapping[int, Tensor],
    *,
    batch_size: int = 16,
) -> list[dict[int, list[Any]]]:
    """Per-token projections at several layers for (prompt, response) id pairs; one early-exit forward per batch.

    ``units[L]`` is one unit direction ``[d_model]`` (a value per token) or several, ``[k, d_model]`` (``k``
    values per token, all from the same forward)."""
    layers = sorted(units)
    out: list[dict[int, list[Any]]] = []
    for start in range(0, len(prompt_ids), batch_size):
        p_batch, r_batch = prompt_ids[start : start + batch_size], response_ids[start : start + batch_size]
        batch = TokenBatch.pad(model, p_batch, r_batch)
        read = {L: (lambda hidden, u=units[L]: _project(hidden.float(), u.to(hidden.device)).cpu()) for L in layers}  # [batch, seq(, k)]
        found = run(model, batch, read=read).layers
        for i, n in enumerate(batch.lengths):
            out.append({L: found[L][i, :n].tolist() for L in layers})
    return out


def token_projections(
    model: PersonaModel,
    vector: PersonaVector | Tensor,
    prompts: Sequence[Any],
    responses: Sequence[str | Sequence[int]],
    *,
    layer: int | None = None,
    read_layer: int | None = None,
    system: str | None = None,
) -> list[TokenProjection]:
    """Projection of every token (prompt and response) onto the vector at ``layer``."""
    layer = check_layer(default_monitor_layer(model.n_layers) if layer is None else layer, model.n_layers)
    u, row = _direction(vector, layer, read_layer, model)
    p_ids = [model.prompt_ids(p, system) for p in prompts]
    r_ids = [model.response_ids(r) for r in responses]
    values = _token_values(model, p_ids, r_ids, {layer: u})
    result = []
    for p, r, v in zip(p_ids, r_ids, values):
        tokens = [model.tokenizer.decode([t]) for t in list(p) + list(r)]
        result.append(TokenProjection(tokens, v[layer], len(p), layer, row))
    return result


def prompt_last_projections(
    model: PersonaModel, prompts: Sequence[Any], directions: Mapping[int, Sequence[PersonaVector | Tensor]], *, system: str | None = None
) -> dict[int, np.ndarray]:
    """What :func:`monitor` reports as ``prompt_last`` (the last prompt token before generation, projected onto a
    unit direction, rounded to 5 decimals), for many directions from one early-exit forward per batch.

    ``directions[L]`` are the directions read at layer ``L`` (a :class:`PersonaVector` gives its row ``L``).
    Returns ``{L: [prompts, len(directions[L])]}``.
    """
    units = {L: torch.stack([_direction(d, check_layer(L, model.n_layers), None, model)[0] for d in ds]) for L, ds in directions.items()}
    p_ids = [model.prompt_ids(p, system) for p in prompts]
    values = _token_values(model, p_ids, [[] for _ in p_ids], units)
    return {L: np.asarray([[round(x, 5) for x in v[L][len(p) - 1]] for p, v in zip(p_ids, values)]) for L in units}


# --------------------------------------------------------------------------------------------
# monitoring prompts and generations


@dataclass
class MonitorResult:
    """Per prompt: projection before generation, per response token, and the response mean."""

    model: str
    vector: dict
    layer: int
    read_layer: int
    rows: list[dict]
    judge: str | None = None
    correlation: dict | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("model", "vector", "layer", "read_layer", "judge", "correlation", "rows")}


def _vector_info(vector: PersonaVector | Tensor) -> dict:
    if isinstance(vector, PersonaVector):
        return {"trait": vector.trait, "model": vector.model, "position": vector.position}
    return {"trait": "custom direction", "model": None, "position": None}


def monitor(
    model: PersonaModel,
    vector: PersonaVector | Tensor,
    prompts: Sequence[Any],
    *,
    layer: int | None = None,
    read_layer: int | None = None,
    responses: Sequence[str] | None = None,
    system: str | None = None,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    seed: int = 0,
    judge: Any = None,
    trait: Any = None,
    tokens: bool = True,
) -> MonitorResult:
    """Project prompts (last token, before generation) and responses (every token) onto the vector.

    Without ``responses`` the model answers first (greedy by default). With a ``judge`` and a
    ``trait`` every response is scored and the correlation of the last-prompt-token projection with
    the score is reported.
    """
    layer = check_layer(default_monitor_layer(model.n_layers) if layer is None else layer, model.n_layers)
    if not isinstance(prompts, str) and not prompts:
        raise DatasetError("No prompts to monitor.")
    prompts = checks.prompt_list(prompts)
    if responses is not None:
        responses = checks.prompt_list(responses, "responses", allow_empty=True)
    checks.sampling(temperature, 1.0, max_new_tokens)
    if judge is not None:  # checked before anything is generated
        if trait is None:
            raise PersonaspaceError("Judging responses needs the trait (its rubric and anchors).")
        judge = get_judge(judge, cache=True, probe=True)
    u, row = _direction(vector, layer, read_layer, model)
    p_ids = [model.prompt_ids(p, system) for p in prompts]
    if responses is None:
        gen = model.generate(list(prompts), system=system, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        r_ids = [g.response_ids for g in gen]
        texts = gen.texts
    else:
        if len(responses) != len(prompts):
            raise DatasetError(f"Got {len(prompts)} prompts but {len(responses)} responses.")
        r_ids = [model.response_ids(r) for r in responses]
        texts = list(responses)
    values = _token_values(model, p_ids, r_ids, {layer: u})
    rows = []
    for i, (p, r, v) in enumerate(zip(p_ids, r_ids, values)):
        vals = v[layer]
        resp = vals[len(p) :]
        row_d = {
            "prompt": prompts[i] if isinstance(prompts[i], (str, dict)) else str(prompts[i]),
            "response": texts[i],
            "prompt_last": round(vals[len(p) - 1], 5),
            "response_avg": round(float(np.mean(resp)), 5) if resp else None,
            "n_response_tokens": len(resp),
        }
        if tokens:
            row_d["response_tokens"] = [model.tokenizer.decode([t]) for t in r]
            row_d["response_values"] = [round(x, 5) for x in resp]
        rows.append(row_d)
    result = MonitorResult(model.name, _vector_info(vector), layer, row, rows)
    if judge is not None:
        from personaspace.traits import load_trait

        if trait is None:
            raise PersonaspaceError("Judging responses needs the trait (its rubric and anchors).")
        trait = load_trait(trait) if isinstance(trait, str) else trait
        questions = [p if isinstance(p, str) else (p.user if isinstance(p, Chat) else p.get("user", str(p))) for p in prompts]
        scores = judge.score([JudgeItem(q, t, "trait", trait) for q, t in zip(questions, texts)])
        for row_d, s in zip(rows, scores):
            row_d["trait_score"] = s.value
        result.judge = judge.identity
        result.correlation = correlation_report([r["prompt_last"] for r in rows], [r["trait_score"] for r in rows])
    return result


@dataclass
class TraitMonitorResult:
    """The prediction experiment: does the projection before generation predict the judged trait?"""

    trait: str
    model: str
    judge: str
    layer: int
    read_layer: int
    vector: dict
    settings: dict
    overall: dict  # prompt_last projection vs trait score
    response_overall: dict  # response_avg projection vs trait score (for comparison)
    within: dict  # mean within-system-prompt correlation
    by_condition: list[dict]
    rows: list[dict] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("trait", "model", "judge", "layer", "read_layer", "vector", "settings")}
        d.update(overall=self.overall, response_overall=self.response_overall, within=self.within, by_condition=self.by_condition, rows=self.rows)
        return d


def monitor_trait(
    model: PersonaModel,
    trait: Any,
    vector: PersonaVector | Tensor,
    *,
    layer: int | None = None,
    read_layer: int | None = None,
    judge: Any = "offline",
    n_questions: int = 10,
    n_instructions: int = 2,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    seed: int = 0,
) -> TraitMonitorResult:
    """Evaluation questions x {eliciting, suppressing, no} system prompts -> projection vs judged trait.

    Conditions: the first ``n_instructions`` pos and neg instructions of the trait and no system
    prompt, so the trait expression varies. Reports the pooled correlation (what the paper reports,
    r = 0.76-0.97 on 7B models) and the mean correlation within each condition (how much of the
    signal is more than "which system prompt was used").
    """
    from personaspace.traits import load_trait

    trait = load_trait(trait) if isinstance(trait, str) else trait
    checks.positive_int("n_questions", n_questions)
    checks.integer("n_instructions", n_instructions, lo=0)
    judge = get_judge(judge, cache=True, probe=True)  # spec, key and endpoint checked before any generation
    questions = list(trait.evaluation_questions[:n_questions])
    conditions: list[tuple[str, str | None]] = [("none", None)]
    for i, pair in enumerate(trait.instructions[:n_instructions]):
        conditions += [(f"pos{i}", pair.pos), (f"neg{i}", pair.neg)]
    prompts = [Chat(user=q, system=s) for _, s in conditions for q in questions]
    labels = [c for c, _ in conditions for _ in questions]
    res = monitor(
        model,
        vector,
        prompts,
        layer=layer,
        read_layer=read_layer,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        judge=judge,
        trait=trait,
        tokens=False,
    )
    rows = []
    for lab, p, r in zip(labels, prompts, res.rows):
        rows.append({"condition": lab, "system": p.system, "question": p.user, **{k: v for k, v in r.items() if k != "prompt"}})
    y = [r["trait_score"] for r in rows]
    by_condition, within_r = [], []
    for lab, _ in conditions:
        sel = [r for r in rows if r["condition"] == lab]
        xs, ys = [r["prompt_last"] for r in sel], [r["trait_score"] for r in sel]
        scored = [s for s in ys if s is not None]
        c = correlation_report(xs, ys, n_boot=200)
        by_condition.append(
            {
                "condition": lab,
                "projection": mean_ci(xs),
                "trait": mean_ci(scored),
                "pearson_within": c["pearson"],
                "n": len(sel),
            }
        )
        if np.isfinite(c["pearson"]):
            within_r.append(c["pearson"])
    within = {
        "mean_pearson": float(np.mean(within_r)) if within_r else float("nan"),
        "conditions": len(within_r),
        "ci95": list(bootstrap_ci(within_r)) if len(within_r) > 1 else [float("nan")] * 2,
    }
    settings = {
        "n_questions": len(questions),
        "conditions": [c for c, _ in conditions],
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "projection": "last prompt token (before generation), h[layer] . v_hat[read_layer]",
    }
    return TraitMonitorResult(
        trait.name,
        model.name,
        judge.identity,
        res.layer,
        res.read_layer,
        res.vector,
        settings,
        res.correlation,
        correlation_report([r["response_avg"] for r in rows], y),
        within,
        by_condition,
        rows,
    )


# --------------------------------------------------------------------------------------------
# data flagging


@dataclass
class FlagResult:
    """Per-sample scores ranked (most trait-inducing first) and the dataset-level scores."""

    model: str
    vector: dict
    layer: int
    read_layer: int
    dataset: str
    rank_by: str
    rows: list[dict]
    score: dict | None  # mean dP with 95% CI and n; None in proxy-only mode
    proxy_score: dict
    agreement: dict | None  # correlation of dP with the proxy over samples
    settings: dict

    def to_dict(self, rows: bool = False) -> dict:
        d = {k: getattr(self, k) for k in ("model", "vector", "layer", "read_layer", "dataset", "rank_by", "score", "proxy_score", "agreement", "settings")}
        if rows:
            d["rows"] = self.rows
        return d


def flag_dataset(
    model: PersonaModel,
    vector: PersonaVector | Tensor,
    data: str | Path,
    *,
    layer: int | None = None,
    read_layer: int | None = None,
    proxy_only: bool = False,
    max_new_tokens: int = 64,
    limit: int | None = None,
    batch_size: int = 32,
    work_file: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FlagResult:
    """Score a chat dataset for how much each sample would push the model along the vector.

    Per sample ``i`` (``a`` = mean over response tokens of the residual at ``layer``, ``v_hat`` = unit
    vector): ``dP_i = (a(x_i, y_i) - a(x_i, y'_i)) . v_hat`` with ``y'`` the model's own greedy answer,
    and the proxy ``a(x_i, y_i) . v_hat - h_last(x_i) . v_hat`` (no generation needed). The dataset
    score is the mean ``dP`` (or the mean proxy with ``proxy_only``) with a bootstrap 95% interval.
    ``work_file`` keeps finished samples so an interrupted run resumes.
    """
    layer = check_layer(default_monitor_layer(model.n_layers) if layer is None else layer, model.n_layers)
    u, row = _direction(vector, layer, read_layer, model)
    samples = load_chat_samples(data, limit)
    done: dict[int, dict] = {}
    settings = {"proxy_only": proxy_only, "max_new_tokens": max_new_tokens, "own_response": "greedy", "limit": limit}
    if work_file is not None:
        for r in read_jsonl(work_file):
            if r.get("_settings") == settings and r.get("_layer") == [layer, row]:
                done[r["line"]] = r
    todo = [s for s in samples if s.index not in done]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        p_ids = [model.prompt_ids(s.prompt) for s in chunk]
        y_ids = [model.response_ids(s.response) for s in chunk]
        train_vals = _token_values(model, p_ids, y_ids, {layer: u})
        own_texts, own_vals = None, None
        if not proxy_only:
            gen = model.generate([list(p) for p in p_ids], max_new_tokens=max_new_tokens, batch_size=batch_size)
            own_texts = gen.texts
            own_vals = _token_values(model, p_ids, [g.response_ids for g in gen], {layer: u})
        new_rows = []
        for k, s in enumerate(chunk):
            vals = train_vals[k][layer]
            n_p = len(p_ids[k])
            train_resp = vals[n_p:]
            train_avg = float(np.mean(train_resp)) if train_resp else float("nan")
            r = {
                "line": s.index,
                "prompt": s.prompt.user,
                "response": s.response,
                "prompt_last": vals[n_p - 1],
                "train_response_avg": train_avg,
                "proxy": train_avg - vals[n_p - 1],
                "_settings": settings,
                "_layer": [layer, row],
            }
            if own_vals is not None:
                own_resp = own_vals[k][layer][n_p:]
                own_avg = float(np.mean(own_resp)) if own_resp else float("nan")
                r.update(own_response=own_texts[k], own_response_avg=own_avg, delta_p=train_avg - own_avg)
            new_rows.append(r)
            done[s.index] = r
        if work_file is not None:
            append_jsonl(work_file, new_rows)
        if progress:
            progress(len(samples) - len(todo) + start + len(chunk), len(samples))
    rows = [{k: v for k, v in done[s.index].items() if not k.startswith("_")} for s in samples]
    rank_by = "proxy" if proxy_only else "delta_p"
    rows.sort(key=lambda r: -np.nan_to_num(r[rank_by], nan=-np.inf))
    for rank, r in enumerate(rows, start=1):
        r["rank"] = rank
    score = None if proxy_only else mean_ci([r["delta_p"] for r in rows])
    proxy = mean_ci([r["proxy"] for r in rows])
    agreement = None
    if not proxy_only:
        agreement = correlation_report([r["delta_p"] for r in rows], [r["proxy"] for r in rows], n_boot=500)
    return FlagResult(model.name, _vector_info(vector), layer, row, str(data), rank_by, rows, score, proxy, agreement, settings)


def write_flagged(result: FlagResult, path: str | Path) -> None:
    """Ranked JSONL: a header line with the dataset-level scores, then one line per sample."""
    lines = [json.dumps({"header": result.to_dict()}, default=str)]
    lines += [json.dumps(r, default=str) for r in result.rows]
    write_text(path, "\n".join(lines) + "\n")

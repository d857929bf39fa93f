"""Steering: a small text syntax for interventions, steered generation beside unsteered, and its evaluation.

Where a vector was *read* (which row of the persona vector) and where it is *applied* (which decoder
block output it is added to) are separate, explicit parts of every specification and of every output:

=============================  ==========================================================================
``evil:+2.0@L12``              add ``2.0 * v[12]`` to the output of block 12 (read L12, applied L12)
``evil[L15]:+2.0@L12``         add ``2.0 * v[15]`` at block 12 (read L15, applied L12)
``evil:-1.5@L10-14``           rows 10..14, each added at its own layer
``evil[L12]:+1@L10-14``        the one row 12 added at layers 10..14
``evil@all``                   ablate (project out ``v_hat[L]``) at every layer, row per layer
``evil[L12]@all/response``     ablate the row-12 direction at every layer, response positions only
``evil<=0.0@L10-20``           cap: clamp ``h . v_hat`` to at most 0 at layers 10..20
``-2<=evil<=1@L10``            clamp into ``[-2, 1]``; ``evil>=-2@L10`` for a lower bound only
``random(evil,3):+2@L12``      a random direction with the per-layer norms of ``evil`` (seed 3): the control
=============================  ==========================================================================

The part after ``@`` is any layer list :func:`~personaspace.engine.layers.resolve_layers` accepts
(``L12``, ``10-20``, ``4,8,12``, ``all``; layer ``L`` = output of block ``L``, from 0). An optional
``/prompt``, ``/response`` or ``/all`` sets the positions (default: the ``scope`` argument, ``all``).
Coefficients multiply the raw, unnormalised vector (the persona_vectors convention). Cap bounds are
projections onto the unit direction, in the same units as :mod:`personaspace.monitoring.projections` reports.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from personaspace._util import checks
from personaspace.engine.context import SCOPES, StepContext, position_ids
from personaspace.engine.callbacks import ContextSlot, layer_callbacks
from personaspace.engine.generation import pad_batch
from personaspace.engine.interventions import Ablate, Add, Cap, Intervention, by_layer
from personaspace.engine.layers import check_layer, layer_index, resolve_layers
from personaspace.errors import InterventionSpecError, LayerOutOfRangeError, VectorShapeError
from personaspace._util.stats import bootstrap_ci, mean_ci
from personaspace.vectors.store import PersonaVector, random_like

if TYPE_CHECKING:  # shape hints only
    from jaxtyping import Float

    from personaspace.engine.model import PersonaModel

__all__ = [
    "KINDS",
    "NEUTRAL_PROMPTS",
    "SteerSpec",
    "ResolvedSteer",
    "SteerResult",
    "SteeringReport",
    "parse_spec",
    "parse_specs",
    "resolve_specs",
    "steer",
    "evaluate_steering",
    "next_token_kl",
    "random_control",
]

KINDS = ("add", "ablate", "cap")

# Everyday requests with no persona in them: the KL of steered vs unsteered next-token distributions
# on these measures how much a steer disturbs ordinary behaviour. Written for this toolkit.
NEUTRAL_PROMPTS = (
    "What is the capital of France?",
    "Give me a simple recipe for pancakes.",
    "How many days are there in a leap year?",
    "Explain what photosynthesis is in two sentences.",
    "Suggest a name for a small grey cat.",
    "How do I convert Celsius to Fahrenheit?",
    "List three common fruits.",
    "What does a librarian do?",
)

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_VEC = rf"(?P<name>random\(\s*{_NAME}\s*(?:,\s*\d+\s*)?\)|{_NAME})(?:\[\s*[Ll]?(?P<read>-?\d+)\s*\])?"
_TAIL = r"@(?P<layers>[^/@\s]+)(?:/(?P<scope>[A-Za-z]+))?"
_ADD_RE = re.compile(rf"^{_VEC}\s*:\s*(?P<coef>{_NUM}){_TAIL}$")
_ABLATE_RE = re.compile(rf"^{_VEC}{_TAIL}$")
_CAP_RE = re.compile(
    rf"^(?:(?P<lo>{_NUM})\s*<=\s*)?{_VEC}\s*(?:(?P<op><=|>=)\s*(?P<bound>{_NUM}))?{_TAIL}$"
)
_RANDOM_RE = re.compile(rf"^random\(\s*(?P<of>{_NAME})\s*(?:,\s*(?P<seed>\d+)\s*)?\)$")

_EXAMPLES = {
    "add": "evil:+2.0@L12, evil[L15]:+2.0@L12, evil:-1@L10-14/response",
    "ablate": "evil@all, svv[L12]@all, evil@L10-20/response",
    "cap": "evil<=0.0@L10-20, evil>=-2@L12, -2<=evil<=1@L12",
}


# --------------------------------------------------------------------------------------------
# specifications


@dataclass(frozen=True)
class SteerSpec:
    """One parsed intervention: what vector, which row (``read``), which layers (``layers``), how.

    ``read`` is None when each applied layer uses its own row. ``layers`` is kept as text until a
    model is known (it may say ``all``).
    """

    kind: str
    name: str
    layers: str
    read: int | None = None
    coef: float | None = None
    min: float | None = None
    max: float | None = None
    scope: str | None = None
    text: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InterventionSpecError(f"Unknown intervention kind {self.kind!r}; use one of {', '.join(KINDS)}.")
        if self.scope is not None and self.scope not in SCOPES:
            raise InterventionSpecError(
                f"Unknown scope {self.scope!r} in {self.text or self.name!r}; use /{', /'.join(SCOPES)}."
            )
        if self.kind == "add" and (self.coef is None or not math.isfinite(self.coef)):
            raise InterventionSpecError(f"Steering spec {self.text!r} needs a finite coefficient, e.g. {self.name}:+2.0@L12.")
        if self.kind == "cap":
            if self.min is None and self.max is None:
                raise InterventionSpecError(f"Cap spec {self.text!r} needs a bound, e.g. {self.name}<=0.0@L12.")
            if self.min is not None and self.max is not None and self.min > self.max:
                raise InterventionSpecError(f"Cap spec {self.text!r} has its lower bound {self.min} above its upper bound {self.max}.")

    def with_scope(self, scope: str) -> SteerSpec:
        """The same spec with a default scope filled in (an explicit ``/scope`` wins)."""
        if self.scope is not None:
            return self
        return SteerSpec(self.kind, self.name, self.layers, self.read, self.coef, self.min, self.max, scope, self.text)

    def with_name(self, name: str) -> SteerSpec:
        return SteerSpec(self.kind, name, self.layers, self.read, self.coef, self.min, self.max, self.scope, self.text)

    def with_coef(self, coef: float) -> SteerSpec:
        return SteerSpec(self.kind, self.name, self.layers, self.read, float(coef), self.min, self.max, self.scope, self.text)

    def to_text(self) -> str:
        """The canonical spec string (parses back to an equal spec)."""
        vec = self.name + (f"[L{self.read}]" if self.read is not None else "")
        tail = f"@{self.layers}" + (f"/{self.scope}" if self.scope else "")
        if self.kind == "add":
            return f"{vec}:{self.coef:+g}{tail}"
        if self.kind == "ablate":
            return f"{vec}{tail}"
        if self.min is not None and self.max is not None:
            return f"{self.min:g}<={vec}<={self.max:g}{tail}"
        if self.max is not None:
            return f"{vec}<={self.max:g}{tail}"
        return f"{vec}>={self.min:g}{tail}"


def parse_spec(text: str, kind: str = "add") -> SteerSpec:
    """Parse one ``--add`` / ``--ablate`` / ``--cap`` specification (grammar in the module doc)."""
    if kind not in KINDS:
        raise InterventionSpecError(f"Unknown intervention kind {kind!r}; use one of {', '.join(KINDS)}.")
    raw = str(text).strip()
    compact = re.sub(r"\s+", "", raw)
    pattern = {"add": _ADD_RE, "ablate": _ABLATE_RE, "cap": _CAP_RE}[kind]
    m = pattern.match(compact)
    if m is None:
        raise InterventionSpecError(_explain(raw, compact, kind))
    g = m.groupdict()
    name = re.sub(r"\s+", "", g["name"])
    read = int(g["read"]) if g.get("read") is not None else None
    layers = g["layers"]
    _check_layer_text(layers, raw)
    scope = g.get("scope")
    if scope is not None:
        scope = scope.lower()
    if kind == "add":
        return SteerSpec("add", name, layers, read, coef=float(g["coef"]), scope=scope, text=raw)
    if kind == "ablate":
        return SteerSpec("ablate", name, layers, read, scope=scope, text=raw)
    lo = float(g["lo"]) if g.get("lo") is not None else None
    op, bound = g.get("op"), g.get("bound")
    hi = None
    if op == "<=":
        hi = float(bound)
    elif op == ">=":
        if lo is not None:
            raise InterventionSpecError(f"Cap spec {raw!r} mixes 'a<=name' with 'name>=b'; write -2<=evil<=1@L12.")
        lo = float(bound)
    if lo is None and hi is None:
        raise InterventionSpecError(f"Cap spec {raw!r} needs a bound with '<=' or '>='. Examples: {_EXAMPLES['cap']}.")
    return SteerSpec("cap", name, layers, read, min=lo, max=hi, scope=scope, text=raw)


def parse_specs(add: Sequence[str] = (), ablate: Sequence[str] = (), cap: Sequence[str] = ()) -> list[SteerSpec]:
    """Parse CLI-style lists of specs, in the order add, ablate, cap (the order they are applied)."""
    specs = [parse_spec(t, "add") for t in add]
    specs += [parse_spec(t, "ablate") for t in ablate]
    specs += [parse_spec(t, "cap") for t in cap]
    return specs


def _check_layer_text(layers: str, raw: str) -> None:
    if layers.lower() == "all":
        return
    if not re.fullmatch(r"(?:[Ll]?-?\d+(?:-[Ll]?\d+)?)(?:,[Ll]?-?\d+(?:-[Ll]?\d+)?)*", layers):
        raise InterventionSpecError(
            f"Cannot read the layers {layers!r} in {raw!r}: use L12, 10-20, 4,8,12 or all (layer L = output of block L)."
        )


def _layers_arg(layers: str) -> str:
    """The layer text of a spec in the form ``resolve_layers`` reads (``L`` prefixes dropped)."""
    return "all" if layers.lower() == "all" else re.sub(r"[Ll]", "", layers)


def _explain(raw: str, compact: str, kind: str) -> str:
    """A specific reason a spec did not parse, and examples of the right form."""
    hint = ""
    if "@" not in compact:
        hint = "it says where to apply the vector with '@LAYERS' (e.g. @L12, @10-20, @all) -- there is no default layer."
    elif kind == "add" and ":" not in compact.split("@", 1)[0]:
        hint = "an --add spec needs a coefficient after ':' (e.g. evil:+2.0@L12)."
    elif kind == "cap" and not re.search(r"<=|>=", compact):
        hint = "a --cap spec needs a bound with '<=' or '>=' (e.g. evil<=0.0@L12)."
    elif compact.count("@") > 1:
        hint = "it has more than one '@'."
    elif "[" in compact and not re.search(r"\[\s*[Ll]?-?\d+\s*\]", compact):
        hint = "the read layer in brackets must be one layer, e.g. evil[L15]."
    else:
        hint = "the vector name must start with a letter and the coefficient must be a number."
    return f"Cannot parse --{kind} {raw!r}: {hint} Examples: {_EXAMPLES[kind]}."


# --------------------------------------------------------------------------------------------
# resolution against vectors and a model


@dataclass
class ResolvedSteer:
    """A spec bound to a vector and a model: the engine intervention plus what to print about it."""

    spec: SteerSpec
    vector: PersonaVector
    read_layers: list[int]  # row used at each applied layer (same length as applied_layers)
    applied_layers: list[int]
    intervention: Intervention
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line naming the vector, its source, where it was read and where it is applied."""
        s = self.spec
        if s.kind == "add":
            what = f"add x{s.coef:+g}"
        elif s.kind == "ablate":
            what = "ablate"
        else:
            what = "cap " + _cap_text(s.min, s.max)
        v = self.vector
        return (
            f"{what} {s.name} ({v.position} of {v.model}) read {_layer_text(self.read_layers)} -> applied "
            f"{_layer_text(self.applied_layers)}, scope {s.scope or 'all'}"
        )

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        return {
            "spec": s.to_text(),
            "kind": s.kind,
            "vector": s.name,
            "vector_model": self.vector.model,
            "vector_position": self.vector.position,
            "read_layers": self.read_layers,
            "applied_layers": self.applied_layers,
            "coef": s.coef,
            "min": s.min,
            "max": s.max,
            "scope": s.scope or "all",
            "added_norm": self.added_norms() if s.kind == "add" else None,
        }

    def added_norms(self) -> list[float]:
        """``|coef * v[read]|`` at each applied layer (how big the push is, in residual units)."""
        return [round(abs(self.spec.coef or 0.0) * float(self.vector.at(r).norm()), 4) for r in self.read_layers]


def _cap_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"into [{lo:g}, {hi:g}]"
    return f"<= {hi:g}" if hi is not None else f">= {lo:g}"


def _layer_text(layers: Sequence[int]) -> str:
    """``L12``, ``L10-14``, or ``L3,L7,L9``."""
    layers = list(layers)
    if not layers:
        return "-"
    if len(layers) == 1:
        return f"L{layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"L{layers[0]}-{layers[-1]}"
    if len(set(layers)) == 1:
        return f"L{layers[0]} (x{len(layers)})"
    return ",".join(f"L{x}" for x in layers)


def _lookup(name: str, vectors: Mapping[str, PersonaVector], spec: SteerSpec) -> PersonaVector:
    m = _RANDOM_RE.match(name)
    if m and name not in vectors:
        base = _lookup(m["of"], vectors, spec)
        seed = int(m["seed"] or 0)
        return random_like(base, seed=seed, trait=f"random({base.trait},{seed})")
    if name in vectors:
        return vectors[name]
    available = ", ".join(sorted(vectors)) or "none"
    raise InterventionSpecError(
        f"No vector named {name!r} for {spec.text or spec.to_text()!r}. Available: {available}. "
        f"Point --vectors at a directory holding it, or extract it first."
    )


def resolve_specs(
    specs: Sequence[SteerSpec | str],
    vectors: Mapping[str, PersonaVector],
    model: PersonaModel,
    *,
    scope: str = "all",
    warn: bool = True,
) -> list[ResolvedSteer]:
    """Bind specs to vectors and a model: check widths, layers and rows; build engine interventions.

    A vector extracted from another model of the same width is accepted (zero-shot transfer) with a
    warning that names both models. Without an explicit read row the vector must have a row for every
    applied layer; with one, only the width has to match (so a row can be moved to a deeper model).
    """
    if scope not in SCOPES:
        raise InterventionSpecError(f"Unknown scope {scope!r}; use one of {', '.join(SCOPES)}.")
    out: list[ResolvedSteer] = []
    for spec in specs:
        if isinstance(spec, str):
            raise InterventionSpecError(f"Pass parsed specs (parse_spec({spec!r}, kind)), not raw strings: the kind is ambiguous.")
        spec = spec.with_scope(scope)
        vector = _lookup(spec.name, vectors, spec)
        try:
            applied = resolve_layers(_layers_arg(spec.layers), model.n_layers)
        except LayerOutOfRangeError as e:
            raise LayerOutOfRangeError(f"{e.message} (in {spec.text or spec.to_text()!r})") from None
        notes: list[str] = []
        if spec.read is None:
            notes += vector.check_compatible(model.d_model, None, model.name)
            missing = [L for L in applied if L not in vector.layers]
            if missing:
                raise VectorShapeError(
                    f"The {vector.trait!r} vector has no row for layer(s) {missing} (it holds {_layer_text(vector.layers)}). "
                    f"Apply it where it has rows, or choose one row explicitly: {spec.name}[L{vector.layers[-1]}]@..."
                )
            if vector.is_full and vector.n_layers != model.n_layers:
                notes.append(
                    f"The {vector.trait!r} vector has {vector.n_layers} layers but {model.name!r} has {model.n_layers}: "
                    f"row L is applied at layer L, which sits at a different relative depth."
                )
            reads = list(applied)
            table = PersonaVector(torch.stack([vector.at(L) for L in applied]), vector.meta, layers=applied)
        else:
            try:
                row = vector.at(spec.read)
                read_layer = vector.layer_index(spec.read)
            except LayerOutOfRangeError as e:
                raise LayerOutOfRangeError(f"{e.message} (read layer in {spec.text or spec.to_text()!r})") from None
            notes += vector.check_compatible(model.d_model, None, model.name)
            reads = [read_layer] * len(applied)
            table = row
        if vector.meta.last_layer_post_norm and vector.layers[-1] in reads:
            notes.append(f"Row {vector.layers[-1]} of {vector.trait!r} is post-norm; it is used anyway, as asked.")
        notes = list(dict.fromkeys(notes))
        label = spec.name
        if spec.kind == "add":
            iv: Intervention = Add(table, coef=float(spec.coef), layers=applied, scope=spec.scope, label=label)
        elif spec.kind == "ablate":
            iv = Ablate(table, layers=applied, scope=spec.scope, label=label)
        else:
            iv = Cap(table, layers=applied, scope=spec.scope, label=label, min=spec.min, max=spec.max)
        iv.bind(model.n_layers, model.d_model)  # fail now, not mid-generation
        resolved = ResolvedSteer(spec, vector, reads, applied, iv, notes)
        if warn:
            for note in notes:
                warnings.warn(note, stacklevel=2)
        out.append(resolved)
    return out


def random_control(resolved: Sequence[ResolvedSteer], model: PersonaModel, seed: int = 0) -> list[ResolvedSteer]:
    """The same interventions with each vector replaced by a random one of equal per-layer norm."""
    controls = []
    for i, r in enumerate(resolved):
        rnd = random_like(r.vector, seed=seed + i, trait=f"random({r.spec.name},{seed + i})")
        spec = r.spec.with_name(rnd.trait)
        controls += resolve_specs([spec], {rnd.trait: rnd}, model, scope=r.spec.scope or "all", warn=False)
    return controls


def _interventions(items: Sequence[ResolvedSteer | Intervention]) -> list[Intervention]:
    return [x.intervention if isinstance(x, ResolvedSteer) else x for x in items]


# --------------------------------------------------------------------------------------------
# steered generation beside unsteered


@dataclass
class SteerResult:
    """Steered answers beside unsteered ones (same prompts, same sampling seed)."""

    prompts: list[Any]
    steered: list[str]
    unsteered: list[str] | None
    steers: list[ResolvedSteer]
    model: str
    settings: dict

    def rows(self) -> list[dict]:
        out = []
        for i, p in enumerate(self.prompts):
            row = {"prompt": p if isinstance(p, (str, dict)) else str(p), "steered": self.steered[i]}
            if self.unsteered is not None:
                row["unsteered"] = self.unsteered[i]
            out.append(row)
        return out

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "interventions": [r.to_dict() for r in self.steers],
            "descriptions": [r.describe() for r in self.steers],
            "warnings": [w for r in self.steers for w in r.warnings],
            "settings": self.settings,
            "rows": self.rows(),
        }

    def save(self, path: str) -> None:
        """JSON (``.json``) with every setting, or JSONL (``.jsonl``: one row per prompt, header first)."""
        from personaspace._util.io import write_json, write_text
        import json

        if str(path).endswith(".jsonl"):
            d = self.to_dict()
            header = {k: v for k, v in d.items() if k != "rows"}
            lines = [json.dumps({"header": header})] + [json.dumps(r) for r in d["rows"]]
            write_text(path, "\n".join(lines) + "\n")
        else:
            write_json(path, self.to_dict())


def steer(
    model: PersonaModel,
    specs: Sequence[SteerSpec | ResolvedSteer],
    prompts: Sequence[Any],
    *,
    vectors: Mapping[str, PersonaVector] | None = None,
    scope: str = "all",
    system: str | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    baseline: bool = True,
    batch_size: int = 32,
) -> SteerResult:
    """Generate with the interventions, and (``baseline``) without them, from the same seed."""
    if not isinstance(prompts, str) and not prompts:
        raise InterventionSpecError("No prompts to steer: give at least one.")
    prompts = checks.prompt_list(prompts)
    checks.sampling(temperature, top_p, max_new_tokens)
    checks.positive_int("batch_size", batch_size)
    resolved = [s for s in specs if isinstance(s, ResolvedSteer)]
    raw = [s for s in specs if isinstance(s, SteerSpec)]
    if raw:
        if vectors is None:
            raise InterventionSpecError("Specs by name need `vectors=` (a VectorSet or dict of PersonaVectors).")
        resolved += resolve_specs(raw, vectors, model, scope=scope)
    kw = dict(system=system, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size)
    steered = model.generate(list(prompts), interventions=_interventions(resolved), **kw).texts
    plain = model.generate(list(prompts), **kw).texts if baseline else None
    settings = {k: v for k, v in kw.items() if k != "batch_size"}
    return SteerResult(list(prompts), steered, plain, resolved, model.name, settings)


# --------------------------------------------------------------------------------------------
# KL divergence from the unsteered model


@torch.inference_mode()
def _response_logprobs(
    model: PersonaModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    interventions: Sequence[Intervention],
    *,
    batch_size: int = 8,
) -> list[Float[Tensor, "positions vocab"]]:
    """Log-probabilities of the next token at the last prompt position and every response position.

    One teacher-forced forward per batch (right padding) with the interventions hooked in, the same
    position bookkeeping as generation, so scopes mean the same thing here.
    """
    active = by_layer(list(interventions), model.n_layers, model.d_model)
    slot = ContextSlot()
    fns = layer_callbacks(slot, active, None)
    out: list[Tensor] = []
    device = model.device
    for start in range(0, len(prompt_ids), batch_size):
        p_batch = [list(p) for p in prompt_ids[start : start + batch_size]]
        r_batch = [list(r) for r in response_ids[start : start + batch_size]]
        seqs = [p + r for p, r in zip(p_batch, r_batch)]
        ids, mask = pad_batch(seqs, model.pad_id, device, side="right")
        plen = torch.tensor([len(p) for p in p_batch], device=device)
        slot.ctx = StepContext.for_padded(mask, plen, torch.arange(len(seqs), device=device))
        res = model.backend.forward(ids, mask, position_ids(mask), layer_fns=fns, logits_to_keep=0)
        logits = res.logits.float()
        for i, (p, r) in enumerate(zip(p_batch, r_batch)):
            lo, hi = len(p) - 1, len(p) + len(r)  # positions predicting response tokens and the one after
            out.append(torch.log_softmax(logits[i, lo:hi], dim=-1).cpu())
    return out


def next_token_kl(
    model: PersonaModel,
    interventions: Sequence[ResolvedSteer | Intervention],
    prompts: Sequence[Any] = NEUTRAL_PROMPTS,
    *,
    max_new_tokens: int = 16,
    system: str | None = None,
    reference: Sequence[Sequence[int]] | None = None,
) -> dict:
    """KL(unsteered || steered) of next-token distributions on neutral prompts, mean per prompt.

    The unsteered model's own greedy continuation (``max_new_tokens``) of each prompt is fed to both
    models; at the last prompt token and every response token the two next-token distributions are
    compared, in nats. Returns ``{"mean", "ci95", "n" (prompts), "tokens", "per_prompt"}``.
    """
    p_ids = [model.prompt_ids(p, system) for p in prompts]
    if reference is None:
        reference = [g.response_ids for g in model.generate(list(prompts), system=system, max_new_tokens=max_new_tokens)]
    base = _response_logprobs(model, p_ids, reference, [])
    steered = _response_logprobs(model, p_ids, reference, _interventions(interventions))
    per_prompt, tokens = [], 0
    for b, s in zip(base, steered):
        kl = (b.exp() * (b - s)).sum(-1)  # [positions]
        per_prompt.append(float(kl.mean()))
        tokens += kl.numel()
    summary = mean_ci(per_prompt)
    return {**summary, "tokens": tokens, "per_prompt": [round(x, 6) for x in per_prompt]}


# --------------------------------------------------------------------------------------------
# evaluation: trait score, coherence, KL, projection; steered vs unsteered vs a random control


@dataclass
class Condition:
    """One arm of a steering evaluation (unsteered, steered, or the random control)."""

    name: str
    interventions: list[dict]
    trait: dict  # mean, ci95, n (scored answers), n_unscored
    coherence: dict
    kl: dict | None
    projection: dict  # {"layers": [...], "mean": [...]} of response_avg . v_hat per layer
    answers: list[dict] = field(repr=False, default_factory=list)

    def to_dict(self, answers: bool = True) -> dict:
        d = {k: getattr(self, k) for k in ("name", "interventions", "trait", "coherence", "kl", "projection")}
        if answers:
            d["answers"] = self.answers
        return d


@dataclass
class SteeringReport:
    """Steered vs unsteered vs random control, with sample counts, CIs and the judge that scored."""

    trait: str
    model: str
    judge: str
    readout: dict  # vector used for projections and the summary layer
    settings: dict
    conditions: dict[str, Condition]
    deltas: dict[str, dict]

    def to_dict(self, answers: bool = True) -> dict:
        return {
            "trait": self.trait,
            "model": self.model,
            "judge": self.judge,
            "readout": self.readout,
            "settings": self.settings,
            "conditions": {k: c.to_dict(answers) for k, c in self.conditions.items()},
            "deltas": self.deltas,
        }

    def save(self, path: str) -> None:
        from personaspace._util.io import write_json

        write_json(path, self.to_dict())

    def summary_rows(self) -> list[dict]:
        """One flat row per condition (for tables)."""
        layer = self.readout.get("layer")
        rows = []
        for c in self.conditions.values():
            proj = None
            if layer is not None and layer in c.projection.get("layers", []):
                proj = c.projection["mean"][c.projection["layers"].index(layer)]
            rows.append(
                {
                    "condition": c.name,
                    "interventions": "; ".join(i["describe"] for i in c.interventions) or "none",
                    "trait": c.trait,
                    "coherence": c.coherence,
                    "kl": c.kl,
                    "projection": proj,
                }
            )
        return rows


def _score_stats(values: Sequence[float | None], seed: int = 0) -> dict:
    finite = [v for v in values if v is not None]
    stats = mean_ci(finite, seed=seed)
    return {**stats, "n_unscored": len(values) - len(finite)}


def paired_delta(a: Sequence[float | None], b: Sequence[float | None], seed: int = 0) -> dict:
    """Mean of ``a - b`` over items scored in both, with a bootstrap 95% interval and the count."""
    diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    if not diffs:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    lo, hi = bootstrap_ci(diffs, seed=seed)
    return {"mean": float(np.mean(diffs)), "ci95": [lo, hi], "n": len(diffs)}


def default_readout_layer(applied: Sequence[int], n_layers: int) -> int:
    """A layer after the deepest applied one (about a tenth of the depth later), for projection read-outs."""
    deepest = max(applied) if applied else n_layers // 2
    return int(min(n_layers - 1, deepest + max(1, n_layers // 10)))


def evaluate_steering(
    model: PersonaModel,
    trait: Any,
    steers: Sequence[ResolvedSteer],
    *,
    judge: Any = "offline",
    readout_vector: PersonaVector | None = None,
    readout_layer: int | None = None,
    n_questions: int = 8,
    samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    seed: int = 0,
    control: bool = True,
    kl_prompts: Sequence[Any] = NEUTRAL_PROMPTS,
    kl_tokens: int = 16,
    system: str | None = None,
    include_unsteered: bool = True,
    _cache: dict | None = None,
) -> SteeringReport:
    """Judge steered answers to the trait's evaluation questions against unsteered and control answers.

    For each condition: the judged trait score and coherence (mean, bootstrap 95% CI, n) over
    ``n_questions x samples`` answers; the KL of next-token distributions from the unsteered model on
    ``kl_prompts``; and the mean projection of the answers' response-token average onto the trait
    vector at every layer. ``control`` adds the same interventions with random vectors of equal
    per-layer norm -- the null every steering claim should be compared with. ``deltas`` gives paired
    differences (same question and sample) with bootstrap intervals.
    """
    from personaspace.judges import JudgeItem, ready_judge
    from personaspace.traits import load_trait

    trait = load_trait(trait) if isinstance(trait, str) else trait
    checks.positive_int("n_questions", n_questions)
    checks.positive_int("samples", samples)
    checks.positive_int("kl_tokens", kl_tokens)
    checks.sampling(temperature, 1.0, max_new_tokens)
    if readout_layer is not None:
        check_layer(layer_index(readout_layer), model.n_layers)
    judge = ready_judge(judge, cache=True)  # spec, key and endpoint checked before any generation
    questions = list(trait.evaluation_questions[:n_questions])
    prompts = [q for q in questions for _ in range(samples)]
    if readout_vector is None:
        named = [r.vector for r in steers if r.vector.trait == trait.name]
        readout_vector = named[0] if named else None
    applied = sorted({L for r in steers for L in r.applied_layers})
    layers = list(readout_vector.layers) if readout_vector is not None else []
    layers = [L for L in layers if L < model.n_layers]
    if readout_layer is None and layers:
        readout_layer = default_readout_layer(applied, model.n_layers)
        if readout_layer not in layers:
            readout_layer = layers[-1]
    cache = _cache if _cache is not None else {}
    gen_kw = dict(system=system, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)

    arms: list[tuple[str, list[ResolvedSteer]]] = []
    if include_unsteered:
        arms.append(("unsteered", []))
    if steers:
        arms.append(("steered", list(steers)))
    if control and steers:
        arms.append(("random control", random_control(steers, model, seed=seed)))

    kl_ref = None
    runs: dict[str, tuple[list[str], Tensor | None]] = {}
    for name, arm in arms:
        if name == "unsteered" and "unsteered" in cache:
            runs[name] = cache["unsteered"]
            continue
        out = model.generate(
            prompts,
            interventions=_interventions(arm),
            capture_layers=layers if layers else False,
            reductions=("response_avg",),
            **gen_kw,
        )
        proj = None
        if layers:
            acts = out.activations["response_avg"]  # [samples, layers, d]
            units = torch.stack([readout_vector.unit(L) for L in layers])  # [layers, d]
            proj = (acts * units[None]).sum(-1)  # [samples, layers]
        runs[name] = (out.texts, proj)
        if name == "unsteered":
            cache["unsteered"] = runs[name]
    if arms and any(name != "unsteered" for name, _ in arms):
        kl_ref = cache.get("kl_ref")
        if kl_ref is None:
            kl_ref = [g.response_ids for g in model.generate(list(kl_prompts), system=system, max_new_tokens=kl_tokens)]
            cache["kl_ref"] = kl_ref

    # Judge everything in one call (the judge batches and caches).
    items, index = [], []
    for name, _ in arms:
        texts = runs[name][0]
        for i, (q, a) in enumerate(zip(prompts, texts)):
            items.append(JudgeItem(q, a, "trait", trait))
            items.append(JudgeItem(q, a, "coherence"))
            index.append((name, i))
    scores = judge.score(items)
    trait_scores: dict[str, list] = {name: [None] * len(prompts) for name, _ in arms}
    coh_scores: dict[str, list] = {name: [None] * len(prompts) for name, _ in arms}
    for k, (name, i) in enumerate(index):
        trait_scores[name][i] = scores[2 * k].value
        coh_scores[name][i] = scores[2 * k + 1].value

    conditions: dict[str, Condition] = {}
    for name, arm in arms:
        texts, proj = runs[name]
        kl = None
        if arm:
            kl = next_token_kl(model, arm, kl_prompts, system=system, reference=kl_ref)
        projection = {"layers": layers, "mean": [], "ci95": []}
        if proj is not None:
            for j in range(len(layers)):
                s = mean_ci(proj[:, j].tolist(), seed=seed)
                projection["mean"].append(round(s["mean"], 4))
                projection["ci95"].append([round(x, 4) for x in s["ci95"]])
            projection["n"] = len(prompts)
        answers = [
            {
                "question": q,
                "answer": a,
                "trait_score": trait_scores[name][i],
                "coherence": coh_scores[name][i],
                **({"projection_at_readout": round(float(proj[i, layers.index(readout_layer)]), 4)} if proj is not None else {}),
            }
            for i, (q, a) in enumerate(zip(prompts, texts))
        ]
        conditions[name] = Condition(
            name,
            [{**r.to_dict(), "describe": r.describe()} for r in arm],
            _score_stats(trait_scores[name], seed),
            _score_stats(coh_scores[name], seed),
            kl,
            projection,
            answers,
        )

    deltas: dict[str, dict] = {}
    pairs = [("steered", "unsteered"), ("steered", "random control"), ("random control", "unsteered")]
    for a, b in pairs:
        if a in conditions and b in conditions:
            d = {
                "trait": paired_delta(trait_scores[a], trait_scores[b], seed),
                "coherence": paired_delta(coh_scores[a], coh_scores[b], seed),
            }
            if readout_layer is not None and runs[a][1] is not None:
                j = layers.index(readout_layer)
                d["projection"] = paired_delta(runs[a][1][:, j].tolist(), runs[b][1][:, j].tolist(), seed)
            deltas[f"{a} - {b}"] = d

    readout = {
        "vector": readout_vector.trait if readout_vector is not None else None,
        "vector_model": readout_vector.model if readout_vector is not None else None,
        "position": readout_vector.position if readout_vector is not None else None,
        "layer": readout_layer,
        "what": "mean over response tokens of h[layer] . v_hat[layer] (layer = output of block layer)",
    }
    settings = {
        "n_questions": len(questions),
        "samples_per_question": samples,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "kl": {"prompts": len(kl_prompts), "tokens_per_prompt": kl_tokens, "direction": "KL(unsteered || steered), nats"},
        "control": "random direction, equal per-layer norm" if control else None,
    }
    return SteeringReport(trait.name, model.name, judge.identity, readout, settings, conditions, deltas)

"""Steering specifications: a small text syntax for interventions, and their resolution against vectors and a model.

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

:func:`parse_spec` / :func:`parse_specs` read the text, :func:`resolve_specs` binds specs to vectors and a
model (engine interventions plus what to print about them), :func:`random_control` builds the
equal-norm random control. Steered generation and its evaluation are in :mod:`personaspace.steering.evaluate`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from personaspace.engine.context import SCOPES
from personaspace.engine.interventions import Intervention
from personaspace.engine.layers import resolve_layers
from personaspace.errors import InterventionSpecError, LayerOutOfRangeError, VectorShapeError
from personaspace.vectors.store import PersonaVector, random_like

if TYPE_CHECKING:
    from personaspace.engine.model import PersonaModel

__all__ = [
    "KINDS",
    "SteerSpec",
    "ResolvedSteer",
    "parse_spec",
    "parse_specs",
    "resolve_specs",
    "random_control",
    "as_interventions",
]

KINDS = ("add", "ablate", "cap")

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
        settings = {"coef": float(spec.coef)} if spec.kind == "add" else {"min": spec.min, "max": spec.max}
        iv = Intervention.from_dict({"type": spec.kind, "label": spec.name, "layers": applied, "scope": spec.scope, **settings}, table)
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


def as_interventions(items: Sequence[ResolvedSteer | Intervention]) -> list[Intervention]:
    """The engine interventions of resolved specs (engine interventions pass through)."""
    return [x.intervention if isinstance(x, ResolvedSteer) else x for x in items]

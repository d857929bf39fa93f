"""Interventions on the residual stream: add, ablate, cap. Composable, scoped, layer-aware.

An intervention acts on the output of decoder block ``L`` (layer convention of
:mod:`personaspace.engine.layers`) at the positions its ``scope`` selects:

- ``Add(v, coef)``: ``h += coef * v`` (raw, unnormalised ``v`` unless ``normalize=True``);
- ``Ablate(v)``: remove the component along ``v``: ``h -= (h . v_hat) v_hat``;
- ``Cap(v, max=..., min=...)``: clamp the projection ``h . v_hat`` into ``[min, max]``.

``v`` may be a ``[d_model]`` tensor (same direction at every layer), a ``[n_layers, d_model]`` tensor, or
a :class:`~personaspace.vectors.store.PersonaVector` (its row for the hooked layer is used). Several
interventions stack in the order given.

:meth:`Intervention.to_dict` is the one written description of an intervention (run summaries, EM
settings, dataset metadata): ``{"type": "Add", "label", "layers", "scope", <settings>, "vector": {trait,
model, position}}``; :meth:`Intervention.from_dict` builds one back from it and a vector. ``kind``
(``add`` / ``ablate`` / ``cap``) is the name steering specs and remote plans use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from personaspace._util.checks import finite, optional_finite
from personaspace.engine.context import SCOPES
from personaspace.engine.layers import LayerSpec, resolve_layers
from personaspace.errors import InvalidArgumentError, VectorShapeError


def _as_table(vector: Any) -> tuple[Tensor, tuple[int, ...] | None]:
    """A float32 tensor [d] or [rows, d] from a tensor, array or PersonaVector, and the layer of each row.

    Plain 2-D tensors must hold one row per model layer (labels None); a PersonaVector brings its own
    layer labels, so a vector stored for a few layers only can still be applied at those layers.
    """
    data = getattr(vector, "data", vector)
    t = torch.as_tensor(data).detach().float()
    if t.ndim not in (1, 2):
        raise VectorShapeError(f"A steering vector must be [d_model] or [n_layers, d_model], got shape {tuple(t.shape)}.")
    labels = getattr(vector, "layers", None)
    return t, (tuple(labels) if t.ndim == 2 and labels is not None else None)


@dataclass
class Intervention:
    """Base of every intervention: a vector (one row, or one per layer), the layers it hooks, a scope.

    Subclasses implement ``apply(layer, hidden [..., seq, d_model], mask [..., seq])``. A subclass whose
    ``apply`` treats every position on its own sets ``positionwise = True``; backends that drop padding
    may then run it on packed tokens (``[1, tokens, d_model]``) instead of padded rows. A subclass that
    overrides ``apply`` without saying so counts as not position-wise, even below ``Add``.
    """

    positionwise: ClassVar[bool] = False
    kind: ClassVar[str] = ""  # "add" / "ablate" / "cap": the name in steering specs and remote plans
    _types: ClassVar[dict[str, type[Intervention]]] = {}  # "Add", "add", ... -> class, for from_dict

    vector: Any
    layers: LayerSpec = None
    scope: str = "all"
    label: str | None = None
    _table: Tensor = field(init=False, repr=False)
    _rows: tuple[int, ...] | None = field(init=False, repr=False)
    _cache: dict = field(init=False, repr=False, default_factory=dict)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "apply" in cls.__dict__ and "positionwise" not in cls.__dict__:
            cls.positionwise = False  # a new apply is not assumed position-wise: it has to say so
        Intervention._types.setdefault(cls.__name__, cls)
        if "kind" in cls.__dict__:
            Intervention._types.setdefault(cls.kind, cls)

    def settings(self) -> dict[str, Any]:
        """The subclass's own settings (``coef``, ``normalize``; ``min``, ``max``), as given."""
        base = {f.name for f in fields(Intervention)}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init and f.name not in base}

    def to_dict(self) -> dict[str, Any]:
        """What this intervention does, as plain JSON: type, label, layers, scope, settings and, for a
        PersonaVector, where the vector came from (the tensor itself is not written)."""
        layers = self.layers
        if layers is not None and not isinstance(layers, (str, int)):
            layers = [int(x) for x in layers]
        d: dict[str, Any] = {"type": type(self).__name__, "label": self.label, "layers": layers, "scope": self.scope}
        d.update(self.settings())
        meta = getattr(self.vector, "meta", None)
        if meta is not None:
            d["vector"] = {"trait": meta.trait, "model": meta.model, "position": meta.position}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], vector: Any) -> Intervention:
        """The intervention ``data`` describes (a :meth:`to_dict` result; ``type`` may also be a kind such
        as ``"add"``), acting with ``vector``. Keys it does not know (``vector``) are ignored."""
        name = data.get("type")
        target = Intervention._types.get(name) or Intervention._types.get(str(name).lower()) if name else None
        if target is None or (cls is not Intervention and not issubclass(target, cls)):
            known = ", ".join(sorted(k for k in Intervention._types if k[:1].isupper()))
            raise InvalidArgumentError(f"unknown intervention type {name!r}; known: {known}")
        names = {f.name for f in fields(target) if f.init and f.name != "vector"}
        return target(vector, **{k: v for k, v in data.items() if k in names})

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise InvalidArgumentError(f"unknown scope {self.scope!r}; use one of {', '.join(SCOPES)}")
        self._table, self._rows = _as_table(self.vector)
        if self.label is None:
            meta = getattr(self.vector, "meta", None)
            self.label = getattr(meta, "trait", None) or "vector"
        if not bool(torch.isfinite(self._table).all()):
            bad = int((~torch.isfinite(self._table)).sum())
            raise InvalidArgumentError(
                f"{type(self).__name__}: vector '{self.label}' has {bad} NaN or infinite value(s); steer with a finite vector"
            )
        if self.layers is not None and not isinstance(self.layers, str):
            resolve_layers(self.layers, 1 << 30)  # whole numbers, not empty (the range is checked on bind)

    @property
    def d_model(self) -> int:
        return self._table.shape[-1]

    def bind(self, n_layers: int, d_model: int) -> list[int]:
        """Check the vector against a model and return the layers this intervention hooks."""
        if self.d_model != d_model:
            raise VectorShapeError(
                f"Vector '{self.label}' has width {self.d_model} but the model's residual stream has width {d_model}."
            )
        if self._rows is not None:
            if self.layers is None:
                self.layers = list(self._rows)  # a partial PersonaVector acts where it was read
            missing = [layer for layer in resolve_layers(self.layers, n_layers) if layer not in self._rows]
            if missing:
                raise VectorShapeError(f"Vector '{self.label}' has no row for layer(s) {missing}; it holds {list(self._rows)}.")
            if max(self._rows) >= n_layers:
                raise VectorShapeError(f"Vector '{self.label}' has rows up to layer {max(self._rows)} but the model has {n_layers} layers.")
        elif self._table.ndim == 2 and self._table.shape[0] != n_layers:
            raise VectorShapeError(
                f"Vector '{self.label}' has {self._table.shape[0]} layers but the model has {n_layers}; "
                f"pass a single [d_model] row to use it across models of different depth."
            )
        return resolve_layers(self.layers, n_layers)

    def direction(self, layer: int, like: Tensor) -> Tensor:
        """The vector for ``layer`` as ``like``'s dtype and device (cached)."""
        key = (layer, like.dtype, like.device)
        if key not in self._cache:
            row = layer if self._rows is None else self._rows.index(layer)
            v = self._table if self._table.ndim == 1 else self._table[row]
            self._cache[key] = self._prepare(v).to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def _prepare(self, v: Tensor) -> Tensor:
        return v

    def apply(self, layer: int, hidden: Tensor, mask: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def _check_directions(iv: Intervention, layers: list[int]) -> list[int]:
    """Ablate and Cap need a direction: refuse a zero row at a hooked layer (it would do nothing)."""
    for layer in layers:
        row = layer if iv._rows is None else iv._rows.index(layer)
        v = iv._table if iv._table.ndim == 1 else iv._table[row]
        if not bool(v.norm() > 0):
            raise InvalidArgumentError(
                f"{type(iv).__name__}: vector '{iv.label}' is zero at layer {layer}, so it has no direction; use a non-zero vector"
            )
    return layers


def _projection(hidden: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """``hidden . u`` per position, and ``u``, in float32 at least: in bfloat16 / float16 the projection
    would keep 3 significant digits (2 in bfloat16) and a float16 one overflows to inf past 65504, as
    the residual norms of large models do. float32/64 hidden states are used as they are (no copy)."""
    if hidden.dtype in (torch.float32, torch.float64):
        return hidden @ u, u
    u = u.float()
    return hidden.float() @ u, u


def _unit(v: Tensor) -> Tensor:
    n = v.norm()
    return v / n if n > 0 else v


@dataclass
class Add(Intervention):
    """``h += coef * v`` at the scoped positions."""

    positionwise: ClassVar[bool] = True
    kind: ClassVar[str] = "add"

    coef: float = 1.0
    normalize: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.coef = finite(f"Add coef for '{self.label}'", self.coef)

    def _prepare(self, v: Tensor) -> Tensor:
        return self.coef * (_unit(v) if self.normalize else v)

    def apply(self, layer: int, hidden: Tensor, mask: Tensor) -> Tensor:
        v = self.direction(layer, hidden)
        return hidden + mask[..., None].to(hidden.dtype) * v


@dataclass
class _OnUnitDirection(Intervention):
    """An intervention on the projection onto the unit direction (Ablate, Cap): zero directions refused."""

    def bind(self, n_layers: int, d_model: int) -> list[int]:
        return _check_directions(self, super().bind(n_layers, d_model))

    def _prepare(self, v: Tensor) -> Tensor:
        return _unit(v)


@dataclass
class Ablate(_OnUnitDirection):
    """Project the direction out: ``h -= (h . v_hat) v_hat`` at the scoped positions."""

    positionwise: ClassVar[bool] = True
    kind: ClassVar[str] = "ablate"

    def apply(self, layer: int, hidden: Tensor, mask: Tensor) -> Tensor:
        u = self.direction(layer, hidden)
        proj, u = _projection(hidden, u)
        proj = proj * mask.to(proj.dtype)
        return hidden - (proj[..., None] * u).to(hidden.dtype)


@dataclass
class Cap(_OnUnitDirection):
    """Clamp the projection ``h . v_hat`` into ``[min, max]`` (either bound may be None)."""

    positionwise: ClassVar[bool] = True
    kind: ClassVar[str] = "cap"

    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min is None and self.max is None:
            raise InvalidArgumentError(f"Cap for '{self.label}' needs a min, a max, or both; got neither")
        self.min = optional_finite(f"Cap min for '{self.label}'", self.min)
        self.max = optional_finite(f"Cap max for '{self.label}'", self.max)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise InvalidArgumentError(f"Cap for '{self.label}' needs min <= max; got min={self.min:g}, max={self.max:g}")

    def apply(self, layer: int, hidden: Tensor, mask: Tensor) -> Tensor:
        u = self.direction(layer, hidden)
        proj, u = _projection(hidden, u)
        clamped = proj.clamp(min=self.min, max=self.max)
        return hidden + (((clamped - proj) * mask.to(proj.dtype))[..., None] * u).to(hidden.dtype)


def by_layer(interventions: Iterable[Intervention], n_layers: int, d_model: int) -> dict[int, list[Intervention]]:
    """Group interventions by the layers they hook, keeping their order."""
    table: dict[int, list[Intervention]] = {}
    for iv in interventions:
        for layer in iv.bind(n_layers, d_model):
            table.setdefault(layer, []).append(iv)
    return table

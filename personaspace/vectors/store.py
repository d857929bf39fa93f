"""Persona vectors in memory and on disk: one direction per layer, plus the metadata to trust it.

A :class:`PersonaVector` is a float32 tensor ``[n_layers, d_model]`` whose row ``i`` belongs to
layer ``layers[i]`` (layer ``L`` = output of decoder block ``L``, counted from 0; normally every
layer ``0 .. n_layers - 1`` is stored) and a :class:`VectorMeta` saying where it came from. A
:class:`VectorSet` maps trait names to the vectors of one model.

On disk a vector is a pair ``<stem>.safetensors`` (one tensor named ``"vector"``) and
``<stem>.json`` (the sidecar: metadata, shape, layers, SHA-256 of the tensor file). A set is a
directory of pairs named ``<trait>.<position>`` plus ``index.json``. See ``docs/formats.md``.

>>> import torch
>>> v = PersonaVector(torch.tensor([[3.0, 4.0], [0.0, 0.0]]), VectorMeta(trait="evil", model="toy"))
>>> v.norms().tolist()
[5.0, 0.0]
>>> [round(x, 4) for x in v.unit(0).tolist()]
[0.6, 0.8]
>>> round(float(v.project(torch.tensor([1.0, 1.0]), layer=0)), 4)
1.4
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from personaspace._util.io import atomic_path, write_json
from personaspace._util.paths import home
from personaspace._version import __version__
from personaspace.errors import (
    CorruptFileError,
    LayerOutOfRangeError,
    UnknownTraitError,
    VectorShapeError,
    VectorsNotFoundError,
)

if TYPE_CHECKING:  # shape hints only; jaxtyping is not a runtime dependency
    from jaxtyping import Float

__all__ = [
    "POSITIONS",
    "DEFAULT_POSITION",
    "LAYER_CONVENTION",
    "ENV_VECTORS",
    "VectorMeta",
    "PairDifferences",
    "PersonaVector",
    "VectorSet",
    "vector_search_paths",
    "load_vectors",
    "random_like",
]

POSITIONS = ("prompt_avg", "prompt_last", "response_avg", "all_avg")
"""Token-position reductions a vector can be averaged over (persona_vectors names)."""

DEFAULT_POSITION = "response_avg"
LAYER_CONVENTION = "block_output:0"  # same string as personaspace.engine.layers.CONVENTION
ENV_VECTORS = "PERSONASPACE_VECTORS"

FORMAT = "personaspace.vector"
SET_FORMAT = "personaspace.vectorset"
FORMAT_VERSION = 1
TENSOR_NAME = "vector"
INDEX_FILE = "index.json"
_SUFFIXES = (".safetensors", ".json")


def _toolkit_version() -> str:
    """The running personaspace version, for provenance."""
    return str(__version__)


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# metadata


@dataclass
class VectorMeta:
    """Provenance of one vector: what, from which model, how, and with which toolkit.

    ``to_dict``/``from_dict`` round-trip through JSON; keys this version does not know are kept
    in ``extra`` so files written by newer versions still load.
    """

    trait: str
    model: str
    model_hash: str | None = None
    layer_convention: str = LAYER_CONVENTION
    position: str = DEFAULT_POSITION
    method: str = "mean_diff"
    n_pos: int | None = None
    n_neg: int | None = None
    n_kept: int | None = None
    n_dropped: int | None = None
    judge: str | None = None
    thresholds: dict | None = None
    last_layer_post_norm: bool = False
    personaspace_version: str = field(default_factory=_toolkit_version)
    created: str = field(default_factory=_utc_now)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (``extra`` nested under its own key)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VectorMeta:
        """Rebuild from :meth:`to_dict` output; unknown keys go to ``extra``.

        >>> m = VectorMeta.from_dict({"trait": "evil", "model": "m", "future_field": 1})
        >>> m.extra
        {'future_field': 1}
        """
        if not isinstance(d, Mapping):
            raise CorruptFileError(f"Vector metadata must be a JSON object, got {type(d).__name__}.")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("trait", "model") if k not in d]
        if missing:
            raise CorruptFileError(f"Vector metadata lacks the required field(s) {missing}.")
        extra = d.get("extra") or {}
        if not isinstance(extra, Mapping):
            raise CorruptFileError(f"Vector metadata field 'extra' must be an object, got {type(extra).__name__}.")
        extra = dict(extra)
        known: dict[str, Any] = {}
        for key, value in d.items():
            if key == "extra":
                continue
            if key in names:
                known[key] = value
            else:
                extra[key] = value
        for key in ("trait", "model", "layer_convention", "position", "method"):
            if key in known and not isinstance(known[key], str):
                raise CorruptFileError(f"Vector metadata field {key!r} must be a string, got {known[key]!r}.")
        for key in ("n_pos", "n_neg", "n_kept", "n_dropped"):
            value = known.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise CorruptFileError(f"Vector metadata field {key!r} must be an integer or null, got {value!r}.")
        if "last_layer_post_norm" in known and not isinstance(known["last_layer_post_norm"], bool):
            raise CorruptFileError(
                f"Vector metadata field 'last_layer_post_norm' must be true or false, got {known['last_layer_post_norm']!r}."
            )
        if known.get("thresholds") is not None and not isinstance(known["thresholds"], Mapping):
            raise CorruptFileError(f"Vector metadata field 'thresholds' must be an object or null, got {known['thresholds']!r}.")
        return cls(**known, extra=extra)


# --------------------------------------------------------------------------------------------
# one vector


def _as_layer(layer: Any) -> int:
    if isinstance(layer, bool):
        raise LayerOutOfRangeError(f"Layer must be an integer, got {layer!r}.")
    try:
        return operator.index(layer)
    except TypeError:
        raise LayerOutOfRangeError(f"Layer must be an integer, got {layer!r}.") from None


PAIRS_TENSOR = "pair_differences"


@dataclass(frozen=True)
class PairDifferences:
    """Per kept pair, ``pos - neg`` activations at some layers: what a bootstrap over pairs resamples.

    ``data`` is ``[pairs, len(layers), d_model]``; it is stored in float16 beside the vector, so a
    vector file alone (for instance a shipped one) is enough for confidence intervals.
    """

    layers: tuple[int, ...]
    data: Float[Tensor, "pair layer d_model"]

    def __post_init__(self) -> None:
        layers = tuple(int(x) for x in self.layers)
        object.__setattr__(self, "layers", layers)
        data = self.data
        if not isinstance(data, Tensor) or data.dim() != 3 or data.shape[1] != len(layers) or data.shape[0] == 0:
            shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
            raise VectorShapeError(f"Pair differences must be [pairs, {len(layers)} layers, d_model]; got {shape}.")
        object.__setattr__(self, "data", data.detach().to("cpu", torch.float16).contiguous())

    @property
    def n_pairs(self) -> int:
        return self.data.shape[0]

    def covers(self, layers: Sequence[int]) -> bool:
        return set(layers) <= set(self.layers)

    def select(self, layers: Sequence[int]) -> PairDifferences:
        """Only ``layers`` (each must be stored)."""
        rows = [self.layers.index(x) for x in layers]
        return PairDifferences(tuple(layers), self.data[:, rows])


class PersonaVector:
    """One trait direction per layer of one model, with its provenance.

    ``data`` is float32 ``[n_layers, d_model]`` on the CPU (a private copy of what was passed).
    ``layers`` says which model layer each row belongs to; by default every layer from 0, but a
    single-layer vector can be stored as ``data`` ``[1, d]`` (or ``[d]``) with ``layers=(L,)``.
    """

    __slots__ = ("data", "meta", "_layers", "_full", "_pairs")

    data: Float[Tensor, "layer d_model"]
    meta: VectorMeta

    def __init__(
        self,
        data: Float[Tensor, "layer d_model"] | Float[Tensor, "d_model"],
        meta: VectorMeta | Mapping[str, Any],
        layers: Sequence[int] | None = None,
    ):
        if isinstance(meta, Mapping):
            meta = VectorMeta.from_dict(meta)
        if not isinstance(meta, VectorMeta):
            raise TypeError(f"meta must be a VectorMeta or a dict, got {type(meta).__name__}")
        name = meta.trait
        if not isinstance(data, Tensor):
            try:
                data = torch.as_tensor(data)
            except Exception:
                raise VectorShapeError(
                    f"The {name!r} vector must be a tensor [n_layers, d_model], got {type(data).__name__}."
                ) from None
        if data.dim() == 1 and layers is not None and len(layers) == 1:
            data = data.unsqueeze(0)
        if data.dim() != 2:
            raise VectorShapeError(
                f"The {name!r} vector must be 2-D [n_layers, d_model], got shape {tuple(data.shape)}."
            )
        if not data.is_floating_point():
            raise VectorShapeError(f"The {name!r} vector must hold floats, got dtype {data.dtype}.")
        if data.shape[0] == 0 or data.shape[1] == 0:
            raise VectorShapeError(f"The {name!r} vector is empty: shape {tuple(data.shape)}.")
        data = data.detach().to(device="cpu", dtype=torch.float32).clone().contiguous()

        if layers is None:
            layer_tuple = tuple(range(data.shape[0]))
        else:
            try:
                layer_tuple = tuple(_as_layer(x) for x in layers)
            except LayerOutOfRangeError:
                raise VectorShapeError(f"The {name!r} vector's layers must be integers, got {list(layers)!r}.") from None
            if len(layer_tuple) != data.shape[0]:
                raise VectorShapeError(
                    f"The {name!r} vector has {data.shape[0]} rows but {len(layer_tuple)} layer labels {list(layer_tuple)}."
                )
            if any(x < 0 for x in layer_tuple) or any(b <= a for a, b in zip(layer_tuple, layer_tuple[1:])):
                raise VectorShapeError(
                    f"The {name!r} vector's layers must be non-negative and strictly increasing, got {list(layer_tuple)}."
                )

        bad = ~torch.isfinite(data)
        if bool(bad.any()):
            rows = bad.any(dim=1).nonzero().flatten().tolist()
            where = [layer_tuple[r] for r in rows]
            raise VectorShapeError(
                f"The {name!r} vector has NaN or infinite values at layer(s) {where}. This usually means a mean "
                f"over zero kept samples (n_kept={meta.n_kept}); relax the filter or generate more samples."
            )

        self.data = data
        self.meta = meta
        self._layers = layer_tuple
        self._full = layer_tuple == tuple(range(len(layer_tuple)))
        self._pairs: PairDifferences | None = None

    @property
    def pairs(self) -> PairDifferences | None:
        """The kept pairs' ``pos - neg`` activations the vector is the mean of (None when not stored).

        Only the vector made by an extraction (or loaded from its files) has them; a derived vector
        (another layer subset, a sum, a random control) starts without.
        """
        return self._pairs

    @pairs.setter
    def pairs(self, value: PairDifferences | None) -> None:
        if value is not None:
            if not isinstance(value, PairDifferences):
                raise TypeError(f"pairs must be PairDifferences or None, got {type(value).__name__}")
            if value.data.shape[2] != self.d_model or not set(value.layers) <= set(self._layers):
                raise VectorShapeError(
                    f"The {self.trait!r} vector's pair differences (layers {list(value.layers)}, d={value.data.shape[2]}) "
                    f"do not fit the vector (layers {list(self._layers)}, d={self.d_model})."
                )
        self._pairs = value

    # -- shape -------------------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        """Number of stored layers (rows)."""
        return self.data.shape[0]

    @property
    def d_model(self) -> int:
        return self.data.shape[1]

    @property
    def layers(self) -> tuple[int, ...]:
        """The model layer of each row; ``(0, 1, ..., n_layers - 1)`` for a full vector."""
        return self._layers

    @property
    def is_full(self) -> bool:
        """True when every layer from 0 is stored (the usual case)."""
        return self._full

    @property
    def trait(self) -> str:
        return self.meta.trait

    @property
    def model(self) -> str:
        return self.meta.model

    @property
    def position(self) -> str:
        return self.meta.position

    def layer_index(self, layer: int) -> int:
        """Resolve ``layer`` (negatives count from the last stored layer) to a model layer number."""
        return self._layers[self._row(layer)]

    def _row(self, layer: Any) -> int:
        layer = _as_layer(layer)
        n = self.n_layers
        if self._full:
            if -n <= layer < n:
                return layer % n
            raise LayerOutOfRangeError(
                f"Layer {layer} is out of range for the {self.trait!r} vector: it has {n} layers, numbered 0 to "
                f"{n - 1} (layer L = output of block L; negative numbers count from the end)."
            )
        if -n <= layer < 0:
            return n + layer
        try:
            return self._layers.index(layer)
        except ValueError:
            raise LayerOutOfRangeError(
                f"Layer {layer} is not stored in the {self.trait!r} vector: it holds only layer(s) {list(self._layers)}."
            ) from None

    # -- numerics ----------------------------------------------------------------------------

    def at(self, layer: int) -> Float[Tensor, "d_model"]:
        """The raw (unnormalised) direction at ``layer``; negative indices count from the end."""
        return self.data[self._row(layer)]

    def norms(self) -> Float[Tensor, " layer"]:
        """L2 norm of every stored layer."""
        return self.data.norm(dim=1)

    def unit(self, layer: int | None = None) -> Float[Tensor, "layer d_model"] | Float[Tensor, "d_model"]:
        """Unit-norm direction at ``layer`` (``[d]``), or at every layer (``[n_layers, d]``).

        A zero row stays zero rather than turning into NaN.
        """
        rows = self.data if layer is None else self.at(layer)
        norm = rows.norm(dim=-1, keepdim=True)
        return rows / torch.where(norm > 0, norm, torch.ones_like(norm))

    def cosine(self, other: PersonaVector, layer: int | None = None) -> Tensor:
        """Cosine similarity with ``other``: a scalar at ``layer``, or one value per layer.

        Zero vectors have cosine 0 with everything. Widths must match (same model family).
        """
        if not isinstance(other, PersonaVector):
            raise TypeError(f"cosine() needs another PersonaVector, got {type(other).__name__}")
        if other.d_model != self.d_model:
            raise VectorShapeError(
                f"Cannot compare {self.trait!r} (d_model={self.d_model}, {self.model!r}) with {other.trait!r} "
                f"(d_model={other.d_model}, {other.model!r}): different widths mean different models. Compare "
                f"across models with the geometry module's RSA/CKA instead."
            )
        if layer is not None:
            return (self.unit(layer) * other.unit(layer)).sum().clamp(-1.0, 1.0)
        if other.layers != self.layers:
            raise VectorShapeError(
                f"Cannot compare {self.trait!r} and {other.trait!r} layer by layer: they store different layers "
                f"({_layers_text(self.layers)} vs {_layers_text(other.layers)}). Pass layer=..."
            )
        return (self.unit() * other.unit()).sum(dim=1).clamp(-1.0, 1.0)

    def project(self, acts: Float[Tensor, "... d_model"], layer: int) -> Float[Tensor, "..."]:
        """Scalar projection of activations onto the unit direction at ``layer``: ``acts . v_hat``."""
        if not isinstance(acts, Tensor):
            acts = torch.as_tensor(acts)
        if acts.dim() == 0 or acts.shape[-1] != self.d_model:
            raise VectorShapeError(
                f"Cannot project activations of shape {tuple(acts.shape)} onto the {self.trait!r} vector: the last "
                f"dimension must be d_model={self.d_model}."
            )
        if not acts.is_floating_point():
            acts = acts.float()
        u = self.unit(layer).to(device=acts.device, dtype=acts.dtype)
        return acts @ u

    def check_compatible(self, d_model: int, n_layers: int | None = None, model: str | None = None) -> list[str]:
        """Check this vector fits a model; raise :class:`VectorShapeError` if it cannot, return warnings.

        Width or layer mismatches are errors (the vector cannot be applied at all); a different
        model name of the same shape, a foreign layer convention or a post-norm last row are
        warnings the caller should show.
        """
        if int(d_model) != self.d_model:
            raise VectorShapeError(
                f"The {self.trait!r} vector has width {self.d_model} but the model has d_model={d_model}: the vector "
                f"was made for another model ({self.model!r})."
            )
        if n_layers is not None:
            if self._full and self.n_layers != n_layers:
                raise VectorShapeError(
                    f"The {self.trait!r} vector has {self.n_layers} layers but the model has {n_layers}: it was made "
                    f"for another model ({self.model!r})."
                )
            if max(self._layers) >= n_layers:
                raise VectorShapeError(
                    f"The {self.trait!r} vector stores layer {max(self._layers)} but the model has only {n_layers} "
                    f"layers (0 to {n_layers - 1})."
                )
        warnings: list[str] = []
        if model is not None and not _same_model(model, self.model):
            warnings.append(
                f"The {self.trait!r} vector was extracted from {self.model!r}, not {model!r}. Shapes match, but "
                f"directions rarely carry over between unrelated models (fine-tunes of one base usually work)."
            )
        if self.meta.layer_convention != LAYER_CONVENTION:
            warnings.append(
                f"The {self.trait!r} vector uses layer convention {self.meta.layer_convention!r}, not "
                f"{LAYER_CONVENTION!r}: its layer numbers may be shifted by one."
            )
        if self.meta.last_layer_post_norm:
            last = self._layers[-1]
            warnings.append(
                f"The {self.trait!r} vector's last layer ({last}) was measured after the final norm (persona_vectors "
                f"convention); its scale does not match the raw block output, so do not steer or project at layer {last}."
            )
        return warnings

    # -- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<stem>.safetensors`` and ``<stem>.json`` (both atomically); return the tensor path.

        ``path`` may be the stem or either file name.
        """
        st_path, js_path = _pair_paths(path)
        from personaspace._util import checks
        checks.writable_file(st_path)  # one clear line for a file in the way or a read-only place
        import safetensors.torch

        st_meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "trait": self.trait,
            "model": self.model,
            "position": self.position,
            "layer_convention": self.meta.layer_convention,
            "layers": ",".join(map(str, self._layers)),
        }
        tensors = {TENSOR_NAME: self.data}
        pairs = self._pairs
        if pairs is not None:
            tensors[PAIRS_TENSOR] = pairs.data
            st_meta["pair_layers"] = ",".join(map(str, pairs.layers))
        blob = safetensors.torch.save(tensors, metadata=st_meta)
        sidecar = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tensor": TENSOR_NAME,
            "dtype": "float32",
            "shape": list(self.data.shape),
            "layers": list(self._layers),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "meta": self.meta.to_dict(),
        }
        if pairs is not None:
            sidecar["pairs"] = {"tensor": PAIRS_TENSOR, "dtype": "float16", "n_pairs": pairs.n_pairs,
                                "layers": list(pairs.layers)}
        with atomic_path(st_path) as tmp:
            tmp.write_bytes(blob)
        write_json(js_path, sidecar)
        return st_path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PersonaVector:
        """Read a vector saved by :meth:`save`, from the ``.safetensors``, the ``.json`` or the stem.

        Every problem with the pair (truncated tensor file, missing or garbled sidecar, a sidecar
        that belongs to another tensor file) is one :class:`CorruptFileError` naming the file.
        """
        st_path, js_path = _pair_paths(path)
        if not st_path.is_file():
            if js_path.is_file():
                raise CorruptFileError(
                    f"{js_path} has no tensor file beside it: {st_path.name} is missing. Copy both files of the pair."
                )
            raise VectorsNotFoundError(f"No vector file at {st_path}.")
        blob = st_path.read_bytes()
        tensors, st_meta = _read_safetensors(blob, st_path)
        if not js_path.is_file():
            raise CorruptFileError(
                f"{st_path} has no metadata sidecar: {js_path.name} is missing. Copy the .json that was saved with "
                f"it, or re-save the vector."
            )
        sidecar = _read_sidecar(js_path)
        return _build_from_files(tensors, st_meta, sidecar, blob, st_path, js_path)

    def __repr__(self) -> str:
        layers = str(self.n_layers) if self._full else str(list(self._layers))
        return (
            f"PersonaVector({self.trait!r}, model={self.model!r}, layers={layers}, d={self.d_model}, "
            f"position={self.position!r})"
        )


def _layers_text(layers: tuple[int, ...]) -> str:
    if layers == tuple(range(len(layers))):
        return f"layers 0-{len(layers) - 1}"
    return f"layers {list(layers)}"


def _model_key(name: str) -> str:
    return name.strip().rstrip("/").rsplit("/", 1)[-1].lower()


def _same_model(a: str, b: str) -> bool:
    """Loose model-name equality: ``Org/SmolLM2-135M-Instruct`` matches ``smollm2-135m-instruct``."""
    return _model_key(a) == _model_key(b)


def _pair_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path).expanduser()
    name = p.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if not name:
        raise VectorsNotFoundError(f"{str(path)!r} does not name a vector file.")
    return p.with_name(name + ".safetensors"), p.with_name(name + ".json")


def _read_safetensors(blob: bytes, path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Parse a safetensors blob; any damage becomes a CorruptFileError naming ``path``."""
    import safetensors.torch

    hint = "It may be truncated by an interrupted copy or download; restore or re-save it."
    if len(blob) < 8:
        raise CorruptFileError(f"{path} is not a safetensors file ({len(blob)} bytes). {hint}")
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or 8 + n > len(blob):
        raise CorruptFileError(f"{path} is not a readable safetensors file: its header is cut off. {hint}")
    try:
        header = json.loads(blob[8 : 8 + n])
        tensors = safetensors.torch.load(blob)
    except Exception as e:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}). {hint}") from e
    st_meta = header.get("__metadata__") if isinstance(header, dict) else None
    return tensors, dict(st_meta or {})


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(f"{path} is not a readable {what} ({type(e).__name__}: {e}).") from e


def _read_sidecar(js_path: Path) -> dict[str, Any]:
    sidecar = _read_json(js_path, "vector sidecar (JSON)")
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT or not isinstance(sidecar.get("meta"), dict):
        raise CorruptFileError(
            f"{js_path} is not a personaspace vector sidecar (expected a JSON object with format={FORMAT!r} and a "
            f"'meta' object)."
        )
    version = sidecar.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CorruptFileError(
            f"{js_path} has format_version {version!r}; this personaspace reads up to {FORMAT_VERSION}. Upgrade personaspace."
        )
    return sidecar


def _build_from_files(
    tensors: dict[str, Tensor],
    st_meta: dict[str, str],
    sidecar: dict[str, Any],
    blob: bytes,
    st_path: Path,
    js_path: Path,
) -> PersonaVector:
    name = sidecar.get("tensor", TENSOR_NAME)
    if name not in tensors:
        raise CorruptFileError(f"{st_path} holds no tensor {name!r} (it has {sorted(tensors)}).")
    data = tensors[name]
    recorded = sidecar.get("sha256")
    if recorded is not None:
        actual = hashlib.sha256(blob).hexdigest()
        if recorded != actual:
            raise CorruptFileError(
                f"{js_path.name} does not belong to {st_path.name}: the sidecar records sha256 {str(recorded)[:12]}..., "
                f"the tensor file has {actual[:12]}... One of the pair was replaced; restore the matching pair or "
                f"re-save the vector."
            )
    shape = sidecar.get("shape")
    if shape is not None and list(shape) != list(data.shape):
        raise CorruptFileError(
            f"{js_path.name} describes shape {list(shape)} but {st_path.name} holds {list(data.shape)}."
        )
    try:
        meta = VectorMeta.from_dict(sidecar["meta"])
    except CorruptFileError as e:
        raise CorruptFileError(f"{js_path}: {e.message}") from e
    st_trait = st_meta.get("trait")
    if st_trait is not None and st_trait != meta.trait:
        raise CorruptFileError(
            f"{js_path.name} is for trait {meta.trait!r} but {st_path.name} is for {st_trait!r}: mismatched pair."
        )
    layers = sidecar.get("layers")
    try:
        vector = PersonaVector(data, meta, layers=layers)
        info = sidecar.get("pairs")
        if isinstance(info, dict):
            name = str(info.get("tensor", PAIRS_TENSOR))
            if name not in tensors:
                raise CorruptFileError(f"{js_path.name} lists pair differences {name!r} but {st_path.name} holds none.")
            vector.pairs = PairDifferences(tuple(info.get("layers") or ()), tensors[name])
        return vector
    except VectorShapeError as e:
        raise CorruptFileError(f"{st_path}: {e.message}") from e


# --------------------------------------------------------------------------------------------
# a set of vectors


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def _file_stem(trait: str, position: str) -> str:
    """``<trait>.<position>`` with characters unsafe in file names replaced by ``_``."""
    return f"{_UNSAFE.sub('_', trait) or '_'}.{_UNSAFE.sub('_', position) or '_'}"


class VectorSet(Mapping[str, PersonaVector]):
    """Trait name -> :class:`PersonaVector`, all from one model with one width and one set of layers.

    Iteration is in sorted trait order. Unknown traits raise :class:`UnknownTraitError` (a
    ``KeyError``, so ``in`` and ``.get`` behave as for a dict).
    """

    def __init__(self, vectors: Iterable[PersonaVector] | Mapping[str, PersonaVector]):
        if isinstance(vectors, PersonaVector):
            vectors = [vectors]
        items: list[tuple[str, PersonaVector]] = []
        if isinstance(vectors, Mapping):
            for key, v in vectors.items():
                if isinstance(v, PersonaVector) and key != v.trait:
                    raise VectorShapeError(f"Key {key!r} holds the vector of trait {v.trait!r}; keys must be trait names.")
                items.append((key, v))
        else:
            items = [(getattr(v, "trait", None), v) for v in vectors]
        found: dict[str, PersonaVector] = {}
        for key, v in items:
            if not isinstance(v, PersonaVector):
                raise TypeError(f"A VectorSet holds PersonaVector objects, got {type(v).__name__}")
            if key in found:
                raise VectorShapeError(f"Two vectors for trait {key!r} in one set; a set holds one vector per trait.")
            found[key] = v
        if not found:
            raise VectorShapeError("A VectorSet needs at least one vector.")
        self._vectors = dict(sorted(found.items()))
        first = next(iter(self._vectors.values()))
        widths = {t: v.d_model for t, v in self._vectors.items()}
        if len(set(widths.values())) > 1:
            raise VectorShapeError(
                f"Vectors of different widths cannot share a set: {widths}. They come from different models."
            )
        for t, v in self._vectors.items():
            if v.layers != first.layers:
                raise VectorShapeError(
                    f"Vectors {first.trait!r} ({_layers_text(first.layers)}) and {t!r} ({_layers_text(v.layers)}) "
                    f"store different layers; a set needs the same layers for every trait."
                )
            if v.model != first.model:
                raise VectorShapeError(
                    f"Vectors {first.trait!r} (model {first.model!r}) and {t!r} (model {v.model!r}) come from "
                    f"different models; keep one VectorSet per model."
                )

    # -- mapping -----------------------------------------------------------------------------

    def __getitem__(self, trait: str) -> PersonaVector:
        try:
            return self._vectors[trait]
        except (KeyError, TypeError):
            raise UnknownTraitError(
                f"No vector for trait {trait!r} in this set; it has: {', '.join(self._vectors)}."
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._vectors)

    def __len__(self) -> int:
        return len(self._vectors)

    def __repr__(self) -> str:
        first = next(iter(self._vectors.values()))
        layers = str(first.n_layers) if first.is_full else str(list(first.layers))
        return f"VectorSet(model={self.model!r}, traits={self.traits}, layers={layers}, d={self.d_model})"

    # -- shape -------------------------------------------------------------------------------

    @property
    def _first(self) -> PersonaVector:
        return next(iter(self._vectors.values()))

    @property
    def model(self) -> str:
        return self._first.model

    @property
    def d_model(self) -> int:
        return self._first.d_model

    @property
    def n_layers(self) -> int:
        return self._first.n_layers

    @property
    def layers(self) -> tuple[int, ...]:
        return self._first.layers

    @property
    def traits(self) -> list[str]:
        """Trait names, sorted."""
        return list(self._vectors)

    @property
    def positions(self) -> list[str]:
        """The position reductions present (normally just one)."""
        return sorted({v.position for v in self._vectors.values()})

    # -- numerics ----------------------------------------------------------------------------

    def stack(self, layer: int, traits: Sequence[str] | None = None, unit: bool = False) -> Float[Tensor, "trait d_model"]:
        """Rows of the chosen traits (default: all, sorted) at ``layer``, optionally unit-norm."""
        names = self.traits if traits is None else ([traits] if isinstance(traits, str) else list(traits))
        if not names:
            return torch.empty(0, self.d_model)
        rows = [self[t].unit(layer) if unit else self[t].at(layer) for t in names]
        return torch.stack(rows)

    def subset(self, traits: Iterable[str]) -> VectorSet:
        """A new set with only ``traits``."""
        names = [traits] if isinstance(traits, str) else list(traits)
        return VectorSet([self[t] for t in names])

    # -- files -------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Write one ``<trait>.<position>`` file pair per vector plus ``index.json``; return the directory.

        Saving adds to or overwrites pairs in ``directory``; it never deletes files, so one
        directory can hold several positions of the same model.
        """
        from personaspace._util import checks
        d = checks.writable_dir(directory, create=True)
        index = _read_index(d)
        if index is not None:
            old_model, old_d = index.get("model"), index.get("d_model")
            if (old_model is not None and old_model != self.model) or (old_d is not None and old_d != self.d_model):
                raise VectorShapeError(
                    f"{d} already holds vectors of model {old_model!r} (d_model={old_d}); this set is for "
                    f"{self.model!r} (d_model={self.d_model}). Save it to its own directory."
                )
        entries: dict[str, dict[str, Any]] = {}
        for e in (index or {}).get("entries", []):
            if isinstance(e, dict) and isinstance(e.get("file"), str):
                entries[e["file"]] = e
        for v in self._vectors.values():
            stem = _file_stem(v.trait, v.position)
            file = stem + ".safetensors"
            other = entries.get(file)
            if other is not None and (other.get("trait"), other.get("position")) != (v.trait, v.position):
                raise VectorShapeError(
                    f"Trait {v.trait!r} and trait {other.get('trait')!r} would both be saved as {file} in {d}; "
                    f"rename one of them."
                )
            v.save(d / stem)
            entries[file] = {"trait": v.trait, "position": v.position, "file": file}
        write_json(
            d / INDEX_FILE,
            {
                "format": SET_FORMAT,
                "format_version": FORMAT_VERSION,
                "model": self.model,
                "d_model": self.d_model,
                "layers": list(self.layers),
                "layer_convention": self._first.meta.layer_convention,
                "entries": sorted(entries.values(), key=lambda e: (str(e.get("position")), str(e.get("trait")))),
            },
        )
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, position: str | None = None) -> VectorSet:
        """Load every vector pair of one position from ``directory``.

        ``position=None`` picks ``response_avg`` when present, else the only position there is.
        Which files belong to which trait and position is read from the sidecars, not the names.
        """
        d = Path(directory).expanduser()
        if not d.is_dir():
            raise VectorsNotFoundError(f"{d} is not a directory of persona vectors.")
        index = _read_index(d)
        if index is not None:
            for e in index.get("entries", []):
                file = e.get("file") if isinstance(e, dict) else None
                if isinstance(file, str) and not (d / file).is_file():
                    raise CorruptFileError(
                        f"{d / INDEX_FILE} lists {file}, which is missing: the directory was copied only in part. "
                        f"Copy the whole directory again."
                    )
        by_position: dict[str, list[Path]] = {}
        for st_path in sorted(d.glob("*.safetensors")):
            if st_path.name.startswith("."):
                continue  # temporary files of an interrupted write
            js_path = st_path.with_name(st_path.name[: -len(".safetensors")] + ".json")
            if not js_path.is_file():
                raise CorruptFileError(
                    f"{st_path} has no metadata sidecar: {js_path.name} is missing. Copy the .json that was saved "
                    f"with it, or remove the stray file."
                )
            meta = _read_sidecar(js_path)["meta"]
            pos = meta.get("position", DEFAULT_POSITION)
            by_position.setdefault(str(pos), []).append(st_path)
        if not by_position:
            raise VectorsNotFoundError(f"No vector files (*.safetensors with .json sidecars) in {d}.")
        if position is None:
            if DEFAULT_POSITION in by_position:
                position = DEFAULT_POSITION
            elif len(by_position) == 1:
                position = next(iter(by_position))
            else:
                raise VectorsNotFoundError(
                    f"{d} holds vectors for positions {sorted(by_position)}; choose one with position=..."
                )
        if position not in by_position:
            raise VectorsNotFoundError(
                f"{d} has no {position!r} vectors; it has {sorted(by_position)}. Pass one of those as position."
            )
        vectors = [PersonaVector.load(p) for p in by_position[position]]
        seen: dict[str, Path] = {}
        for v, p in zip(vectors, by_position[position]):
            if v.trait in seen:
                raise VectorShapeError(
                    f"{d} holds two {position!r} vectors for trait {v.trait!r}: {seen[v.trait].name} and {p.name}. "
                    f"Remove one."
                )
            seen[v.trait] = p
        return cls(vectors)


def _read_index(d: Path) -> dict[str, Any] | None:
    path = d / INDEX_FILE
    if not path.exists():
        return None
    index = _read_json(path, "vector index (JSON)")
    if not isinstance(index, dict) or index.get("format") != SET_FORMAT or not isinstance(index.get("entries", []), list):
        raise CorruptFileError(f"{path} is not a personaspace vector index (expected format={SET_FORMAT!r}).")
    return index


# --------------------------------------------------------------------------------------------
# finding vectors by model name


def vector_search_paths() -> list[Path]:
    """Directories searched for ``<model name>/`` vector folders, in order.

    ``$PERSONASPACE_VECTORS`` (``os.pathsep``-separated), the repository's top-level ``vectors/``
    when running from a checkout, then ``<personaspace home>/vectors``.
    """
    paths: list[Path] = []
    for part in os.environ.get(ENV_VECTORS, "").split(os.pathsep):
        if part.strip():
            paths.append(Path(part.strip()).expanduser())
    repo_vectors = Path(__file__).resolve().parents[2] / "vectors"
    if repo_vectors.is_dir():
        paths.append(repo_vectors)
    paths.append(home() / "vectors")
    unique: list[Path] = []
    for p in paths:
        if p not in unique:
            unique.append(p)
    return unique


def _name_variants(name: str) -> list[str]:
    """Folder names tried for a model: as given, ``/`` as ``--``, and the bare lower-case name."""
    variants = [name, name.replace("/", "--"), _model_key(name), _model_key(name).replace("/", "--")]
    out: list[str] = []
    for v in variants:
        if v and v not in out and not v.startswith(("/", "..")):
            out.append(v)
    return out


def load_vectors(name_or_path: str | os.PathLike, position: str | None = DEFAULT_POSITION) -> VectorSet:
    """Load a :class:`VectorSet` from a directory, a single vector file, or a model name.

    A model name is looked up as ``<search path>/<model name>/`` over :func:`vector_search_paths`
    (``HuggingFaceTB/SmolLM2-135M-Instruct`` also matches folders ``HuggingFaceTB--SmolLM2-135M-Instruct``
    and ``smollm2-135m-instruct``).
    """
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return VectorSet.load(p, position)
    if p.name.endswith(_SUFFIXES) and p.is_file():
        return VectorSet([PersonaVector.load(p)])
    name = str(name_or_path)
    if isinstance(name_or_path, os.PathLike) or name.startswith((".", "/", "~")) or os.path.isabs(name):
        raise VectorsNotFoundError(f"{p} is not a directory of persona vectors or a vector file.")
    tried: list[str] = []
    for base in vector_search_paths():
        for variant in _name_variants(name):
            candidate = base / variant
            if candidate.is_dir():
                try:
                    return VectorSet.load(candidate, position)
                except VectorsNotFoundError as e:
                    tried.append(f"{candidate} ({e.message})")
                    continue
            tried.append(f"{candidate} (missing)")
    raise VectorsNotFoundError(
        f"No persona vectors for {name!r} (position {position!r}). Looked in: "
        + "; ".join(tried)
        + f". Extract them first, or set ${ENV_VECTORS} to a directory holding <model name>/ folders."
    )


# --------------------------------------------------------------------------------------------
# controls


def random_like(vector: PersonaVector, seed: int = 0, trait: str | None = None) -> PersonaVector:
    """A random direction with the same per-layer norms as ``vector``: the null control.

    Each layer gets an independent Gaussian direction, rescaled to the original norm (zero rows
    stay zero). Deterministic for a given ``seed``.

    >>> import torch
    >>> v = PersonaVector(torch.tensor([[3.0, 4.0, 0.0]]), VectorMeta(trait="evil", model="toy"))
    >>> r = random_like(v, seed=1)
    >>> r.trait, round(float(r.norms()[0]), 4), r.meta.method
    ('random_evil_s1', 5.0, 'random')
    """
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(vector.data.shape, generator=gen, dtype=torch.float32)
    data = noise / noise.norm(dim=1, keepdim=True) * vector.norms()[:, None]
    meta = dataclasses.replace(
        vector.meta,
        trait=trait or f"random_{vector.trait}_s{int(seed)}",
        method="random",
        personaspace_version=_toolkit_version(),
        created=_utc_now(),
        extra={**vector.meta.extra, "random_of": vector.trait, "seed": int(seed)},
    )
    return PersonaVector(data, meta, layers=vector.layers)

"""Named-array wire codec: a model is an ordered set of named numpy arrays.

The wire form is the concatenation of every array's raw little-endian bytes in the
order of a :class:`ModelSpec`; the spec itself (name, dtype, shape per array) travels
in the signed header as the *layout*. There is no pickle and no self-describing
object format: a receiver checks the layout against the spec it expects, exactly,
before it reads a single payload byte.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

Model = dict[str, np.ndarray]
"""A model: parameter name -> array. Pure functions in fednode take and return these."""

_ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<u8", "<i8", "<u4", "<i4"})

LayoutEntry = tuple[str, str, tuple[int, ...]]


def _le_dtype_str(dtype: np.dtype) -> str:
    """Canonical little-endian dtype string ('<f4', ...) used on the wire."""
    dt = np.dtype(dtype).newbyteorder("<")
    s = dt.str
    if s not in _ALLOWED_DTYPES:
        raise ValueError(f"dtype {np.dtype(dtype)} is not allowed on the wire (allowed: {sorted(_ALLOWED_DTYPES)})")
    return s


@dataclass(frozen=True)
class ModelSpec:
    """The exact layout of a model: ordered (name, little-endian dtype, shape) entries."""

    entries: tuple[LayoutEntry, ...]

    @classmethod
    def of(cls, model: Mapping[str, np.ndarray]) -> "ModelSpec":
        """The spec of a model, in sorted-name order (the canonical order)."""
        return cls(tuple((name, _le_dtype_str(model[name].dtype), tuple(int(d) for d in model[name].shape))
                         for name in sorted(model)))

    @classmethod
    def from_layout(cls, layout: object) -> "ModelSpec":
        """Parse a layout as it arrives in a header; raises ValueError on anything odd."""
        if not isinstance(layout, (list, tuple)):
            raise ValueError("layout must be a list")
        entries: list[LayoutEntry] = []
        for item in layout:
            if not isinstance(item, (list, tuple)) or len(item) != 3:
                raise ValueError("layout entry must be [name, dtype, shape]")
            name, dtype, shape = item
            if not isinstance(name, str) or not isinstance(dtype, str) or dtype not in _ALLOWED_DTYPES:
                raise ValueError("bad layout name or dtype")
            if not isinstance(shape, (list, tuple)) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape):
                raise ValueError("bad layout shape")
            entries.append((name, dtype, tuple(shape)))
        if len({e[0] for e in entries}) != len(entries):
            raise ValueError("duplicate array name in layout")
        return cls(tuple(entries))

    def to_layout(self) -> list:
        """The msgpack-friendly layout carried in the signed header."""
        return [[name, dtype, list(shape)] for name, dtype, shape in self.entries]

    def with_dtype(self, dtype: str) -> "ModelSpec":
        """Same names and shapes, every array in ``dtype`` (e.g. '<u8' for ring-encoded payloads)."""
        return ModelSpec(tuple((n, _le_dtype_str(np.dtype(dtype)), s) for n, _, s in self.entries))

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(e[0] for e in self.entries)

    @property
    def size(self) -> int:
        """Total number of scalars."""
        return sum(math.prod(s) for _, _, s in self.entries)  # Python ints: np.prod(int64) wraps silently

    @functools.cached_property
    def nbytes(self) -> int:
        """Payload bytes (cached, like ``names``: the receiver asks for every payload it checks)."""
        return sum(math.prod(s) * np.dtype(d).itemsize for _, d, s in self.entries)

    def zeros(self) -> Model:
        return {n: np.zeros(s, dtype=np.dtype(d).newbyteorder("=")) for n, d, s in self.entries}

    def matches(self, model: Mapping[str, np.ndarray]) -> bool:
        """True when ``model`` has exactly these names, dtypes and shapes."""
        if set(model) != set(self.names):
            return False
        try:
            return ModelSpec.of(model) == ModelSpec(tuple(sorted(self.entries)))
        except ValueError:
            return False

    def flatten(self, model: Mapping[str, np.ndarray], dtype: str | np.dtype | None = None) -> np.ndarray:
        """One contiguous 1-D vector of all arrays in spec order (dtype: the common dtype, default float64)."""
        out_dtype = np.dtype(dtype) if dtype is not None else np.float64
        parts = [np.asarray(model[n], dtype=out_dtype).reshape(-1) for n in self.names]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=out_dtype)

    def unflatten(self, vector: np.ndarray) -> Model:
        """Inverse of :meth:`flatten`; every array gets the spec's dtype (native byte order)."""
        if vector.ndim != 1 or vector.size != self.size:
            raise ValueError(f"vector of size {vector.size} does not fit a spec of size {self.size}")
        out: Model = {}
        offset = 0
        for name, dtype, shape in self.entries:
            n = math.prod(shape)
            out[name] = vector[offset:offset + n].astype(np.dtype(dtype).newbyteorder("="), copy=True).reshape(shape)
            offset += n
        return out


def encode_arrays(model: Mapping[str, np.ndarray], spec: ModelSpec | None = None) -> tuple[ModelSpec, bytes]:
    """Raw little-endian bytes of ``model`` in spec order, and the spec used.

    With ``spec`` given, each array is cast to the spec's dtype and its shape must match.
    """
    if spec is None:
        spec = ModelSpec.of(model)
    chunks = []
    for name, dtype, shape in spec.entries:
        arr = np.asarray(model[name])
        if tuple(arr.shape) != shape:
            raise ValueError(f"array {name!r} has shape {arr.shape}, spec says {shape}")
        chunks.append(np.ascontiguousarray(arr, dtype=np.dtype(dtype)).tobytes())
    return spec, b"".join(chunks)


def decode_arrays(payload: bytes, spec: ModelSpec) -> Model:
    """Read-only arrays viewing ``payload`` per ``spec``; raises ValueError when the size differs."""
    if len(payload) != spec.nbytes:
        raise ValueError(f"payload has {len(payload)} bytes, layout needs {spec.nbytes}")
    out: Model = {}
    offset = 0
    for name, dtype, shape in spec.entries:
        dt = np.dtype(dtype)
        n = math.prod(shape)
        arr = np.frombuffer(payload, dtype=dt, count=n, offset=offset).reshape(shape)
        out[name] = arr
        offset += n * dt.itemsize
    return out


def float_bounds(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(max, min) of every non-empty float array, in order: NaN propagates through both and an
    infinity reaches one, so they decide finiteness as well as the magnitude max(max, -min)."""
    out = {}
    with np.errstate(all="ignore"):
        for name, a in arrays.items():
            if a.dtype.kind == "f" and a.size:
                out[name] = float(a.max()), float(a.min())
    return out


def check_floats(arrays: Mapping[str, np.ndarray], max_norm: float | None,
                 norm_reference: Mapping[str, np.ndarray] | None, max_abs: float | None,
                 bounds: dict[str, tuple[float, float]] | None = None) -> tuple[str, str] | None:
    """Finiteness, norm and magnitude of a received payload's float arrays: (reason, detail) or None.

    Part of check 8 of :func:`fednode.security.envelope.open_envelope`; caller data is only read.
    ``bounds`` is :func:`float_bounds` of ``arrays`` when the caller has it already (an immutable
    payload several receivers check, :mod:`fednode.security.codec`): one max and one min pass per
    array either way, no isfinite temporary.
    """
    floats = {n: a for n, a in arrays.items() if a.dtype.kind == "f"}
    if not floats:
        return None
    if bounds is None:
        bounds = float_bounds(floats)
    for name, (hi, lo) in bounds.items():
        if not (math.isfinite(hi) and math.isfinite(lo)):
            return "non_finite", name
    with np.errstate(all="ignore"):
        if max_norm is not None:
            ref = norm_reference
            total = 0.0
            for name, a in floats.items():
                v = a.astype(np.float64).reshape(-1)
                if ref is not None:
                    r = ref.get(name)
                    if r is None or np.shape(r) != a.shape:
                        return "layout", f"norm_reference has no {a.shape} array {name!r}"
                    v = v - np.asarray(r, dtype=np.float64).reshape(-1)
                total += float(np.dot(v, v))
            norm = float(np.sqrt(total))
            if not norm <= max_norm:
                return "norm", f"{norm:.6g} > {max_norm:.6g}"
    if max_abs is not None:
        for name, (hi, lo) in bounds.items():
            if not max(hi, -lo) <= max_abs:
                return "magnitude", name
    return None

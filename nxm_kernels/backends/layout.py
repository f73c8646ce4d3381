"""Typed prepared weights: each backend's in-memory layout of a ``PackedWeight``, validated once.

A backend derives its layout from the canonical :class:`~nxm_kernels.format.PackedWeight` once (at
``NxMLinear`` construction, ``.to()`` and load), as a frozen dataclass whose constructor checks every
tensor against the weight's :class:`WeightMeta`. Whoever holds a layout object therefore holds a
well-formed weight on one device, and the hot path (``NxMLinear.forward``) runs kernels on it
without re-checking anything (in the spirit of torchao's layout classes).

Every layout:

* ``from_packed(packed)`` derives it (pure function of the canonical tensors) and ``to_packed()``
  inverts it: ``L.from_packed(p).to_packed() == p`` (tested for every backend);
* is the sequence of its tensors in the order the custom ops take them (``list(layout)``,
  ``layout[0]``, ``len(layout)``), because ``torch.library`` ops take tensor lists, not objects;
  ``from_tensors(tensors, meta)`` rebuilds it from that list, checking it (the list may come from a
  caller) with messages naming the tensor and the rule;
* carries ``meta`` (``n, k, bits, sparse``) and ``device``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, NamedTuple

import torch

from ..format import PackedWeight, packed_shapes, values_dtype

__all__ = ["WeightMeta", "Layout", "CanonicalLayout"]


class WeightMeta(NamedTuple):
    """What a kernel needs to know about a prepared weight besides its tensors."""

    n: int
    k: int
    bits: int
    sparse: bool

    @classmethod
    def of(cls, packed) -> "WeightMeta":
        return cls(packed.shape[0], packed.shape[1], packed.bits, packed.sparse)

    @property
    def kind(self) -> str:
        """The weight kind as a spec string (``2:4-w8a8``), the dispatch table's key."""
        return f"{'2:4' if self.sparse else 'dense'}-w{self.bits}a8"


_FIELDS: dict[type, tuple[str, ...]] = {}  # tensor field names per layout class


@dataclass(frozen=True, eq=False)
class Layout:
    """Base of the backends' typed prepared weights (see the module docstring).

    Subclasses are frozen dataclasses whose fields are ``meta`` followed by their tensors; they set
    :attr:`backend` and implement ``_check`` (raise on a malformed tensor), ``from_packed`` and
    ``to_packed``. ``_check`` runs once, in ``__post_init__``.
    """

    meta: WeightMeta
    #: The backend whose kernels read this layout.
    backend: ClassVar[str] = ""

    def __post_init__(self):
        if not isinstance(self.meta, WeightMeta):
            raise TypeError(f"meta must be a WeightMeta, got {type(self.meta).__name__}")
        self._check()
        devices = {t.device for t in self.tensors()}
        if len(devices) != 1:
            listing = ", ".join(f"{f} on {getattr(self, f).device}" for f in self._tensor_fields()
                                if getattr(self, f) is not None)
            raise ValueError(f"the {self.backend} layout's tensors must be on one device, got {listing}")

    # ------------------------------------------------------------------ sequence of tensors
    @classmethod
    def _tensor_fields(cls) -> tuple[str, ...]:
        names = _FIELDS.get(cls)
        if names is None:
            names = _FIELDS[cls] = tuple(f.name for f in fields(cls) if f.name != "meta")
        return names

    def tensors(self) -> list[torch.Tensor]:
        """The tensors in op order (``None`` fields, e.g. a dense weight's metadata, left out)."""
        return [t for t in (getattr(self, f) for f in self._tensor_fields()) if t is not None]

    def __iter__(self):
        return iter(self.tensors())

    def __len__(self) -> int:
        return len(self.tensors())

    def __getitem__(self, i):
        return self.tensors()[i]

    @property
    def device(self) -> torch.device:
        return self.tensors()[0].device

    def __eq__(self, other) -> bool:
        """Same class and meta, bit-identical tensors on the same device."""
        if type(other) is not type(self):
            return NotImplemented
        a, b = self.tensors(), other.tensors()
        return self.meta == other.meta and len(a) == len(b) and all(
            x.device == y.device and x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))

    __hash__ = object.__hash__  # identity: layouts are cached per weight, never compared by value in dicts

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_tensors(cls, tensors, meta: WeightMeta) -> "Layout":
        """Rebuild (and check) a layout from its tensor list, e.g. the list a custom op received."""
        if type(tensors) is cls and tensors.meta == meta:
            return tensors  # checked when it was built
        if isinstance(tensors, Layout):
            # Another meta or another backend's layout: acceptable only if its tensors fit this one.
            tensors = tensors.tensors()
        if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError(f"weights must be the {cls.backend} backend's prepared layout or its list of tensors")
        return cls(meta, *cls._expand(list(tensors), meta))

    @classmethod
    def _expand(cls, tensors: list, meta: WeightMeta) -> list:
        """The field values for ``tensors`` (re-inserting ``None`` for omitted fields)."""
        names = cls._tensor_fields()
        if len(tensors) != len(names):
            raise ValueError(f"weights must hold {len(names)} tensors ({', '.join(names)}), got {len(tensors)}")
        return tensors

    @classmethod
    def trusted(cls, tensors, meta: WeightMeta) -> "Layout":
        """Rebuild from :meth:`tensors` of a layout that was already checked, without checking again
        (the custom ops' real implementations: their tensors come from a layout built by us)."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "meta", meta)
        for name, t in zip(cls._tensor_fields(), cls._expand(list(tensors), meta)):
            object.__setattr__(obj, name, t)
        return obj

    def _check(self) -> None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    @classmethod
    def from_packed(cls, packed: PackedWeight) -> "Layout":  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def to_packed(self) -> PackedWeight:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class CanonicalLayout(Layout):
    """The canonical tensors themselves (``values``, ``metadata`` for 2:4, ``scales``), checked against
    ``meta``: the layout of backends whose kernels decode the canonical format directly."""

    values: torch.Tensor
    metadata: torch.Tensor | None
    scales: torch.Tensor

    @classmethod
    def _expand(cls, tensors: list, meta: WeightMeta) -> list:
        expected = 3 if meta.sparse else 2
        if len(tensors) != expected:
            raise ValueError(f"weights must hold {expected} tensors for a {'2:4' if meta.sparse else 'dense'} "
                             f"weight (values{', metadata' if meta.sparse else ''}, scales), got {len(tensors)}")
        return tensors if meta.sparse else [tensors[0], None, tensors[1]]

    def _check(self) -> None:
        meta = self.meta
        shapes = packed_shapes(meta.n, meta.k, meta.bits, meta.sparse)
        for name in ("values", "scales") + (("metadata",) if meta.sparse else ()):
            if not isinstance(getattr(self, name), torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(getattr(self, name)).__name__}")
        want, vdtype = shapes["values"], values_dtype(meta.bits)
        if self.values.dtype != vdtype or tuple(self.values.shape) != want:
            raise ValueError(f"values must be {vdtype} {want} for n={meta.n}, k={meta.k}, bits={meta.bits}, "
                             f"sparse={meta.sparse}; got {self.values.dtype} {tuple(self.values.shape)}")
        if meta.sparse and (self.metadata.dtype != torch.uint8 or tuple(self.metadata.shape) != shapes["metadata"]):
            raise ValueError(f"metadata must be uint8 {shapes['metadata']}, got {self.metadata.dtype} "
                             f"{tuple(self.metadata.shape)}")
        if not meta.sparse and self.metadata is not None:
            raise ValueError("metadata must be None for a dense weight")
        if self.scales.dtype != torch.float32 or tuple(self.scales.shape) != shapes["scales"]:
            raise ValueError(f"scales must be float32 {shapes['scales']}, got {self.scales.dtype} "
                             f"{tuple(self.scales.shape)}")

    @classmethod
    def from_packed(cls, packed: PackedWeight) -> "CanonicalLayout":
        if not isinstance(packed, PackedWeight):
            raise TypeError(f"packed must be a PackedWeight, got {type(packed).__name__}")
        return cls(WeightMeta.of(packed), packed.values, packed.metadata, packed.scales)

    def to_packed(self) -> PackedWeight:
        meta = self.meta
        return PackedWeight(self.values, self.metadata, self.scales, (meta.n, meta.k), meta.bits,
                            "2:4" if meta.sparse else "dense")

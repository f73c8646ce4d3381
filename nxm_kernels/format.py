"""The canonical packed weight format (version 1), shared by every backend and by checkpoints.

``docs/FORMAT.md`` describes it bit by bit with a worked example; this module is its executable
specification. In short, for a logical weight ``W[N, K]`` (out_features x in_features):

* ``K`` is zero-padded to ``K_pad = ceil(K / 16) * 16``; ``N`` is never padded.
* codes are symmetric per-output-channel integers (see :mod:`nxm_kernels.quant`), scales ``[N]`` float32.
* ``pattern="2:4"``: each group of 4 consecutive codes of a row keeps 2 *slots*, at column offsets
  ``i0 < i1`` in ``0..3`` (a group with fewer than two non-zeros fills up with its lowest-index
  zero positions). ``values[n, 2g + s]`` is the code in slot ``s`` of group ``g``; ``metadata[n, b]``
  (uint8) holds groups ``2b`` (bits 0-3) and ``2b + 1`` (bits 4-7), each as ``i0 | i1 << 2``.
* ``pattern="dense"``: ``values`` are all ``K_pad`` codes of a row; no metadata.
* ``bits=8``: ``values`` is int8, one code per byte. ``bits=4``: ``values`` is uint8 with two codes
  per byte, the even-indexed code in the low nibble, each a 4-bit two's-complement number.

Backends may derive their own in-memory layouts from this once (cached in
:attr:`PackedWeight.prepared`); the canonical tensors are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ._checks import FLOAT_DTYPES, check_choice, check_finite, check_tensor
from .quant import quantize_weight
from .sparsity import check_nm, prune_nm
from .spec import KERNEL_PATTERNS, WEIGHT_BITS, LayerSpec, parse_spec

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "K_ALIGN", "MAX_K", "PAD_METADATA_BYTE", "PackedWeight", "cat_rows",
           "pack", "packed_shapes", "padded_k", "values_dtype", "weight_nbytes"]

FORMAT_NAME = "nxm-packed"
FORMAT_VERSION = 1
#: Canonical padding of the input dimension: keeps int4 values and metadata byte-aligned per row.
K_ALIGN = 16
#: |acc| <= 127 * 127 * K must fit in int32.
MAX_K = 131072
#: Scales are stored as float32.
SCALE_BYTES = 4
#: A valid 2:4 metadata byte, offsets ``(0, 1)`` in both of its groups (``0b0100`` per nibble): what
#: placeholders and padding rows/columns hold.
PAD_METADATA_BYTE = 0x44


def padded_k(k: int) -> int:
    return -(-k // K_ALIGN) * K_ALIGN


def values_dtype(bits: int) -> torch.dtype:
    """The dtype of ``values``: int8 for ``bits=8``, uint8 (two codes per byte) for ``bits=4``."""
    return torch.int8 if bits == 8 else torch.uint8


def packed_shapes(n: int, k: int, bits: int, sparse: bool) -> dict:
    """Shapes of the packed tensors of a weight ``[n, k]``: ``{"values", "metadata", "scales"}``
    (``metadata`` is ``None`` when dense). Every element of ``values`` and ``metadata`` is one byte."""
    kp = padded_k(k)
    kept = kp // 2 if sparse else kp      # 2:4 keeps two codes per group of four
    return {
        "values": (n, kept if bits == 8 else kept // 2),  # int4: two codes per byte
        "metadata": (n, kp // 8) if sparse else None,     # 4 bits per group of 4: one byte per 8 columns
        "scales": (n,),
    }


def weight_nbytes(shape, spec: "str | LayerSpec", float_bytes: int = 4) -> dict:
    """Bytes of a weight ``[N, K]`` stored under ``spec``: ``{"values", "metadata", "scales", "total"}``.

    The project's one byte count (``PackedWeight``/``NxMLinear.nbytes``, the swap report, the accounting
    and the search report it): a packable spec counts the tensors exactly as :func:`pack` lays them out;
    ``fp`` counts the dense weight at ``float_bytes`` per element. Training-only N:M patterns have no
    packed layout, hence no size: ``ValueError``.
    """
    if not (isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise ValueError(f"shape must be (out_features, in_features), two ints >= 1, got {shape!r}")
    if isinstance(float_bytes, bool) or float_bytes not in (1, 2, 4, 8):
        raise ValueError(f"float_bytes must be the size of a float element (4 fp32, 2 fp16/bf16, 8 fp64, 1 fp8), "
                         f"got {float_bytes!r}")
    s = parse_spec(spec)
    n, k = shape
    if s.is_fp:
        return {"values": n * k * float_bytes, "metadata": 0, "scales": 0, "total": n * k * float_bytes}
    if not s.packable:
        raise ValueError(f"spec must be a packable spec (2:4-w8a8, 2:4-w4a8, dense-w8a8, dense-w4a8) or 'fp' to "
                         f"have a size in bytes, got {str(s)!r}")
    shapes = packed_shapes(n, k, s.weight_bits, s.sparse)
    b = {  # values and metadata hold one byte per element
        "values": math.prod(shapes["values"]),
        "metadata": math.prod(shapes["metadata"]) if s.sparse else 0,
        "scales": math.prod(shapes["scales"]) * SCALE_BYTES,
    }
    b["total"] = sum(b.values())
    return b


def _check_version(version) -> None:
    """A reader refuses any version but its own: a newer one may lay the bytes out differently."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"packed weight format version must be a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"packed weight format version {version} is newer than this nxm_kernels reads "
                         f"(version {FORMAT_VERSION}); upgrade nxm_kernels")
    if version != FORMAT_VERSION:
        raise ValueError(f"packed weight format version {version} is not supported "
                         f"(this nxm_kernels reads version {FORMAT_VERSION})")


def _check_bits(bits) -> None:
    # An int check first: 8.0 == 8 would otherwise slip through into spec strings and shapes.
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, one of {WEIGHT_BITS}, got {bits!r}")
    check_choice("bits", bits, WEIGHT_BITS)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes ``[..., 2j]`` (even count) -> uint8, code ``2j`` in the low nibble."""
    c = codes.to(torch.int16) & 0xF
    return (c[..., 0::2] | (c[..., 1::2] << 4)).to(torch.uint8)


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., j]`` -> int8 codes ``[..., 2j]`` (sign-extended 4-bit two's complement)."""
    p = packed.to(torch.int16)
    lo = ((p & 0xF) ^ 8) - 8
    hi = (((p >> 4) & 0xF) ^ 8) - 8
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], -1).to(torch.int8)


def _select_slots(codes: torch.Tensor) -> torch.Tensor:
    """For codes ``[N, G, 4]`` with <= 2 non-zeros per group, the two kept offsets ``i0 < i1``."""
    # Non-zeros first (by offset), then zero positions by offset: a stable sort on "is zero".
    order = torch.sort((codes == 0).to(torch.int8), dim=-1, stable=True).indices[..., :2]
    return torch.sort(order, dim=-1).values


@dataclass
class PackedWeight:
    """A quantized (and 2:4-sparse, unless ``pattern="dense"``) weight in the canonical format.

    Build one with :func:`pack`. Fields follow the module docstring; ``shape`` is the logical
    ``(N, K)``. ``prepared`` caches backend-derived layouts and is never saved.
    """

    values: torch.Tensor
    metadata: torch.Tensor | None
    scales: torch.Tensor
    shape: tuple[int, int]
    bits: int
    pattern: str
    version: int = FORMAT_VERSION
    prepared: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        self.validate()

    def __eq__(self, other) -> bool:
        """Same format fields and bit-identical tensors (the generated ``==`` would compare tensors
        elementwise and fail on their truth value)."""
        if not isinstance(other, PackedWeight):
            return NotImplemented
        if (self.shape, self.bits, self.pattern, self.version) != (other.shape, other.bits, other.pattern,
                                                                   other.version):
            return False
        if (self.metadata is None) != (other.metadata is None):
            return False
        pairs = [(self.values, other.values), (self.scales, other.scales)]
        if self.metadata is not None:
            pairs.append((self.metadata, other.metadata))
        return all(a.device == b.device and torch.equal(a, b) for a, b in pairs)

    # ----------------------------------------------------------------- structure
    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def padded_in_features(self) -> int:
        return padded_k(self.shape[1])

    @property
    def sparse(self) -> bool:
        return self.pattern == "2:4"

    @property
    def spec(self) -> str:
        return f"{self.pattern}-w{self.bits}a8"

    @property
    def device(self) -> torch.device:
        return self.values.device

    def expected_shapes(self) -> dict:
        return packed_shapes(self.shape[0], self.shape[1], self.bits, self.sparse)

    def validate(self, deep: bool = False) -> None:
        """Check the fields agree with each other (shapes, dtypes, devices, version).

        ``deep=True`` also reads the data: metadata offsets must satisfy ``i0 < i1``, int8 codes must
        be in the symmetric range, scales finite and positive (used when loading checkpoints).
        """
        _check_version(self.version)
        _check_bits(self.bits)
        check_choice("pattern", self.pattern, KERNEL_PATTERNS)
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"shape must be (N, K) with N, K >= 1, got {self.shape}")
        if self.shape[1] > MAX_K:
            raise ValueError(f"in_features must be <= {MAX_K} so int32 accumulators cannot overflow, "
                             f"got {self.shape[1]}")
        exp = self.expected_shapes()
        check_tensor("values", self.values, dtypes=(values_dtype(self.bits),))
        if tuple(self.values.shape) != exp["values"]:
            raise ValueError(f"values must have shape {exp['values']} for {self.spec} {self.shape}, "
                             f"got {tuple(self.values.shape)}")
        check_tensor("scales", self.scales, dtypes=(torch.float32,))
        if tuple(self.scales.shape) != exp["scales"]:
            raise ValueError(f"scales must have shape {exp['scales']}, got {tuple(self.scales.shape)}")
        if self.sparse:
            if self.metadata is None:
                raise ValueError("metadata is required for pattern '2:4'")
            check_tensor("metadata", self.metadata, dtypes=(torch.uint8,))
            if tuple(self.metadata.shape) != exp["metadata"]:
                raise ValueError(f"metadata must have shape {exp['metadata']}, got {tuple(self.metadata.shape)}")
        elif self.metadata is not None:
            raise ValueError("metadata must be None for pattern 'dense'")
        devices = {t.device for t in (self.values, self.metadata, self.scales) if t is not None}
        if len(devices) > 1:
            raise ValueError(f"values, metadata and scales must be on one device, got {sorted(map(str, devices))}")
        if deep:
            check_finite("scales", self.scales)
            if not bool((self.scales > 0).all()):
                raise ValueError("scales must be > 0")
            if self.bits == 8 and bool((self.values == -128).any()):
                raise ValueError("int8 codes must be in [-127, 127], found -128")
            if self.bits == 4 and bool((_unpack_nibbles(self.values) == -8).any()):
                raise ValueError("int4 codes must be in [-7, 7], found -8")
            if self.sparse:
                i0, i1 = self.slot_offsets().unbind(-1)
                if not bool((i0 < i1).all()):
                    raise ValueError("metadata is corrupt: every group needs offsets i0 < i1")

    # ----------------------------------------------------------------- decoding
    def codes(self) -> torch.Tensor:
        """The stored codes as int8: ``[N, K_pad/2]`` kept slots for 2:4, ``[N, K_pad]`` for dense."""
        return _unpack_nibbles(self.values) if self.bits == 4 else self.values

    def slot_offsets(self) -> torch.Tensor:
        """Column offsets within each group, ``[N, K_pad/4, 2]`` int64 (2:4 only)."""
        if not self.sparse:
            raise ValueError("slot_offsets() is only defined for pattern '2:4'")
        m = self.metadata.to(torch.int64)
        nib = torch.stack((m & 0xF, m >> 4), dim=-1).reshape(m.shape[0], -1)  # [N, G]
        return torch.stack((nib & 3, nib >> 2), dim=-1)

    def int_weight(self) -> torch.Tensor:
        """Dense int8 codes ``[N, K_pad]`` (zeros where pruned and in the padding)."""
        codes = self.codes()
        if not self.sparse:
            return codes
        n, kp = self.shape[0], self.padded_in_features
        dense = torch.zeros(n, kp // 4, 4, dtype=torch.int8, device=codes.device)
        dense.scatter_(2, self.slot_offsets(), codes.reshape(n, kp // 4, 2))
        return dense.reshape(n, kp)

    def unpack(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dequantized dense weight ``[N, K]`` (``codes * scale``)."""
        if dtype not in FLOAT_DTYPES + (torch.float64,):
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        w = self.int_weight()[:, : self.shape[1]].float() * self.scales.unsqueeze(-1)
        return w.to(dtype)

    # ----------------------------------------------------------------- storage
    def nbytes(self) -> dict:
        """Bytes held: ``{"values", "metadata", "scales", "total"}``, by :func:`weight_nbytes` (the
        tensors were checked to have exactly the shapes it counts)."""
        return weight_nbytes(self.shape, self.spec)

    def rows(self, start: int, stop: int) -> "PackedWeight":
        """Output rows ``start:stop`` as a packed weight of shape ``(stop - start, K)`` (views, no copy).

        Every tensor of the format is laid out per output row, so a row range of a packed weight is
        itself a valid packed weight: the codes, metadata and scale of row ``n`` do not depend on any
        other row.
        """
        n = self.out_features
        for arg, v in (("start", start), ("stop", stop)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{arg} must be an int, got {v!r}")
        if not 0 <= start < stop <= n:
            raise ValueError(f"rows need 0 <= start < stop <= out_features ({n}), got start={start}, stop={stop}")
        meta = None if self.metadata is None else self.metadata[start:stop]
        return PackedWeight(self.values[start:stop], meta, self.scales[start:stop], (stop - start, self.shape[1]),
                            self.bits, self.pattern, self.version)

    def to(self, device) -> "PackedWeight":
        """A copy on ``device`` (prepared layouts are not carried over)."""
        return PackedWeight(self.values.to(device), None if self.metadata is None else self.metadata.to(device),
                            self.scales.to(device), self.shape, self.bits, self.pattern, self.version)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to save (safetensors-ready, contiguous)."""
        out = {"values": self.values.contiguous(), "scales": self.scales.contiguous()}
        if self.metadata is not None:
            out["metadata"] = self.metadata.contiguous()
        return out

    def config(self) -> dict:
        """JSON-serialisable description (everything but the tensors)."""
        return {"format": FORMAT_NAME, "version": self.version, "shape": list(self.shape),
                "bits": self.bits, "pattern": self.pattern}

    @classmethod
    def from_tensors(cls, tensors: dict, config: dict) -> "PackedWeight":
        """Rebuild from :meth:`tensors` and :meth:`config`, checking version and contents."""
        if not isinstance(config, Mapping) or config.get("format") != FORMAT_NAME:
            raise ValueError(f"config does not describe a {FORMAT_NAME!r} weight: {config!r}")
        for key in ("version", "shape", "bits", "pattern"):
            if key not in config:
                raise ValueError(f"packed weight config is missing {key!r}: {config!r}")
        # The version first: a newer file may not even have the tensors this version expects.
        _check_version(config["version"])
        shape = config["shape"]
        if not isinstance(shape, (list, tuple)) or len(shape) != 2 or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in shape):
            raise ValueError(f"packed weight config 'shape' must be [N, K] ints, got {shape!r}")
        if not isinstance(tensors, Mapping):
            raise TypeError(f"tensors must be a mapping of name -> tensor, got {type(tensors).__name__}")
        missing = {"values", "scales"} - set(tensors)
        if missing:
            raise ValueError(f"packed weight tensors missing {sorted(missing)}")
        pw = cls(tensors["values"], tensors.get("metadata"), tensors["scales"], tuple(config["shape"]),
                 config["bits"], config["pattern"], config["version"])
        pw.validate(deep=True)
        return pw


def cat_rows(parts) -> PackedWeight:
    """Stack packed weights with one ``K``, ``bits`` and ``pattern`` into one ``[sum N_i, K]`` weight.

    The format is per output row (see :meth:`PackedWeight.rows`), so this is a concatenation of
    ``values``, ``metadata`` and ``scales`` along the rows: ``cat_rows([pack(w) for w in ws])`` is
    bit for bit ``pack(torch.cat(ws))``. Fused projections (query, key and value of an attention block
    computed by one GEMM) are stored this way.
    """
    if isinstance(parts, PackedWeight) or not isinstance(parts, (list, tuple)):
        raise TypeError(f"parts must be a list or tuple of PackedWeight, got {type(parts).__name__}")
    if not parts:
        raise ValueError("parts must hold at least one PackedWeight")
    for i, p in enumerate(parts):
        if not isinstance(p, PackedWeight):
            raise TypeError(f"parts[{i}] must be a PackedWeight, got {type(p).__name__}")
    first = parts[0]
    for i, p in enumerate(parts[1:], 1):
        for what, a, b in (("in_features", p.in_features, first.in_features), ("bits", p.bits, first.bits),
                           ("pattern", p.pattern, first.pattern), ("version", p.version, first.version),
                           ("device", p.device, first.device)):
            if a != b:
                raise ValueError(f"parts must share {what}: parts[{i}] has {a}, parts[0] has {b}")
    meta = None if first.metadata is None else torch.cat([p.metadata for p in parts])
    return PackedWeight(torch.cat([p.values for p in parts]), meta, torch.cat([p.scales for p in parts]),
                        (sum(p.out_features for p in parts), first.in_features), first.bits, first.pattern,
                        first.version)


def pack(weight: torch.Tensor, bits: int = 8, pattern: str = "2:4", *, prune: bool = False,
         scale: torch.Tensor | None = None) -> PackedWeight:
    """Quantize and pack a float weight ``[N, K]`` (out_features x in_features).

    ``pattern="2:4"`` requires the weight to be 2:4 sparse along K already (groups with more zeros
    are fine) unless ``prune=True``, which applies the magnitude projection first. ``bits`` is 8 or
    4. ``scale`` optionally fixes the per-channel scales (float32 ``[N]``). Any N, K >= 1 works.
    A spec string (``"2:4-w4a8"``) may be given as ``pattern``, in which case its bits are used.
    """
    if isinstance(pattern, str) and "-w" in pattern:
        s = parse_spec(pattern)
        if not s.packable:
            raise ValueError(f"spec must be one of the packable specs, got {pattern!r}")
        pattern, bits = s.pattern, s.weight_bits
    _check_bits(bits)
    check_choice("pattern", pattern, KERNEL_PATTERNS)
    check_tensor("weight", weight, dtypes=FLOAT_DTYPES + (torch.float64,), ndim=2)
    n, k = weight.shape
    if n == 0 or k == 0:
        raise ValueError(f"weight must not be empty, got shape {tuple(weight.shape)}")
    if k > MAX_K:
        raise ValueError(f"weight in_features must be <= {MAX_K} so int32 accumulators cannot overflow, got {k}")
    check_finite("weight", weight)
    w = weight.detach().float()
    if weight.dtype == torch.float64:  # finite float64 values may still overflow float32
        check_finite("weight (converted to float32)", w)
    if pattern == "2:4":
        w = prune_nm(w, 2, 4) if prune else w
        if not prune:
            check_nm(w, 2, 4, name="weight")
    codes, scales = quantize_weight(w, bits, scale)
    kp = padded_k(k)
    codes = torch.nn.functional.pad(codes, (0, kp - k))
    metadata = None
    if pattern == "2:4":
        groups = codes.reshape(n, kp // 4, 4)
        slots = _select_slots(groups)                                  # [N, G, 2]
        codes = torch.gather(groups, 2, slots).reshape(n, kp // 2)
        nib = (slots[..., 0] | (slots[..., 1] << 2)).to(torch.int16)  # [N, G], 4 bits per group
        metadata = (nib[:, 0::2] | (nib[:, 1::2] << 4)).to(torch.uint8)
    values = pack_nibbles(codes) if bits == 4 else codes.contiguous()
    return PackedWeight(values.contiguous(), metadata, scales.contiguous(), (n, k), bits, pattern)

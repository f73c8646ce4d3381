"""The CUDA kernel's prepared weight layout: a pure function of the canonical ``PackedWeight``.

The kernel (``csrc/nxm_sparse_gemm.cuh``) computes ``y^T[N, M] = W[N, K] . x^T[K, M]`` with
``mma.sp::ordered_metadata.m16n8k64.s32.s8.s8``: the sparse operand *A* is the weight (16 weight rows
per instruction, 64 dense K = 32 kept codes per row), *B* is the int8 activations (8 tokens).
This module lays the weight out so that one warp fetches the A operand and the metadata of one
``(16 rows, 64 K)`` tile with a single contiguous 16-byte load (values) and a 4-byte load (metadata)
per lane, with no shuffles or byte permutes at run time.

Fragment ownership (PTX ISA, sparse ``mma.m16n8k64`` with ``.s8``; ``g = lane >> 2``, ``t = lane & 3``):

* A register ``r`` (``r = 0..3``) byte ``i`` holds compressed column ``t*4 + 16*(r >> 1) + i`` of row
  ``g + 8*(r & 1)`` (the compressed 16 x 32 tile has the dense ``m16n8k32`` int8 A layout);
* the metadata register of lane ``T`` holds row ``(T >> 2) + 8*(T & 1)``, dense columns
  ``32*((T >> 1) & 1) .. +31``: nibble ``j`` describes the group of dense columns ``4j..4j+3`` of that
  32-column block, bits 0-1 the first kept offset, bits 2-3 the second. This is exactly the
  canonical metadata read as a little-endian uint32 (canonical byte ``b`` holds groups ``2b``, ``2b+1``),
  so the kernel's metadata word is a canonical word, only moved to the lane that needs it.

Prepared tensors (``Np = ceil(N / 128) * 128``, ``KP = ceil(K / 128) * 128``; padding rows/columns hold
zero codes and metadata offsets ``(0, 1)``):

* int8 ``values``: uint8 ``[Np/16, KP/64, 32, 16]``: tile ``(n16, k64)``, lane, register-ordered bytes;
* int4 ``values``: uint8 ``[Np/16, KP/128, 32, 16]``: per lane, bytes ``8s .. 8s+7`` serve k64 step ``s``
  of the 128-K tile as two 32-bit words; word ``w`` holds registers ``2w`` (low nibbles) and
  ``2w + 1`` (high nibbles), so the kernel unpacks a word into two registers with one mask or shift
  and a per-byte sign extension;
* ``meta``: int32 ``[Np/16, KP/64, 32]`` (the uint32 bit pattern);
* ``scales``: float32 ``[Np]`` (padding rows 1.0).

:class:`CudaLayout` is these three tensors as the backend's typed prepared weight (checked once when
built); :func:`prepare_layout` derives it and :func:`restore_canonical` inverts it (tested round trip:
``CudaLayout.from_packed(p).to_packed() == p``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...format import PAD_METADATA_BYTE, PackedWeight, pack_nibbles, padded_k
from ..layout import Layout, WeightMeta

__all__ = ["N_ALIGN", "K_ALIGN", "CudaLayout", "padded_codes_meta", "prepare_layout", "restore_canonical", "prepared_dims"]

N_ALIGN = 128   # largest weight-row tile of any kernel config
K_ALIGN = 128   # dense K per pipeline stage


def prepared_dims(n: int, k: int) -> tuple[int, int]:
    """``(Np, KP)``: the padded weight rows and dense K of the prepared layout."""
    return -(-n // N_ALIGN) * N_ALIGN, -(-k // K_ALIGN) * K_ALIGN


def _fragment_index(np_: int, kp: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and compressed-column index of every byte of the int8 prepared values ``[Np/16, KP/64, 32, 16]``."""
    tn = torch.arange(np_ // 16, device=device).view(-1, 1, 1, 1)
    tk = torch.arange(kp // 64, device=device).view(1, -1, 1, 1)
    lane = torch.arange(32, device=device).view(1, 1, -1, 1)
    byte = torch.arange(16, device=device).view(1, 1, 1, -1)
    r, i = byte // 4, byte % 4
    row = 16 * tn + (lane >> 2) + 8 * (r & 1)
    col = 32 * tk + (lane & 3) * 4 + 16 * (r >> 1) + i
    return row.expand(-1, kp // 64, -1, -1), col.expand(np_ // 16, -1, -1, -1)


def _meta_index(np_: int, kp: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and uint32-word index of every metadata word ``[Np/16, KP/64, 32]``."""
    tn = torch.arange(np_ // 16, device=device).view(-1, 1, 1)
    tk = torch.arange(kp // 64, device=device).view(1, -1, 1)
    lane = torch.arange(32, device=device).view(1, 1, -1)
    row = 16 * tn + (lane >> 2) + 8 * (lane & 1)
    word = 2 * tk + ((lane >> 1) & 1)
    return row.expand(-1, kp // 64, -1), word.expand(np_ // 16, -1, -1)


def _int4_regroup(v8: torch.Tensor) -> torch.Tensor:
    """int8-ordered codes ``[Np/16, KP/64, 32, 16]`` -> int4 prepared bytes ``[Np/16, KP/128, 32, 16]``."""
    t16, t64 = v8.shape[0], v8.shape[1]
    regs = v8.view(t16, t64 // 2, 2, 32, 4, 4)          # [tn, k128, step, lane, reg, byte]
    lo = regs[:, :, :, :, 0::2, :].to(torch.int16) & 0xF   # registers 0 and 2 -> low nibbles
    hi = regs[:, :, :, :, 1::2, :].to(torch.int16) & 0xF   # registers 1 and 3 -> high nibbles
    words = (lo | (hi << 4)).to(torch.uint8)               # [tn, k128, step, lane, word, byte]
    return words.permute(0, 1, 3, 2, 4, 5).reshape(t16, t64 // 2, 32, 16).contiguous()


def _int4_ungroup(v4: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_int4_regroup` (returns int8 codes in int8-prepared order)."""
    t16, t128 = v4.shape[0], v4.shape[1]
    words = v4.view(t16, t128, 32, 2, 2, 4).permute(0, 1, 3, 2, 4, 5).to(torch.int16)  # [tn,k128,step,lane,w,b]
    lo = ((words & 0xF) ^ 8) - 8
    hi = (((words >> 4) & 0xF) ^ 8) - 8
    regs = torch.stack((lo, hi), dim=5)                     # [tn, k128, step, lane, w, lo/hi, byte]
    return regs.reshape(t16, t128 * 2, 32, 16).to(torch.int8)


@dataclass(frozen=True, eq=False)
class CudaLayout(Layout):
    """The CUDA kernel's prepared weight (module docstring): ``values`` uint8 fragments, ``metadata``
    int32 ``[Np/16, KP/64, 32]`` words, ``scales`` float32 ``[Np]``; 2:4 weights only."""

    values: torch.Tensor
    metadata: torch.Tensor
    scales: torch.Tensor
    #: On a GPU with the CUTLASS kernels, the same weight in their layout (:mod:`.cutlass_layout`:
    #: int8 codes and reordered metadata; they share ``scales``), else None.
    cutlass_values: torch.Tensor | None = None
    cutlass_metadata: torch.Tensor | None = None
    backend: ClassVar[str] = "cuda"

    @classmethod
    def _expand(cls, tensors: list, meta) -> list:
        if len(tensors) not in (3, 5):
            raise ValueError("weights are not in the cuda backend's prepared layout (use ops.prepared_weights): "
                             f"expected 3 tensors (values, metadata, scales) or 5 (with the CUTLASS values and "
                             f"metadata), got {len(tensors)}")
        return tensors if len(tensors) == 5 else tensors + [None, None]

    def with_cutlass(self, values: torch.Tensor, metadata: torch.Tensor) -> "CudaLayout":
        """This layout with the CUTLASS kernels' tensors of the same weight added (checked)."""
        return type(self)(self.meta, self.values, self.metadata, self.scales, values, metadata)

    def _check(self) -> None:
        meta = self.meta
        if not meta.sparse:
            raise ValueError("the CUDA kernel runs 2:4 weights only, got a dense weight")
        np_, kp = prepared_dims(meta.n, meta.k)
        k_tiles = kp // 128 if meta.bits == 4 else kp // 64
        want = {"values": (torch.uint8, (np_ // 16, k_tiles, 32, 16)),
                "metadata": (torch.int32, (np_ // 16, kp // 64, 32)), "scales": (torch.float32, (np_,))}
        for name, (dtype, shape) in want.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape:
                raise ValueError(f"weights are not in the cuda backend's prepared layout (use ops.prepared_weights): "
                                 f"{name} must be {dtype} {shape} for {meta}, got "
                                 f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
            if not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous (use prepare())")
        # The CUTLASS tensors come as a pair; their exact shapes are the CUTLASS layout's business
        # (cutlass_layout.py, tested there), here only that they are int8 codes and metadata words
        # (uint8 for sm_90a, int32 for sm_80).
        if (self.cutlass_values is None) != (self.cutlass_metadata is None):
            raise ValueError("cutlass_values and cutlass_metadata must both be given or both be None")
        if self.cutlass_values is not None:
            for name, dtypes in (("cutlass_values", (torch.int8,)), ("cutlass_metadata", (torch.uint8, torch.int32))):
                t = getattr(self, name)
                if not isinstance(t, torch.Tensor) or t.dtype not in dtypes or not t.is_contiguous():
                    raise ValueError(f"{name} must be a contiguous {' or '.join(map(str, dtypes))} tensor (use "
                                     f"prepare()), got {getattr(t, 'dtype', type(t).__name__)}")

    @property
    def padded_k(self) -> int:
        """``KP``: the dense K the activations are padded to."""
        return prepared_dims(self.meta.n, self.meta.k)[1]

    @classmethod
    def from_packed(cls, packed: PackedWeight) -> "CudaLayout":
        return prepare_layout(packed)

    def to_packed(self) -> PackedWeight:
        # The mma.sp tensors hold the whole weight; the CUTLASS ones (if any) are a second copy of it.
        return restore_canonical((self.values, self.metadata, self.scales), self.meta.n, self.meta.k, self.meta.bits)


def padded_codes_meta(packed: PackedWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2:4 weight's int8 codes ``[Np, KP/2]`` and metadata bytes ``[Np, KP/8]``, padded to
    :func:`prepared_dims` (zero codes, :data:`PAD_METADATA_BYTE` metadata): the common start of the
    mma.sp layout here and of the CUTLASS layouts (``cutlass_layout.py``). An int8 weight that needs
    no padding keeps its canonical codes tensor itself (no copy)."""
    n, k = packed.shape
    np_, kp = prepared_dims(n, k)
    codes = packed.codes()                                  # [N, K_pad/2] int8, for both widths
    if tuple(codes.shape) != (np_, kp // 2):
        codes = torch.nn.functional.pad(codes, (0, kp // 2 - codes.shape[1], 0, np_ - n))
    meta = torch.full((np_, kp // 8), PAD_METADATA_BYTE, dtype=torch.uint8, device=packed.device)
    meta[:n, : packed.metadata.shape[1]] = packed.metadata
    return codes.contiguous(), meta


def prepare_layout(packed: PackedWeight) -> CudaLayout:
    """``[values uint8, meta int32, scales float32]`` in the kernel's layout (module docstring)."""
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"packed must be a PackedWeight, got {type(packed).__name__}")
    if not packed.sparse:
        raise ValueError(f"the CUDA kernel runs 2:4 weights only, got pattern {packed.pattern!r}")
    n, k = packed.shape
    np_, kp = prepared_dims(n, k)
    dev = packed.device
    codes, meta_b = padded_codes_meta(packed)
    words = meta_b.view(torch.int32)                        # [Np, KP/32]: little-endian uint32 bits as int32

    row, col = _fragment_index(np_, kp, dev)
    v8 = codes[row, col]                                    # [Np/16, KP/64, 32, 16] int8
    values = _int4_regroup(v8) if packed.bits == 4 else v8.view(torch.uint8).contiguous()
    mrow, mword = _meta_index(np_, kp, dev)
    meta = words[mrow, mword].contiguous()
    scales = torch.ones(np_, dtype=torch.float32, device=dev)
    scales[:n] = packed.scales
    return CudaLayout(WeightMeta.of(packed), values, meta, scales)


def restore_canonical(prepared, n: int, k: int, bits: int) -> PackedWeight:
    """Rebuild the canonical ``PackedWeight`` from :func:`prepare_layout`'s layout (or its tensor list)."""
    values, meta, scales = prepared
    np_, kp = prepared_dims(n, k)
    v8 = _int4_ungroup(values) if bits == 4 else values.view(torch.int8)
    row, col = _fragment_index(np_, kp, values.device)
    codes = torch.zeros(np_, kp // 2, dtype=torch.int8, device=values.device)
    codes[row, col] = v8
    mrow, mword = _meta_index(np_, kp, values.device)
    words = torch.zeros(np_, kp // 32, dtype=torch.int32, device=values.device)
    words[mrow, mword] = meta
    meta_b = words.view(torch.uint8)                        # [Np, KP/8], little-endian bytes
    kc = padded_k(k)
    codes = codes[:n, : kc // 2]
    vals = pack_nibbles(codes) if bits == 4 else codes.contiguous()
    return PackedWeight(vals.contiguous(), meta_b[:n, : kc // 8].contiguous(),
                        scales[:n].contiguous(), (n, k), bits, "2:4")

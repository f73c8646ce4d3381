"""The CUTLASS kernels' weight layouts (``csrc/cutlass_sm90_sparse.cuh``, ``csrc/cutlass_sm80_sparse.cuh``):
pure functions of the canonical :class:`~nxm_kernels.format.PackedWeight`, derived once at load.

Both kernels compute ``D[N, M] = W[N, K] . xq[M, K]^T`` with the weight as CUTLASS's sparse operand
A (K-major). Shapes follow the mma.sp layout (:func:`.layout.prepared_dims`): ``Np = ceil(N/128)*128``
weight rows and ``KP = ceil(K/128)*128`` dense columns, padding holding zero codes and metadata
offsets ``(0, 1)``. Each function returns ``[values int8 [Np, KP/2], meta, scales float32 [Np]]``:

* **values** (both archs): CUTLASS's compressed A for int8 K-major is row-major ``[Np, KP/2]``, the
  two kept codes of each group of four in column order: byte for byte the canonical int8 ``values``,
  padded (for int8 weights whose N and K are multiples of 128, the canonical tensor itself: no copy).
  int4 weights are expanded to int8 codes here (the sparse int8 tensor cores take them as
  they are: |code| <= 7); this costs ``Np * KP / 2`` bytes instead of ``Np * KP / 4`` (see README).
* **meta, sm_90a** (:func:`cutlass_sm90_layout`): uint8, the canonical metadata bytes (one byte per 8
  dense K: two groups, low nibble first, 2-bit indices ``i0 | i1 << 2``) rearranged into
  ``Sm90GemmSparseConfig``'s atoms of 64 rows x 128 dense K (16 bytes per row inside an atom,
  K-major), atoms ordered along M first, then K. CUTLASS's own ``fill_layoutE`` is the spec;
  ``tests/cutlass_host/sm90_layout_check.cu`` decodes this buffer through it on the host.
* **meta, sm_80** (:func:`cutlass_sm80_layout`): int32 words (uint32 bits): the canonical metadata
  of a row read as little-endian uint32 (32 dense K per word), logically ``[Np, KP/32]``, reordered
  as ``cutlass::reorder_meta`` does (rows interleaved in groups of 16, 2x2 blocks swapped "Z to N")
  into ``ColumnMajorInterleaved<2>`` storage. ``tests/cutlass_host/sm80_layout_check.cu`` runs
  CUTLASS's own ``reorder_meta`` and ``uncompress`` on the host against this.

The canonical metadata keeps ``i0 < i1`` in every group, which ``mma.sp::ordered_metadata`` (sm_80)
and ``wgmma.sp`` (sm_90a) both accept; CUTLASS's own compressor would pick other (equally valid)
offsets for groups with fewer than two non-zeros, so the bytes, not only the product, are ours.
:func:`restore_cutlass` inverts both layouts (tested round trip).
"""

from __future__ import annotations

import torch

from ...format import PackedWeight, pack_nibbles, padded_k
from .layout import padded_codes_meta, prepared_dims

__all__ = ["ARCHS", "cutlass_layout", "cutlass_sm80_layout", "cutlass_sm90_layout", "restore_cutlass",
           "sm80_meta_index", "sm90_meta_index"]

#: The architectures with a CUTLASS layout: 80 (sm_80/86/89, CUTLASS 2.x SparseGemm), 90 (sm_90a).
ARCHS = (80, 90)

_SM90_ATOM_M, _SM90_ATOM_K_BYTES = 64, 16   # metadata atom: 64 rows x 128 dense K (16 bytes)


def _padded_codes_meta(packed: PackedWeight):
    """Canonical int8 codes ``[Np, KP/2]`` and metadata bytes ``[Np, KP/8]``, padded."""
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"packed must be a PackedWeight, got {type(packed).__name__}")
    if not packed.sparse:
        raise ValueError(f"the CUTLASS kernels run 2:4 weights only, got pattern {packed.pattern!r}")
    codes, meta = padded_codes_meta(packed)
    scales = torch.ones(codes.shape[0], dtype=torch.float32, device=packed.device)
    scales[: packed.shape[0]] = packed.scales
    return codes, meta, scales


def sm90_meta_index(np_: int, kp: int, device=None) -> torch.Tensor:
    """Byte offset in the sm_90a metadata buffer of every canonical metadata byte ``(n, b)``,
    ``[Np, KP/8]`` int64 (``fill_layoutE`` for int8, tile K 128)."""
    n = torch.arange(np_, device=device).view(-1, 1)
    b = torch.arange(kp // 8, device=device).view(1, -1)
    atom = (b // _SM90_ATOM_K_BYTES) * (np_ // _SM90_ATOM_M) + n // _SM90_ATOM_M
    return atom * (_SM90_ATOM_M * _SM90_ATOM_K_BYTES) + (n % _SM90_ATOM_M) * _SM90_ATOM_K_BYTES + b % _SM90_ATOM_K_BYTES


def sm80_meta_index(np_: int, kp: int, device=None) -> torch.Tensor:
    """Word offset in the sm_80 metadata buffer of every logical metadata word ``(m, c)``,
    ``[Np, KP/32]`` int64: ``cutlass::reorder_meta`` for 32-bit ElementE, then
    ``ColumnMajorInterleaved<2>`` with ``Np`` rows."""
    m = torch.arange(np_, device=device).view(-1, 1)
    c = torch.arange(kp // 32, device=device).view(1, -1)
    # Rows interleaved inside groups of 16: row m%8 of each 8-row half goes to 2*(m%8) (+1 for the
    # second half), so the two halves' words of a row pair sit side by side for ldmatrix.
    row = m // 16 * 16 + (m % 8) * 2 + (m % 16) // 8
    col = c.expand(np_, -1)
    row = row.expand(-1, kp // 32)
    # Then each 2x2 block is transposed ("Z to N"): (even row, odd col) <-> (odd row, even col).
    swap_down = (row % 2 == 0) & (col % 2 == 1)
    swap_up = (row % 2 == 1) & (col % 2 == 0)
    row, col = row + swap_down.long() - swap_up.long(), col - swap_down.long() + swap_up.long()
    # ColumnMajorInterleaved<2>: pairs of columns, each pair column-major with the pair's two words
    # adjacent: offset = (col // 2) * (Np * 2) + row * 2 + col % 2.
    return (col // 2) * (np_ * 2) + row * 2 + col % 2


def cutlass_sm90_layout(packed: PackedWeight) -> list[torch.Tensor]:
    """``[values int8 [Np, KP/2], meta uint8 [Np*KP/8], scales float32 [Np]]`` for the sm_90a kernels."""
    codes, meta, scales = _padded_codes_meta(packed)
    np_, kp = codes.shape[0], codes.shape[1] * 2
    out = torch.empty(np_ * kp // 8, dtype=torch.uint8, device=codes.device)
    out[sm90_meta_index(np_, kp, codes.device).reshape(-1)] = meta.reshape(-1)
    return [codes, out, scales]


def cutlass_sm80_layout(packed: PackedWeight) -> list[torch.Tensor]:
    """``[values int8 [Np, KP/2], meta int32 [Np*KP/32], scales float32 [Np]]`` for the sm_80 kernels."""
    codes, meta, scales = _padded_codes_meta(packed)
    np_, kp = codes.shape[0], codes.shape[1] * 2
    words = meta.view(torch.int32)                           # [Np, KP/32], little-endian uint32 bits
    out = torch.empty(np_ * kp // 32, dtype=torch.int32, device=codes.device)
    out[sm80_meta_index(np_, kp, codes.device).reshape(-1)] = words.reshape(-1)
    return [codes, out, scales]


def cutlass_layout(packed: PackedWeight, arch: int) -> list[torch.Tensor]:
    """The layout for ``arch`` (80 or 90, see :data:`ARCHS`)."""
    if arch == 90:
        return cutlass_sm90_layout(packed)
    if arch == 80:
        return cutlass_sm80_layout(packed)
    raise ValueError(f"arch must be one of {ARCHS} (80: sm_80/86/89, 90: sm_90a), got {arch!r}")


def restore_cutlass(prepared: list[torch.Tensor], n: int, k: int, bits: int, arch: int) -> PackedWeight:
    """Rebuild the canonical ``PackedWeight`` from :func:`cutlass_layout`'s output (int4 weights are
    narrowed back to two codes per byte)."""
    values, meta, scales = prepared
    np_, kp = prepared_dims(n, k)
    if tuple(values.shape) != (np_, kp // 2):
        raise ValueError(f"values must have shape {(np_, kp // 2)}, got {tuple(values.shape)}")
    if arch == 90:
        idx = sm90_meta_index(np_, kp, meta.device)
        meta_b = meta[idx.reshape(-1)].reshape(np_, kp // 8)
    elif arch == 80:
        idx = sm80_meta_index(np_, kp, meta.device)
        meta_b = meta[idx.reshape(-1)].reshape(np_, kp // 32).contiguous().view(torch.uint8)
    else:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    kc = padded_k(k)
    codes = values[:n, : kc // 2]
    vals = pack_nibbles(codes) if bits == 4 else codes.contiguous()
    return PackedWeight(vals.contiguous(), meta_b[:n, : kc // 8].contiguous(), scales[:n].contiguous(), (n, k),
                        bits, "2:4")

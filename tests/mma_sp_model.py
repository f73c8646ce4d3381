"""A test oracle (beside the tests, not part of the package). A CPU model of ``mma.sp::ordered_metadata.sync.aligned.m16n8k64.row.col.s32.s8.s8.s32``.

It states, lane by lane, which elements each of the 32 lanes supplies and receives, following the
PTX ISA's fragment descriptions for sparse ``mma.m16n8k64`` with ``.s8`` (``g = lane >> 2``,
``t = lane & 3``):

* **A** (16 x 64 dense, 2:4 sparse, stored as 16 x 32 kept codes): four ``.b32`` registers; register
  ``r`` byte ``i`` is the kept code in compressed column ``t*4 + 16*(r >> 1) + i`` of row
  ``g + 8*(r & 1)``. Kept codes ``2q`` and ``2q + 1`` of a row belong to dense group ``q``.
* **metadata** (one ``.b32`` per lane, sparsity selector 0): lane ``T`` describes row
  ``(T >> 2) + 8*(T & 1)``, dense columns ``32*((T >> 1) & 1) .. +31``; nibble ``j`` covers the dense
  group ``4j .. 4j+3`` of that block: bits ``[4j, 4j+2)`` give the dense offset of the group's first
  kept code, bits ``[4j+2, 4j+4)`` the second (``ordered_metadata``: first < second).
* **B** (64 x 8 dense, "col": K contiguous per column): four ``.b32`` registers; register ``j`` byte
  ``i`` is element ``(k = 16*j + 4*t + i, n = g)``.
* **C/D** (16 x 8 int32): ``d0, d1`` are ``(g, 2t)``, ``(g, 2t + 1)``; ``d2, d3`` are rows ``g + 8``.

The model is the evidence, without a GPU, that the prepared layout (``nxm_kernels.backends.cuda.layout``)
and the kernel's fragment loads are right; a GPU test checks the model itself against the hardware instruction.
Registers are int64 tensors holding uint32 bit patterns.
"""

from __future__ import annotations

import torch

__all__ = ["a_dense_from_fragments", "b_dense_from_fragments", "mma_sp_m16n8k64", "ldmatrix_x4",
           "c_fragment_positions", "pack_bytes", "unpack_bytes"]


def unpack_bytes(regs: torch.Tensor) -> torch.Tensor:
    """uint32 registers ``[..., R]`` -> signed bytes ``[..., R, 4]`` (byte 0 = least significant)."""
    r = regs.to(torch.int64) & 0xFFFFFFFF
    b = torch.stack([(r >> (8 * i)) & 0xFF for i in range(4)], dim=-1)
    return torch.where(b >= 128, b - 256, b)


def pack_bytes(b: torch.Tensor) -> torch.Tensor:
    """Signed/unsigned bytes ``[..., R, 4]`` -> uint32 registers ``[..., R]`` (int64 holding the bits)."""
    u = b.to(torch.int64) & 0xFF
    return u[..., 0] | (u[..., 1] << 8) | (u[..., 2] << 16) | (u[..., 3] << 24)


def a_dense_from_fragments(a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Dense 16 x 64 A (int64) from A registers ``[32, 4]`` and metadata ``[32]``."""
    vals = unpack_bytes(a)                       # [lane, reg, byte]
    meta = e.to(torch.int64) & 0xFFFFFFFF
    dense = torch.zeros(16, 64, dtype=torch.int64)
    written = torch.zeros(16, 64, dtype=torch.bool)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for r in range(4):
            row = g + 8 * (r & 1)
            for i in range(4):
                ccol = t * 4 + 16 * (r >> 1) + i
                group, slot = ccol // 2, ccol % 2
                owner = 4 * (row % 8) + (row // 8) + 2 * (group // 8)   # lane holding this row's metadata
                nib = (int(meta[owner]) >> (4 * (group % 8))) & 0xF
                first, second = nib & 3, nib >> 2
                if not first < second:
                    raise ValueError(f"metadata of row {row}, group {group} is not ordered: {first}, {second}")
                col = 4 * group + (second if slot else first)
                if written[row, col]:
                    raise AssertionError("two kept codes map to one dense element")
                written[row, col] = True
                dense[row, col] = vals[lane, r, i]
    return dense


def b_dense_from_fragments(b: torch.Tensor) -> torch.Tensor:
    """Dense 64 x 8 B (int64) from B registers ``[32, 4]``."""
    vals = unpack_bytes(b)
    dense = torch.zeros(64, 8, dtype=torch.int64)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for j in range(4):
            for i in range(4):
                dense[16 * j + 4 * t + i, g] = vals[lane, j, i]
    return dense


def c_fragment_positions() -> list[list[tuple[int, int]]]:
    """``[lane][d]`` -> ``(row, col)`` of the accumulator element held in register ``d``."""
    return [[((lane >> 2) + 8 * (d >> 1), 2 * (lane & 3) + (d & 1)) for d in range(4)] for lane in range(32)]


def mma_sp_m16n8k64(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``D = A(a, e) @ B(b) + C``, per lane: returns int64 ``[32, 4]`` accumulator registers."""
    prod = a_dense_from_fragments(a, e) @ b_dense_from_fragments(b)     # [16, 8] exact int64
    d = torch.empty(32, 4, dtype=torch.int64)
    for lane, regs in enumerate(c_fragment_positions()):
        for k, (row, col) in enumerate(regs):
            d[lane, k] = prod[row, col] + int(c[lane, k])
    return d


def ldmatrix_x4(smem: torch.Tensor, row_addr: list[int]) -> torch.Tensor:
    """``ldmatrix.sync.aligned.m8n8.x4.shared.b16``: lane ``l`` supplies the byte address of row
    ``l % 8`` of matrix ``l // 8`` (16 bytes); lane ``(g, t)`` receives, in register ``j``, bytes
    ``4t .. 4t+3`` of row ``g`` of matrix ``j``. ``smem`` is a uint8/int8 byte tensor.
    Returns uint32 registers ``[32, 4]`` (int64)."""
    regs = torch.empty(32, 4, dtype=torch.int64)
    for lane in range(32):
        g, t = lane >> 2, lane & 3
        for j in range(4):
            addr = row_addr[8 * j + g] + 4 * t
            regs[lane, j] = int(pack_bytes(smem[addr: addr + 4].view(1, 4))[0])
    return regs

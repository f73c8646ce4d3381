"""CPU evidence that the CUDA kernel's prepared layout and fragment loads are right.

The kernel's loads are replayed lane by lane (same index formulas as ``csrc/nxm_sparse_gemm.cuh``)
and fed to the CPU model of ``mma.sp`` m16n8k64; the result must equal the dense integer product
exactly. A GPU test (``test_cuda_backend.py``) checks the model against the real instruction.
"""

import pytest
import torch

import nxm_kernels as nxm
from nxm_kernels.backends.cuda.layout import prepare_layout, prepared_dims, restore_canonical
from mma_sp_model import (c_fragment_positions, ldmatrix_x4, mma_sp_m16n8k64,
                                               pack_bytes, unpack_bytes)


def _random_packed(n, k, bits):
    w = torch.randn(n, k)
    return nxm.pack(w, bits=bits, pattern="2:4", prune=True)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape", [(33, 72), (128, 256), (1, 5), (200, 130)])
def test_prepared_layout_round_trip(bits, shape):
    p = _random_packed(*shape, bits)
    prep = prepare_layout(p)
    np_, kp = prepared_dims(*shape)
    values, meta, scales = prep
    assert meta.shape == (np_ // 16, kp // 64, 32) and meta.dtype == torch.int32
    assert values.dtype == torch.uint8 and values.shape[-2:] == (32, 16)
    assert scales.shape == (np_,)
    back = restore_canonical(prep, *shape, bits)
    assert torch.equal(back.values, p.values)
    assert torch.equal(back.metadata, p.metadata)
    assert torch.equal(back.scales, p.scales)


def test_prepared_layout_refuses_dense():
    p = nxm.pack(torch.randn(16, 16), bits=8, pattern="dense")
    with pytest.raises(ValueError, match="2:4"):
        prepare_layout(p)


def _sext4(word: int) -> int:
    """The kernel's per-byte sign extension of 4-bit values: __vsub4(v ^ 0x08080808, 0x08080808)."""
    v = word ^ 0x08080808
    out = 0
    for i in range(4):
        byte = ((v >> (8 * i)) & 0xFF) - 0x08
        out |= (byte & 0xFF) << (8 * i)
    return out


def _a_fragment(values, meta, bits, tn, tk, lane):
    """A registers and metadata of one lane, loaded the way the kernel loads them."""
    if bits == 8:
        raw = values[tn, tk, lane].view(4, 4)
        a = [int(x) for x in pack_bytes(raw)]
    else:
        raw = values[tn, tk // 2, lane, 8 * (tk % 2): 8 * (tk % 2) + 8].view(2, 4)
        w0, w1 = (int(x) for x in pack_bytes(raw))
        a = [_sext4(w0 & 0x0F0F0F0F), _sext4((w0 >> 4) & 0x0F0F0F0F),
             _sext4(w1 & 0x0F0F0F0F), _sext4((w1 >> 4) & 0x0F0F0F0F)]
    return a, int(meta[tn, tk, lane]) & 0xFFFFFFFF


def _b_stage(xq_rows: torch.Tensor, stage: int) -> torch.Tensor:
    """The kernel's shared-memory B tile for one stage: 128 bytes per token row, 16-byte chunk ``c`` of
    row ``r`` stored at chunk ``c ^ (r & 7)`` (XOR swizzle against ldmatrix bank conflicts)."""
    rows = xq_rows.shape[0]
    smem = torch.zeros(rows * 128, dtype=torch.int8)
    for r in range(rows):
        for c in range(8):
            src = xq_rows[r, stage * 128 + 16 * c: stage * 128 + 16 * c + 16]
            dst = r * 128 + ((c ^ (r & 7)) * 16)
            smem[dst: dst + 16] = src
    return smem


@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_fragments_through_mma_model_match_dense_product(bits):
    n, k, tokens = 40, 200, 8
    p = _random_packed(n, k, bits)
    values, meta, _ = prepare_layout(p)
    np_, kp = prepared_dims(n, k)
    xq = torch.randint(-127, 128, (tokens, kp), dtype=torch.int8)
    xq[:, k:] = 0
    expected = xq[:, :k].to(torch.int64) @ p.int_weight()[:, :k].to(torch.int64).t()   # [tokens, n]

    got = torch.full((tokens, np_), -(2**40), dtype=torch.int64)   # poisoned
    for tn in range(-(-n // 16)):
        acc = torch.zeros(32, 4, dtype=torch.int64)
        for tk in range(kp // 64):
            stage, kk = tk // 2, tk % 2
            smem = _b_stage(xq, stage)
            # ldmatrix.x4: lane l points at row (l & 7) of the 8-token tile, chunk 4*kk + (l >> 3)
            addrs = []
            for lane in range(32):
                row, chunk = lane & 7, 4 * kk + (lane >> 3)
                addrs.append(row * 128 + ((chunk ^ (row & 7)) * 16))
            b = ldmatrix_x4(smem, addrs)
            a = torch.empty(32, 4, dtype=torch.int64)
            e = torch.empty(32, dtype=torch.int64)
            for lane in range(32):
                regs, e[lane] = _a_fragment(values, meta, bits, tn, tk, lane)
                a[lane] = torch.tensor(regs)
            acc = mma_sp_m16n8k64(a, b, acc, e)
        for lane, regs in enumerate(c_fragment_positions()):
            for d, (row, col) in enumerate(regs):
                got[col, 16 * tn + row] = acc[lane, d]
    assert torch.equal(got[:, :n], expected)


def test_mma_model_rejects_unordered_metadata():
    a = pack_bytes(torch.randint(-127, 128, (32, 4, 4)))
    b = pack_bytes(torch.randint(-127, 128, (32, 4, 4)))
    e = torch.full((32,), 0x11111111, dtype=torch.int64)   # offsets (1, 0): not ordered
    with pytest.raises(ValueError, match="ordered"):
        mma_sp_m16n8k64(a, b, torch.zeros(32, 4, dtype=torch.int64), e)


def test_unpack_pack_bytes_round_trip():
    regs = torch.randint(0, 2**32, (32, 4), dtype=torch.int64)
    assert torch.equal(pack_bytes(unpack_bytes(regs)), regs)

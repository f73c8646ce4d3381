"""The cuda backend on a real GPU (skipped without one): exact int32 equality with the reference,
epilogue tolerances, the instruction model against the hardware, CUDA graphs, bad input.

Without a GPU, the CPU-side checks of the same kernel are tests/test_cuda_layout.py (layout and
instruction model) and tests/test_cuda_compile.py (nvcc for sm_80/86/89/90a, spills, IMMA.SP).
"""

import pytest
import torch

import nxm_kernels as nxm
from mma_sp_model import mma_sp_m16n8k64, pack_bytes

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poison_allocator")]

# Epilogue tolerance: the float epilogue is the same math as the reference, in a different order of
# float32 roundings, then one rounding to the output dtype.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}

BERT_SHAPES = [(768, 768), (2304, 768), (3072, 768), (768, 3072), (1024, 1024), (4096, 1024), (1024, 4096)]
ODD_SHAPES = [(33, 72), (100, 200), (1, 5), (130, 1000)]
MS = [1, 7, 16, 17, 33, 64, 65, 128, 129, 300, 1024]


def _packed(n, k, bits, device):
    return nxm.pack(torch.randn(n, k, device=device), bits=bits, pattern="2:4", prune=True)


def _valid_meta(n_lanes=32):
    nibbles = torch.tensor([0x4, 0x8, 0xC, 0x9, 0xD, 0xE])
    pick = nibbles[torch.randint(0, 6, (n_lanes, 8))]
    words = torch.zeros(n_lanes, dtype=torch.int64)
    for j in range(8):
        words |= pick[:, j].to(torch.int64) << (4 * j)
    return words


def _as_i32(t):
    t = t.to(torch.int64) & 0xFFFFFFFF
    return torch.where(t >= 2**31, t - 2**32, t).to(torch.int32)


def test_instruction_model_matches_hardware(cuda):
    ext = nxm.backends.get_backend("cuda").extension()
    for _ in range(8):
        a = pack_bytes(torch.randint(-127, 128, (32, 4, 4)))
        b = pack_bytes(torch.randint(-127, 128, (32, 4, 4)))
        c = torch.randint(-1000, 1000, (32, 4), dtype=torch.int64)
        e = _valid_meta()
        want = mma_sp_m16n8k64(a, b, c, e)
        got = ext.mma_sp_probe(_as_i32(a).to(cuda), _as_i32(b).to(cuda), c.to(torch.int32).to(cuda),
                               _as_i32(e).to(cuda))
        assert torch.equal(got.cpu().to(torch.int64), want)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape", BERT_SHAPES + ODD_SHAPES)
def test_int_mm_exact(cuda, bits, shape):
    n, k = shape
    p = _packed(n, k, bits, cuda)
    for m in MS:
        xq = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=cuda)
        got = nxm.sparse_int_mm(xq, p, backend="cuda")
        want = nxm.sparse_int_mm(xq, p, backend="reference")
        assert torch.equal(got, want), f"M={m} N={n} K={k} bits={bits}"


@pytest.mark.parametrize("m", [2048, 4096])
def test_int_mm_exact_large_m(cuda, m):
    for bits in (8, 4):
        p = _packed(768, 3072, bits, cuda)
        xq = torch.randint(-127, 128, (m, 3072), dtype=torch.int8, device=cuda)
        assert torch.equal(nxm.sparse_int_mm(xq, p, backend="cuda"), nxm.sparse_int_mm(xq, p, backend="reference"))


def test_quantizer_exact(cuda):
    cu = nxm.backends.get_backend("cuda")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.randn(37, 300, device=cuda, dtype=dtype) * 3
        x[3] = 0                                   # an all-zero row: scale 1, codes 0
        x[5, :8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 127, -127, 63.5], dtype=dtype)  # ties
        q, s = cu.quantize_per_token(x)
        rq, rs = nxm.quantize_per_token(x)
        assert torch.equal(q, rq) and torch.equal(s, rs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("act", [None, "gelu"])
def test_linear_epilogue(cuda, dtype, bits, bias, act):
    for (n, k), m in [((3072, 768), 1), ((768, 3072), 40), ((33, 72), 130), ((1024, 1024), 513)]:
        p = _packed(n, k, bits, cuda)
        x = torch.randn(m, k, device=cuda, dtype=dtype)
        b = torch.randn(n, device=cuda, dtype=dtype) if bias else None
        got = nxm.sparse_int_linear(x, p, b, act, backend="cuda")
        want = nxm.sparse_int_linear(x, p, b, act, backend="reference")
        assert got.dtype == dtype and got.shape == (m, n)
        rtol, atol = TOL[dtype]
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol * want.abs().max().item())


def test_linear_non_contiguous_3d_and_empty(cuda):
    p = _packed(256, 128, 8, cuda)
    x = torch.randn(4, 9, 256, device=cuda, dtype=torch.float16)[..., ::2]   # [4, 9, 128], stride 2
    got = nxm.sparse_int_linear(x, p, backend="cuda")
    want = nxm.sparse_int_linear(x, p, backend="reference")
    torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3 * want.abs().max().item())
    assert nxm.sparse_int_linear(torch.empty(0, 128, device=cuda), p, backend="cuda").shape == (0, 256)


def test_cuda_graph_replay(cuda):
    p = _packed(768, 768, 4, cuda)
    x = torch.randn(8, 768, device=cuda, dtype=torch.float16)
    nxm.sparse_int_linear(x, p, backend="cuda")          # warm up: build, prepare, allocate
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        nxm.sparse_int_linear(x, p, backend="cuda")
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = nxm.sparse_int_linear(x, p, backend="cuda")
    for _ in range(3):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.testing.assert_close(y, nxm.sparse_int_linear(x, p, backend="reference"), rtol=2e-3,
                                   atol=2e-3 * y.abs().max().item())


def test_bad_input(cuda):
    dense = nxm.pack(torch.randn(64, 64, device=cuda), bits=8, pattern="dense")
    with pytest.raises(RuntimeError, match="2:4"):
        nxm.sparse_int_linear(torch.randn(2, 64, device=cuda), dense, backend="cuda")
    p = _packed(64, 64, 8, cuda)
    with pytest.raises(ValueError, match="same device"):
        nxm.sparse_int_linear(torch.randn(2, 64), p, backend="cuda")
    with pytest.raises(ValueError, match="last dimension"):
        nxm.sparse_int_linear(torch.randn(2, 65, device=cuda), p, backend="cuda")
    # auto picks a backend that runs dense weights
    y = nxm.sparse_int_linear(torch.randn(2, 64, device=cuda), dense)
    assert y.shape == (2, 64)

"""The CUTLASS-built kernels and cuSPARSELt on a real GPU (skipped without one): exact int32 equality with
the reference, epilogue tolerances, the cuda backend's kernel choice, clear errors for shapes they cannot
take. None of this has run on a GPU yet at the time of writing (the kernels were compile-checked on the
CPU, their layouts proven on the host: tests/test_cutlass_compile.py, tests/test_cutlass_layout.py).
"""

import pytest
import torch

import nxm_kernels as nxm
from nxm_kernels.backends import WeightMeta
from nxm_kernels.backends.cuda import backend as cuda_backend
from nxm_kernels.backends.cuda import cusparselt
from nxm_kernels.ops import prepared_weights

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("poison_allocator")]

# The fused epilogue is the reference's math with one FMA contraction (cutlass_epilogue.cuh): the same
# tolerances as the mma.sp kernel's.
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
# cuSPARSELt rounds acc * w_scale to the output dtype before the per-token scale: one more rounding.
CSLT_TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (4e-3, 4e-3), torch.bfloat16: (3.2e-2, 3.2e-2)}

SHAPES = [(768, 768), (2304, 768), (3072, 768), (768, 3072), (1024, 4096), (136, 200), (264, 1000)]
MS = [256, 257, 300, 1024, 1100, 2048]


@pytest.fixture(scope="module")
def cuda(cuda):
    why = cuda_backend.cutlass_unavailable_reason(torch.device("cuda"))
    if why is not None:
        pytest.skip(f"no CUTLASS kernels here: {why}")
    return torch.device("cuda")


def _packed(n, k, bits, device):
    return nxm.pack(torch.randn(n, k, device=device), bits=bits, pattern="2:4", prune=True)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_cutlass_int_mm_exact(cuda, bits, shape):
    n, k = shape
    p = _packed(n, k, bits, cuda)
    w = prepared_weights(p, "cuda")
    assert len(w) == 5, "the CUTLASS layout should be prepared on this GPU"
    for m in MS:
        xq = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=cuda)
        got = cuda_backend.cutlass_int_mm(xq, w, WeightMeta.of(p))
        want = nxm.sparse_int_mm(xq, p, backend="reference")
        assert torch.equal(got, want), f"M={m} N={n} K={k} bits={bits}"


def test_cutlass_int_mm_exact_small_m_and_extremes(cuda):
    """The CUTLASS kernels also take M < 256 (the choice is the dispatcher's), and |acc| near its bound."""
    p = nxm.pack(torch.randn(768, 3072, device=cuda), bits=8, pattern="2:4", prune=True)
    w = prepared_weights(p, "cuda")
    for m in (1, 7, 64, 129):
        xq = torch.randint(-127, 128, (m, 3072), dtype=torch.int8, device=cuda)
        assert torch.equal(cuda_backend.cutlass_int_mm(xq, w, WeightMeta.of(p)),
                           nxm.sparse_int_mm(xq, p, backend="reference"))
    xq = torch.full((300, 3072), 127, dtype=torch.int8, device=cuda)
    assert torch.equal(cuda_backend.cutlass_int_mm(xq, w, WeightMeta.of(p)),
                       nxm.sparse_int_mm(xq, p, backend="reference"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("act", [None, "gelu"])
def test_cutlass_linear_epilogue(cuda, dtype, bias, act):
    for (n, k), m in [((3072, 768), 256), ((768, 3072), 1030), ((136, 200), 300), ((1024, 1024), 2048)]:
        p = _packed(n, k, 8, cuda)
        w = prepared_weights(p, "cuda")
        x = torch.randn(m, k, device=cuda, dtype=dtype)
        b = torch.randn(n, device=cuda, dtype=dtype) if bias else None
        got = cuda_backend.cutlass_linear(x, w, WeightMeta.of(p), b, act or "none")
        want = nxm.sparse_int_linear(x, p, b, act, backend="reference")
        assert got.dtype == dtype and got.shape == (m, n)
        rtol, atol = TOL[dtype]
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol * want.abs().max().item())


def test_backend_picks_cutlass_from_the_threshold(cuda, monkeypatch):
    p = _packed(768, 768, 8, cuda)
    calls = []
    real = cuda_backend._cutlass
    monkeypatch.setattr(cuda_backend, "_cutlass", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    for m in (cuda_backend.CUTLASS_MIN_M - 1, cuda_backend.CUTLASS_MIN_M):
        x = torch.randn(m, 768, device=cuda, dtype=torch.float16)
        y = nxm.sparse_int_linear(x, p, backend="cuda")
        torch.testing.assert_close(y, nxm.sparse_int_linear(x, p, backend="reference"), rtol=2e-3,
                                   atol=2e-3 * y.abs().max().item())
    assert calls == [cuda_backend.CUTLASS_MIN_M]


def test_cutlass_refuses_ragged_n_clearly_and_backend_falls_back(cuda):
    p = _packed(100, 256, 8, cuda)           # N % 8 != 0: no CUTLASS layout, the mma.sp kernel serves
    w = prepared_weights(p, "cuda")
    assert len(w) == 3
    x = torch.randn(512, 256, device=cuda, dtype=torch.float16)
    y = nxm.sparse_int_linear(x, p, backend="cuda")
    torch.testing.assert_close(y, nxm.sparse_int_linear(x, p, backend="reference"), rtol=2e-3,
                               atol=2e-3 * y.abs().max().item())
    with pytest.raises(RuntimeError, match="multiple of 8"):
        cuda_backend.cutlass_linear(x, w, WeightMeta.of(p), None, "none")


def test_cutlass_cuda_graph_replay(cuda):
    p = _packed(768, 768, 8, cuda)
    x = torch.randn(512, 768, device=cuda, dtype=torch.float16)
    nxm.sparse_int_linear(x, p, backend="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        nxm.sparse_int_linear(x, p, backend="cuda")
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = nxm.sparse_int_linear(x, p, backend="cuda")
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        g.replay()
        torch.testing.assert_close(y, nxm.sparse_int_linear(x, p, backend="reference"), rtol=2e-3,
                                   atol=2e-3 * y.abs().max().item())


# ------------------------------------------------------------------------------------- cuSPARSELt
@pytest.fixture(scope="module")
def cslt():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    why = cusparselt.unavailable_reason(torch.device("cuda"))
    if why is not None:
        pytest.skip(why)
    return torch.device("cuda")


@pytest.mark.parametrize("bits", [8, 4])
def test_cusparselt_int_mm_exact(cslt, bits):
    for (n, k) in [(768, 768), (3072, 768), (136, 200)]:
        p = _packed(n, k, bits, cslt)
        w = cusparselt.prepare(p)
        for m in (1, 33, 512):
            xq = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=cslt)
            assert torch.equal(cusparselt.int_mm(xq, w, WeightMeta.of(p)), nxm.sparse_int_mm(xq, p, backend="reference"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", [None, "gelu"])
def test_cusparselt_linear(cslt, dtype, act):
    p = _packed(3072, 768, 8, cslt)
    w = cusparselt.prepare(p)
    x = torch.randn(300, 768, device=cslt, dtype=dtype)
    b = torch.randn(3072, device=cslt, dtype=dtype)
    got = cusparselt.linear(x, w, WeightMeta.of(p), b, act or "none")
    want = nxm.sparse_int_linear(x, p, b, act, backend="reference")
    rtol, atol = CSLT_TOL[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol * want.abs().max().item())

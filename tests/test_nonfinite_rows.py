"""NaN or Inf in a token of ``x`` gives NaN in that token's outputs, as ``nn.Linear`` would, on every backend.

The rule lives in one place, :func:`nxm_kernels.quant.quantize_per_token`: a row whose amax is not
finite gets scale NaN and all-zero codes (so its accumulators are 0 and its outputs ``0 * NaN``).
Every kernel reproduces it bit for bit: the finite rows keep ``torch.equal`` codes, scales and
accumulators, the non-finite rows get zero codes, a NaN scale and all-NaN outputs.
"""

import pytest
import torch

import nxm_kernels as nxm
from nxm_kernels.backends import WeightMeta, get_backend
from nxm_kernels.quant import quantize_per_token

ref = get_backend("reference")
FLOATS = (torch.float16, torch.bfloat16, torch.float32)
NAN, INF = float("nan"), float("inf")


def poisoned(m: int, k: int, dtype, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``x [m, k]`` with NaN/Inf in some rows (one value, or the whole row) and the mask of those rows."""
    x = (torch.randn(m, k, device=device) * 3).to(dtype)
    bad = torch.zeros(m, dtype=torch.bool, device=device)
    for row, col, value in ((1, k // 2, NAN), (2, 0, INF), (3, k - 1, -INF), (5, None, NAN)):
        if row < m:
            if col is None:
                x[row] = value
            else:
                x[row, col] = value
            bad[row] = True
    if m > 4:
        x[4] = 0.0       # an all-zero finite row keeps scale 1.0
    return x, bad


def check_codes_scales(codes, scale, x, bad):
    want_codes, want_scale = quantize_per_token(x[~bad])
    assert torch.equal(codes[~bad], want_codes) and torch.equal(scale[~bad], want_scale)
    assert torch.isnan(scale[bad]).all() and not codes[bad].any()


def check_outputs(y, want, bad, dtype):
    assert y.dtype == dtype
    assert torch.isnan(y[bad]).all(), "every output of a NaN/Inf token must be NaN"
    assert torch.isfinite(y[~bad]).all()
    tol = {torch.float32: 1e-5, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}[dtype]
    torch.testing.assert_close(y[~bad].float(), want[~bad].float(), rtol=tol,
                               atol=tol * float(want[~bad].float().abs().max()))


@pytest.mark.parametrize("dtype", FLOATS)
def test_reference_rule(dtype):
    x, bad = poisoned(7, 40, dtype)
    codes, scale = quantize_per_token(x)
    check_codes_scales(codes, scale, x, bad)
    assert float(scale[4]) == 1.0
    # Leading dims and the fake-quant path follow the same rule.
    codes3, scale3 = quantize_per_token(x.reshape(1, 7, 40))
    assert torch.equal(codes3[0], codes) and torch.equal(scale3[0].isnan(), scale.isnan())
    fq = nxm.fake_quant_per_token(x, ste=False)
    assert torch.isnan(fq[bad]).all() and torch.isfinite(fq[~bad]).all()


@pytest.mark.parametrize("spec", ["2:4-w8a8", "dense-w4a8"])
def test_reference_linear(spec):
    p = nxm.pack(torch.randn(24, 40), pattern=spec, prune=spec.startswith("2:4"))
    x, bad = poisoned(7, 40, torch.float32)
    y = nxm.sparse_int_linear(x, p, bias=torch.randn(24), activation="gelu", backend="reference")
    assert torch.isnan(y[bad]).all() and torch.isfinite(y[~bad]).all()
    assert not torch.isfinite(torch.nn.functional.linear(x, p.unpack())[bad]).any()  # nn.Linear: NaN or Inf


# ------------------------------------------------------------------------------------------ triton
def _triton_cpu():
    pytest.importorskip("triton")
    from nxm_kernels.backends.triton import backend as tb

    why = tb.unavailable_reason(torch.device("cpu"))
    if why is not None:
        pytest.skip(f"triton backend unavailable on cpu: {why}")
    return tb


@pytest.mark.parametrize("dtype", FLOATS)
def test_triton_quantizer(dtype):
    tb = _triton_cpu()
    x, bad = poisoned(7, 40, dtype)
    codes, scale = tb.quantize_per_token(x)
    check_codes_scales(codes, scale, x, bad)


@pytest.mark.parametrize("path", ["fused", "two-launch"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_linear(path, dtype):
    tb = _triton_cpu()
    from nxm_kernels.backends.triton import fused

    m = 7 if path == "fused" else fused.FUSED_M_MAX + 3   # the backend's own choice of path
    p = nxm.pack(torch.randn(33, 72), pattern="2:4-w4a8", prune=True)
    meta = WeightMeta.of(p)
    x, bad = poisoned(m, 72, dtype)
    bias = torch.randn(33).to(dtype)
    y = tb.linear(x, tb.prepare(p), meta, bias, "gelu")
    check_outputs(y, ref.linear(x, ref.prepare(p), meta, bias, "gelu"), bad, dtype)
    if path == "fused":
        # The fused kernel's own scales and accumulators, with split-K (zero codes in NaN/Inf rows).
        values, metadata, scales = tb._split_weights(tb.prepare(p), meta)
        xs = torch.empty(m, 1)
        acc = fused.fused_linear(x, values, metadata, scales, n=33, k=72, bits=4, sparse=True, int32=True,
                                 x_scale_out=xs, split_k=3)
        codes, want_scale = quantize_per_token(x)
        assert torch.equal(acc, ref.int_mm(codes, ref.prepare(p), meta)) and not acc[bad].any()
        assert torch.equal(xs[~bad], want_scale[~bad]) and torch.isnan(xs[bad]).all()


# ------------------------------------------------------------------------------------------ cuda
@pytest.mark.gpu
def test_cuda_backend():
    cu = get_backend("cuda")
    why = cu.unavailable_reason(torch.device("cuda"))
    if why is not None:
        pytest.skip(why)
    for dtype in FLOATS:
        x, bad = poisoned(37, 300, dtype, "cuda")
        codes, scale = cu.quantize_per_token(x)
        check_codes_scales(codes, scale, x, bad)
        p = nxm.pack(torch.randn(256, 300, device="cuda"), pattern="2:4-w8a8", prune=True)
        bias = torch.randn(256, device="cuda").to(dtype)
        y = nxm.sparse_int_linear(x, p, bias=bias, activation="gelu", backend="cuda")
        want = nxm.sparse_int_linear(x, p, bias=bias, activation="gelu", backend="reference")
        assert torch.isnan(y[bad]).all() and torch.isfinite(y[~bad]).all()
        torch.testing.assert_close(y[~bad].float(), want[~bad].float(), rtol=2e-2,
                                   atol=2e-2 * float(want[~bad].float().abs().max()))

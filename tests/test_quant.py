"""Symmetric quantizers (nxm_kernels.quant): ranges, error bounds, rounding, STE gradients, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nxm_kernels as nxm
from nxm_kernels.format import pack
from nxm_kernels.quant import (ACT_QMAX, dequantize, fake_quant_linear, fake_quant_per_token, fake_quant_weight,
                               qmax, quantize_per_token, quantize_weight, weight_scales)
from nxm_kernels.sparsity import prune_nm

HYP = settings(max_examples=60, deadline=None)
FLOATS = [torch.float16, torch.bfloat16, torch.float32]
#: Slack on the half-step error bound: the float32 division x / scale is rounded before round().
REL_SLACK = 1e-5


@st.composite
def matrices(draw, dtype=torch.float32):
    """Small matrices with varied ranges; some rows all zero, some with a single non-zero."""
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 24))
    magnitude = draw(st.sampled_from([1e-3, 1.0, 7.0, 1e3]))
    elem = st.floats(-1.0, 1.0, allow_nan=False, width=32, allow_subnormal=False).map(lambda v: v * magnitude)
    data = draw(st.lists(st.lists(elem, min_size=cols, max_size=cols), min_size=rows, max_size=rows))
    t = torch.tensor(data, dtype=torch.float32)
    if draw(st.booleans()):
        t[draw(st.integers(0, rows - 1))] = 0
    return t.to(dtype)


def _check_codes(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, q: int) -> None:
    """The contract of every quantizer here, checked in float64 (exact for these operands)."""
    assert codes.dtype == torch.int8
    assert int(codes.max()) <= q and int(codes.min()) >= -q
    x64, s64 = x.double(), scale.double()
    amax = x64.abs().amax(-1, keepdim=True)
    # scale = amax / q rounded to float32; 1.0 where that is 0 (all-zero rows, underflow).
    quotient = (amax.float() / q).double()
    expected = torch.where(quotient > 0, quotient, torch.ones_like(amax))
    assert torch.equal(s64, expected)
    # Round-to-nearest within half a step (plus float32 rounding of x / scale).
    err = (x64 - codes.double() * s64).abs()
    assert bool((err <= s64 * (0.5 + REL_SLACK)).all()), float((err / s64).max())
    # All-zero rows: zero codes.
    zero_rows = (quotient == 0).squeeze(-1)
    assert not codes[zero_rows].any()
    # The largest magnitude of each non-zero row maps to +-q.
    nz = ~zero_rows
    if nz.any():
        assert bool((codes[nz].abs().amax(-1) == q).all())


@HYP
@given(w=matrices(), bits=st.sampled_from([8, 4]))
def test_weight_quantizer_properties(w, bits):
    q = qmax(bits)
    codes, scale = quantize_weight(w, bits)
    assert scale.dtype == torch.float32 and scale.shape == (w.shape[0],)
    _check_codes(w, codes, scale.unsqueeze(-1), q)
    assert torch.equal(weight_scales(w, bits), scale)
    # fake_quant is exactly codes * scale in the weight's dtype, and equals what the format unpacks to.
    assert torch.equal(fake_quant_weight(w, bits, ste=False), codes.float() * scale[:, None])
    assert torch.equal(pack(w, bits, "dense").unpack(), fake_quant_weight(w, bits, ste=False))


@HYP
@given(x=matrices(), dtype=st.sampled_from(FLOATS))
def test_activation_quantizer_properties(x, dtype):
    x = x.to(dtype)
    codes, scale = quantize_per_token(x)
    assert scale.dtype == torch.float32 and scale.shape == (x.shape[0], 1)
    _check_codes(x.float(), codes, scale, ACT_QMAX)
    assert torch.equal(fake_quant_per_token(x, ste=False), (codes.float() * scale).to(dtype))


def test_round_half_to_even():
    # amax 127 -> scale exactly 1.0, so x / scale is x and the ties are real ties.
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.0]])
    codes, scale = quantize_per_token(x)
    assert scale.item() == 1.0
    assert codes.tolist() == [[0, 2, 2, 0, -2, -2, 126, 127]]
    w = torch.tensor([[0.5, 1.5, 2.5, -3.5, 7.0]])  # int4: amax 7 -> scale 1.0
    assert quantize_weight(w, 4)[0].tolist() == [[0, 2, 2, -4, 7]]


def test_known_values_and_ranges():
    w = torch.tensor([[-2.0, 1.0, 0.5], [0.0, 0.0, 0.0], [3.0, -3.0, 1e-3]])
    c8, s8 = quantize_weight(w, 8)
    assert s8.tolist() == [torch.tensor(2.0 / 127).item(), 1.0, torch.tensor(3.0 / 127).item()]
    assert c8.tolist() == [[-127, 64, 32], [0, 0, 0], [127, -127, 0]]
    c4, s4 = quantize_weight(w, 4)
    # 1.0 / float32(2/7) is 3.4999998 in float32, not the tie 3.5: codes follow float32 division.
    assert c4.tolist() == [[-7, 3, 2], [0, 0, 0], [7, -7, 0]]
    assert (qmax(8), qmax(4)) == (127, 7)
    # -128 / -8 never appear, even for a row whose minimum is the extreme.
    assert int(quantize_weight(torch.tensor([[-1.0, 0.999]]), 8)[0].min()) == -127


def test_subnormal_rows_get_unit_scale():
    """amax / qmax underflows to 0 for tiny float32 rows: such rows quantize to zeros with scale 1."""
    x = torch.tensor([[1e-44, 0.0, -1e-44], [1e-40, 2e-40, 0.0]])
    codes, scale = quantize_per_token(x)
    assert scale[0].item() == 1.0 and not codes[0].any()
    assert scale[1].item() == torch.tensor(2e-40 / 127).item() and scale[1].item() > 0
    w_codes, w_scale = quantize_weight(torch.tensor([[1e-44, -1e-44]]), 8)
    assert w_scale.item() == 1.0 and not w_codes.any()


def test_per_token_shapes_3d_and_non_contiguous():
    x = torch.randn(2, 3, 20)
    codes, scale = quantize_per_token(x)
    assert codes.shape == (2, 3, 20) and scale.shape == (2, 3, 1)
    c2, s2 = quantize_per_token(x.reshape(6, 20))
    assert torch.equal(codes.reshape(6, 20), c2) and torch.equal(scale.reshape(6, 1), s2)
    xt = torch.randn(20, 6).t()  # non-contiguous
    assert torch.equal(quantize_per_token(xt)[0], quantize_per_token(xt.contiguous())[0])
    one = torch.randn(20)
    assert quantize_per_token(one)[1].shape == (1,)
    empty = torch.randn(0, 20)
    ec, es = quantize_per_token(empty)
    assert ec.shape == (0, 20) and es.shape == (0, 1)


def test_fixed_weight_scale():
    w = torch.randn(3, 8)
    s = torch.tensor([0.01, 0.5, 2.0])
    codes, scale = quantize_weight(w, 8, s)
    assert scale is s
    assert torch.equal(codes, torch.clamp(torch.round(w / s[:, None]), -127, 127).to(torch.int8))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("bits", [8, 4])
def test_ste_gradient_is_identity_weight(dtype, bits):
    w = torch.randn(6, 16).to(dtype).requires_grad_(True)
    g = torch.randn(6, 16).to(dtype)
    out = fake_quant_weight(w, bits)
    assert out.dtype == dtype and out.requires_grad
    assert torch.equal(out.detach(), fake_quant_weight(w.detach(), bits, ste=False))
    (out * g).sum().backward()
    assert torch.equal(w.grad, g)


@pytest.mark.parametrize("dtype", FLOATS)
def test_ste_gradient_is_identity_activation(dtype):
    x = torch.randn(2, 5, 16).to(dtype).requires_grad_(True)
    g = torch.randn(2, 5, 16).to(dtype)
    out = fake_quant_per_token(x)
    (out * g).sum().backward()
    assert torch.equal(x.grad, g)
    # Through a pruned weight the gradient is the mask (prune, then STE fake-quant).
    w = torch.randn(4, 8, requires_grad=True)
    gw = torch.randn(4, 8)
    (fake_quant_weight(prune_nm(w), 4) * gw).sum().backward()
    mask = prune_nm(w.detach()) != 0
    assert torch.equal(w.grad, gw * mask)


def test_ste_off_has_no_gradient_path():
    w = torch.randn(4, 8, requires_grad=True)
    assert not fake_quant_weight(w, 8, ste=False).requires_grad
    assert not fake_quant_per_token(w, ste=False).requires_grad


def test_fake_quant_equals_packed_weights():
    """The training path's fake-quant weight is exactly what the packed 2:4 format unpacks to."""
    w = torch.randn(33, 72)
    for bits in (8, 4):
        assert torch.equal(fake_quant_weight(prune_nm(w), bits, ste=False),
                           pack(w, bits, "2:4", prune=True).unpack())


def _bits(t):
    """float32 bit patterns, NaN payloads folded (only where NaNs are matters)."""
    return torch.where(t.isnan(), torch.full_like(t.float(), float("nan")), t.float()).view(torch.int32)


@pytest.mark.parametrize("dtype", FLOATS)
def test_float_model_is_dequantize_bit_for_bit(dtype):
    """fake_quant_* keep their codes in float32; still the same bits as the int8 round trip: +0.0 (not
    -0.0) for codes rounded to zero from below, and a whole NaN row for a token holding NaN or Inf."""
    x = (torch.randn(6, 48) * 4).to(dtype)
    x[0] = -1e-3
    x[0, 0] = 1.0                        # codes rounded to -0
    x[1], x[2, 3], x[3, 5] = 0.0, float("nan"), float("-inf")
    codes, scale = quantize_per_token(x)
    got = fake_quant_per_token(x, ste=False)
    assert torch.equal(_bits(got), _bits((codes.float() * scale).to(dtype)))
    assert got[2:4].isnan().all() and not torch.signbit(got[0][got[0] == 0]).any()
    w = x[[0, 1, 4, 5]]
    codes, scale = quantize_weight(w, 4)
    for out in (fake_quant_weight(w, 4, ste=False), fake_quant_weight(w, 4, assume_finite=True)):
        assert torch.equal(_bits(out), _bits((codes.float() * scale[:, None]).to(dtype)))
    # Unchecked, a non-finite weight row follows the activation rule: all NaN.
    assert fake_quant_weight(x[:4], 8, assume_finite=True)[2:4].isnan().all()


def test_fake_quant_linear():
    x, w, b = torch.randn(2, 5, 16, requires_grad=True), torch.randn(6, 16, requires_grad=True), torch.randn(6)
    y = fake_quant_linear(x, w, b, weight_bits=4)
    assert torch.equal(y, torch.nn.functional.linear(fake_quant_per_token(x), fake_quant_weight(w, 4), b))
    y.sum().backward()                   # straight through both quantizers
    assert torch.allclose(w.grad, fake_quant_per_token(x.detach()).reshape(-1, 16).sum(0).expand(6, 16))
    assert torch.equal(fake_quant_linear(x, w, None, weight_bits=None, act_bits=None), x @ w.t())
    with pytest.raises(ValueError, match="act_bits must be 8"):
        fake_quant_linear(x, w, act_bits=4)
    with pytest.raises(ValueError, match="in_features 8"):
        fake_quant_linear(x, w[:, :8])
    with pytest.raises(ValueError, match=r"bias must have shape \[6\]"):
        fake_quant_linear(x, w, b[:5])
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        fake_quant_linear(x, None)


def test_dequantize():
    w = torch.randn(5, 9)
    codes, scale = quantize_weight(w, 8)
    assert torch.equal(dequantize(codes, scale), codes.float() * scale[:, None])
    assert dequantize(codes, scale, torch.float16).dtype == torch.float16
    x = torch.randn(4, 9)
    xc, xs = quantize_per_token(x)
    assert torch.equal(dequantize(xc, xs), xc.float() * xs)
    with pytest.raises(TypeError, match="codes must have dtype"):
        dequantize(codes.float(), scale)
    with pytest.raises(TypeError, match="scale must have dtype"):
        dequantize(codes, scale.double())


@pytest.mark.parametrize("bits,exc", [(0, ValueError), (1, ValueError), (2, ValueError), (3, ValueError),
                                      (5, ValueError), (16, ValueError), (32, ValueError), (-8, ValueError),
                                      ("8", TypeError), (8.0, TypeError), (None, TypeError), (True, TypeError)])
def test_bad_bits(bits, exc):
    w = torch.randn(2, 8)
    for call in (lambda: qmax(bits), lambda: quantize_weight(w, bits), lambda: fake_quant_weight(w, bits),
                 lambda: weight_scales(w, bits)):
        with pytest.raises(exc, match="bits must be"):
            call()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_weight_quant_refuses_non_finite(bad):
    w = torch.randn(3, 8)
    w[2, 2] = bad
    with pytest.raises(ValueError, match="weight must be finite"):
        quantize_weight(w, 8)
    with pytest.raises(ValueError, match="weight must be finite"):
        fake_quant_weight(w, 4)


def test_bad_inputs():
    with pytest.raises(TypeError, match="x must have dtype"):
        quantize_per_token(torch.randint(0, 5, (2, 4), dtype=torch.int8))
    with pytest.raises(TypeError, match="x must have dtype"):
        quantize_per_token(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        quantize_per_token([1.0, 2.0])
    with pytest.raises(ValueError, match="at least 1 dimension"):
        quantize_per_token(torch.tensor(1.0))
    with pytest.raises(ValueError, match="x must have a non-empty last dimension"):
        quantize_per_token(torch.randn(3, 0))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        quantize_weight(torch.randn(8), 8)
    with pytest.raises(ValueError, match="weight must have a non-empty last dimension"):
        quantize_weight(torch.randn(3, 0), 8)
    with pytest.raises(TypeError, match="weight must have dtype"):
        quantize_weight(torch.randn(3, 4).double(), 8)
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match="scale must have 3 entries"):
        quantize_weight(w, 8, torch.ones(2))
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        quantize_weight(w, 8, torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        quantize_weight(w, 8, torch.tensor([1.0, float("inf"), 1.0]))
    with pytest.raises(ValueError, match="same device"):
        quantize_weight(w, 8, torch.ones(3, device="meta"))


def test_public_names():
    assert nxm.quantize_per_token is quantize_per_token
    assert nxm.quantize_weight is quantize_weight and nxm.fake_quant_weight is fake_quant_weight

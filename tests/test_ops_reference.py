"""The op through the reference backend: exact int32 accumulators, the float epilogue, shapes, bad input.

Epilogue tolerance (stated once, used everywhere here): the output is compared with the same math
done in float64 from the exact integer accumulator, ``torch.testing.assert_close(y, ref, rtol=r,
atol=r * max|ref|)`` with ``r`` = 1e-5 for float32 outputs, 2e-3 for float16 and 1e-2 for bfloat16
(a few units of the output dtype's rounding, 2**-11 and 2**-8 relative; the float32 epilogue itself
adds ~1e-7).
"""

import math

import pytest
import torch

import nxm_kernels as nxm
from nxm_kernels import ops
from nxm_kernels.backends import reference
from nxm_kernels.format import pack
from nxm_kernels.quant import quantize_per_token, quantize_weight
from nxm_kernels.sparsity import prune_nm

RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
CASES = [(bits, pattern) for bits in (8, 4) for pattern in ("2:4", "dense")]
SHAPES = [(33, 72), (8, 5), (1, 1), (16, 40), (3, 17)]


@pytest.fixture(autouse=True)
def _no_backend_override(monkeypatch):
    monkeypatch.delenv("NXM_BACKEND", raising=False)


def _weight_codes(w: torch.Tensor, bits: int, pattern: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scales straight from the quantizer, independent of the packed layout."""
    return quantize_weight(prune_nm(w) if pattern == "2:4" else w, bits)


def _float_reference(x: torch.Tensor, codes: torch.Tensor, w_scale: torch.Tensor, bias, activation):
    """float64 math: per-token quantized x times the integer weight, both scales, bias, exact GELU."""
    x2 = x.reshape(-1, x.shape[-1])
    xq, xs = quantize_per_token(x2)
    acc = xq.long() @ codes.long().t()  # exact int64
    y = acc.double() * xs.double() * w_scale.double()
    if bias is not None:
        y = y + bias.double()
    if activation == "gelu":
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    return y.reshape(*x.shape[:-1], codes.shape[0])


# ----------------------------------------------------------------------------- exact accumulators
@pytest.mark.parametrize("bits,pattern", CASES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", [1, 7, 130])
def test_int_mm_exact(bits, pattern, shape, m):
    n, k = shape
    w = torch.randn(n, k)
    packed = pack(w, bits, pattern, prune=True)
    codes, _ = _weight_codes(w, bits, pattern)
    xq = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    acc = nxm.sparse_int_mm(xq, packed, backend="reference")
    assert acc.dtype == torch.int32 and acc.shape == (m, n)
    assert torch.equal(acc, (xq.long() @ codes.long().t()).to(torch.int32))
    assert torch.equal(nxm.sparse_int_mm(xq, packed), acc)  # auto on a CPU is the reference


def test_int_mm_exact_where_float32_is_not():
    """Sums beyond 2**24 with odd values: a float32 accumulator would round; int32 must not."""
    k = 65536
    xq = torch.full((3, k), 127, dtype=torch.int8)
    xq[1] = -127
    xq[2, ::2] = -128  # the full int8 range on the activation side
    w = torch.full((5, k), 1.0)
    w[:, ::4] = 0
    w[:, 1::4] = 0
    w[1] = -w[1]
    w[2, 2] = 0.5
    w[3, 3] = 0.25
    for bits in (8, 4):
        packed = pack(w, bits, "2:4")
        codes = packed.int_weight()[:, :k]
        expect = (xq.long() @ codes.long().t())
        assert int(expect.abs().max()) > 2**24
        assert bool((expect.float().long() != expect).any())  # not even representable in float32
        acc = nxm.sparse_int_mm(xq, packed, backend="reference")
        assert torch.equal(acc, expect.to(torch.int32))


def _packed_from_codes(dense: torch.Tensor, bits: int, slots: torch.Tensor | None = None):
    """A PackedWeight holding exactly the integer codes ``dense`` [N, K] (any value of the range, -128
    and -8 included, which pack() never produces), built field by field, independent of the decoder.
    2:4 when ``slots`` (the kept offsets i0 < i1 of each group of four, [N, ceil(K/4), 2]) are given;
    ``dense`` must then be zero elsewhere."""
    from nxm_kernels.format import PackedWeight, pack_nibbles, padded_k

    n, k = dense.shape
    kp = padded_k(k)
    codes = torch.nn.functional.pad(dense, (0, kp - k))
    meta = None
    if slots is not None:
        pad = torch.tensor([0, 1]).expand(n, kp // 4 - slots.shape[1], 2)  # padding groups keep (0, 1)
        slots = torch.cat([slots, pad], dim=1)
        codes = torch.gather(codes.reshape(n, kp // 4, 4), 2, slots).reshape(n, kp // 2)
        nib = slots[..., 0] | (slots[..., 1] << 2)
        meta = (nib[:, 0::2] | (nib[:, 1::2] << 4)).to(torch.uint8)
    values = pack_nibbles(codes) if bits == 4 else codes.contiguous()
    return PackedWeight(values, meta, torch.rand(n) + 0.5, (n, k), bits, "dense" if slots is None else "2:4")


@pytest.mark.parametrize("bits,pattern", CASES)
def test_int_mm_exact_at_worst_case_magnitudes(bits, pattern):
    """Every code at the extremes of its range (int8 -128/127/-127, int4 -8/7/-7), K long enough for
    several of the reference's float32 chunks (the last one partial), and sums that float32 cannot
    represent: the int32 accumulator equals the int64 product exactly."""
    sparse = pattern == "2:4"
    k = (3 if bits == 8 else 2) * reference.chunk_k(bits, sparse) + 21  # K = 1 mod 4: a last, partial group
    lo, hi = (-128, 127) if bits == 8 else (-8, 7)
    x = torch.tensor([-128, 127, -127], dtype=torch.int8)[torch.randint(0, 3, (6, k))]
    x[0], x[1], x[2] = -128, 127, -127  # rows of one sign: the largest partial sums, in every chunk
    n = 5
    dense = torch.tensor([lo, hi, -hi], dtype=torch.int8)[torch.randint(0, 3, (n, k))]
    dense[0], dense[1], dense[2] = lo, hi, -hi
    slots = None
    if sparse:
        groups = -(-k // 4)
        slots = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])[torch.randint(0, 6, (n, groups))]
        slots[:, -1] = torch.tensor([0, 1])  # the partial group keeps its one real column
        keep = torch.zeros(n, groups, 4, dtype=torch.bool).scatter_(2, slots, True).reshape(n, -1)[:, :k]
        dense = dense * keep
    packed = _packed_from_codes(dense, bits, slots)
    expect = x.long() @ dense.long().t()
    # x row 1 times weight row 1 is 127 * hi * (an odd count) > 2**24: odd, so no float32 holds it.
    assert abs(int(expect[1, 1])) > 2**24 and int(expect[1, 1]) % 2 == 1
    acc = nxm.sparse_int_mm(x, packed, backend="reference")
    assert acc.dtype == torch.int32 and torch.equal(acc.long(), expect)
    # linear_q's accumulator is the same: with unit activation scales its output is the exact
    # accumulator times the weight scales, rounded once to float32 by the epilogue.
    y = reference.linear_q(x, torch.ones(6, 1), ops.prepared_weights(packed, "reference"),
                           nxm.backends.WeightMeta.of(packed), None, "none", torch.float32)
    assert torch.equal(y, expect.float() * packed.scales)


def test_int_mm_non_contiguous_and_empty():
    packed = pack(torch.randn(9, 24), 4, "2:4", prune=True)
    base = torch.randint(-127, 128, (24, 10), dtype=torch.int8)
    xq = base.t()  # [10, 24], non-contiguous
    assert not xq.is_contiguous()
    assert torch.equal(nxm.sparse_int_mm(xq, packed), nxm.sparse_int_mm(xq.contiguous(), packed))
    empty = nxm.sparse_int_mm(torch.empty(0, 24, dtype=torch.int8), packed)
    assert empty.shape == (0, 9) and empty.dtype == torch.int32


# ----------------------------------------------------------------------------- the float epilogue
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("activation", [None, "gelu"])
@pytest.mark.parametrize("bits,pattern", CASES)
@pytest.mark.parametrize("m", [1, 7, 130])
def test_linear_epilogue(dtype, bias, activation, bits, pattern, m):
    n, k = 33, 72
    w = torch.randn(n, k) / math.sqrt(k)
    packed = pack(w, bits, pattern, prune=True)
    codes, w_scale = _weight_codes(w, bits, pattern)
    x = torch.randn(m, k).to(dtype)
    b = torch.randn(n).to(dtype) if bias else None
    y = nxm.sparse_int_linear(x, packed, b, activation, backend="reference")
    assert y.dtype == dtype and y.shape == (m, n)
    assert torch.isfinite(y).all()
    ref = _float_reference(x, codes, w_scale, b, activation)
    r = RTOL[dtype]
    torch.testing.assert_close(y.double(), ref, rtol=r, atol=r * float(ref.abs().max()))
    # And it is the documented float32 order, bit for bit.
    xq, xs = quantize_per_token(x)
    acc = nxm.sparse_int_mm(xq, packed)
    y32 = acc.float() * xs * packed.scales
    if b is not None:
        y32 = y32 + b.float()
    if activation == "gelu":
        y32 = 0.5 * y32 * (1.0 + torch.erf(y32 * (1.0 / math.sqrt(2.0))))
    assert torch.equal(y, y32.to(dtype))


@pytest.mark.parametrize("bits,pattern", CASES)
def test_linear_approximates_the_float_layer(bits, pattern):
    """Sanity of the whole pipeline: close to x @ W_pruned^T (quantization error only)."""
    n, k, m = 64, 256, 16
    w = torch.randn(n, k) / math.sqrt(k)
    packed = pack(w, bits, pattern, prune=True)
    x = torch.randn(m, k)
    w_used = prune_nm(w) if pattern == "2:4" else w
    exact = x @ w_used.t()
    y = nxm.sparse_int_linear(x, packed)
    rel = float((y - exact).norm() / exact.norm())
    assert rel < (0.02 if bits == 8 else 0.2), rel


def test_mixed_bias_dtype_and_gelu_on_known_values():
    # A case to check by hand: x = [1, 0, ...] -> xs = 1/127, xq = 127; w rows [1, 0, ...] and
    # [-2, 0, ...] -> codes 127 and -127, scales 1/127 and 2/127; so x @ w^T = [1, -2] up to rounding.
    w = torch.zeros(2, 16)
    w[0, 0] = 1.0
    w[1, 0] = -2.0
    packed = pack(w, 8, "2:4")
    x = torch.zeros(1, 16)
    x[0, 0] = 1.0
    y = nxm.sparse_int_linear(x, packed, torch.tensor([0.5, 0.25], dtype=torch.float64).float())
    expect = torch.tensor([[1.0 + 0.5, -2.0 + 0.25]])
    torch.testing.assert_close(y, expect, rtol=1e-6, atol=1e-6)
    g = nxm.sparse_int_linear(x, packed, activation="gelu")
    torch.testing.assert_close(g, torch.nn.functional.gelu(torch.tensor([[1.0, -2.0]])), rtol=1e-6, atol=1e-6)
    half = nxm.sparse_int_linear(x.half(), packed, torch.tensor([0.5, 0.25]))  # fp32 bias with fp16 x
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), expect, rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------- shapes and layouts
def test_three_d_one_d_and_non_contiguous_inputs():
    packed = pack(torch.randn(12, 40), 4, "2:4", prune=True)
    bias = torch.randn(12)
    x3 = torch.randn(2, 5, 40)
    y3 = nxm.sparse_int_linear(x3, packed, bias, "gelu")
    assert y3.shape == (2, 5, 12)
    assert torch.equal(y3.reshape(10, 12), nxm.sparse_int_linear(x3.reshape(10, 40), packed, bias, "gelu"))
    x1 = torch.randn(40)
    y1 = nxm.sparse_int_linear(x1, packed)
    assert y1.shape == (12,) and torch.equal(y1, nxm.sparse_int_linear(x1[None], packed)[0])
    # Non-contiguous: a transpose, a strided slice, an expanded view; and a strided bias.
    xt = torch.randn(40, 6).t()
    xs = torch.randn(6, 80)[:, ::2]
    xe = torch.randn(1, 40).expand(4, 40)
    for x in (xt, xs, xe):
        assert not x.is_contiguous()
        assert torch.equal(nxm.sparse_int_linear(x, packed, bias), nxm.sparse_int_linear(x.contiguous(), packed, bias))
    sb = torch.randn(24)[::2]
    assert torch.equal(nxm.sparse_int_linear(xt, packed, sb), nxm.sparse_int_linear(xt, packed, sb.contiguous()))
    x4 = torch.randn(2, 3, 40, 5).transpose(-1, -2)  # [2, 3, 5, 40], non-contiguous 4-D
    assert torch.equal(nxm.sparse_int_linear(x4, packed), nxm.sparse_int_linear(x4.contiguous(), packed))


@pytest.mark.parametrize("shape", [(0, 40), (2, 0, 40), (0, 0, 40)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_empty_batch(shape, dtype):
    packed = pack(torch.randn(12, 40), 8, "dense")
    y = nxm.sparse_int_linear(torch.randn(shape).to(dtype), packed, torch.randn(12), "gelu")
    assert y.shape == shape[:-1] + (12,) and y.dtype == dtype


def test_prepared_weights_are_cached_per_backend():
    packed = pack(torch.randn(8, 16), 8, "2:4", prune=True)
    first = ops.prepared_weights(packed, "reference")
    assert ops.prepared_weights(packed, "reference") is first
    assert ("reference", "cpu") in packed.prepared
    # The reference layout is the canonical tensors themselves.
    assert [t.data_ptr() for t in first] == [packed.values.data_ptr(), packed.metadata.data_ptr(),
                                             packed.scales.data_ptr()]


def test_reference_decodes_each_weight_once_on_first_use():
    """The decoded float32 codes are built on the first forward, kept, and derived again when a state
    dict is copied into the layer's buffers in place."""
    from nxm_kernels.modules import NxMLinear

    layer = NxMLinear.from_linear(torch.nn.Linear(40, 24), "2:4-w4a8", backend="reference")
    layout = ops.prepared_weights(layer.packed, "reference")
    assert "decoded" not in vars(layout)  # nothing decoded before it is needed
    x = torch.randn(5, 40)
    y = layer(x)
    decoded = layout.decoded
    assert decoded.dtype == torch.float32 and torch.equal(decoded, layer.packed.int_weight()[:, :40].float())
    assert torch.equal(layer(x), y) and layout.decoded is decoded  # kept, not decoded again
    other = NxMLinear.from_linear(torch.nn.Linear(40, 24), "2:4-w4a8", backend="reference")
    layer.load_state_dict(other.state_dict())  # copy_ into the buffers
    assert torch.equal(layer(x), other(x))


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementation and dispatch of nxm::linear, nxm::linear_q and nxm::int_mm agree."""
    for bits, pattern in CASES:
        packed = pack(torch.randn(8, 24), bits, pattern, prune=True)
        weights = ops.prepared_weights(packed, "reference").tensors()  # custom ops take the tensor list
        meta = (packed.shape[0], packed.shape[1], packed.bits, packed.sparse)
        x = torch.randn(5, 24)
        torch.library.opcheck(torch.ops.nxm.linear.default,
                              (x, weights, torch.randn(8), *meta, "gelu", "reference"))
        xq = torch.randint(-127, 128, (5, 24), dtype=torch.int8)
        torch.library.opcheck(torch.ops.nxm.int_mm.default, (xq, weights, *meta, "reference"))
        xq, xs = quantize_per_token(x.half())
        torch.library.opcheck(torch.ops.nxm.linear_q.default,
                              (xq, xs, weights, torch.randn(8), *meta, "gelu", torch.float16, "reference"))


def test_reference_helpers_directly():
    """The backend-level functions other backends are compared with (``int_mm``, ``epilogue``)."""
    packed = pack(torch.randn(6, 20), 4, "2:4", prune=True)
    weights = reference.prepare(packed)
    meta = nxm.backends.WeightMeta.of(packed)
    assert meta == (6, 20, 4, True)
    assert reference.as_packed(weights, meta) == packed
    xq = torch.randint(-127, 128, (3, 20), dtype=torch.int8)
    assert torch.equal(reference.int_mm(xq, weights, meta),
                       (xq.long() @ packed.int_weight()[:, :20].long().t()).int())
    y = torch.randn(3, 6)
    # Same formula, different float32 evaluation order: a few ulps apart.
    torch.testing.assert_close(reference.gelu(y), torch.nn.functional.gelu(y), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- bad input
@pytest.fixture
def packed_and_x():
    return pack(torch.randn(12, 40), 8, "2:4", prune=True), torch.randn(3, 40)


@pytest.mark.parametrize("call,exc,match", [
    (lambda p, x: nxm.sparse_int_linear(x.to(torch.int8), p), TypeError, r"x must have dtype in \(float16"),
    (lambda p, x: nxm.sparse_int_linear(x.double(), p), TypeError, "x must have dtype"),
    (lambda p, x: nxm.sparse_int_linear(x.numpy(), p), TypeError, "x must be a torch.Tensor"),
    (lambda p, x: nxm.sparse_int_linear(torch.tensor(1.0), p), ValueError, "x must have at least 1 dimension"),
    (lambda p, x: nxm.sparse_int_linear(x[:, :39], p), ValueError, r"x must have last dimension K=40.*\(3, 39\)"),
    (lambda p, x: nxm.sparse_int_linear(x, p.unpack()), TypeError, "packed must be a PackedWeight"),
    (lambda p, x: nxm.sparse_int_linear(x, p, torch.randn(11)), ValueError, r"bias must have shape \(12,\)"),
    (lambda p, x: nxm.sparse_int_linear(x, p, torch.randn(1, 12)), ValueError, "bias must be 1-D"),
    (lambda p, x: nxm.sparse_int_linear(x, p, torch.ones(12, dtype=torch.int32)), TypeError, "bias must have dtype"),
    (lambda p, x: nxm.sparse_int_linear(x, p, activation="relu"), ValueError, "activation must be None or 'gelu'"),
    (lambda p, x: nxm.sparse_int_linear(x, p, backend="magic"), ValueError, "backend must be one of"),
    (lambda p, x: nxm.sparse_int_linear(x, p, backend=None), TypeError, "backend must be a str"),
    (lambda p, x: nxm.sparse_int_mm(x, p), TypeError, "xq must have dtype in \\(int8\\)"),
    (lambda p, x: nxm.sparse_int_mm(x.to(torch.int8)[None], p), ValueError, "xq must be 2-D"),
    (lambda p, x: nxm.sparse_int_mm(x.to(torch.int8)[:, :8], p), ValueError, r"xq must have shape \[M, 40\]"),
    (lambda p, x: nxm.sparse_int_mm(x.to(torch.int8), "packed"), TypeError, "packed must be a PackedWeight"),
    (lambda p, x: nxm.sparse_int_mm(x.to(torch.int8), p, backend="magic"), ValueError, "backend must be one of"),
])
def test_bad_input(packed_and_x, call, exc, match):
    packed, x = packed_and_x
    with pytest.raises(exc, match=match):
        call(packed, x)


@pytest.mark.parametrize("activation", ["relu", "GELU", "", None])
def test_reference_backend_refuses_unknown_activation(packed_and_x, activation):
    """The custom op and the backend's ``linear`` refuse an activation they do not compute (they used to
    return the no-activation result), with the triton backend's ValueError."""
    packed, x = packed_and_x
    meta = nxm.backends.WeightMeta.of(packed)
    weights = reference.prepare(packed)
    with pytest.raises(ValueError, match=r"activation must be one of \('none', 'gelu'\)"):
        reference.linear(x, weights, meta, None, activation)
    if activation is not None:  # the op's schema takes a str
        with pytest.raises(ValueError, match="activation must be one of"):
            torch.ops.nxm.linear(x, weights, None, *meta, activation, "reference")


def test_different_devices(packed_and_x):
    """The meta device stands in for a second device on a CPU-only machine."""
    packed, x = packed_and_x
    with pytest.raises(ValueError, match="same device.*x on meta.*packed on cpu"):
        nxm.sparse_int_linear(x.to("meta"), packed)
    with pytest.raises(ValueError, match="same device.*bias on meta"):
        nxm.sparse_int_linear(x, packed, torch.randn(12, device="meta"))
    with pytest.raises(ValueError, match="same device.*packed on meta"):
        nxm.sparse_int_linear(x, packed.to("meta"))
    with pytest.raises(ValueError, match="same device"):
        nxm.sparse_int_mm(x.to(torch.int8), packed.to("meta"))

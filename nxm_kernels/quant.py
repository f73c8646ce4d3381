"""Symmetric integer quantization: per-output-channel weights, per-token activations.

The integer ranges are symmetric so that zero is exact and no zero-point is needed:

* int8: codes in ``[-127, 127]`` (``-128`` is never produced),
* int4: codes in ``[-7, 7]`` (``-8`` is never produced).

Scales are float32. For a row with max magnitude ``amax`` the scale is ``amax / qmax`` (a float32
division); a row whose scale would be zero gets scale ``1.0`` instead: an all-zero row (its codes are
all zero, so any scale reproduces it), and a float32 row so tiny (``amax < qmax * 2**-149``) that the
division underflows to zero, whose codes are then all zero too (a zero scale would divide by zero).
Codes are ``clamp(round_half_even(v / scale), -qmax, qmax)`` computed in float32 with an IEEE
division. Activations only: a token (row) holding NaN or Inf gets scale ``NaN`` and all-zero codes,
so every output of that token is ``0 * NaN = NaN``, as ``nn.Linear`` would give (not a plausible
finite number). Every backend (reference, Triton, CUDA) computes exactly these codes; that is what makes
their int32 accumulators comparable with ``torch.equal``.

The float model of the kernels' math lives here too, once: ``fake_quant_weight`` and
``fake_quant_per_token`` return ``codes * scale`` in the input's dtype (bit for bit ``dequantize`` of
the codes above, i.e. exactly the values the kernels compute with), with a straight-through gradient
(identity) when ``ste=True``; ``fake_quant_linear`` is a whole compressed linear built from them.
``QATLinear``, the sensitivity search, calibration and the tests all use these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import FLOAT_DTYPES, check_finite, check_same_device, check_tensor

__all__ = ["qmax", "weight_scales", "quantize_weight", "quantize_per_token", "dequantize",
           "fake_quant_weight", "fake_quant_per_token", "fake_quant_linear", "ACT_QMAX"]

ACT_QMAX = 127


def qmax(bits: int) -> int:
    """Largest code of the symmetric ``bits``-bit range (127 for int8, 7 for int4)."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, 4 or 8, got {type(bits).__name__} {bits!r}")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    return (1 << (bits - 1)) - 1


def _row_amax(v: torch.Tensor) -> torch.Tensor:
    """float32 ``max |v|`` over the last dim (keepdim); NaN for a row holding NaN (max propagates it),
    so a non-finite amax means a NaN or an Inf in the row."""
    return v.detach().abs().amax(dim=-1, keepdim=True).float()


def _row_scales(v: torch.Tensor, q: int, amax: torch.Tensor | None = None) -> torch.Tensor:
    """float32 scales ``amax / q`` over the last dim; rows whose scale would be 0 get 1.0."""
    if amax is None:
        amax = _row_amax(v)
    # Divide by a tensor, not a Python scalar: PyTorch's CUDA kernels turn "tensor / scalar" into a
    # multiplication by the reciprocal, which is not the IEEE quotient the CPU and the kernels compute.
    scale = amax / torch.full_like(amax, q)
    # Test the quotient, not amax: a subnormal amax can underflow to a zero scale.
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _nan_scales(v: torch.Tensor, q: int) -> torch.Tensor:
    """:func:`_row_scales`, and ``NaN`` for a row whose amax is not finite (it holds a NaN or an Inf)."""
    amax = _row_amax(v)
    return torch.where(torch.isfinite(amax), _row_scales(v, q, amax), torch.full_like(amax, float("nan")))


def _check_k(name: str, v: torch.Tensor) -> None:
    if v.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last dimension (the one quantized), got shape {tuple(v.shape)}")


def _check_weight(weight: torch.Tensor, finite: bool = True) -> None:
    check_tensor("weight", weight, dtypes=FLOAT_DTYPES, ndim=2)
    _check_k("weight", weight)
    if finite:
        check_finite("weight", weight)


def _check_scale(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A caller's per-channel ``scale [out]`` for ``weight``, validated."""
    check_tensor("scale", scale, dtypes=(torch.float32,), ndim=1)
    check_same_device(weight=weight, scale=scale)
    if scale.shape[0] != weight.shape[0]:
        raise ValueError(f"scale must have {weight.shape[0]} entries (one per output channel), "
                         f"got {scale.shape[0]}")
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise ValueError("scale must be finite and > 0")
    return scale


def _check_tokens(x: torch.Tensor) -> None:
    check_tensor("x", x, dtypes=FLOAT_DTYPES, min_ndim=1)
    _check_k("x", x)


def _codes(v: torch.Tensor, scale: torch.Tensor, q: int) -> torch.Tensor:
    return torch.clamp(torch.round(v.float() / scale), -q, q).to(torch.int8)


def weight_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel float32 scales ``[out]`` of a ``[out, in]`` weight."""
    q = qmax(bits)
    _check_weight(weight, finite=False)
    return _row_scales(weight, q).squeeze(-1)


def quantize_weight(weight: torch.Tensor, bits: int = 8, scale: torch.Tensor | None = None):
    """Quantize ``weight[out, in]`` per output channel.

    Returns ``(codes int8 [out, in], scale float32 [out])``. int4 codes are also returned as int8
    (one code per byte); packing two per byte is the format's job. A given ``scale`` is used as is.
    """
    q = qmax(bits)
    _check_weight(weight)
    scale = _row_scales(weight, q).squeeze(-1) if scale is None else _check_scale(weight, scale)
    return _codes(weight, scale.unsqueeze(-1), q), scale


def quantize_per_token(x: torch.Tensor):
    """Dynamic symmetric int8 quantization of each token (each row of the last dim).

    ``x``: ``[..., K]`` float16/bfloat16/float32, K >= 1. Returns ``(codes int8 [..., K], scale
    float32 [..., 1])`` with ``|x - codes * scale| <= scale / 2`` elementwise (up to float32
    rounding). ``x`` is not checked for NaN/Inf (that would cost a device sync per call): a token
    holding any gets scale ``NaN`` and all-zero codes, so the op's outputs for it are NaN, as with
    ``nn.Linear``. Every kernel implements this same rule bit for bit.
    """
    _check_tokens(x)
    scale = _nan_scales(x, ACT_QMAX)
    finite = ~torch.isnan(scale)
    codes = torch.where(finite, _codes(x, torch.where(finite, scale, torch.ones_like(scale)), ACT_QMAX),
                        torch.zeros((), dtype=torch.int8, device=x.device))
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``codes * scale`` (scale broadcast over the last dim: ``[out]`` for weights, ``[..., 1]`` for tokens)."""
    check_tensor("codes", codes, dtypes=(torch.int8, torch.int32))
    check_tensor("scale", scale, dtypes=(torch.float32,))
    if scale.dim() == 1 and codes.dim() == 2 and scale.shape[0] == codes.shape[0]:
        scale = scale.unsqueeze(-1)
    return (codes.float() * scale).to(dtype)


class _STE(torch.autograd.Function):
    """Forward: the quantized value; backward: identity (straight-through estimator)."""

    @staticmethod
    def forward(ctx, v, quantized):
        return quantized

    @staticmethod
    def backward(ctx, grad):
        return grad, None


# ---------------------------------------------------------------------------------- the float model
def _fake_quant(v: torch.Tensor, q: int, scale: torch.Tensor, ste: bool) -> torch.Tensor:
    """``codes * scale`` in ``v``'s dtype: the one float model behind every ``fake_quant_*``.

    The codes stay float32 (small integers, exact there) instead of a round trip through int8: fewer
    passes, which the QAT forward pays twice a step. Two consequences are handled here so the values
    are bit for bit those of ``dequantize(*quantize_...)`` and of ``pack(...).unpack()``: ``add_(0.0)``
    turns the ``-0.0`` of a code rounded to zero from below into ``+0.0`` (an int8 code has no sign
    of zero), and a NaN ``scale`` (a non-finite row, see :func:`_nan_scales`) makes the whole row NaN,
    which is ``0 * NaN``, what the int8 path gives.
    """
    codes = torch.round(v.detach().float() / scale).clamp_(-q, q)
    deq = codes.mul_(scale).add_(0.0).to(v.dtype)
    return _STE.apply(v, deq) if ste else deq


def fake_quant_weight(weight: torch.Tensor, bits: int = 8, *, ste: bool = True,
                      scale: torch.Tensor | None = None, assume_finite: bool = False) -> torch.Tensor:
    """``codes * scale`` for a per-channel quantized weight, in the weight's dtype.

    Exactly :func:`dequantize` of :func:`quantize_weight` (same bits). With ``ste=True`` the gradient
    flows to ``weight`` unchanged (the scale is treated as a constant). ``assume_finite=True`` skips
    the NaN/Inf check, a device sync that a training step should not pay; a row holding NaN or Inf
    then comes out all NaN (the activation rule of :func:`quantize_per_token`).
    """
    q = qmax(bits)
    _check_weight(weight, finite=not assume_finite)
    if scale is None:
        scale = _nan_scales(weight, q)
    else:
        scale = _check_scale(weight, scale).unsqueeze(-1)
    return _fake_quant(weight, q, scale, ste)


def fake_quant_per_token(x: torch.Tensor, *, ste: bool = True) -> torch.Tensor:
    """``codes * scale`` for per-token int8 activations, in ``x``'s dtype, straight-through if asked.

    Exactly :func:`dequantize` of :func:`quantize_per_token` (same bits, NaN rows included).
    """
    _check_tokens(x)
    return _fake_quant(x, ACT_QMAX, _nan_scales(x, ACT_QMAX), ste)


def fake_quant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                      weight_bits: int | None = 8, act_bits: int | None = 8, ste: bool = True,
                      assume_finite: bool = False) -> torch.Tensor:
    """The kernels' linear in float: ``fake_quant_per_token(x) @ fake_quant_weight(weight).T + bias``.

    This is what ``NxMLinear`` computes from ``pack(weight)`` (up to the float rounding of its
    epilogue) and what ``QATLinear`` trains with. ``weight [out, in]`` is used as given: prune it to
    its N:M pattern first (:func:`nxm_kernels.sparsity.prune_nm`). ``weight_bits`` (4 or 8) and
    ``act_bits`` (8) are a spec's; ``None`` leaves that side in float (a weight quantized already, or
    an ablation). The weight and bias are cast to ``x``'s dtype after quantization, as the kernels
    read them. ``ste`` and ``assume_finite`` are those of :func:`fake_quant_weight`.
    """
    if act_bits is not None and act_bits != 8:
        raise ValueError(f"act_bits must be 8 (int8 per-token activations) or None, got {act_bits!r}")
    check_tensor("weight", weight, dtypes=FLOAT_DTYPES, ndim=2)
    _check_tokens(x)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x's last dimension ({x.shape[-1]}) must equal weight's in_features ({weight.shape[1]})")
    if bias is not None:
        check_tensor("bias", bias, dtypes=FLOAT_DTYPES, ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have {weight.shape[0]} entries (weight's out_features), got {bias.shape[0]}")
        bias = bias.to(x.dtype)
    if act_bits is not None:
        x = fake_quant_per_token(x, ste=ste)
    if weight_bits is not None:
        weight = fake_quant_weight(weight, weight_bits, ste=ste, assume_finite=assume_finite)
    return F.linear(x, weight.to(x.dtype), bias)

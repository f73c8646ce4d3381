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

The one float model of the kernels' math, used by QAT, the search and calibration: ``fake_quant_*`` give
``dequantize`` of the codes bit for bit, straight-through if asked; ``fake_quant_linear`` a whole layer.
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
    """float32 ``max |v|`` over the last dim (keepdim); NaN for a row holding NaN (max propagates it)."""
    return v.detach().abs().amax(dim=-1, keepdim=True).float()


def _row_scales(v: torch.Tensor, q: int, nan_rows: bool = False) -> torch.Tensor:
    """float32 scales ``amax / q`` over the last dim; rows whose scale would be 0 get 1.0, and with
    ``nan_rows`` a row whose amax is not finite (a NaN or an Inf in it) gets NaN (the activation rule)."""
    amax = _row_amax(v)
    # Divide by a tensor, not a Python scalar: PyTorch's CUDA kernels turn "tensor / scalar" into a
    # multiplication by the reciprocal, which is not the IEEE quotient the CPU and the kernels compute.
    scale = amax / torch.full_like(amax, q)
    # Test the quotient, not amax: a subnormal amax can underflow to a zero scale.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(torch.isfinite(amax), scale, torch.full_like(scale, float("nan"))) if nan_rows else scale


def _check_input(name: str, v: torch.Tensor, finite: bool = False) -> None:
    check_tensor(name, v, dtypes=FLOAT_DTYPES, **({"ndim": 2} if name == "weight" else {"min_ndim": 1}))
    if v.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last dimension (the one quantized), got shape {tuple(v.shape)}")
    if finite:
        check_finite(name, v)


def _check_scale(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    check_tensor("scale", scale, dtypes=(torch.float32,), ndim=1)
    check_same_device(weight=weight, scale=scale)
    if scale.shape[0] != weight.shape[0]:
        raise ValueError(f"scale must have {weight.shape[0]} entries (one per output channel), got {scale.shape[0]}")
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise ValueError("scale must be finite and > 0")
    return scale


def _codes(v: torch.Tensor, scale: torch.Tensor, q: int) -> torch.Tensor:
    """The one code rule, in float32 (small integers, exact there); NaN in a row whose scale is NaN."""
    return torch.round(v.detach().float() / scale).clamp_(-q, q)


def weight_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel float32 scales ``[out]`` of a ``[out, in]`` weight."""
    q = qmax(bits)
    _check_input("weight", weight)
    return _row_scales(weight, q).squeeze(-1)


def quantize_weight(weight: torch.Tensor, bits: int = 8, scale: torch.Tensor | None = None):
    """Quantize ``weight[out, in]`` per output channel.

    Returns ``(codes int8 [out, in], scale float32 [out])``. int4 codes are also returned as int8
    (one code per byte); packing two per byte is the format's job. A given ``scale`` is used as is.
    """
    q = qmax(bits)
    _check_input("weight", weight, finite=True)
    scale = _row_scales(weight, q).squeeze(-1) if scale is None else _check_scale(weight, scale)
    return _codes(weight, scale.unsqueeze(-1), q).to(torch.int8), scale


def quantize_per_token(x: torch.Tensor):
    """Dynamic symmetric int8 quantization of each token (each row of the last dim).

    ``x``: ``[..., K]`` float16/bfloat16/float32, K >= 1. Returns ``(codes int8 [..., K], scale
    float32 [..., 1])`` with ``|x - codes * scale| <= scale / 2`` elementwise (up to float32
    rounding). ``x`` is not checked for NaN/Inf (that would cost a device sync per call): a token
    holding any gets scale ``NaN`` and all-zero codes, so the op's outputs for it are NaN, as with
    ``nn.Linear``. Every kernel implements this same rule bit for bit.
    """
    _check_input("x", x)
    scale = _row_scales(x, ACT_QMAX, nan_rows=True)
    # Only a NaN scale makes a NaN code (a finite row has a finite scale > 0): those become 0.
    return _codes(x, scale, ACT_QMAX).nan_to_num_(0.0).to(torch.int8), scale


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


def _fake_quant(v: torch.Tensor, q: int, scale: torch.Tensor, ste: bool) -> torch.Tensor:
    """``codes * scale`` in ``v``'s dtype, bit for bit ``dequantize`` of the int8 codes, with fewer
    passes (the QAT step pays this twice): ``add_(0.0)`` turns a code rounded to ``-0.0`` into the
    int8 path's ``+0.0``, and a NaN scale (non-finite row) gives a NaN row, as ``0 * NaN`` does."""
    deq = _codes(v, scale, q).mul_(scale).add_(0.0).to(v.dtype)
    return _STE.apply(v, deq) if ste else deq


def fake_quant_weight(weight: torch.Tensor, bits: int = 8, *, ste: bool = True,
                      scale: torch.Tensor | None = None, assume_finite: bool = False) -> torch.Tensor:
    """``codes * scale`` for a per-channel quantized weight, in its dtype; with ``ste=True`` the gradient
    flows to ``weight`` unchanged (the scale is a constant). ``assume_finite=True`` skips the NaN/Inf
    check, a device sync a training step should not pay: a NaN/Inf row then comes out all NaN."""
    q = qmax(bits)
    _check_input("weight", weight, finite=not assume_finite)
    scale = _row_scales(weight, q, nan_rows=True) if scale is None else _check_scale(weight, scale).unsqueeze(-1)
    return _fake_quant(weight, q, scale, ste)


def fake_quant_per_token(x: torch.Tensor, *, ste: bool = True) -> torch.Tensor:
    """``codes * scale`` for per-token int8 activations, in ``x``'s dtype, straight-through if asked."""
    _check_input("x", x)
    return _fake_quant(x, ACT_QMAX, _row_scales(x, ACT_QMAX, nan_rows=True), ste)


def fake_quant_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                      weight_bits: int | None = 8, act_bits: int | None = 8, ste: bool = True,
                      assume_finite: bool = False) -> torch.Tensor:
    """``fake_quant_per_token(x) @ fake_quant_weight(weight).T + bias``: what ``NxMLinear`` computes from
    ``pack(weight)`` up to float rounding, and what ``QATLinear`` trains with. ``weight [out, in]`` is
    used as given (prune it first); ``weight_bits``/``act_bits`` are a spec's, ``None`` leaves that side
    in float. Weight and bias are cast to ``x``'s dtype; ``ste``, ``assume_finite``: see fake_quant_weight."""
    if act_bits is not None and act_bits != 8:
        raise ValueError(f"act_bits must be 8 (int8 per-token activations) or None, got {act_bits!r}")
    check_tensor("weight", weight, dtypes=FLOAT_DTYPES, ndim=2)
    _check_input("x", x)
    if bias is not None and check_tensor("bias", bias, dtypes=FLOAT_DTYPES).shape != weight.shape[:1]:
        raise ValueError(f"bias must have shape [{weight.shape[0]}] (weight's out_features), got {list(bias.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x's last dimension must be weight's in_features {weight.shape[1]}, got {list(x.shape)}")
    if act_bits is not None:
        x = fake_quant_per_token(x, ste=ste)
    if weight_bits is not None:
        weight = fake_quant_weight(weight, weight_bits, ste=ste, assume_finite=assume_finite)
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

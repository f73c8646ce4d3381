"""The reference backend: plain PyTorch, any device. Every kernel is tested against it.

The integer product is computed in float64: every product of two codes is at most 127*127 and every
partial sum stays far below 2**53, so float64 arithmetic on these integers is exact on CPU and GPU
alike (int32 matmul is not available on every device). The result is rounded back to int32.

The epilogue order, shared with the kernels, is ``((acc * x_scale) * w_scale) + bias``, then GELU
(the exact erf form BERT uses), all in float32, then a cast to the input's dtype.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_choice
from ..format import PackedWeight, padded_k
from ..quant import quantize_per_token as _quantize_per_token
from . import ACTIVATIONS


def unavailable_reason(device: torch.device) -> str | None:
    return None


def prepare(packed: PackedWeight) -> list[torch.Tensor]:
    """The canonical tensors themselves: ``[values, metadata, scales]`` (``[values, scales]`` if dense)."""
    tensors = packed.tensors()
    return [tensors[k] for k in ("values", "metadata", "scales") if k in tensors]


def as_packed(weights: list[torch.Tensor], meta) -> PackedWeight:
    """Rebuild a canonical :class:`PackedWeight` view from :func:`prepare`'s list."""
    values, scales = weights[0], weights[-1]
    metadata = weights[1] if meta.sparse else None
    return PackedWeight(values, metadata, scales, (meta.n, meta.k), meta.bits, "2:4" if meta.sparse else "dense")


def quantize_per_token(x2d: torch.Tensor):
    return _quantize_per_token(x2d)


def int_mm(xq: torch.Tensor, weights: list[torch.Tensor], meta) -> torch.Tensor:
    """Exact ``xq[M, K] @ codes[N, K]^T`` as int32 ``[M, N]``."""
    w = as_packed(weights, meta).int_weight()  # [N, K_pad]
    kp = padded_k(meta.k)
    x = torch.nn.functional.pad(xq, (0, kp - xq.shape[1])) if xq.shape[1] != kp else xq
    return torch.round(x.double() @ w.double().t()).to(torch.int32)


def gelu(y: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU in float32: ``0.5 * y * (1 + erf(y / sqrt(2)))``."""
    return 0.5 * y * (1.0 + torch.erf(y * (1.0 / math.sqrt(2.0))))


def epilogue(acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
             activation: str, dtype: torch.dtype) -> torch.Tensor:
    """Dequantize an int32 accumulator ``[M, N]`` and apply bias/GELU; the order every backend uses."""
    y = acc.float() * x_scale.float() * w_scale.float()
    if bias is not None:
        y = y + bias.float()
    if activation == "gelu":
        y = gelu(y)
    return y.to(dtype)


def linear(x2d: torch.Tensor, weights: list[torch.Tensor], meta, bias: torch.Tensor | None,
           activation: str) -> torch.Tensor:
    check_choice("activation", activation, ACTIVATIONS)
    xq, x_scale = quantize_per_token(x2d)
    acc = int_mm(xq, weights, meta)
    return epilogue(acc, x_scale, weights[-1], bias, activation, x2d.dtype)

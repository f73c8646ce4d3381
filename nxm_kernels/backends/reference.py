"""The reference backend: plain PyTorch, any device. Every kernel is tested against it.

The integer product is computed in float64: every product of two codes is at most 127*127 and every
partial sum stays far below 2**53, so float64 arithmetic on these integers is exact on CPU and GPU
alike (int32 matmul is not available on every device). The result is rounded back to int32.

The epilogue order, shared with the kernels, is ``((acc * x_scale) * w_scale) + bias``, then GELU
(the exact erf form BERT uses), all in float32, then a cast to the input's dtype.

Its layout (:class:`ReferenceLayout`) is the canonical tensors themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .._checks import check_choice
from ..format import PackedWeight, padded_k
from ..quant import quantize_per_token as _quantize_per_token
from . import ACTIVATIONS, Variant
from .layout import CanonicalLayout


@dataclass(frozen=True, eq=False)
class ReferenceLayout(CanonicalLayout):
    """The canonical ``values``, ``metadata`` (2:4 only) and ``scales``, as they are."""

    backend: ClassVar[str] = "reference"


LAYOUT = ReferenceLayout


def unavailable_reason(device: torch.device) -> str | None:
    return None


def prepare(packed: PackedWeight) -> ReferenceLayout:
    """The canonical tensors themselves: ``[values, metadata, scales]`` (``[values, scales]`` if dense)."""
    return ReferenceLayout.from_packed(packed)


def as_packed(weights, meta) -> PackedWeight:
    """Rebuild a canonical :class:`PackedWeight` view from :func:`prepare`'s layout (or its tensor list)."""
    return ReferenceLayout.from_tensors(weights, meta).to_packed()


def quantize_per_token(x2d: torch.Tensor):
    return _quantize_per_token(x2d)


def _int_mm(xq: torch.Tensor, layout: ReferenceLayout) -> torch.Tensor:
    w = layout.to_packed().int_weight()  # [N, K_pad]
    kp = padded_k(layout.meta.k)
    x = torch.nn.functional.pad(xq, (0, kp - xq.shape[1])) if xq.shape[1] != kp else xq
    return torch.round(x.double() @ w.double().t()).to(torch.int32)


def int_mm(xq: torch.Tensor, weights, meta) -> torch.Tensor:
    """Exact ``xq[M, K] @ codes[N, K]^T`` as int32 ``[M, N]``."""
    return _int_mm(xq, ReferenceLayout.from_tensors(weights, meta))


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


def _linear_q(xq, x_scale, layout: ReferenceLayout, bias, activation: str, out_dtype: torch.dtype) -> torch.Tensor:
    return epilogue(_int_mm(xq, layout), x_scale, layout.scales, bias, activation, out_dtype)


def _linear(x2d: torch.Tensor, layout: ReferenceLayout, bias, activation: str) -> torch.Tensor:
    xq, x_scale = _quantize_per_token(x2d)
    return _linear_q(xq, x_scale, layout, bias, activation, x2d.dtype)


def linear(x2d: torch.Tensor, weights, meta, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    check_choice("activation", activation, ACTIVATIONS)
    return _linear(x2d, ReferenceLayout.from_tensors(weights, meta), bias, activation)


def linear_q(xq: torch.Tensor, x_scale: torch.Tensor, weights, meta, bias: torch.Tensor | None, activation: str,
             out_dtype: torch.dtype) -> torch.Tensor:
    """The epilogue of ``int_mm(xq)``: ``xq``/``x_scale`` as :func:`nxm_kernels.quant.quantize_per_token` makes them."""
    check_choice("activation", activation, ACTIVATIONS)
    return _linear_q(xq, x_scale, ReferenceLayout.from_tensors(weights, meta), bias, activation, out_dtype)


VARIANTS = (Variant("reference", _linear),)

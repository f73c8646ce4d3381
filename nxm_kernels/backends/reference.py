"""The reference backend: plain PyTorch, any device. Every kernel is tested against it.

The integer product is computed as a float32 matmul and is exact (int32 matmul is not available on
every device, and float64 is slow on many). Why it is exact: every code is an integer of magnitude at
most 128 (activations, int8) and ``2**(bits-1)`` (weights: 128 for int8, 8 for int4), all exactly
representable in float32; so is every partial sum of a product over a stretch of K with at most
``2**24 / (128 * 2**(bits-1))`` non-zero terms (1024 for int8, 16384 for int4), because every such sum
is an integer of magnitude at most ``2**24``. Each float32 addition then has an exact result, in
whatever order the matmul adds (blocking, split-K, FMA). :func:`chunk_k` is that stretch (twice as
long for a 2:4 weight, which has at most two non-zeros in each aligned group of four); a longer K is
multiplied chunk by chunk, each chunk's exact result converted to int32 and summed in int32, as a
kernel's int32 accumulator would. The reduced-precision float32 matmul modes torch offers (TF32 on
NVIDIA GPUs, bf16 inputs in oneDNN) keep the argument: they round the inputs (codes of at most 8
bits, exact in TF32 and bf16) and still accumulate in float32.

The weight codes are decoded (int4 nibbles, 2:4 metadata) into a dense float32 ``[N, K]`` matrix once
per layout, on first use, and kept on the layout (:attr:`ReferenceLayout.decoded`): 4 bytes per weight
beside the packed tensors, in the reference layout only (a layer whose dispatch never picks the
reference never builds it). The per-call cost is then the float32 matmul plus the quantization of
``x`` and the epilogue.

The epilogue order, shared with the kernels, is ``((acc * x_scale) * w_scale) + bias``, then GELU
(the exact erf form BERT uses), all in float32, then a cast to the input's dtype.

Its layout (:class:`ReferenceLayout`) is the canonical tensors themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import torch

from .._checks import check_choice
from ..format import PackedWeight
from ..quant import quantize_per_token as _quantize_per_token
from . import ACTIVATIONS, Variant
from .layout import CanonicalLayout


@dataclass(frozen=True, eq=False)
class ReferenceLayout(CanonicalLayout):
    """The canonical ``values``, ``metadata`` (2:4 only) and ``scales``, as they are; the decoded
    codes (:attr:`decoded`) are derived from them on first use and kept."""

    backend: ClassVar[str] = "reference"

    @cached_property
    def decoded(self) -> torch.Tensor:
        """The weight codes as a dense float32 ``[N, K]`` matrix (exact: small integers), zeros where
        pruned; decoded on first use and kept on this layout (4 bytes per weight, see the module docstring).
        Not one of the layout's tensors: it is derived from them, like the other backends' layouts."""
        return self.to_packed().int_weight()[:, : self.meta.k].float().contiguous()


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


#: Largest magnitude of an int8 activation code.
_X_MAX = 128


def chunk_k(bits: int, sparse: bool) -> int:
    """The longest stretch of K whose float32 product with int8 activations is exact (module docstring):
    at most ``2**24 / (128 * 2**(bits-1))`` non-zero products, twice as many columns for a 2:4 weight
    (a multiple of 4, so chunks starting at multiples of it hold whole groups of four)."""
    terms = (1 << 24) // (_X_MAX * (1 << (bits - 1)))  # 1024 for int8 weights, 16384 for int4
    return terms * 2 if sparse else terms


def _accumulate(xq: torch.Tensor, layout: ReferenceLayout) -> torch.Tensor:
    """The exact accumulator ``xq @ codes^T``: float32 when K fits one chunk (exact integers of magnitude
    <= 2**24, which the epilogue's float32 conversion would leave as they are), else int32."""
    w = layout.decoded  # float32 [N, K]
    x = xq.float()
    k, step = w.shape[1], chunk_k(layout.meta.bits, layout.meta.sparse)
    if k <= step:
        return x @ w.t()
    acc = None
    for k0 in range(0, k, step):
        part = (x[:, k0:k0 + step] @ w[:, k0:k0 + step].t()).to(torch.int32)  # exact: converts exactly
        acc = part if acc is None else acc.add_(part)
    return acc


def _int_mm(xq: torch.Tensor, layout: ReferenceLayout) -> torch.Tensor:
    return _accumulate(xq, layout).to(torch.int32)


def int_mm(xq: torch.Tensor, weights, meta) -> torch.Tensor:
    """Exact ``xq[M, K] @ codes[N, K]^T`` as int32 ``[M, N]``."""
    return _int_mm(xq, ReferenceLayout.from_tensors(weights, meta))


def gelu(y: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU in float32: ``0.5 * y * (1 + erf(y / sqrt(2)))``."""
    t = (y * (1.0 / math.sqrt(2.0))).erf_().add_(1.0)  # in place on new tensors: two allocations, not four
    return (0.5 * y).mul_(t)


def epilogue(acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
             activation: str, dtype: torch.dtype) -> torch.Tensor:
    """Dequantize an int32 accumulator ``[M, N]`` and apply bias/GELU; the order every backend uses."""
    y = acc.float() * x_scale.float()  # a new tensor: the steps below may work in place
    y.mul_(w_scale.float())
    if bias is not None:
        y.add_(bias.float())
    if activation == "gelu":
        y = gelu(y)
    return y.to(dtype)


def _linear_q(xq, x_scale, layout: ReferenceLayout, bias, activation: str, out_dtype: torch.dtype) -> torch.Tensor:
    # The exact accumulator as it comes (float32 or int32): epilogue's float32 conversion of either is
    # the same value, so this is bit-identical to dequantizing int_mm's int32 result.
    return epilogue(_accumulate(xq, layout), x_scale, layout.scales, bias, activation, out_dtype)


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

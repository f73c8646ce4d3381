"""The project's op, ``y = dequant(quant(x) @ W_q^T) (+bias) (+GELU)``, and its dispatch.

Public entry points validate their inputs, choose the backend and kernel variant
(:mod:`nxm_kernels.dispatch`) and run it. Three custom ops are registered with ``torch.library``,
each with a fake (meta) implementation, so the op traces under ``torch.compile(fullgraph=True)``
and can be captured in CUDA graphs:

* ``nxm::linear_q(xq, x_scale, weights, bias, ...)``: GEMM + epilogue on activations already
  quantized. Under ``torch.compile`` the op is split in two: the per-token quantization as plain
  torch operations (:func:`nxm_kernels.quant.quantize_per_token`, bit-identical to every backend's
  quantizer), which inductor fuses into the LayerNorm / residual add / GELU that produces ``x``,
  then this op. No quantization kernel of ours appears in a compiled graph.
* ``nxm::linear(x, weights, ...)``: the whole op in one call (the backend's fused eager path).
* ``nxm::int_mm(xq, weights, ...)``: the raw int32 accumulator.

In eager mode the backend is called directly (the custom op's Python dispatch costs tens of
microseconds, as much as a small-M GEMM): one fused call.

Weights reach the kernels as the backend's typed prepared layout (:mod:`nxm_kernels.backends.layout`),
derived once per weight and backend and cached on the ``PackedWeight``; custom ops receive its
tensor list.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from . import dispatch
from ._checks import FLOAT_DTYPES, check_same_device, check_tensor
from .backends import Layout, WeightMeta, get_backend, resolve_backend
from .format import PackedWeight
from .quant import quantize_per_token

__all__ = ["sparse_int_linear", "sparse_int_mm", "quantize_per_token", "prepared_weights", "linear_traced",
           "normalize_activation", "check_packed"]


# ---------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("nxm::linear", mutates_args=())
def _linear_op(x: torch.Tensor, weights: List[torch.Tensor], bias: Optional[torch.Tensor], n: int, k: int,
               bits: int, sparse: bool, activation: str, backend: str) -> torch.Tensor:
    return get_backend(backend).linear(x, weights, WeightMeta(n, k, bits, sparse), bias, activation)


@_linear_op.register_fake
def _linear_fake(x, weights, bias, n, k, bits, sparse, activation, backend):
    return x.new_empty(x.shape[0], n)


@torch.library.custom_op("nxm::linear_q", mutates_args=())
def _linear_q_op(xq: torch.Tensor, x_scale: torch.Tensor, weights: List[torch.Tensor], bias: Optional[torch.Tensor],
                 n: int, k: int, bits: int, sparse: bool, activation: str, out_dtype: torch.dtype,
                 backend: str) -> torch.Tensor:
    return get_backend(backend).linear_q(xq, x_scale, weights, WeightMeta(n, k, bits, sparse), bias, activation,
                                         out_dtype)


@_linear_q_op.register_fake
def _linear_q_fake(xq, x_scale, weights, bias, n, k, bits, sparse, activation, out_dtype, backend):
    return xq.new_empty(xq.shape[0], n, dtype=out_dtype)


@torch.library.custom_op("nxm::int_mm", mutates_args=())
def _int_mm_op(xq: torch.Tensor, weights: List[torch.Tensor], n: int, k: int, bits: int, sparse: bool,
               backend: str) -> torch.Tensor:
    return get_backend(backend).int_mm(xq, weights, WeightMeta(n, k, bits, sparse))


@_int_mm_op.register_fake
def _int_mm_fake(xq, weights, n, k, bits, sparse, backend):
    return xq.new_empty(xq.shape[0], n, dtype=torch.int32)


# ---------------------------------------------------------------------------------- helpers
def normalize_activation(activation) -> str:
    """``None``/``"none"`` -> ``"none"``; ``"gelu"`` -> ``"gelu"``; anything else is an error."""
    if activation is None or activation == "none":
        return "none"
    if activation == "gelu":
        return "gelu"
    raise ValueError(f"activation must be None or 'gelu', got {activation!r}")


def check_packed(packed, bias: torch.Tensor | None = None) -> PackedWeight:
    """Require a :class:`PackedWeight` and, when given, a float ``bias`` of shape ``[out_features]``."""
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"packed must be a PackedWeight (see nxm_kernels.pack), got {type(packed).__name__}")
    if bias is not None:
        check_tensor("bias", bias, dtypes=FLOAT_DTYPES, ndim=1)
        if bias.shape[0] != packed.out_features:
            raise ValueError(f"bias must have shape ({packed.out_features},), got {tuple(bias.shape)}")
    return packed


def prepared_weights(packed: PackedWeight, backend: str) -> Layout:
    """The backend's typed layout of ``packed``, derived (and checked) on first use and cached in
    ``packed.prepared``."""
    check_packed(packed)
    key = (backend, str(packed.device))
    if key not in packed.prepared:
        packed.prepared[key] = get_backend(backend).prepare(packed)
    return packed.prepared[key]


def linear_traced(x2d: torch.Tensor, weights: list[torch.Tensor], meta: WeightMeta, backend: str,
                  bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    """The op as ``torch.compile`` sees it: per-token quantization as plain torch operations, then the
    ``nxm::linear_q`` custom op (GEMM + epilogue) on ``backend``'s layout, given as its tensor list
    (``Layout.tensors()``: plain tensors trace without inlining the layout object). ``x2d``: 2-D, M >= 1."""
    xq, x_scale = quantize_per_token(x2d)
    return _linear_q_op(xq, x_scale, weights, bias, meta.n, meta.k, meta.bits, meta.sparse, activation, x2d.dtype,
                        backend)


# ---------------------------------------------------------------------------------- public API
def sparse_int_linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None,
                      activation: str | None = None, backend: str = "auto") -> torch.Tensor:
    """``y = dequant(quant(x) @ W^T) (+bias) (+GELU)`` for ``x`` of shape ``[..., K]``.

    ``x`` is float16/bfloat16/float32 and may be non-contiguous; it is quantized per token to int8,
    multiplied against the packed int8/int4 (2:4 or dense) weight with int32 accumulation, and
    dequantized by both scales. ``bias`` is ``[N]``; ``activation`` is ``None`` or ``"gelu"``.
    The result has shape ``[..., N]`` and ``x``'s dtype. ``backend``: ``"auto"`` (the measured
    dispatch table on a GPU, see :mod:`nxm_kernels.dispatch`; honours ``NXM_BACKEND``), ``"cuda"``,
    ``"triton"``, ``"reference"`` or a kernel variant such as ``"triton:<variant>"``.
    """
    check_packed(packed, bias)
    check_tensor("x", x, dtypes=FLOAT_DTYPES, min_ndim=1)
    if x.shape[-1] != packed.in_features:
        raise ValueError(f"x must have last dimension K={packed.in_features} (the weight's in_features), "
                         f"got shape {tuple(x.shape)}")
    if bias is not None:
        bias = bias.contiguous()  # kernels index bias with unit stride
    check_same_device(x=x, packed=packed.values, bias=bias)
    act = normalize_activation(activation)
    meta = WeightMeta.of(packed)
    choices = dispatch.plan(backend, x.device, meta)
    lead = x.shape[:-1]
    x2d = x.reshape(-1, meta.k)
    m = x2d.shape[0]
    if m == 0:
        return x.new_empty(*lead, meta.n)
    candidate = choices[dispatch.bucket_index(m)] if isinstance(m, int) else choices[-1]
    layout = prepared_weights(packed, candidate.partition(":")[0])
    x2d = x2d.contiguous()
    if torch.compiler.is_compiling():
        y = linear_traced(x2d, layout.tensors(), meta, layout.backend, bias, act)
    else:
        y = dispatch.variant(candidate).linear(x2d, layout, bias, act)
    return y.reshape(*lead, meta.n)


def sparse_int_mm(xq: torch.Tensor, packed: PackedWeight, backend: str = "auto") -> torch.Tensor:
    """The raw int32 accumulator ``xq[M, K] @ codes[N, K]^T`` (exact on every backend).

    ``xq`` is int8 ``[M, K]`` (e.g. from :func:`quantize_per_token`); the result is int32 ``[M, N]``.
    """
    check_packed(packed)
    check_tensor("xq", xq, dtypes=(torch.int8,), ndim=2)
    if xq.shape[1] != packed.in_features:
        raise ValueError(f"xq must have shape [M, {packed.in_features}], got {tuple(xq.shape)}")
    check_same_device(xq=xq, packed=packed.values)
    meta = WeightMeta.of(packed)
    name = resolve_backend(backend, xq.device, meta)
    if xq.shape[0] == 0:
        return xq.new_empty(0, packed.out_features, dtype=torch.int32)
    layout = prepared_weights(packed, name)
    if torch.compiler.is_compiling():
        return _int_mm_op(xq.contiguous(), layout.tensors(), meta.n, meta.k, meta.bits, meta.sparse, name)
    return get_backend(name).int_mm(xq.contiguous(), layout, meta)

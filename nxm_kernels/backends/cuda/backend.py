"""The ``cuda`` backend: the sparse tensor-core kernels of ``csrc/`` (``mma.sp``, SASS ``IMMA.SP``).

Runs 2:4 weights (int8 or int4 codes) on sm_80 and newer. The extension is built on first use
(see :mod:`.build`); when it cannot be (no GPU, no nvcc, a compile error), this backend reports
itself unavailable with the reason and ``backend="auto"`` falls back to Triton or the reference.
"""

from __future__ import annotations

import functools

import torch

from ..._checks import check_choice
from ...format import PackedWeight, padded_k
from .. import ACTIVATIONS, Variant
from ..reference import epilogue as _reference_epilogue
from . import build as _cuda_build
from .layout import CudaLayout, prepare_layout

LAYOUT = CudaLayout

_ACT = {"none": 0, "gelu": 1}


@functools.lru_cache(maxsize=None)
def _load_or_reason():
    try:
        return _cuda_build.load(), None
    except Exception as exc:  # a missing compiler or a build failure: report, don't crash
        return None, f"the CUDA extension could not be built or loaded: {type(exc).__name__}: {exc}"


def extension():
    """The compiled extension module (builds it on first call); raises RuntimeError if impossible."""
    ext, why = _load_or_reason()
    if ext is None:
        raise RuntimeError(why)
    return ext


def build(verbose: bool = True):
    """Build (or load the cached build of) the extension now, raising with the compiler's output on
    failure; returns the module."""
    ext = _cuda_build.load(verbose=verbose)
    _load_or_reason.cache_clear()
    return ext


def unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"the cuda backend needs a CUDA device, got {device.type}"
    if not torch.cuda.is_available() or torch.version.cuda is None:
        return "torch has no CUDA support or no GPU is visible"
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"sparse int8 tensor cores need sm_80 or newer, this GPU is sm_{major}x"
    return _load_or_reason()[1]


def weight_unsupported_reason(meta) -> str | None:
    if not meta.sparse:
        return "the cuda backend runs 2:4 weights only (dense weights run on triton or reference)"
    return None


def prepare(packed: PackedWeight) -> CudaLayout:
    return prepare_layout(packed)


def _layout(weights, meta) -> CudaLayout:
    why = weight_unsupported_reason(meta)
    if why:
        raise ValueError(why)
    return CudaLayout.from_tensors(weights, meta)


def quantize_per_token(x2d: torch.Tensor):
    xq, scale = extension().quantize_rows(x2d.contiguous(), padded_k(x2d.shape[1]))
    return xq[:, : x2d.shape[1]], scale.unsqueeze(-1)


def _int_mm(xq: torch.Tensor, layout: CudaLayout) -> torch.Tensor:
    xq = torch.nn.functional.pad(xq, (0, layout.padded_k - xq.shape[1])).contiguous()
    return extension().int_mm(xq, layout.values, layout.metadata, layout.scales, layout.meta.n, layout.meta.bits == 4)


def _linear(x2d: torch.Tensor, layout: CudaLayout, bias, activation: str) -> torch.Tensor:
    """One binding call: the quantizer (which also zeroes the split-K counters), then the GEMM + epilogue."""
    m = layout.meta
    return extension().linear(x2d, layout.values, layout.metadata, layout.scales, bias, m.n, m.k, layout.padded_k,
                              m.bits == 4, _ACT[activation])


def _linear_q(xq, x_scale, layout: CudaLayout, bias, activation: str, out_dtype: torch.dtype) -> torch.Tensor:
    # The binding has no GEMM-with-epilogue entry point for already-quantized activations (csrc takes
    # x and quantizes it itself), so under torch.compile the cuda backend runs its exact int32 GEMM and
    # the epilogue as torch ops (the reference's order). A binding entry point would save a launch.
    return _reference_epilogue(_int_mm(xq, layout), x_scale, layout.scales[: layout.meta.n], bias, activation,
                               out_dtype)


def int_mm(xq: torch.Tensor, weights, meta) -> torch.Tensor:
    return _int_mm(xq, _layout(weights, meta))


def linear(x2d: torch.Tensor, weights, meta, bias: torch.Tensor | None,
           activation: str) -> torch.Tensor:
    check_choice("activation", activation, ACTIVATIONS)
    layout = _layout(weights, meta)
    if bias is not None:
        bias = bias.contiguous()
    return _linear(x2d.contiguous(), layout, bias, activation)


def linear_q(xq: torch.Tensor, x_scale: torch.Tensor, weights, meta, bias: torch.Tensor | None, activation: str,
             out_dtype: torch.dtype) -> torch.Tensor:
    check_choice("activation", activation, ACTIVATIONS)
    return _linear_q(xq, x_scale, _layout(weights, meta), bias, activation, out_dtype)


VARIANTS = (Variant("cuda", _linear),)

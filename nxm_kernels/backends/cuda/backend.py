"""The ``cuda`` backend: the sparse tensor-core kernels of ``csrc/`` (``mma.sp``, SASS ``IMMA.SP``).

Runs 2:4 weights (int8 or int4 codes) on sm_80 and newer. The extension is built on first use
(see :mod:`.build`); when it cannot be (no GPU, no nvcc, a compile error), this backend reports
itself unavailable with the reason and ``backend="auto"`` falls back to Triton or the reference.
"""

from __future__ import annotations

import functools

import torch

from ...format import PackedWeight, padded_k
from . import build as _cuda_build
from .layout import prepare_layout, prepared_dims

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


def prepare(packed: PackedWeight) -> list[torch.Tensor]:
    return prepare_layout(packed)


def _check_weights(weights, meta):
    why = weight_unsupported_reason(meta)
    if why:
        raise ValueError(why)
    np_, kp = prepared_dims(meta.n, meta.k)
    if weights[2].shape != (np_,):
        raise ValueError("weights are not in the cuda backend's prepared layout (use ops.prepared_weights)")
    return kp


def quantize_per_token(x2d: torch.Tensor):
    xq, scale = extension().quantize_rows(x2d.contiguous(), padded_k(x2d.shape[1]))
    return xq[:, : x2d.shape[1]], scale.unsqueeze(-1)


def int_mm(xq: torch.Tensor, weights: list[torch.Tensor], meta) -> torch.Tensor:
    kp = _check_weights(weights, meta)
    xq = torch.nn.functional.pad(xq, (0, kp - xq.shape[1])).contiguous()
    values, metadata, scales = weights
    return extension().int_mm(xq, values, metadata, scales, meta.n, meta.bits == 4)


def linear(x2d: torch.Tensor, weights: list[torch.Tensor], meta, bias: torch.Tensor | None,
           activation: str) -> torch.Tensor:
    kp = _check_weights(weights, meta)
    values, metadata, scales = weights
    if bias is not None:
        bias = bias.contiguous()
    return extension().linear(x2d.contiguous(), values, metadata, scales, bias, meta.n, meta.k, kp,
                              meta.bits == 4, _ACT[activation])

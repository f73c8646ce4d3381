"""The ``cuda`` backend: the sparse tensor-core kernels of ``csrc/``.

Runs 2:4 weights (int8 or int4 codes) on sm_80 and newer with two kernels:

* ``"cutlass"``: the CUTLASS-built 2:4 int8 GEMMs (``csrc/cutlass_sm90_sparse.cuh``: sm_90a wgmma.sp,
  persistent warp-specialized; ``csrc/cutlass_sm80_sparse.cuh``: sm_80/86/89 SparseGemm), for
  ``M >= CUTLASS_MIN_M`` tokens when ``N % 8 == 0``; int4 weights run on them as int8 codes, expanded once
  at load (:mod:`.cutlass_layout`);
* ``"mma_sp"``: the hand-written ``mma.sp`` kernel (``csrc/nxm_sparse_gemm.cuh``), which keeps the packed
  int4 codes in memory and has the small-M configurations (split-K, narrow tiles): every other case.

:func:`select_kernel` is the one place that chooses (the measured dispatch replaces it). The extension is
built on first use (see :mod:`.build`); when it cannot be (no GPU, no nvcc, a compile error), this
backend reports itself unavailable with the reason and ``backend="auto"`` falls back to Triton or the
reference. Without the CUTLASS headers it is built with the mma.sp kernel only.
"""

from __future__ import annotations

import functools
import os

import torch

from ...format import PackedWeight, padded_k
from . import build as _cuda_build
from .cutlass_layout import cutlass_layout
from .layout import prepare_layout, prepared_dims

_ACT = {"none": 0, "gelu": 1}

#: Tokens from which int8 2:4 (and int4 2:4, expanded) runs on the CUTLASS kernels: below it the GEMM is
#: bound by weight bytes and launch latency, where the mma.sp kernel's split-K small tiles (and packed
#: int4) fit; above it the sparse tensor cores' issue rate, where CUTLASS's pipelines win (DESIGN.md,
#: "The fast path"). Not yet measured on a GPU: the measured dispatch (nxm tune) replaces this number.
CUTLASS_MIN_M = 256
#: ``NXM_CUDA_CUTLASS=0`` keeps the CUTLASS layouts out of memory (and the kernels out of use).
CUTLASS_ENV = "NXM_CUDA_CUTLASS"
#: The kernels' rule on out_features (16-byte aligned output rows for the TMA store).
CUTLASS_N_MULTIPLE = 8


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


@functools.lru_cache(maxsize=None)
def _device_arch(index: int) -> int | None:
    """The CUTLASS kernel family of CUDA device ``index``: 90 (sm_90), 80 (sm_80/86/89), or None."""
    major, minor = torch.cuda.get_device_capability(index)
    if (major, minor) == (9, 0):
        return 90
    if major == 8:
        return 80
    return None


def cutlass_arch(device: torch.device) -> int | None:
    """The CUTLASS kernel family (80 or 90) for ``device``, or None where there is none."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return _device_arch(device.index if device.index is not None else torch.cuda.current_device())


def cutlass_unavailable_reason(device: torch.device) -> str | None:
    """``None`` when the CUTLASS kernels can run on ``device``, else why not (a sentence naming the rule)."""
    if os.environ.get(CUTLASS_ENV, "1") == "0":
        return f"the CUTLASS kernels are turned off ({CUTLASS_ENV}=0)"
    arch = cutlass_arch(device)
    if arch is None:
        return f"the CUTLASS kernels need an sm_80/86/89 or sm_90 GPU, not {device}"
    why = unavailable_reason(torch.device(device))
    if why is not None:
        return why
    if not extension().cutlass_available(arch):
        return (_cuda_build.cutlass_missing_reason()
                or f"this build of the CUDA extension has no CUTLASS kernels for sm_{arch} (NXM_CUDA_ARCHS?)")
    return None


def prepare(packed: PackedWeight) -> list[torch.Tensor]:
    """``[values, meta, scales]`` of the mma.sp kernel (:mod:`.layout`), followed on a GPU with CUTLASS
    kernels by ``[cutlass_values, cutlass_meta]`` (:mod:`.cutlass_layout`, sharing ``scales``)."""
    weights = prepare_layout(packed)
    if (packed.sparse and packed.device.type == "cuda" and packed.shape[0] % CUTLASS_N_MULTIPLE == 0
            and cutlass_unavailable_reason(packed.device) is None):
        c_values, c_meta, _ = cutlass_layout(packed, cutlass_arch(packed.device))
        weights += [c_values, c_meta]
    return weights


def select_kernel(m: int, n: int, has_cutlass_layout: bool) -> str:
    """``"cutlass"`` or ``"mma_sp"`` for an ``m``-token problem with ``n`` out_features: CUTLASS from
    :data:`CUTLASS_MIN_M` tokens when its layout was prepared (a GPU with CUTLASS kernels) and
    ``n % 8 == 0``; mma.sp otherwise. The measured dispatch (variants such as ``"cuda:cutlass"``)
    replaces this function."""
    if has_cutlass_layout and m >= CUTLASS_MIN_M and n % CUTLASS_N_MULTIPLE == 0:
        return "cutlass"
    return "mma_sp"


def _check_weights(weights, meta):
    why = weight_unsupported_reason(meta)
    if why:
        raise ValueError(why)
    np_, kp = prepared_dims(meta.n, meta.k)
    if len(weights) not in (3, 5) or weights[2].shape != (np_,):
        raise ValueError("weights are not in the cuda backend's prepared layout (use ops.prepared_weights)")
    return kp


def _cutlass_weights(weights, meta, device):
    kp = _check_weights(weights, meta)
    if len(weights) != 5:
        why = cutlass_unavailable_reason(device) if meta.n % CUTLASS_N_MULTIPLE == 0 else (
            f"the CUTLASS kernels need out_features to be a multiple of {CUTLASS_N_MULTIPLE}, got {meta.n}")
        raise RuntimeError(f"no CUTLASS layout was prepared for this weight: {why or 'prepared off the GPU'}")
    return kp, weights[3], weights[4], weights[2], cutlass_arch(device)


def quantize_per_token(x2d: torch.Tensor):
    xq, scale = extension().quantize_rows(x2d.contiguous(), padded_k(x2d.shape[1]))
    return xq[:, : x2d.shape[1]], scale.unsqueeze(-1)


def mma_sp_int_mm(xq: torch.Tensor, weights: list[torch.Tensor], meta) -> torch.Tensor:
    """int32 accumulators from the mma.sp kernel."""
    kp = _check_weights(weights, meta)
    xq = torch.nn.functional.pad(xq, (0, kp - xq.shape[1])).contiguous()
    values, metadata, scales = weights[:3]
    return extension().int_mm(xq, values, metadata, scales, meta.n, meta.bits == 4)


def mma_sp_linear(x2d: torch.Tensor, weights: list[torch.Tensor], meta, bias: torch.Tensor | None,
                  activation: str) -> torch.Tensor:
    """The op on the mma.sp kernel."""
    kp = _check_weights(weights, meta)
    values, metadata, scales = weights[:3]
    if bias is not None:
        bias = bias.contiguous()
    return extension().linear(x2d.contiguous(), values, metadata, scales, bias, meta.n, meta.k, kp,
                              meta.bits == 4, _ACT[activation])


def cutlass_int_mm(xq: torch.Tensor, weights: list[torch.Tensor], meta) -> torch.Tensor:
    """int32 accumulators from the CUTLASS kernel (RuntimeError naming the rule when it cannot run)."""
    kp, values, metadata, scales, arch = _cutlass_weights(weights, meta, xq.device)
    xq = torch.nn.functional.pad(xq, (0, kp - xq.shape[1])).contiguous()
    return extension().cutlass_int_mm(xq, values, metadata, scales, meta.n, arch)


def cutlass_linear(x2d: torch.Tensor, weights: list[torch.Tensor], meta, bias: torch.Tensor | None,
                   activation: str) -> torch.Tensor:
    """The op on the CUTLASS kernel (RuntimeError naming the rule when it cannot run)."""
    kp, values, metadata, scales, arch = _cutlass_weights(weights, meta, x2d.device)
    if bias is not None:
        bias = bias.contiguous()
    return extension().cutlass_linear(x2d.contiguous(), values, metadata, scales, bias, meta.n, meta.k, kp, arch,
                                      _ACT[activation])


def int_mm(xq: torch.Tensor, weights: list[torch.Tensor], meta) -> torch.Tensor:
    if select_kernel(xq.shape[0], meta.n, len(weights) == 5) == "cutlass":
        return cutlass_int_mm(xq, weights, meta)
    return mma_sp_int_mm(xq, weights, meta)


def linear(x2d: torch.Tensor, weights: list[torch.Tensor], meta, bias: torch.Tensor | None,
           activation: str) -> torch.Tensor:
    if select_kernel(x2d.shape[0], meta.n, len(weights) == 5) == "cutlass":
        return cutlass_linear(x2d, weights, meta, bias, activation)
    return mma_sp_linear(x2d, weights, meta, bias, activation)

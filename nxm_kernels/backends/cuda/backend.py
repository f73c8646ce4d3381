"""The ``cuda`` backend: the sparse tensor-core kernels of ``csrc/``.

Runs 2:4 weights (int8 or int4 codes) on sm_80 and newer with two kernels:

* ``"cutlass"``: the CUTLASS-built 2:4 int8 GEMMs (``csrc/cutlass_sm90_sparse.cuh``: sm_90a wgmma.sp,
  persistent warp-specialized; ``csrc/cutlass_sm80_sparse.cuh``: sm_80/86/89 SparseGemm), for
  ``M >= CUTLASS_MIN_M`` tokens when ``N % 8 == 0``; int4 weights run on them as int8 codes, expanded once
  at load (:mod:`.cutlass_layout`);
* ``"mma_sp"``: the hand-written ``mma.sp`` kernel (``csrc/nxm_sparse_gemm.cuh``), which keeps the packed
  int4 codes in memory and has the small-M configurations (split-K, narrow tiles): every other case.

:func:`select_kernel` is the backend's own choice (its ``"cuda"`` variant); the variants
``"cuda:cutlass"`` and ``"cuda:mma_sp"`` pin one kernel, for the measured dispatch (``nxm tune``) to
time and choose. The extension is
built on first use (see :mod:`.build`); when it cannot be (no GPU, no nvcc, a compile error), this
backend reports itself unavailable with the reason and ``backend="auto"`` falls back to Triton or the
reference. Without the CUTLASS headers it is built with the mma.sp kernel only.
"""

from __future__ import annotations

import functools
import os

import torch

from ..._checks import check_choice
from ...format import PackedWeight, padded_k
from .. import ACTIVATIONS, Variant
from ..reference import epilogue as _reference_epilogue
from . import build as _cuda_build
from .cutlass_layout import cutlass_layout
from .layout import CudaLayout, prepare_layout

LAYOUT = CudaLayout

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


def prepare(packed: PackedWeight) -> CudaLayout:
    """The mma.sp kernel's layout (:mod:`.layout`), with on a GPU that has the CUTLASS kernels the
    CUTLASS layout of the same weight beside it (:mod:`.cutlass_layout`, sharing ``scales``)."""
    layout = prepare_layout(packed)
    if packed.device.type == "cuda" and _cutlass_unsupported(layout.meta, packed.device) is None:
        c_values, c_meta, _ = cutlass_layout(packed, cutlass_arch(packed.device))
        layout = layout.with_cutlass(c_values, c_meta)
    return layout


def select_kernel(m: int, n: int, has_cutlass_layout: bool) -> str:
    """``"cutlass"`` or ``"mma_sp"`` for an ``m``-token problem with ``n`` out_features: CUTLASS from
    :data:`CUTLASS_MIN_M` tokens when its layout was prepared (a GPU with CUTLASS kernels) and
    ``n % 8 == 0``; mma.sp otherwise. The ``"cuda"`` variant's choice; the measured dispatch can pin
    ``"cuda:cutlass"`` or ``"cuda:mma_sp"`` per M bucket instead."""
    if has_cutlass_layout and m >= CUTLASS_MIN_M and n % CUTLASS_N_MULTIPLE == 0:
        return "cutlass"
    return "mma_sp"


def _layout(weights, meta) -> CudaLayout:
    why = weight_unsupported_reason(meta)
    if why:
        raise ValueError(why)
    return CudaLayout.from_tensors(weights, meta)


def _require_cutlass(layout: CudaLayout, device: torch.device) -> None:
    if layout.cutlass_values is None:
        why = _cutlass_unsupported(layout.meta, device)
        raise RuntimeError(f"no CUTLASS layout was prepared for this weight: {why or 'prepared off the GPU'}")


def quantize_per_token(x2d: torch.Tensor):
    xq, scale = extension().quantize_rows(x2d.contiguous(), padded_k(x2d.shape[1]))
    return xq[:, : x2d.shape[1]], scale.unsqueeze(-1)


# ------------------------------------------------------------------ kernels on a checked layout (no checks)
def _mma_sp_int_mm(xq: torch.Tensor, layout: CudaLayout) -> torch.Tensor:
    xq = torch.nn.functional.pad(xq, (0, layout.padded_k - xq.shape[1])).contiguous()
    return extension().int_mm(xq, layout.values, layout.metadata, layout.scales, layout.meta.n, layout.meta.bits == 4)


def _cutlass_int_mm(xq: torch.Tensor, layout: CudaLayout) -> torch.Tensor:
    xq = torch.nn.functional.pad(xq, (0, layout.padded_k - xq.shape[1])).contiguous()
    return extension().cutlass_int_mm(xq, layout.cutlass_values, layout.cutlass_metadata, layout.scales,
                                      layout.meta.n, cutlass_arch(xq.device))


def _mma_sp(x2d: torch.Tensor, layout: CudaLayout, bias, activation: str) -> torch.Tensor:
    """One binding call: the quantizer (which also zeroes the split-K counters), then the GEMM + epilogue."""
    m = layout.meta
    return extension().linear(x2d, layout.values, layout.metadata, layout.scales, bias, m.n, m.k, layout.padded_k,
                              m.bits == 4, _ACT[activation])


def _cutlass(x2d: torch.Tensor, layout: CudaLayout, bias, activation: str) -> torch.Tensor:
    m = layout.meta
    return extension().cutlass_linear(x2d, layout.cutlass_values, layout.cutlass_metadata, layout.scales, bias,
                                      m.n, m.k, layout.padded_k, cutlass_arch(x2d.device), _ACT[activation])


def _int_mm(xq: torch.Tensor, layout: CudaLayout) -> torch.Tensor:
    if select_kernel(xq.shape[0], layout.meta.n, layout.cutlass_values is not None) == "cutlass":
        return _cutlass_int_mm(xq, layout)
    return _mma_sp_int_mm(xq, layout)


def _linear(x2d: torch.Tensor, layout: CudaLayout, bias, activation: str) -> torch.Tensor:
    if select_kernel(x2d.shape[0], layout.meta.n, layout.cutlass_values is not None) == "cutlass":
        return _cutlass(x2d, layout, bias, activation)
    return _mma_sp(x2d, layout, bias, activation)


def _linear_q(xq, x_scale, layout: CudaLayout, bias, activation: str, out_dtype: torch.dtype) -> torch.Tensor:
    # The binding has no GEMM-with-epilogue entry point for already-quantized activations (csrc takes
    # x and quantizes it itself), so under torch.compile the cuda backend runs its exact int32 GEMM and
    # the epilogue as torch ops (the reference's order). A binding entry point would save a launch.
    return _reference_epilogue(_int_mm(xq, layout), x_scale, layout.scales[: layout.meta.n], bias, activation,
                               out_dtype)


# ------------------------------------------------------------------ checked entry points
def _checked(run, x2d: torch.Tensor, weights, meta, bias, activation: str, *, cutlass: bool = False):
    """``run`` (one of the kernels above) on checked arguments: the layout rebuilt from ``weights``."""
    check_choice("activation", activation, ACTIVATIONS)
    layout = _layout(weights, meta)
    if cutlass:
        _require_cutlass(layout, x2d.device)
    return run(x2d.contiguous(), layout, None if bias is None else bias.contiguous(), activation)


def mma_sp_int_mm(xq: torch.Tensor, weights, meta) -> torch.Tensor:
    """int32 accumulators from the mma.sp kernel."""
    return _mma_sp_int_mm(xq, _layout(weights, meta))


def mma_sp_linear(x2d: torch.Tensor, weights, meta, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    """The op on the mma.sp kernel."""
    return _checked(_mma_sp, x2d, weights, meta, bias, activation)


def cutlass_int_mm(xq: torch.Tensor, weights, meta) -> torch.Tensor:
    """int32 accumulators from the CUTLASS kernel (RuntimeError naming the rule when it cannot run)."""
    layout = _layout(weights, meta)
    _require_cutlass(layout, xq.device)
    return _cutlass_int_mm(xq, layout)


def cutlass_linear(x2d: torch.Tensor, weights, meta, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    """The op on the CUTLASS kernel (RuntimeError naming the rule when it cannot run)."""
    return _checked(_cutlass, x2d, weights, meta, bias, activation, cutlass=True)


def int_mm(xq: torch.Tensor, weights, meta) -> torch.Tensor:
    return _int_mm(xq, _layout(weights, meta))


def linear(x2d: torch.Tensor, weights, meta, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    return _checked(_linear, x2d, weights, meta, bias, activation)


def linear_q(xq: torch.Tensor, x_scale: torch.Tensor, weights, meta, bias: torch.Tensor | None, activation: str,
             out_dtype: torch.dtype) -> torch.Tensor:
    check_choice("activation", activation, ACTIVATIONS)
    return _linear_q(xq, x_scale, _layout(weights, meta), bias, activation, out_dtype)


def _cutlass_unsupported(meta, device) -> str | None:
    if meta.n % CUTLASS_N_MULTIPLE:
        return f"the CUTLASS kernels need out_features to be a multiple of {CUTLASS_N_MULTIPLE}, got {meta.n}"
    return cutlass_unavailable_reason(torch.device(device))


# "cuda" is the backend's own choice (select_kernel); the pinned kernels are candidates for the
# measured dispatch. CUTLASS serves any M (its small-M speed is for nxm tune to measure).
VARIANTS = (Variant("cuda", _linear), Variant("cuda:cutlass", _cutlass, _cutlass_unsupported),
            Variant("cuda:mma_sp", _mma_sp))

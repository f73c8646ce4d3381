"""The Triton backend: the portable GPU path (and, through ``TRITON_INTERPRET=1``, a CPU test path).

Three kernels, each in its own module:

* :mod:`.quant` — per-token int8 activation quantization, bit-identical to
  :func:`nxm_kernels.quant.quantize_per_token`;
* :mod:`.gemm` — the sparse/dense int GEMM reading the canonical packed weight directly
  (int8 or int4 values, 2:4 metadata), int32 accumulation, fused epilogue;
* :mod:`.fused` — both in one launch for small M (quantization in the GEMM's prologue, split-K).

``linear`` runs the fused kernel where :func:`.fused.use_fused` says (M <= ``fused.FUSED_M_MAX``)
and the two launches (quantizer, then GEMM) above.

``prepare`` returns a :class:`TritonLayout`: the canonical tensors unchanged (made contiguous and
aligned): the kernel decodes the canonical layout in registers, so no reordering is needed.
``linear`` (eager) is one launch or two as above; ``linear_q`` is the GEMM alone on already-quantized
activations (``torch.compile``'s path).

Importing this module never fails for want of Triton or a GPU; :func:`unavailable_reason` says why
the backend cannot run instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..._checks import FLOAT_DTYPES, check_choice, check_rows, check_same_device
from ...format import PackedWeight
from .. import ACTIVATIONS, Variant
from ..layout import CanonicalLayout, WeightMeta

#: int8 ``tl.dot`` (mma.sync s8) needs Ampere or newer.
MIN_CAPABILITY = (8, 0)

try:
    import triton  # noqa: F401

    from . import fused, gemm, quant
    _IMPORT_ERROR: Exception | None = None
except Exception as exc:  # noqa: BLE001 - ImportError, or a broken triton install
    fused = gemm = quant = None
    _IMPORT_ERROR = exc


@dataclass(frozen=True, eq=False)
class TritonLayout(CanonicalLayout):
    """The canonical tensors, contiguous, ``values`` 16-byte aligned (the kernel reads values as 16-bit
    words and vectorises 16-byte loads, and reads metadata rows as contiguous runs)."""

    backend: ClassVar[str] = "triton"

    def _check(self) -> None:
        super()._check()
        for name in ("values", "metadata", "scales"):
            t = getattr(self, name)
            if t is not None and not t.is_contiguous():
                raise ValueError(f"{name} must be contiguous (use prepare())")
        if self.values.data_ptr() % 2:
            raise ValueError("values must start at an even byte address (prepare() copies it if not)")

    @classmethod
    def from_packed(cls, packed: PackedWeight) -> "TritonLayout":
        if not isinstance(packed, PackedWeight):
            raise TypeError(f"packed must be a PackedWeight, got {type(packed).__name__}")
        values = packed.values.contiguous()
        if values.data_ptr() % 16:
            # A fresh allocation is aligned (a view into, e.g., a loaded file buffer may not be).
            values = values.clone()
        metadata = None if packed.metadata is None else packed.metadata.contiguous()
        return cls(WeightMeta.of(packed), values, metadata, packed.scales.contiguous())


LAYOUT = TritonLayout


def unavailable_reason(device: torch.device) -> str | None:
    """``None`` when the Triton kernels can run on ``device``, else a sentence saying why not."""
    device = torch.device(device)
    if _IMPORT_ERROR is not None:
        return f"the triton package cannot be imported ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR})"
    interpreted = gemm.is_interpreted()
    if device.type == "cpu":
        if interpreted:
            return None
        return ("Triton kernels run on CUDA GPUs; on a CPU they run only through Triton's interpreter, "
                "which needs TRITON_INTERPRET=1 set before nxm_kernels' Triton backend is first imported")
    if device.type != "cuda":
        return f"Triton kernels run on CUDA devices (or on the CPU through the interpreter), got device {device}"
    if not torch.cuda.is_available():
        return "CUDA is not available to torch on this machine"
    if interpreted:
        return None  # the interpreter copies CUDA tensors to the host and back: slow, but correct
    index = device.index if device.index is not None else torch.cuda.current_device()
    cap = torch.cuda.get_device_capability(index)
    if cap < MIN_CAPABILITY:
        return (f"the int8 tensor-core tl.dot needs compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} "
                f"(Ampere or newer); {torch.cuda.get_device_name(index)} has {cap[0]}.{cap[1]}")
    return None


def _require_available(device: torch.device) -> None:
    why = unavailable_reason(device)
    if why is not None:
        raise RuntimeError(f"the triton backend cannot run on {device}: {why}")


def prepare(packed: PackedWeight) -> TritonLayout:
    """The canonical tensors, contiguous and 16-byte aligned: ``[values, metadata, scales]``
    (``[values, scales]`` if dense). No reordering: the kernel decodes the canonical layout."""
    return TritonLayout.from_packed(packed)


def _split_weights(weights, meta):
    """Check ``weights`` (a layout or its tensor list) against ``meta``: ``(values, metadata | None, scales)``."""
    layout = TritonLayout.from_tensors(weights, meta)
    return layout.values, layout.metadata, layout.scales


def quantize_per_token(x2d: torch.Tensor):
    """Per-token int8 codes and float32 scales of ``x2d[M, K]``, exactly as the reference computes them."""
    if isinstance(x2d, torch.Tensor):
        _require_available(x2d.device)
    return quant.quantize_per_token(x2d)


def _int_mm(xq: torch.Tensor, layout: TritonLayout) -> torch.Tensor:
    m = layout.meta
    return gemm.int_gemm(xq, layout.values, layout.metadata, n=m.n, k=m.k, bits=m.bits, sparse=m.sparse)


def _linear_q(xq, x_scale, layout: TritonLayout, bias, activation: str, out_dtype: torch.dtype) -> torch.Tensor:
    m = layout.meta
    return gemm.int_gemm(xq, layout.values, layout.metadata, n=m.n, k=m.k, bits=m.bits, sparse=m.sparse,
                         x_scale=x_scale, w_scale=layout.scales, bias=bias, gelu=activation == "gelu",
                         out_dtype=out_dtype)


def _two_launch(x2d: torch.Tensor, layout: TritonLayout, bias, activation: str) -> torch.Tensor:
    """Two launches: the per-token quantizer, then the GEMM with the fused epilogue."""
    xq, x_scale = quant.quantize_per_token(x2d)
    return _linear_q(xq, x_scale, layout, bias, activation, x2d.dtype)


def _fused(x2d: torch.Tensor, layout: TritonLayout, bias, activation: str) -> torch.Tensor:
    """One launch: quantization in the GEMM's prologue (:mod:`.fused`)."""
    m = layout.meta
    # The layout was checked when it was built and x by the caller: the unchecked launcher.
    return fused.launch(x2d, layout.values, layout.metadata, layout.scales, bias, n=m.n, k=m.k, bits=m.bits,
                        sparse=m.sparse, gelu=activation == "gelu")


def _linear(x2d: torch.Tensor, layout: TritonLayout, bias, activation: str) -> torch.Tensor:
    """The backend's own choice: one launch where :func:`.fused.use_fused` says (small M), else two."""
    if fused.use_fused(x2d.shape[0], layout.meta):
        return _fused(x2d, layout, bias, activation)
    return _two_launch(x2d, layout, bias, activation)


def _check_bias(bias, n: int):
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dtype not in FLOAT_DTYPES or tuple(bias.shape) != (n,):
            raise ValueError(f"bias must be a float16/bfloat16/float32 tensor of shape ({n},), got "
                             f"{getattr(bias, 'dtype', type(bias).__name__)} {tuple(getattr(bias, 'shape', ()))}")
        bias = bias.contiguous()
    return bias


def int_mm(xq: torch.Tensor, weights, meta) -> torch.Tensor:
    """Exact int32 ``xq[M, K] @ codes[N, K]^T`` computed by the Triton GEMM (no epilogue)."""
    check_rows("xq", xq, (torch.int8,), meta.k)
    layout = TritonLayout.from_tensors(weights, meta)
    check_same_device(xq=xq, values=layout.values, metadata=layout.metadata)
    _require_available(xq.device)
    return _int_mm(xq, layout)


def linear(x2d: torch.Tensor, weights, meta, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    """Quantize ``x2d`` per token, multiply by the packed weight, apply scales, bias and GELU; ``x2d``'s dtype."""
    check_rows("x2d", x2d, FLOAT_DTYPES, meta.k)
    check_choice("activation", activation, ACTIVATIONS)
    layout = TritonLayout.from_tensors(weights, meta)
    bias = _check_bias(bias, meta.n)
    check_same_device(x2d=x2d, values=layout.values, metadata=layout.metadata, scales=layout.scales, bias=bias)
    _require_available(x2d.device)
    if x2d.shape[0] == 0:
        return x2d.new_empty(0, meta.n)
    return _linear(x2d, layout, bias, activation)


def linear_q(xq: torch.Tensor, x_scale: torch.Tensor, weights, meta, bias: torch.Tensor | None, activation: str,
             out_dtype: torch.dtype) -> torch.Tensor:
    """The GEMM with the fused epilogue on ``xq``/``x_scale`` from :func:`nxm_kernels.quant.quantize_per_token`."""
    check_rows("xq", xq, (torch.int8,), meta.k)
    check_choice("activation", activation, ACTIVATIONS)
    if not isinstance(x_scale, torch.Tensor) or x_scale.dtype != torch.float32 or \
            tuple(x_scale.shape) != (xq.shape[0], 1):
        raise ValueError(f"x_scale must be float32 of shape ({xq.shape[0]}, 1), got "
                         f"{getattr(x_scale, 'dtype', type(x_scale).__name__)} {tuple(getattr(x_scale, 'shape', ()))}")
    layout = TritonLayout.from_tensors(weights, meta)
    bias = _check_bias(bias, meta.n)
    check_same_device(xq=xq, x_scale=x_scale, values=layout.values, bias=bias)
    _require_available(xq.device)
    if xq.shape[0] == 0:
        return xq.new_empty(0, meta.n, dtype=out_dtype)
    return _linear_q(xq, x_scale.contiguous(), layout, bias, activation, out_dtype)


# "triton" is the backend's own choice (fused for small M, two launches above); the two pinned
# variants let a measured table (``nxm tune``) or a caller force one path. The fused kernel serves
# M up to 256 (beyond that its amax prologue re-reads x too often to be a candidate).
VARIANTS = (Variant("triton", _linear), Variant("triton:fused", _fused, max_m=256),
            Variant("triton:2launch", _two_launch))

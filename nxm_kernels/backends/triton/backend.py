"""The Triton backend: the portable GPU path (and, through ``TRITON_INTERPRET=1``, a CPU test path).

Three kernels, each in its own module:

* :mod:`.quant` — per-token int8 activation quantization, bit-identical to
  :func:`nxm_kernels.quant.quantize_per_token`;
* :mod:`.gemm` — the sparse/dense int GEMM reading the canonical packed weight directly
  (int8 or int4 values, 2:4 metadata), int32 accumulation, fused epilogue;
* :mod:`.fused` — both in one launch for small M (quantization in the GEMM's prologue, split-K).

``linear`` runs the fused kernel where :func:`.fused.use_fused` says (M <= ``fused.FUSED_M_MAX``)
and the two launches (quantizer, then GEMM) above.

``prepare`` returns the canonical tensors unchanged (made contiguous): the kernel decodes the
canonical layout in registers, so no backend-specific layout is needed.

Importing this module never fails for want of Triton or a GPU; :func:`unavailable_reason` says why
the backend cannot run instead.
"""

from __future__ import annotations

import torch

from ..._checks import FLOAT_DTYPES, check_choice, check_same_device
from ...format import PackedWeight, packed_shapes, values_dtype
from .. import ACTIVATIONS

#: int8 ``tl.dot`` (mma.sync s8) needs Ampere or newer.
MIN_CAPABILITY = (8, 0)

try:
    import triton  # noqa: F401

    from . import fused, gemm, quant
    _IMPORT_ERROR: Exception | None = None
except Exception as exc:  # noqa: BLE001 - ImportError, or a broken triton install
    fused = gemm = quant = None
    _IMPORT_ERROR = exc

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


def prepare(packed: PackedWeight) -> list[torch.Tensor]:
    """The canonical tensors, contiguous and 16-byte aligned: ``[values, metadata, scales]``
    (``[values, scales]`` if dense). No reordering: the kernel decodes the canonical layout."""
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"packed must be a PackedWeight, got {type(packed).__name__}")
    values = packed.values.contiguous()
    if values.data_ptr() % 16:
        # The kernel reads values as 16-bit words and vectorises 16-byte loads: a fresh allocation is
        # aligned (a view into, e.g., a loaded file buffer may not be).
        values = values.clone()
    out = [values]
    if packed.sparse:
        out.append(packed.metadata.contiguous())
    out.append(packed.scales.contiguous())
    return out


def _split_weights(weights, meta):
    """Check ``prepare``'s list against ``meta`` and return ``(values, metadata | None, scales)``."""
    if not isinstance(weights, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in weights):
        raise TypeError("weights must be the list of tensors returned by prepare()")
    expected = 3 if meta.sparse else 2
    if len(weights) != expected:
        raise ValueError(f"weights must hold {expected} tensors for a {'2:4' if meta.sparse else 'dense'} "
                         f"weight (values{', metadata' if meta.sparse else ''}, scales), got {len(weights)}")
    values, scales = weights[0], weights[-1]
    metadata = weights[1] if meta.sparse else None
    shapes = packed_shapes(meta.n, meta.k, meta.bits, meta.sparse)
    want = shapes["values"]
    vdtype = values_dtype(meta.bits)
    if values.dtype != vdtype or tuple(values.shape) != want:
        raise ValueError(f"values must be {vdtype} {want} for n={meta.n}, k={meta.k}, bits={meta.bits}, "
                         f"sparse={meta.sparse}; got {values.dtype} {tuple(values.shape)}")
    if metadata is not None and (metadata.dtype != torch.uint8 or tuple(metadata.shape) != shapes["metadata"]):
        raise ValueError(f"metadata must be uint8 {shapes['metadata']}, got {metadata.dtype} {tuple(metadata.shape)}")
    if scales.dtype != torch.float32 or tuple(scales.shape) != shapes["scales"]:
        raise ValueError(f"scales must be float32 {shapes['scales']}, got {scales.dtype} {tuple(scales.shape)}")
    for name, t in (("values", values), ("metadata", metadata), ("scales", scales)):
        # The kernel reads values/metadata rows as contiguous runs and scales with unit stride.
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (use prepare())")
    return values, metadata, scales


def quantize_per_token(x2d: torch.Tensor):
    """Per-token int8 codes and float32 scales of ``x2d[M, K]``, exactly as the reference computes them."""
    if isinstance(x2d, torch.Tensor):
        _require_available(x2d.device)
    return quant.quantize_per_token(x2d)


def _check_x(name: str, x: torch.Tensor, dtypes, k: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {tuple(str(d) for d in dtypes)}, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"{name} must have shape [M, {k}] (K = the weight's in_features), got {tuple(x.shape)}")


def int_mm(xq: torch.Tensor, weights: list[torch.Tensor], meta) -> torch.Tensor:
    """Exact int32 ``xq[M, K] @ codes[N, K]^T`` computed by the Triton GEMM (no epilogue)."""
    _check_x("xq", xq, (torch.int8,), meta.k)
    values, metadata, _ = _split_weights(weights, meta)
    check_same_device(xq=xq, values=values, metadata=metadata)
    _require_available(xq.device)
    return gemm.int_gemm(xq, values, metadata, n=meta.n, k=meta.k, bits=meta.bits, sparse=meta.sparse)


def linear(x2d: torch.Tensor, weights: list[torch.Tensor], meta, bias: torch.Tensor | None,
           activation: str) -> torch.Tensor:
    """Quantize ``x2d`` per token, multiply by the packed weight, apply scales, bias and GELU; ``x2d``'s dtype."""
    _check_x("x2d", x2d, FLOAT_DTYPES, meta.k)
    check_choice("activation", activation, ACTIVATIONS)
    values, metadata, scales = _split_weights(weights, meta)
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dtype not in FLOAT_DTYPES or tuple(bias.shape) != (meta.n,):
            raise ValueError(f"bias must be a float16/bfloat16/float32 tensor of shape ({meta.n},), got "
                             f"{getattr(bias, 'dtype', type(bias).__name__)} {tuple(getattr(bias, 'shape', ()))}")
        bias = bias.contiguous()
    check_same_device(x2d=x2d, values=values, metadata=metadata, scales=scales, bias=bias)
    _require_available(x2d.device)
    if x2d.shape[0] == 0:
        return x2d.new_empty(0, meta.n)
    # --- one launch (quantize in the GEMM's prologue) for small M, two launches above ---
    if fused.use_fused(x2d.shape[0], meta):
        return fused.fused_linear(x2d, values, metadata, scales, bias, n=meta.n, k=meta.k, bits=meta.bits,
                                  sparse=meta.sparse, gelu=activation == "gelu")
    xq, x_scale = quant.quantize_per_token(x2d)
    return gemm.int_gemm(xq, values, metadata, n=meta.n, k=meta.k, bits=meta.bits, sparse=meta.sparse,
                                x_scale=x_scale, w_scale=scales, bias=bias, gelu=activation == "gelu",
                                out_dtype=x2d.dtype)

"""cuSPARSELt (through torch's ``torch._cslt_compress`` / ``torch._cslt_sparse_mm``) as a candidate kernel
for int8 2:4 weights (int4 weights as int8 codes), next to the cuda backend's own kernels.

Layout (:func:`prepare`, derived once from the canonical ``PackedWeight``): the dense int8 codes, padded
to ``[Np, KP]`` (multiples of 128: cuSPARSELt's int8 minimum is 32 rows x 64 columns), compressed by
``torch._cslt_compress`` on the GPU (cuSPARSELt's own opaque format), plus the per-channel scales
``[Np]`` float32. Padding rows and columns are zero.

The op (:func:`linear`): per-token quantization (the cuda extension's quantizer, else the reference),
then ``t = _cslt_sparse_mm(W, xq^T, alpha=w_scale, out_dtype, transpose_result=True)``, which is
``acc[m, n] * w_scale[n]`` rounded to ``out_dtype`` (fp16/bf16, or fp32 for fp32 inputs), then
``y = t * x_scale[m] + bias[n]`` and GELU as torch ops after it. Float order differs from the reference
(``((acc * x_scale) * w_scale) + bias``): ``acc * w_scale`` is rounded to the output dtype before the
per-token scale, one extra rounding of the output dtype (documented tolerance in the GPU tests).
:func:`int_mm` asks cuSPARSELt for int32 output (exact).

GPU-only: nothing here runs without CUDA and a torch built with cuSPARSELt.
"""

from __future__ import annotations

import torch

from ...format import PackedWeight
from ...quant import quantize_per_token as _reference_quantize
from .layout import prepared_dims

__all__ = ["unavailable_reason", "prepare", "int_mm", "linear"]

_M_MULTIPLE = 32   # cuSPARSELt's int8 dense operand: rows (tokens) padded to a multiple of 32


def unavailable_reason(device: torch.device) -> str | None:
    """``None`` when cuSPARSELt can run int8 2:4 on ``device``, else why not."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"cuSPARSELt needs a CUDA device, got {device}"
    if not hasattr(torch, "_cslt_sparse_mm"):
        return f"torch {torch.__version__} has no torch._cslt_sparse_mm"
    try:
        if not torch.backends.cusparselt.is_available():
            return "this torch was built without cuSPARSELt (torch.backends.cusparselt.is_available() is False)"
    except AttributeError:
        pass
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"cuSPARSELt 2:4 int8 needs sm_80 or newer, this GPU is sm_{major}x"
    return None


def prepare(packed: PackedWeight) -> list[torch.Tensor]:
    """``[compressed, scales float32 [Np]]`` for cuSPARSELt (module docstring)."""
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"packed must be a PackedWeight, got {type(packed).__name__}")
    if not packed.sparse:
        raise ValueError(f"cuSPARSELt runs 2:4 weights only, got pattern {packed.pattern!r}")
    why = unavailable_reason(packed.device)
    if why is not None:
        raise RuntimeError(why)
    n, k = packed.shape
    np_, kp = prepared_dims(n, k)
    dense = torch.zeros(np_, kp, dtype=torch.int8, device=packed.device)
    w = packed.int_weight()
    dense[:n, : w.shape[1]] = w
    scales = torch.ones(np_, dtype=torch.float32, device=packed.device)
    scales[:n] = packed.scales
    return [torch._cslt_compress(dense), scales]


def _quantize(x2d: torch.Tensor, kp: int):
    """int8 codes ``[Mp, KP]`` (tokens padded to a multiple of 32, zero rows/columns) and scales ``[M, 1]``."""
    m = x2d.shape[0]
    mp = -(-m // _M_MULTIPLE) * _M_MULTIPLE
    try:
        from .backend import extension

        xq, xs = extension().quantize_rows(x2d.contiguous(), kp)
        xs = xs.unsqueeze(-1)
    except RuntimeError:  # no extension: the reference quantizer (same codes, bit for bit)
        xq, xs = _reference_quantize(x2d)
        xq = torch.nn.functional.pad(xq, (0, kp - xq.shape[1]))
    return torch.nn.functional.pad(xq, (0, 0, 0, mp - m)).contiguous(), xs


def int_mm(xq: torch.Tensor, weights: list[torch.Tensor], meta) -> torch.Tensor:
    """Exact int32 ``xq @ codes^T`` ``[M, N]`` from cuSPARSELt."""
    compressed, _ = weights
    np_, kp = prepared_dims(meta.n, meta.k)
    m = xq.shape[0]
    mp = -(-m // _M_MULTIPLE) * _M_MULTIPLE
    xp = torch.nn.functional.pad(xq, (0, kp - xq.shape[1], 0, mp - m)).contiguous()
    out = torch._cslt_sparse_mm(compressed, xp.t(), out_dtype=torch.int32, transpose_result=True)
    return out[:m, : meta.n]


def linear(x2d: torch.Tensor, weights: list[torch.Tensor], meta, bias: torch.Tensor | None,
           activation: str) -> torch.Tensor:
    """The op with cuSPARSELt's GEMM (per-channel scale as ``alpha``), per-token scale, bias and GELU after."""
    compressed, scales = weights
    np_, kp = prepared_dims(meta.n, meta.k)
    m = x2d.shape[0]
    xq, xs = _quantize(x2d, kp)
    out_dtype = x2d.dtype if x2d.dtype in (torch.float16, torch.bfloat16) else torch.float32
    t = torch._cslt_sparse_mm(compressed, xq.t(), alpha=scales, out_dtype=out_dtype, transpose_result=True)
    y = t[:m, : meta.n].float() * xs
    if bias is not None:
        y = y + bias.float()
    if activation == "gelu":
        y = torch.nn.functional.gelu(y)  # exact erf form (approximate="none")
    return y.to(x2d.dtype)

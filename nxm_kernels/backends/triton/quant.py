"""Triton kernel: per-token (per-row) dynamic symmetric int8 quantization of activations.

It computes exactly what :func:`nxm_kernels.quant.quantize_per_token` computes, bit for bit, so the
int32 accumulators of every backend can be compared with ``torch.equal``:

* ``amax = max |x|`` over the row, in float32 (``|x|`` and ``max`` are exact in any float dtype, so
  converting to float32 first changes nothing);
* ``scale = amax / 127`` as an IEEE (round-to-nearest) float32 division; ``1.0`` where that is 0
  (an all-zero row, or one so tiny that the division underflows);
* ``code = clamp(round_half_even(x_fp32 / scale), -127, 127)``;
* a row holding NaN or Inf gets scale ``NaN`` and all-zero codes (its outputs are then NaN, as with
  ``nn.Linear``). NaN is turned into ``+inf`` before the max, because a hardware ``max`` returns
  the non-NaN operand and would hide it; a non-finite amax then marks the row.

Two details make it exact on a GPU, not just in the interpreter:

* Triton lowers ``a / b`` on float32 to an approximate division (``div.full.f32``, up to 2 ulp off);
  ``tl.math.div_rn`` is the correctly rounded one (``div.rn.f32``). A 1-ulp error in a quotient
  near ``k + 0.5`` would flip a code.
* Round-half-to-even is written with ``floor`` (exact) instead of a libdevice call, so the same
  code runs in the interpreter and on every GPU: ``f = floor(q)``, ``d = q - f`` (exact in binary
  floating point), round up when ``d > 0.5`` or when ``d == 0.5`` and ``f`` is odd.

One program handles one row; it reads the row twice (once for ``amax``, once for the codes), the
second time mostly from L2. The codes go to a contiguous int8 ``[M, K]`` buffer and the scale to a
float32 ``[M, 1]`` buffer; ``x`` may have any strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...quant import ACT_QMAX

__all__ = ["quantize_per_token", "quant_block_k"]

#: Widest row chunk one program loads at once (elements); longer rows loop.
MAX_BLOCK_K = 2048


@triton.jit
def round_half_even(q):
    """Round float32 ``q`` to the nearest integer, ties to even (what ``torch.round`` does)."""
    f = tl.floor(q)
    d = q - f  # exact: q and floor(q) share the exponent range, the difference is representable
    f_is_odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
    up = (d > 0.5) | ((d == 0.5) & f_is_odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def _quantize_per_token_kernel(
    x_ptr, q_ptr, s_ptr,            # x [M, K] (any strides), codes int8 [M, K] contiguous, scale fp32 [M]
    K, stride_xm, stride_xk,
    QMAX: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * K

    # Pass 1: the row's absolute maximum. Masked lanes read 0, which never raises a max of |x|.
    amax_vec = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs
        a = tl.abs(tl.load(x_row + k * stride_xk, mask=k < K, other=0.0).to(tl.float32))
        amax_vec = tl.maximum(amax_vec, tl.where(a == a, a, float("inf")))  # NaN -> +inf
    amax = tl.max(amax_vec, axis=0)
    finite = amax < float("inf")
    scale = tl.math.div_rn(amax, QMAX + 0.0)
    scale = tl.where(scale > 0.0, scale, 1.0)
    divisor = tl.where(finite, scale, 1.0)  # a NaN/Inf row quantizes zeros (below): codes 0, no NaN maths

    # Pass 2: the codes.
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs
        v = tl.load(x_row + k * stride_xk, mask=k < K, other=0.0).to(tl.float32)
        r = round_half_even(tl.math.div_rn(tl.where(finite, v, 0.0), divisor))
        r = tl.minimum(tl.maximum(r, -QMAX + 0.0), QMAX + 0.0)
        tl.store(q_row + k, r.to(tl.int8), mask=k < K)
    tl.store(s_ptr + row, tl.where(finite, scale, float("nan")))


def quant_block_k(k: int) -> int:
    """The row chunk the kernel uses for rows of ``k`` elements (a power of two, at least 16)."""
    return max(16, min(MAX_BLOCK_K, triton.next_power_of_2(k)))


def quantize_per_token(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x2d[M, K]`` (fp16/bf16/fp32, any strides) -> ``(codes int8 [M, K], scale float32 [M, 1])``."""
    if not isinstance(x2d, torch.Tensor):
        raise TypeError(f"x2d must be a torch.Tensor, got {type(x2d).__name__}")
    if x2d.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x2d must have dtype float16, bfloat16 or float32, got {x2d.dtype}")
    if x2d.dim() != 2:
        raise ValueError(f"x2d must be 2-D [M, K], got shape {tuple(x2d.shape)}")
    m, k = x2d.shape
    if k == 0:
        raise ValueError(f"x2d must have K >= 1 columns, got shape {tuple(x2d.shape)}")
    codes = torch.empty((m, k), dtype=torch.int8, device=x2d.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x2d.device)
    if m == 0:
        return codes, scale
    block_k = quant_block_k(k)
    _quantize_per_token_kernel[(m,)](
        x2d, codes, scale, k, x2d.stride(0), x2d.stride(1),
        QMAX=ACT_QMAX, BLOCK_K=block_k, num_warps=8 if block_k >= 2048 else 4,
        enable_fp_fusion=False,  # nothing to fuse here; set so Triton 3.9 does not warn about its default
    )
    return codes, scale

"""Triton kernel: int8 activations x packed int8/int4 (2:4-sparse or dense) weights -> int32 -> epilogue.

``y[m, n] = epilogue( sum_k xq[m, k] * W[n, k] )`` where ``W`` is read straight from the canonical
:class:`~nxm_kernels.format.PackedWeight` tensors (no backend-specific layout), expanded to a dense
int8 tile in registers, and multiplied with an int8 ``tl.dot`` that accumulates in int32 (exact).

Read top to bottom: the weight-tile decoder (the only place that knows the packed layout), the
kernel (tiling, main loop, fused epilogue), the autotune configs, the launcher.

Tiling
------
The output ``[M, N]`` is cut into ``BLOCK_M x BLOCK_N`` tiles, one program each, visited in
groups of ``GROUP_M`` tile-rows (the Triton matmul tutorial's L2-friendly order: programs running at
the same time share weight tiles). Each program walks K in steps of ``BLOCK_K`` *logical* columns:

* an activation tile ``xq[BLOCK_M, BLOCK_K]`` (int8, masked to zero past ``M`` and past the logical
  ``K``, so the weight's zero padding never meets garbage);
* the matching weight tile, which covers ``BLOCK_K`` logical columns but occupies far fewer bytes:

  ================  ======================================  ==========================
  spec              bytes loaded per row and K step         tensor(s)
  ================  ======================================  ==========================
  2:4, int8         ``BLOCK_K/2`` values + ``BLOCK_K/8``    ``values`` int8, ``metadata``
  2:4, int4         ``BLOCK_K/4`` values + ``BLOCK_K/8``    ``values`` uint8, ``metadata``
  dense, int8       ``BLOCK_K``                             ``values`` int8
  dense, int4       ``BLOCK_K/2``                           ``values`` uint8
  ================  ======================================  ==========================

  Every byte is loaded once, as one contiguous run per weight row (coalesced, vectorisable), and
  decoded in registers to the dense int8 tile ``[BLOCK_N, BLOCK_K]`` (see ``weight_tile``): one
  int32 per group of 4 logical columns, built with shifts and masks (SWAR), whose four bytes are the
  group's dense codes;
* ``acc += xq_tile @ W_tile^T`` with ``tl.dot`` on int8 operands into an int32 accumulator.

The loads of all three streams (x, values, metadata) are issued ``num_stages - 1`` steps ahead as
asynchronous copies by Triton's software pipeliner; the decode then runs on the landed tiles, and
the decoded tile goes through shared memory into the MMA (``mma.sync`` on sm_80-89 and for small
tiles, ``wgmma`` on sm_90 for BLOCK_M >= 64).

Because every weight byte is read exactly once per tile-row of the output, the bytes streamed from
memory are the packed bytes; for small M (memory-bound) that is what makes the packed format fast.
For large M the decode is integer ALU work per weight tile, amortised over ``BLOCK_M`` rows.

Epilogue (fused, float32, the reference's order): ``y = ((acc * x_scale[m]) * w_scale[n]) + bias[n]``,
then the exact erf GELU if asked, then a cast to the output dtype. With ``EPILOGUE=False`` the raw
int32 accumulator is stored instead (the ``int_mm`` entry point; tests compare it with ``torch.equal``).

K is padded to a multiple of 16 in the format (``K_PAD``); ``BLOCK_K`` is a power of two >= 32
(int8 ``tl.dot`` needs K >= 32 on NVIDIA GPUs). A K step that runs past ``K_PAD`` is masked; when
``K % BLOCK_K == 0`` (``EVEN_K``) the loop carries no K masks at all.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ...format import padded_k

__all__ = ["GemmConfig", "INTERPRETER_CONFIG", "SMALL_M_CONFIGS", "LARGE_M_CONFIGS", "SMALL_M_MAX",
           "int_gemm", "is_interpreted", "m_bucket"]


# ------------------------------------------------------------------------------------------------
# Weight-tile decoder: packed bytes -> dense int8 tile [BLOCK_N, BLOCK_K], all in registers.
# ------------------------------------------------------------------------------------------------
@triton.jit
def _sign_extend_nibble_lanes(t):
    """int32 whose four bytes each hold a 4-bit two's-complement code (0..15) -> the same codes
    sign-extended to int8 in place (SWAR: all four byte lanes at once).

    Per lane ``sx(n) = (n ^ 8) - 8``, computed as ``((n ^ 8) + 0x78) ^ 0x80`` so that no lane borrows
    from or carries into its neighbour (``(n ^ 8) + 0x78 <= 0x87``). A lane holding 0 stays 0.
    """
    # -2139062144 is 0x80808080 as an int32 (Triton constants must fit the operand type). The add may
    # carry into bit 31, which is just the top lane's sign bit here: int32 adds wrap.
    return ((t ^ 0x08080808) + 0x78787878) ^ -2139062144


@triton.jit
def _bytes_to_tile(word, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """int32 ``[BLOCK_N, BLOCK_K/4]`` words -> int8 ``[BLOCK_N, BLOCK_K]``, byte ``p`` of word ``g``
    at column ``4g + p`` (little-endian, i.e. the words' memory image).

    ``tl.join`` adds its new axis *last*: ``join(join(b0, b2), join(b1, b3))`` is
    ``[..., G, 2, 2]`` with ``[..., a, c] = b_{2a+c}``, so row-major flattening gives b0 b1 b2 b3.
    The four bytes of a word stay in one thread's registers; the compiler re-packs them with byte
    permutes, no memory traffic.
    """
    b0 = word.to(tl.int8)
    b1 = (word >> 8).to(tl.int8)
    b2 = (word >> 16).to(tl.int8)
    b3 = (word >> 24).to(tl.int8)
    return tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), (BLOCK_N, BLOCK_K))


@triton.jit
def weight_tile(w_ptr, meta_ptr, offs_n, kt, N, K_PAD, stride_wn, stride_mn,
                 BITS: tl.constexpr, SPARSE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 EVEN_K: tl.constexpr):
    """The dense int8 codes ``W[offs_n, kt*BLOCK_K : (kt+1)*BLOCK_K]`` (zero for rows >= N).

    2:4 layout (format.py): logical group ``g`` (columns ``4g..4g+3``) keeps two codes, slot 0 at
    offset ``i0`` and slot 1 at offset ``i1`` (``i0 < i1``); metadata byte ``b`` holds group ``2b`` in
    its low nibble and group ``2b+1`` in its high nibble, each nibble ``i0 | i1 << 2``.

    Expansion of one tile of ``G = BLOCK_K/4`` groups, one 32-bit word per group (SWAR: the four
    dense int8 codes of a group are the four bytes of one int32, so every step below is a couple of
    integer instructions per *group*, not per code):

    1. ``nib [BLOCK_N, G]``: load ``[BLOCK_N, G/2]`` metadata bytes, split each into its two
       nibbles and interleave them back into group order (``tl.join`` + reshape); the byte shifts
       ``8*i0`` and ``8*i1`` follow with a shift and a mask each;
    2. the group's two kept codes ``lo`` (slot 0) and ``hi`` (slot 1):
       int8: the two kept bytes of a group are adjacent, so load them as one little-endian uint16
       (``lo`` = its low byte; rows start at even byte offsets since ``K_PAD`` is a multiple of 16);
       int4: one byte per group, ``lo`` = its low nibble, ``hi`` = its high nibble;
    3. place them at their offsets: ``word = lo << 8*i0 | hi << 8*i1``; the other two bytes stay
       zero (the pruned positions). int4 places the raw nibbles and then sign-extends all four byte
       lanes at once (``_sign_extend_nibble_lanes``; zero lanes stay zero);
    4. ``_bytes_to_tile``: the words' bytes, in memory order, are the dense ``[BLOCK_N, BLOCK_K]`` tile.

    The compiler keeps each word in one register through to the shared-memory store that feeds the
    MMA (checked in the SASS: about ten integer instructions per group for 2:4 int8).

    Each packed byte is loaded once, as contiguous runs per weight row. With ``EVEN_K`` (no K step
    runs past the end) the loads are masked by row only, so the compiler can issue them as wide
    asynchronous copies (a K mask limits the provable contiguity to its own granularity).
    """
    n_ok = offs_n[:, None] < N
    k0 = kt * BLOCK_K
    if SPARSE:
        gcols = k0 // 4 + tl.arange(0, BLOCK_K // 4)      # group index = column of a 16-bit pair
        g_ok = n_ok if EVEN_K else n_ok & (gcols[None, :] < K_PAD // 4)
        mcols = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        m_ok = n_ok if EVEN_K else n_ok & (mcols[None, :] < K_PAD // 8)
        mb = tl.load(meta_ptr + offs_n[:, None] * stride_mn + mcols[None, :], mask=m_ok, other=0).to(tl.int32)
        nib = tl.reshape(tl.join(mb & 0xF, mb >> 4), (BLOCK_N, BLOCK_K // 4))
        shift0 = (nib & 3) << 3       # 8 * i0
        shift1 = (nib & 0xC) << 1     # 8 * i1
        if BITS == 8:
            pairs_ptr = w_ptr.to(tl.pointer_type(tl.uint16))
            pair = tl.load(pairs_ptr + offs_n[:, None] * (stride_wn // 2) + gcols[None, :],
                           mask=g_ok, other=0).to(tl.int32)       # zero-extended: bytes 2, 3 are 0
            word = ((pair & 0xFF) << shift0) | ((pair >> 8) << shift1)
        else:
            b = tl.load(w_ptr + offs_n[:, None] * stride_wn + gcols[None, :], mask=g_ok, other=0).to(tl.int32)
            # Place the raw nibbles first, then sign-extend all four lanes at once (empty lanes stay 0).
            word = _sign_extend_nibble_lanes(((b & 0xF) << shift0) | ((b >> 4) << shift1))
        w = _bytes_to_tile(word, BLOCK_N, BLOCK_K)
    else:
        if BITS == 8:
            cols = k0 + tl.arange(0, BLOCK_K)
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + cols[None, :],
                        mask=n_ok if EVEN_K else n_ok & (cols[None, :] < K_PAD), other=0)
        else:
            # Byte j holds codes 2j (low nibble) and 2j+1 (high nibble), so a little-endian uint16 holds
            # four consecutive codes, nibble p = code p: spread the nibbles to byte lanes, sign-extend.
            qcols = k0 // 4 + tl.arange(0, BLOCK_K // 4)
            quad_ptr = w_ptr.to(tl.pointer_type(tl.uint16))
            q = tl.load(quad_ptr + offs_n[:, None] * (stride_wn // 2) + qcols[None, :],
                        mask=n_ok if EVEN_K else n_ok & (qcols[None, :] < K_PAD // 4), other=0).to(tl.int32)
            t = (q & 0xF) | ((q & 0xF0) << 4) | ((q & 0xF00) << 8) | ((q & 0xF000) << 12)
            w = _bytes_to_tile(_sign_extend_nibble_lanes(t), BLOCK_N, BLOCK_K)
    return w


# ------------------------------------------------------------------------------------------------
# The epilogue (shared with the fused quantize+GEMM kernel in fused.py, so both round alike).
# ------------------------------------------------------------------------------------------------
@triton.jit
def store_output(acc, xs, offs_m, offs_n, M, N, ws_ptr, bias_ptr, y_ptr, stride_ym, stride_yn,
                  EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr):
    """Store the int32 tile ``acc[offs_m, offs_n]``: raw (``EPILOGUE=False``), or dequantized in the
    reference's float32 order ``((acc * xs[m]) * w_scale[n]) + bias[n]``, then the erf GELU, then a
    cast to ``y``'s dtype. ``xs`` is the tile's per-row activation scale (float32 ``[BLOCK_M]``)."""
    m_ok = offs_m < M
    n_ok = offs_n < N
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :] * stride_yn
    y_mask = m_ok[:, None] & n_ok[None, :]
    if EPILOGUE:
        ws = tl.load(ws_ptr + offs_n, mask=n_ok, other=0.0)
        y = acc.to(tl.float32) * xs[:, None]
        y = y * ws[None, :]
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if GELU:
            # Exact (erf) GELU, as BERT and the reference use: 0.5 * y * (1 + erf(y / sqrt(2))).
            y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        tl.store(y_ptrs, acc, mask=y_mask)


# ------------------------------------------------------------------------------------------------
# The kernel.
# ------------------------------------------------------------------------------------------------
@triton.jit
def _nxm_gemm_kernel(
    # pointers
    x_ptr, w_ptr, meta_ptr, xs_ptr, ws_ptr, bias_ptr, y_ptr,
    # sizes: M rows of x, N outputs, K logical inputs, K_PAD = K rounded up to 16 (the format's),
    # M_BUCKET only feeds the autotuner's key (tuning per bucket of M, not per M)
    M, N, K, K_PAD, M_BUCKET,
    # strides (in elements); x and y may be any 2-D strided views, weight rows are contiguous
    stride_xm, stride_xk, stride_wn, stride_mn, stride_ym, stride_yn,
    # what to compute
    BITS: tl.constexpr, SPARSE: tl.constexpr, EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr,
    GELU: tl.constexpr,
    # tiling (set by the autotuner)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    # K % BLOCK_K == 0 (set by a heuristic): no K masks in the main loop
    EVEN_K: tl.constexpr,
):
    # --- which output tile: grouped ordering (GROUP_M tile-rows share each weight tile in L2) ---
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :] * stride_xk

    # --- main loop over K: int8 x int8 -> int32, exact ---
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kt in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs, mask=m_ok[:, None], other=0)
        else:
            a = tl.load(x_ptrs, mask=m_ok[:, None] & ((kt * BLOCK_K + offs_k) < K)[None, :], other=0)
        w = weight_tile(w_ptr, meta_ptr, offs_n, kt, N, K_PAD, stride_wn, stride_mn,
                         BITS, SPARSE, BLOCK_N, BLOCK_K, EVEN_K)
        acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
        x_ptrs += BLOCK_K * stride_xk

    # --- epilogue, in the reference's order ---
    if EPILOGUE:
        xs = tl.load(xs_ptr + offs_m, mask=m_ok, other=0.0)
    else:
        xs = tl.zeros([BLOCK_M], dtype=tl.float32)  # unused: the raw accumulator is stored
    store_output(acc, xs, offs_m, offs_n, M, N, ws_ptr, bias_ptr, y_ptr, stride_ym, stride_yn,
                  EPILOGUE, HAS_BIAS, GELU)


# ------------------------------------------------------------------------------------------------
# Autotune configs.
# ------------------------------------------------------------------------------------------------
class GemmConfig(dict):
    """Tiling of one launch: ``BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages``."""

    KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_warps", "num_stages")

    def __init__(self, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M=8, num_warps=4, num_stages=3):
        super().__init__(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GROUP_M=GROUP_M,
                         num_warps=num_warps, num_stages=num_stages)
        for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
            v = self[name]
            if not isinstance(v, int) or v < 16 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {v!r}")
        if BLOCK_K < 32:
            raise ValueError(f"BLOCK_K must be >= 32 (int8 tl.dot needs K >= 32 on NVIDIA GPUs), got {BLOCK_K}")

    def triton(self) -> triton.Config:
        meta = {k: self[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
        return triton.Config(meta, num_warps=self["num_warps"], num_stages=self["num_stages"])


#: Largest M served by the small-M (memory-bound) configs.
SMALL_M_MAX = 64

# Small M (<= 64 tokens): memory-bound. The kernel streams the packed weight once; what limits it
# is how many bytes are in flight, about N * BLOCK_K * num_stages * (packed bytes per logical column),
# independent of BLOCK_N. So: BLOCK_M = the bucketed M (no wasted MMA rows), wide BLOCK_K and deep
# pipelines (stages sized so the x + weight tiles of all stages fit ~100 KB of shared memory, the
# sm_86/89 limit), narrow BLOCK_N for more programs on narrow layers (N=768 / 16 = 48 programs).
SMALL_M_CONFIGS = [
    GemmConfig(bm, bn, bk, GROUP_M=1, num_warps=4, num_stages=st)
    for bm in (16, 32, 64)
    for bn, bk, st in ((16, 256, 6 if bm <= 32 else 4), (32, 256, 5 if bm <= 32 else 3),
                       (16, 512, 4 if bm <= 32 else 2), (64, 128, 4), (64, 256, 3), (128, 128, 3))
]

# Large M: compute-bound. The 2:4 (and int4) decode is integer ALU work per weight tile, amortised
# over BLOCK_M rows, so tall tiles help (256x64 decodes half the bytes of 128x128 per MMA). Tiles are
# sized to avoid register spills with the fused epilogue (checked by compiling for sm_80 and sm_90a:
# 128x256 and 256x128 spill at 8 warps). GROUP_M=8 for L2 reuse of weight tiles.
LARGE_M_CONFIGS = [
    GemmConfig(128, 128, 64, num_warps=8, num_stages=4),
    GemmConfig(128, 128, 128, num_warps=8, num_stages=3),
    GemmConfig(256, 64, 64, num_warps=8, num_stages=4),
    GemmConfig(256, 64, 128, num_warps=8, num_stages=3),
    GemmConfig(64, 128, 128, num_warps=4, num_stages=4),
    GemmConfig(128, 64, 128, num_warps=4, num_stages=4),
]

#: The one config used under TRITON_INTERPRET=1 (no autotuning there: every config would run).
#: Small, so tests exercise several K steps and the masks on tiny shapes.
INTERPRETER_CONFIG = GemmConfig(32, 32, 32, GROUP_M=2, num_warps=4, num_stages=1)


def m_bucket(m: int) -> int:
    """Autotuning bucket of M: 16, 32, 64 for small M; then powers of two up to 8192."""
    return min(8192, max(16, triton.next_power_of_2(m)))


def small_m_block_m(bucket: int) -> int:
    """The one BLOCK_M the small-M configs use for an M bucket: the smallest that covers M
    (16 for M <= 16, 32 for <= 32, 64 for <= 64)."""
    return min(bucket, SMALL_M_MAX)


def _prune_small(configs, named_args, **kwargs):
    block_m = small_m_block_m(named_args["M_BUCKET"])
    return [c for c in configs if c.kwargs["BLOCK_M"] == block_m]


def _prune_large(configs, named_args, **kwargs):
    # A 256-row tile for fewer than 256 rows would compute mostly padding.
    bucket = named_args["M_BUCKET"]
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= bucket]
    return kept or configs[:1]


# EVEN_K follows from K and the chosen BLOCK_K, so it is derived after the config is picked.
_gemm = triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})(_nxm_gemm_kernel)
_KEY = ["M_BUCKET", "N", "K", "BITS", "SPARSE", "EPILOGUE", "HAS_BIAS", "GELU"]
_small_m_kernel = triton.autotune([c.triton() for c in SMALL_M_CONFIGS], key=_KEY,
                                  prune_configs_by={"early_config_prune": _prune_small})(_gemm)
_large_m_kernel = triton.autotune([c.triton() for c in LARGE_M_CONFIGS], key=_KEY,
                                  prune_configs_by={"early_config_prune": _prune_large})(_gemm)


def is_interpreted() -> bool:
    """True when the kernels were created under ``TRITON_INTERPRET=1`` (they then run on the CPU)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - every triton 3.x has it
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return isinstance(_nxm_gemm_kernel, InterpretedFunction)


# ------------------------------------------------------------------------------------------------
# Launcher.
# ------------------------------------------------------------------------------------------------
def int_gemm(xq: torch.Tensor, values: torch.Tensor, metadata: torch.Tensor | None, *, n: int, k: int,
             bits: int, sparse: bool, x_scale: torch.Tensor | None = None, w_scale: torch.Tensor | None = None,
             bias: torch.Tensor | None = None, gelu: bool = False, out_dtype: torch.dtype | None = None,
             config: GemmConfig | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``xq[M, k] (int8) @ W[n, k]^T`` from the canonical packed tensors.

    Without ``x_scale``/``w_scale`` the raw int32 ``[M, n]`` accumulator is returned. With them
    (float32 ``[M, 1]`` / ``[n]``) the fused epilogue runs and the result has ``out_dtype``.
    ``config`` fixes the tiling (tests; benchmarks); by default the autotuner picks it on a GPU and
    :data:`INTERPRETER_CONFIG` is used under the interpreter. ``out`` (``[M, n]``, any strides, the
    result's dtype) receives the result instead of a fresh tensor. Inputs are assumed validated by the
    backend module (shapes, dtypes, devices); this checks only what would crash the kernel.
    """
    m = xq.shape[0]
    epilogue = x_scale is not None
    if epilogue != (w_scale is not None):
        raise ValueError("x_scale and w_scale must be given together (or neither, for the raw accumulator)")
    if epilogue and out_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"out_dtype must be float16, bfloat16 or float32 with an epilogue, got {out_dtype}")
    if sparse and metadata is None:
        raise ValueError("metadata is required for 2:4 weights")
    if not values.is_contiguous() or (metadata is not None and not metadata.is_contiguous()):
        raise ValueError("values and metadata must be contiguous (the canonical layout; see prepare())")
    if values.data_ptr() % 2:
        # int8 2:4 and dense int4 values are read as 16-bit words.
        raise ValueError("values must start at an even byte address (prepare() copies it if not)")
    kp = padded_k(k)
    y_dtype = out_dtype if epilogue else torch.int32
    if out is None:
        y = torch.empty((m, n), dtype=y_dtype, device=xq.device)
    else:
        if out.dtype != y_dtype or tuple(out.shape) != (m, n) or out.device != xq.device:
            raise ValueError(f"out must be {y_dtype} of shape {(m, n)} on {xq.device}, "
                             f"got {out.dtype} {tuple(out.shape)} on {out.device}")
        y = out
    if m == 0:
        return y
    meta_t = metadata if sparse else values  # a dummy pointer when dense (never read)
    dummy = y
    args = (xq, values, meta_t,
            x_scale if epilogue else dummy, w_scale if epilogue else dummy,
            bias if bias is not None else dummy, y,
            m, n, k, kp, m_bucket(m),
            xq.stride(0), xq.stride(1), values.stride(0), meta_t.stride(0), y.stride(0), y.stride(1))
    flags = dict(BITS=bits, SPARSE=bool(sparse), EPILOGUE=epilogue, HAS_BIAS=bias is not None, GELU=bool(gelu))

    # No FMA contraction: the epilogue then rounds after every multiply and add, exactly as the
    # float32 reference does (only erf's implementation differs).
    flags["enable_fp_fusion"] = False
    if config is None and is_interpreted():
        config = INTERPRETER_CONFIG
    if config is not None:
        grid = (triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"]),)
        _gemm[grid](*args, **flags, **config)
    else:
        kernel = _small_m_kernel if m <= SMALL_M_MAX else _large_m_kernel

        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

        kernel[grid](*args, **flags)
    return y

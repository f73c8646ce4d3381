"""Triton kernel: one launch per linear for small M — per-token quantization fused into the GEMM.

``y = epilogue( quant(x) @ W^T )`` straight from float16/bfloat16/float32 ``x``: no int8 copy of
``x`` ever reaches memory and there is no second launch. At small M (a few to a few dozen tokens) a
linear is bound by launch latency (~2.6 us a launch on an H100) and by streaming the packed weight
once; the two-launch path (:mod:`.quant`, then :mod:`.gemm`) pays the latency twice. Above
:data:`FUSED_M_MAX` the two-launch path runs instead (see "Cost of the prologue" below).

Read top to bottom: the kernel (tiling, amax prologue, on-the-fly quantization, main loop, split-K
completion), the configs and the split-K rule, the counters, the launcher. The weight-tile decoder
(``gemm.weight_tile``, the only code that knows the packed layout), the rounding helper
(``quant.round_half_even``) and the epilogue (``gemm.store_output``) are shared with the
two-launch kernels, so all paths decode, round and dequantize identically.

Tiling
------
The output ``[M, N]`` is cut into ``BLOCK_M x BLOCK_N`` tiles; program ``(t, s)`` computes tile
``t`` over the ``s``-th slice of K (``SPLIT_K`` slices; 1 when the tiles alone fill the GPU). Tile
rows vary fastest (``pid_m = t % num_pid_m``), so the programs that share a weight tile run side by
side and the packed weight — the big stream at small M — is fetched from memory once.

Amax prologue
-------------
The int8 codes of a row depend on the row's scale, i.e. on ``max |x|`` over the *whole* row, so each
program first reads its ``BLOCK_M`` rows over all of K (``BLOCK_K`` columns at a time; rows past M
are masked and cost nothing) and reduces ``|x|`` in float32 (``|x|`` and ``max`` are exact in every
input dtype). Then, exactly as :func:`nxm_kernels.quant.quantize_per_token`:

* ``scale = amax / 127`` with the IEEE division ``tl.math.div_rn`` (``div.rn.f32``; Triton's ``/``
  is the approximate ``div.full.f32``); ``1.0`` where that is 0 (all-zero or subnormal rows);
* a row holding NaN or Inf gets ``scale = NaN`` and all-zero codes, so every output of that row is
  ``0 * NaN = NaN`` (what ``nn.Linear`` gives). NaN is detected explicitly (``|x| != |x|`` becomes
  ``+inf`` before the max), because a hardware ``max`` drops NaN operands.

Different programs reading the same rows compute the same scale bit for bit (same operations on the
same values), so every tile of a row uses one scale.

On-the-fly quantization
-----------------------
In the main loop each activation tile ``x[BLOCK_M, BLOCK_K]`` is loaded in its float dtype, divided
by its row's scale (``div_rn`` again), rounded half to even (``floor``-based, exact) and clamped to
``[-127, 127]``: the int8 tile that meets the weight tile in ``tl.dot`` (int32 accumulation,
exact). Codes past the logical K are 0 (masked loads), so the weight's zero padding never matters.
Like the GEMM, the x and weight loads are issued ahead by Triton's software pipeliner.

Split-K
-------
With small M there are only ``cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N)`` tiles (24 for N = 768 and
``BLOCK_N`` = 32): far fewer programs than an H100 has SMs (132), and each streams a long strip of
weight. So K is cut into ``SPLIT_K`` slices (rule: :func:`fused_split_k`) and:

1. every program stores its int32 partial tile, contiguous, in a workspace
   ``[SPLIT_K, tiles, BLOCK_M * BLOCK_N]`` (no masks: a partial is a whole tile);
2. a CTA barrier orders all its threads' stores before one ``atomic_add`` (acq_rel, GPU scope) on
   the tile's counter; the add returns how many slices had arrived before;
3. the last program to arrive (``SPLIT_K - 1`` before it) adds the other slices' partials (loaded
   ``.cg``: from L2, past the non-coherent L1) to its own accumulator — exact, since integer
   addition is associative — runs the epilogue, and stores 0 to the counter.

The counters are thus zero again when the kernel ends: a launch needs no memset and no host sync.
They live in a small buffer made once per (device, stream) and kept (:func:`_counters`), so an
eager call allocates nothing persistent and replays of a CUDA graph reuse the captured buffer
safely. During graph capture on a stream that has no buffer yet, a zeroed buffer is allocated for
that call (its memset becomes a node of the graph, run on every replay) rather than cached,
because memory allocated during capture holds no zeros until the graph first runs. The partials
workspace is an ordinary ``torch.empty`` per call (the caching allocator: graph-safe, no memset).
Two launches that share a counter buffer must not run concurrently: calls on one stream are
ordered, and different streams get different buffers.

Cost of the prologue
--------------------
Each program re-reads its rows of ``x`` over the whole K for the amax (from L2 after the first): about
``programs * min(M, BLOCK_M) * K * 2`` bytes of L2 traffic for fp16 ``x``. At M <= 16 that is small
next to the packed weight; at M = 64 with many split-K programs it is several times the weight's
bytes, which is why the fused range ends at :data:`FUSED_M_MAX` and why the split count is capped.
The division ``div_rn`` per element is integer/float ALU work (a dozen instructions) that overlaps
the weight stream at small M.

Epilogue: the GEMM's (``gemm.store_output``): ``((acc * x_scale[m]) * w_scale[n]) + bias[n]``,
then erf-GELU, in float32 without FMA contraction, cast to ``x``'s dtype; or, with ``EPILOGUE=False``
(:func:`fused_linear` with ``int32=True``), the raw int32 accumulator, for the exactness tests.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..._checks import FLOAT_DTYPES, check_rows
from ...format import packed_shapes, padded_k, values_dtype
from ...quant import ACT_QMAX
from .gemm import GemmConfig, store_output, weight_tile, is_interpreted, m_bucket
from .quant import round_half_even

__all__ = ["FusedConfig", "FUSED_M_MAX", "FUSED_CONFIGS", "FUSED_INTERPRETER_CONFIG", "MAX_SPLIT_K",
           "MIN_K_TILES_PER_SPLIT", "COUNTER_CAPACITY", "fused_config", "fused_split_k", "fused_linear", "launch", "use_fused"]


# ------------------------------------------------------------------------------------------------
# The kernel.
# ------------------------------------------------------------------------------------------------
@triton.jit
def _nxm_fused_kernel(
    # pointers: x [M, K] float (any strides); packed weight (values, metadata, w_scale [N]); bias [N];
    # y [M, N] (any strides); xs_out [M] (the activation scales, written if WRITE_SCALE);
    # part: int32 split-K partial tiles; cnt: int32 per-tile arrival counters (zero between launches)
    x_ptr, w_ptr, meta_ptr, ws_ptr, bias_ptr, y_ptr, xs_out_ptr, part_ptr, cnt_ptr,
    # sizes: M rows, N outputs, K logical inputs, K_PAD = K rounded up to 16 (the format's);
    # SPLIT_K slices of K_TILES_PER_SPLIT steps of BLOCK_K each (the last slice may be shorter)
    M, N, K, K_PAD, SPLIT_K, K_TILES_PER_SPLIT,
    # strides (in elements)
    stride_xm, stride_xk, stride_wn, stride_mn, stride_ym, stride_yn,
    # what to compute
    QMAX: tl.constexpr, BITS: tl.constexpr, SPARSE: tl.constexpr, EPILOGUE: tl.constexpr,
    HAS_BIAS: tl.constexpr, GELU: tl.constexpr, WRITE_SCALE: tl.constexpr, SPLIT: tl.constexpr,
    # tiling
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    # K % BLOCK_K == 0: no K masks anywhere
    EVEN_K: tl.constexpr,
):
    # --- which tile and which K slice: tile rows fastest (programs sharing a weight tile run together)
    tile = tl.program_id(0)
    split = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    pid_m = tile % num_pid_m
    pid_n = tile // num_pid_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    k_tiles = tl.cdiv(K, BLOCK_K)

    # --- amax prologue: max |x| of each row over the whole K, in float32 ---
    # Kept 2-D and reduced once after the loop (one max per element in the loop, no shuffles).
    amax_tile = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for kt in range(0, k_tiles):
        k = kt * BLOCK_K + offs_k
        if EVEN_K:
            v = tl.load(x_rows + k[None, :] * stride_xk, mask=m_ok[:, None], other=0.0)
        else:
            v = tl.load(x_rows + k[None, :] * stride_xk, mask=m_ok[:, None] & (k < K)[None, :], other=0.0)
        a = tl.abs(v.to(tl.float32))
        # NaN -> +inf: a hardware max returns the non-NaN operand, which would hide a NaN row.
        amax_tile = tl.maximum(amax_tile, tl.where(a == a, a, float("inf")))
    amax = tl.max(amax_tile, axis=1)
    # The reference's rule (quant.quantize_per_token): IEEE quotient; 1.0 where it is 0; NaN when
    # the row holds NaN/Inf (its codes are then 0, so its outputs are 0 * NaN = NaN).
    finite = amax < float("inf")
    scale = tl.math.div_rn(amax, QMAX + 0.0)
    scale = tl.where(scale > 0.0, scale, 1.0)
    # Only `divisor` and `finite` stay live through the main loop; the epilogue's scale is rebuilt
    # from them afterwards (carrying a third per-row value made ptxas spill a register).
    divisor = tl.where(finite, scale, 1.0)   # a NaN/Inf row quantizes zeros instead: codes 0, no NaN maths
    if WRITE_SCALE:
        # One program per tile row writes the scales (any would write the same bits).
        if (pid_n == 0) & (split == 0):
            tl.store(xs_out_ptr + offs_m, tl.where(finite, divisor, float("nan")), mask=m_ok)

    # --- main loop over this program's K slice: quantize x on the fly, int8 x int8 -> int32 ---
    if SPLIT:
        kt_begin = split * K_TILES_PER_SPLIT
        kt_end = tl.minimum(kt_begin + K_TILES_PER_SPLIT, k_tiles)
    else:
        kt_begin = 0
        kt_end = k_tiles
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kt in range(kt_begin, kt_end):
        k = kt * BLOCK_K + offs_k
        if EVEN_K:
            v = tl.load(x_rows + k[None, :] * stride_xk, mask=m_ok[:, None], other=0.0)
        else:
            v = tl.load(x_rows + k[None, :] * stride_xk, mask=m_ok[:, None] & (k < K)[None, :], other=0.0)
        v = tl.where(finite[:, None], v.to(tl.float32), 0.0)
        r = round_half_even(tl.math.div_rn(v, divisor[:, None]))
        a = tl.minimum(tl.maximum(r, -QMAX + 0.0), QMAX + 0.0).to(tl.int8)  # integral, in [-127, 127]: exact
        w = weight_tile(w_ptr, meta_ptr, offs_n, kt, N, K_PAD, stride_wn, stride_mn,
                         BITS, SPARSE, BLOCK_N, BLOCK_K, EVEN_K)
        acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)

    # --- split-K completion: the last program to arrive for this tile adds the partials ---
    scale = tl.where(finite, divisor, float("nan"))
    if SPLIT:
        num_tiles = num_pid_m * tl.cdiv(N, BLOCK_N)
        offs_t = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tile_elems = BLOCK_M * BLOCK_N
        tl.store(part_ptr + (split * num_tiles + tile).to(tl.int64) * tile_elems + offs_t, acc)
        # All threads' partial stores happen before the (single-thread) release of the counter.
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            for s in range(0, SPLIT_K):
                if s != split:
                    acc += tl.load(part_ptr + (s * num_tiles + tile).to(tl.int64) * tile_elems + offs_t,
                                   cache_modifier=".cg")
            # Every slice of this tile has arrived: nobody else touches the counter in this launch,
            # and the next launch (stream-ordered) finds it at zero.
            tl.store(cnt_ptr + tile, 0)
            store_output(acc, scale, offs_m, offs_n, M, N, ws_ptr, bias_ptr, y_ptr, stride_ym, stride_yn,
                          EPILOGUE, HAS_BIAS, GELU)
    else:
        store_output(acc, scale, offs_m, offs_n, M, N, ws_ptr, bias_ptr, y_ptr, stride_ym, stride_yn,
                      EPILOGUE, HAS_BIAS, GELU)


# ------------------------------------------------------------------------------------------------
# Configs, the fused range and the split-K rule.
# ------------------------------------------------------------------------------------------------
#: Largest M the fused kernel serves in :func:`use_fused`; above it the backend runs the quantizer
#: and the GEMM (two launches). The amax prologue's L2 traffic grows with M times the number of
#: programs (module docstring), the launch it saves is fixed: 64 is the design's "small M" and the
#: top of the small-M GEMM configs. Measured dispatch may override :func:`use_fused`.
FUSED_M_MAX = 64

class FusedConfig(GemmConfig):
    """A :class:`~.gemm.GemmConfig` (``GROUP_M`` unused) plus ``maxnreg``, the register budget
    given to ptxas (``None``: its own choice).

    Why a budget: Triton 3.9 runs ptxas with ``--regAllocOptLevel=2``, which for some 32-row
    variants of this kernel settled on 64-80 registers and spilled one (the row scale kept for the
    epilogue, stored before the main loop and reloaded after it). Given a budget of 128 it
    allocates 90-128 registers and spills nothing."""

    def __init__(self, BLOCK_M, BLOCK_N, BLOCK_K, num_warps=4, num_stages=4, maxnreg=None):
        super().__init__(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M=1, num_warps=num_warps, num_stages=num_stages)
        if maxnreg is not None and (not isinstance(maxnreg, int) or not 16 <= maxnreg <= 255):
            raise ValueError(f"maxnreg must be None or an int in [16, 255], got {maxnreg!r}")
        self["maxnreg"] = maxnreg


#: One config per M bucket (the ``BLOCK_M`` that covers M, as the small-M GEMM configs pick it).
#: ``BLOCK_K`` shrinks as ``BLOCK_M`` grows: the float32 x tile and the division's temporaries live
#: in registers (``BLOCK_M * BLOCK_K / (32 * num_warps)`` floats a thread each). Every one compiles
#: with 0 spills on sm_80 and sm_90 for each weight kind, x dtype, split-K on and off, float and
#: int32 output (checked with tests/triton_aot.py; CI compiles one per architecture).
FUSED_CONFIGS = {
    16: FusedConfig(16, 32, 256, num_warps=4, num_stages=4),
    32: FusedConfig(32, 32, 128, num_warps=4, num_stages=4, maxnreg=128),
    64: FusedConfig(64, 64, 64, num_warps=4, num_stages=4),
}

#: Under TRITON_INTERPRET=1: small tiles, so tests cover several tile rows, K steps and K slices.
FUSED_INTERPRETER_CONFIG = FusedConfig(16, 32, 32, num_warps=4, num_stages=1)

#: Split-K bounds: at most this many K slices ...
MAX_SPLIT_K = 16
#: ... and at least this many ``BLOCK_K`` steps in each (a slice of one step cannot overlap its loads).
MIN_K_TILES_PER_SPLIT = 2
#: Counters per (device, stream) buffer: split-K runs only while tiles < SMs, far below this.
COUNTER_CAPACITY = 4096
#: The "SM count" used under the interpreter, small so the default path splits K on tiny shapes too.
INTERPRETER_SM_COUNT = 4


def use_fused(m: int, meta=None) -> bool:
    """Whether the triton backend's ``linear`` runs the fused kernel for ``m`` rows (else two launches).

    The one place the choice is made (``meta``, the weight's :class:`~nxm_kernels.backends.WeightMeta`,
    is there for a measured per-shape table to use later)."""
    return m <= FUSED_M_MAX


def fused_config(m: int) -> FusedConfig:
    """The tiling for ``m`` rows: :data:`FUSED_INTERPRETER_CONFIG` under the interpreter, else the
    :data:`FUSED_CONFIGS` entry of M's bucket (the largest one beyond ``FUSED_M_MAX``)."""
    if is_interpreted():
        return FUSED_INTERPRETER_CONFIG
    return FUSED_CONFIGS[min(m_bucket(m), max(FUSED_CONFIGS))]


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda" or is_interpreted():
        return INTERPRETER_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def fused_split_k(m: int, n: int, k: int, config: GemmConfig, sm_count: int) -> int:
    """How many K slices: enough for ``tiles * split >= sm_count`` (one program per SM at least),
    capped by :data:`MAX_SPLIT_K` and by :data:`MIN_K_TILES_PER_SPLIT` steps per slice, then
    rebalanced so that no slice is empty. 1 when the tiles alone fill the GPU."""
    tiles = triton.cdiv(m, config["BLOCK_M"]) * triton.cdiv(n, config["BLOCK_N"])
    k_tiles = triton.cdiv(k, config["BLOCK_K"])
    if tiles >= sm_count or tiles > COUNTER_CAPACITY:
        return 1
    split = min(triton.cdiv(sm_count, tiles), MAX_SPLIT_K, k_tiles // MIN_K_TILES_PER_SPLIT)
    if split <= 1:
        return 1
    return triton.cdiv(k_tiles, triton.cdiv(k_tiles, split))


# ------------------------------------------------------------------------------------------------
# Split-K counters.
# ------------------------------------------------------------------------------------------------
_COUNTERS: dict[tuple, torch.Tensor] = {}
_DUMMIES: dict[torch.device, torch.Tensor] = {}


def _dummy_i32(device: torch.device) -> torch.Tensor:
    """An int32 pointer for the split-K arguments of a launch without split-K (never read), so both
    kinds of launch specialise those arguments alike."""
    buf = _DUMMIES.get(device)
    if buf is None:
        buf = _DUMMIES[device] = torch.empty(1, dtype=torch.int32, device=device)
    return buf


def _counters(device: torch.device) -> torch.Tensor:
    """The zeroed int32 counter buffer of the current stream on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device)
        key = (device.type, stream.device_index, stream.cuda_stream)
        buf = _COUNTERS.get(key)
        if buf is None:
            buf = torch.zeros(COUNTER_CAPACITY, dtype=torch.int32, device=device)
            if torch.cuda.is_current_stream_capturing():
                return buf  # zeroed by a memset node of the graph; not kept (see the module docstring)
            _COUNTERS[key] = buf
        return buf
    key = (device.type, device.index, 0)
    if key not in _COUNTERS:
        _COUNTERS[key] = torch.zeros(COUNTER_CAPACITY, dtype=torch.int32, device=device)
    return _COUNTERS[key]


# ------------------------------------------------------------------------------------------------
# Launcher.
# ------------------------------------------------------------------------------------------------
def _check(x, values, metadata, w_scale, bias, n, k, bits, sparse, out, x_scale_out, int32):
    check_rows("x", x, FLOAT_DTYPES, k)
    if bits not in (4, 8) or isinstance(bits, bool):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    shapes = packed_shapes(n, k, bits, sparse)
    for name, t, dtype, shape in (("values", values, values_dtype(bits), shapes["values"]),
                                  ("metadata", metadata, torch.uint8, shapes["metadata"]),
                                  ("w_scale", w_scale, torch.float32, shapes["scales"])):
        if shape is None:
            if t is not None:
                raise ValueError("metadata must be None for a dense weight")
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor ({dtype} {shape}), got {type(t).__name__}")
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {dtype} {shape} for n={n}, k={k}, bits={bits}, sparse={sparse}; "
                             f"got {t.dtype} {tuple(t.shape)}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (the canonical layout; see prepare())")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if values.data_ptr() % 2:
        raise ValueError("values must start at an even byte address (prepare() copies it if not)")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.dtype not in FLOAT_DTYPES or tuple(bias.shape) != (n,):
            raise ValueError(f"bias must be a float16/bfloat16/float32 tensor of shape ({n},), got "
                             f"{getattr(bias, 'dtype', type(bias).__name__)} {tuple(getattr(bias, 'shape', ()))}")
        if bias.device != x.device or bias.stride(0) != 1:
            raise ValueError(f"bias must be on x's device ({x.device}) with unit stride")
    m = x.shape[0]
    y_dtype = torch.int32 if int32 else x.dtype
    if out is not None and (not isinstance(out, torch.Tensor) or out.dtype != y_dtype
                            or tuple(out.shape) != (m, n) or out.device != x.device):
        raise ValueError(f"out must be a {y_dtype} tensor of shape {(m, n)} on {x.device}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} {tuple(getattr(out, 'shape', ()))}")
    if x_scale_out is not None and (not isinstance(x_scale_out, torch.Tensor) or x_scale_out.dtype != torch.float32
                                    or x_scale_out.numel() != m or x_scale_out.device != x.device
                                    or (m > 0 and x_scale_out.stride(0) != 1)):
        raise ValueError(f"x_scale_out must be a float32 tensor of {m} elements (e.g. [M, 1]) with unit stride "
                         f"on {x.device}")


def fused_linear(x: torch.Tensor, values: torch.Tensor, metadata: torch.Tensor | None, w_scale: torch.Tensor,
                 bias: torch.Tensor | None = None, *, n: int, k: int, bits: int, sparse: bool, gelu: bool = False,
                 int32: bool = False, out: torch.Tensor | None = None, x_scale_out: torch.Tensor | None = None,
                 config: GemmConfig | None = None, split_k: int | None = None) -> torch.Tensor:
    """``epilogue(quantize_per_token(x) @ W^T)`` in one launch, from the canonical packed tensors.

    ``x``: float16/bfloat16/float32 ``[M, k]``, any strides. ``values``/``metadata``/``w_scale``: the
    weight's canonical tensors (``metadata`` None when dense), contiguous. ``bias``: ``[n]`` or None.
    Returns ``[M, n]`` in ``x``'s dtype, or with ``int32=True`` the raw int32 accumulator (exactly
    the reference's ``quantize_per_token`` codes times the weight codes; no epilogue, so ``bias``
    and ``gelu`` are not applied). ``out``
    receives the result instead of a fresh tensor (any strides); ``x_scale_out`` (float32, ``M``
    elements) receives the per-token scales the kernel computed. ``config`` fixes the tiling and
    ``split_k`` the number of K slices (tests, tuning); by default :func:`fused_config` and
    :func:`fused_split_k` choose.
    """
    _check(x, values, metadata, w_scale, bias, n, k, bits, sparse, out, x_scale_out, int32)
    return launch(x, values, metadata, w_scale, bias, n=n, k=k, bits=bits, sparse=sparse, gelu=gelu, int32=int32,
                  out=out, x_scale_out=x_scale_out, config=config, split_k=split_k)


def launch(x: torch.Tensor, values: torch.Tensor, metadata: torch.Tensor | None, w_scale: torch.Tensor,
           bias: torch.Tensor | None = None, *, n: int, k: int, bits: int, sparse: bool, gelu: bool = False,
           int32: bool = False, out: torch.Tensor | None = None, x_scale_out: torch.Tensor | None = None,
           config: GemmConfig | None = None, split_k: int | None = None) -> torch.Tensor:
    """:func:`fused_linear` without its argument checks, for callers whose tensors were checked once
    already (the triton backend's ``triton:fused`` variant on a prepared layout: the hot path)."""
    m = x.shape[0]
    y = out if out is not None else torch.empty((m, n), dtype=torch.int32 if int32 else x.dtype, device=x.device)
    if m == 0:
        return y
    if config is None:
        config = fused_config(m)
    elif not isinstance(config, GemmConfig):
        raise TypeError(f"config must be a GemmConfig, got {type(config).__name__}")
    bm, bn, bk = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    k_tiles = triton.cdiv(k, bk)
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    if split_k is None:
        split_k = fused_split_k(m, n, k, config, _sm_count(x.device))
    else:
        if isinstance(split_k, bool) or not isinstance(split_k, int) or not 1 <= split_k <= k_tiles:
            raise ValueError(f"split_k must be an int in [1, {k_tiles}] (the number of BLOCK_K={bk} steps "
                             f"over K={k}), got {split_k!r}")
        if split_k > 1 and tiles > COUNTER_CAPACITY:
            raise ValueError(f"split_k > 1 serves at most {COUNTER_CAPACITY} output tiles, this launch has {tiles}")
    per = triton.cdiv(k_tiles, split_k)
    split_k = triton.cdiv(k_tiles, per)   # no empty slice (e.g. 5 steps in 4 slices -> 3 slices of 2)
    if split_k > 1:
        part = torch.empty((split_k, tiles, bm * bn), dtype=torch.int32, device=x.device)
        cnt = _counters(x.device)
    else:
        part = cnt = _dummy_i32(x.device)
    meta_t = metadata if sparse else values   # a dummy pointer when dense (never read)
    dummy = w_scale
    maxnreg = config.get("maxnreg")
    options = {"maxnreg": maxnreg} if maxnreg is not None and not is_interpreted() else {}
    _nxm_fused_kernel[(tiles, split_k)](
        x, values, meta_t, w_scale, bias if bias is not None else dummy, y,
        x_scale_out if x_scale_out is not None else dummy, part, cnt,
        m, n, k, padded_k(k), split_k, per,
        x.stride(0), x.stride(1), values.stride(0), meta_t.stride(0), y.stride(0), y.stride(1),
        QMAX=ACT_QMAX, BITS=bits, SPARSE=bool(sparse), EPILOGUE=not int32, HAS_BIAS=bias is not None and not int32,
        GELU=bool(gelu) and not int32, WRITE_SCALE=x_scale_out is not None, SPLIT=split_k > 1,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, EVEN_K=k % bk == 0,
        num_warps=config["num_warps"], num_stages=config["num_stages"], **options,
        # No FMA contraction: the epilogue rounds after every multiply and add, as the reference does.
        enable_fp_fusion=False,
    )
    return y

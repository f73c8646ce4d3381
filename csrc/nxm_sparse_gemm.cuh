// Sparse-int GEMM on the sparse tensor cores: y[M, N] = dequant(xq[M, K] . W[N, K]^T) (+bias) (+GELU)
//
// W is 2:4 sparse with int8 or int4 codes, xq int8 per-token quantized activations; int32 accumulation.
//
// Where it runs (nxm_kernels/backends/cuda/backend.py, select_kernel): every call below 256 tokens (its
// split-K small tiles and the packed int4 codes fit the memory-bound regime), out_features not a multiple
// of 8, and GPUs or builds without the CUTLASS kernels. From 256 tokens, int8 and int4 2:4 weights run on
// the CUTLASS-built kernels (csrc/cutlass_sm90_sparse.cuh, csrc/cutlass_sm80_sparse.cuh).
//
// ---------------------------------------------------------------------------------------------
// The instruction
// ---------------------------------------------------------------------------------------------
// mma.sp::ordered_metadata.sync.aligned.m16n8k64.row.col.s32.s8.s8.s32 computes D[16x8] += A[16x64] B[64x8]
// where A is 2:4 sparse (32 kept codes per row) and B dense. The sparse operand must be A, so the
// kernel computes the transposed product y^T[N, M] = W[N, K] . xq^T[K, M]: A = 16 weight rows,
// B = 8 tokens ("col" layout = K contiguous per token, which is how xq is stored). The lane-level
// fragment ownership is written out in tests/mma_sp_model.py (CPU model, tested).
//
// ---------------------------------------------------------------------------------------------
// Operand layouts
// ---------------------------------------------------------------------------------------------
// A (weights) comes pre-arranged (nxm_kernels/backends/cuda/layout.py): for each (16 rows, 64 K)
// tile, lane L's four A registers are 16 contiguous bytes at offset 16*L of a 512-byte block, and its
// metadata register is the 4-byte word at 4*L of a 128-byte block. A warp therefore reads its
// A fragment from shared memory with one conflict-free 16-byte load per lane, no ldmatrix and no
// byte permutes. int4 weights store a lane's two k64 steps in its 16 bytes (8 per step); a 32-bit
// word holds two registers as low/high nibbles and is unpacked with a mask or shift plus a per-byte
// sign extension (__vsub4): Hopper has no int4 tensor cores and the same code serves Ampere.
//
// B (activations) is copied per stage as a [BM tokens][128 bytes] tile. The 16-byte chunk c of token
// row r is stored at chunk (c ^ (r & 7)): ldmatrix.x4 then reads 8 rows x 16 bytes per matrix from 8
// distinct bank groups (no conflicts), and lane (g, t) of matrix j receives bytes 4t..4t+3 of row g,
// which is exactly B register j of mma m16n8k64 (k = 16j + 4t + i) for the k64 half chosen by the
// chunk offset.
//
// ---------------------------------------------------------------------------------------------
// Tiling and pipeline
// ---------------------------------------------------------------------------------------------
// A CTA computes a BN (weight rows) x BM (tokens) tile of y^T, looping over K in stages of 128
// (two mma k64 steps). WARPS_N x WARPS_M warps each own a WN x WM sub-tile = FN x FM instructions
// per k64 step. Global->shared copies use cp.async (16 bytes, L2-only .cg) into a STAGES-deep ring:
// while stage i is multiplied, stages i+1 .. i+STAGES-1 are in flight, so weight streaming overlaps
// the tensor-core work. Token rows past M are zero-filled by cp.async's src-size operand.
//
// Small M (<= 64 tokens) is memory-bound on the weight bytes: a narrow BN = 64 tile maximises the
// number of CTAs streaming weights, and split-K (grid.z) spreads K over more CTAs when N alone does
// not fill the GPU. Each split writes its int32 partial tile to a workspace, then bumps a per-tile
// counter; the last split to arrive adds the others' partials and runs the epilogue (no extra launch;
// the counters are zeroed by the quantizer kernel that runs just before, or by a memset). Large M
// uses 128 x 128 tiles with 8 warps, which re-use each weight tile across 128 tokens from shared memory,
// once there are enough such tiles to fill the GPU (nxm_gemm_select); they never split K.
//
// Epilogue: int32 accumulators -> float ((acc * x_scale[m]) * w_scale[n] + bias[n], then erf-GELU;
// the reference backend's order) -> output dtype, staged through shared memory as a [BM][BN] tile so
// y (row-major [M, N]) is written with coalesced 16-byte stores, no separate transpose pass.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "nxm_kernels.h"

namespace nxm {

constexpr int kStageK = 128;  // dense K per pipeline stage (two mma k64 steps)

constexpr __host__ __device__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Address of 16-byte chunk `ch` of token row `row` in a stage's B tile at `tile`: the XOR swizzle of
// the header comment. The cp.async store and the ldmatrix read must agree, so both use this.
template <typename T>
__device__ __forceinline__ T* b_swizzled(T* tile, int row, int ch) {
  return tile + row * kStageK + ((ch ^ (row & 7)) << 4);
}

template <int BN_, int BM_, int WARPS_N_, int WARPS_M_, int STAGES_>
struct GemmConfig {
  static constexpr int BN = BN_, BM = BM_, WARPS_N = WARPS_N_, WARPS_M = WARPS_M_, STAGES = STAGES_;
  static constexpr int kThreads = WARPS_N * WARPS_M * 32;
  static constexpr int WN = BN / WARPS_N;  // weight rows per warp
  static constexpr int WM = BM / WARPS_M;  // tokens per warp
  static constexpr int FN = WN / 16;       // mma row tiles per warp
  static constexpr int FM = WM / 8;        // mma token tiles per warp
  static constexpr bool kSplitK = BM <= 64;  // small-M tiles may split K (grid.z)
  static_assert(WN % 16 == 0 && WM % 8 == 0, "warp tile must be a whole number of mma tiles");
  static_assert(BM % 8 == 0 && BN % 16 == 0, "CTA tile must be a whole number of mma tiles");

  template <bool W4>
  struct Smem {
    static constexpr int kAValues = BN * (W4 ? 32 : 64);  // BN/16 tiles x (W4 ? 512 : 1024) bytes
    static constexpr int kAMeta = BN * 16;                // BN/16 tiles x 2 steps x 128 bytes
    static constexpr int kB = BM * kStageK;               // BM token rows x 128 bytes
    static constexpr int kStage = kAValues + kAMeta + kB;
    static constexpr int kPipeline = kStage * STAGES;
    static constexpr int kOutPitch = BN * 4 + 16;         // epilogue staging row, padded (bytes)
    static constexpr int kOut = BM * kOutPitch;
    static constexpr int kTotal = kPipeline > kOut ? kPipeline : kOut;
  };
};

// ------------------------------------------------------------------------------------ primitives
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  // src_bytes < 16 zero-fills the rest: used for token rows past M.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

__device__ __forceinline__ void mma_sp_16864(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                             uint32_t e) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k64.row.col.s32.s8.s8.s32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
}

// Four 4-bit two's-complement values, one per byte in 0..15, -> four int8 bytes.
__device__ __forceinline__ uint32_t sext4x4(uint32_t v) { return __vsub4(v ^ 0x08080808u, 0x08080808u); }

__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

__device__ __forceinline__ float load_bias(const void* bias, int kind, int n) {
  switch (kind) {
    case NXM_BIAS_F16: return __half2float(static_cast<const __half*>(bias)[n]);
    case NXM_BIAS_BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[n]);
    case NXM_BIAS_F32: return static_cast<const float*>(bias)[n];
    default: return 0.0f;
  }
}

// ------------------------------------------------------------------------------------ the kernel
template <class Cfg, bool W4>
__global__ void __launch_bounds__(Cfg::kThreads, 1) sparse_gemm_kernel(const NxmGemmParams p) {
  using S = typename Cfg::template Smem<W4>;
  constexpr int FN = Cfg::FN, FM = Cfg::FM, kThreads = Cfg::kThreads, STAGES = Cfg::STAGES;
  constexpr int kRun = W4 ? 512 : 1024;  // bytes of one 16-row tile's values per stage in global memory

  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_n = warp % Cfg::WARPS_N, warp_m = warp / Cfg::WARPS_N;
  const int n0 = blockIdx.x * Cfg::BN, m0 = blockIdx.y * Cfg::BM, split = blockIdx.z;
  const int ks_total = p.KP / kStageK;
  const int ks_begin = split * p.stages_per_split;
  const int ks_end = min(ks_total, ks_begin + p.stages_per_split);
  const int n_ks = max(0, ks_end - ks_begin);

  // Index of (this CTA's 16-row tile t, stage ks) in the prepared layout's [Np/16][KP/128] tile grid.
  auto a_tile = [&](int t, int ks) { return (size_t)(n0 / 16 + t) * ks_total + ks; };
  // Issue the cp.async copies of stage `ks` (global K offset ks * 128) into ring slot `slot`.
  auto load_stage = [&](int ks, int slot) {
    uint8_t* s = smem + slot * S::kStage;
    // A values: BN/16 row tiles, each one contiguous run of kRun bytes in the prepared layout.
    for (int c = tid; c < S::kAValues / 16; c += kThreads) {
      const int t = c / (kRun / 16), off = (c % (kRun / 16)) * 16;
      cp_async16(s + t * kRun + off, p.w_values + a_tile(t, ks) * kRun + off, 16);
    }
    // A metadata: BN/16 row tiles x 256 contiguous bytes (two k64 steps x 32 lanes x 4 bytes).
    for (int c = tid; c < S::kAMeta / 16; c += kThreads) {
      const int t = c / 16, off = (c % 16) * 16;
      const uint8_t* src = reinterpret_cast<const uint8_t*>(p.w_meta) + a_tile(t, ks) * 256 + off;
      cp_async16(s + S::kAValues + t * 256 + off, src, 16);
    }
    // B: BM token rows x 8 chunks of 16 bytes, XOR-swizzled (see the header comment).
    for (int c = tid; c < Cfg::BM * 8; c += kThreads) {
      const int r = c >> 3, ch = c & 7, m = m0 + r;
      const int8_t* src = p.xq + (size_t)min(m, p.M - 1) * p.KP + ks * kStageK + ch * 16;
      cp_async16(b_swizzled(s + S::kAValues + S::kAMeta, r, ch), src, m < p.M ? 16 : 0);
    }
  };

  int acc[FN][FM][4];
#pragma unroll
  for (int i = 0; i < FN; ++i)
#pragma unroll
    for (int j = 0; j < FM; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0;

  // Prologue: fill STAGES-1 slots (empty commit groups keep the group count uniform).
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < n_ks) load_stage(ks_begin + s, s);
    cp_async_commit();
  }

  for (int it = 0; it < n_ks; ++it) {
    cp_async_wait<STAGES - 2>();  // stage `it` has landed (for this thread) ...
    __syncthreads();              // ... and for every thread; slot (it-1) % STAGES is free again
    const int nxt = it + STAGES - 1;
    if (nxt < n_ks) load_stage(ks_begin + nxt, nxt % STAGES);
    cp_async_commit();

    const uint8_t* s = smem + (it % STAGES) * S::kStage;
    const uint32_t* sm = reinterpret_cast<const uint32_t*>(s + S::kAValues);
    const uint8_t* sb = s + S::kAValues + S::kAMeta;

    uint4 araw[W4 ? FN : 1];  // int4: one 16-byte load serves both k64 steps of the stage
    if constexpr (W4) {
#pragma unroll
      for (int fn = 0; fn < FN; ++fn)
        araw[fn] = *reinterpret_cast<const uint4*>(s + (warp_n * FN + fn) * 512 + lane * 16);
    }
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      uint32_t a[FN][4], e[FN];
#pragma unroll
      for (int fn = 0; fn < FN; ++fn) {
        const int t = warp_n * FN + fn;
        if constexpr (W4) {
          const uint32_t w0 = kk ? araw[fn].z : araw[fn].x, w1 = kk ? araw[fn].w : araw[fn].y;
          a[fn][0] = sext4x4(w0 & 0x0F0F0F0Fu);
          a[fn][1] = sext4x4((w0 >> 4) & 0x0F0F0F0Fu);
          a[fn][2] = sext4x4(w1 & 0x0F0F0F0Fu);
          a[fn][3] = sext4x4((w1 >> 4) & 0x0F0F0F0Fu);
        } else {
          const uint4 v = *reinterpret_cast<const uint4*>(s + (t * 2 + kk) * 512 + lane * 16);
          a[fn][0] = v.x; a[fn][1] = v.y; a[fn][2] = v.z; a[fn][3] = v.w;
        }
        e[fn] = sm[(t * 2 + kk) * 32 + lane];
      }
#pragma unroll
      for (int fm = 0; fm < FM; ++fm) {
        uint32_t b[4];
        const int row = warp_m * Cfg::WM + fm * 8 + (lane & 7);
        const int ch = kk * 4 + (lane >> 3);
        ldmatrix_x4(b, b_swizzled(sb, row, ch));
#pragma unroll
        for (int fn = 0; fn < FN; ++fn) mma_sp_16864(acc[fn][fm], a[fn], b, e[fn]);
      }
    }
  }
  cp_async_wait<0>();

  // Accumulator element q of (fn, fm) is weight row n and token m:
  const int g = lane >> 2, tq = lane & 3;
  auto row_of = [&](int fn, int q) { return warp_n * Cfg::WN + fn * 16 + g + 8 * (q >> 1); };   // local n
  auto tok_of = [&](int fm, int q) { return warp_m * Cfg::WM + fm * 8 + 2 * tq + (q & 1); };     // local m
  // Token rows past M exist in registers only. Loads for them read a clamped (valid) row and the value
  // is discarded, so no load sits under a per-element branch: the compiler then issues all of a
  // thread's loads together instead of waiting for each one in turn (a chain of L2 round trips).
  auto m_ok = [&](int fm, int q) { return m0 + tok_of(fm, q) < p.M; };
  auto m_clamped = [&](int fm, int q) { return min(m0 + tok_of(fm, q), p.M - 1); };
  // Element (token m, local weight row of (fn, q)) of one split's [M][Np] int32 workspace at `ws`.
  auto ws_at = [&](auto* ws, int m, int fn, int q) { return ws + (size_t)m * p.Np + n0 + row_of(fn, q); };

  // ---- split-K (small-M configurations only): publish partials; the last split of this tile reduces
  // them and continues. Large tiles fill the GPU without it and need the registers for accumulators.
  if constexpr (Cfg::kSplitK) if (p.splits > 1) {
    __shared__ int s_is_last;
    int32_t* ws = p.workspace + (size_t)split * p.M * p.Np;
#pragma unroll
    for (int fn = 0; fn < FN; ++fn)
#pragma unroll
      for (int fm = 0; fm < FM; ++fm)
#pragma unroll
        for (int q = 0; q < 4; ++q)
          if (m_ok(fm, q)) __stcg(ws_at(ws, m0 + tok_of(fm, q), fn, q), acc[fn][fm][q]);
    __threadfence();
    __syncthreads();
    const int tile = blockIdx.y * gridDim.x + blockIdx.x;
    if (tid == 0) s_is_last = (atomicAdd(p.counters + tile, 1) == p.splits - 1);
    __syncthreads();
    if (!s_is_last) return;
    __threadfence();
    for (int o = 0; o < p.splits; ++o) {
      if (o == split) continue;
      const int32_t* wo = p.workspace + (size_t)o * p.M * p.Np;
#pragma unroll
      for (int fn = 0; fn < FN; ++fn) {  // one row tile at a time bounds the extra registers
        int part[FM][4];
#pragma unroll
        for (int fm = 0; fm < FM; ++fm)
#pragma unroll
          for (int q = 0; q < 4; ++q) part[fm][q] = __ldcg(ws_at(wo, m_clamped(fm, q), fn, q));
#pragma unroll
        for (int fm = 0; fm < FM; ++fm)
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[fn][fm][q] += m_ok(fm, q) ? part[fm][q] : 0;
      }
    }
  }

  // ---- epilogue: dequantize (+bias, +GELU), convert, stage as [BM][BN] in shared memory.
  // Scales and bias are loaded once per thread up front: x_scale depends on (fm, q & 1), w_scale and
  // bias on (fn, q >> 1). w_scale is padded to Np rows, so every n read here is in bounds.
  const bool dequant = p.out_kind != NXM_OUT_INT32;
  float xs[FM][2], wsc[FN][2], bs[FN][2];
#pragma unroll
  for (int fm = 0; fm < FM; ++fm)
#pragma unroll
    for (int h = 0; h < 2; ++h) xs[fm][h] = dequant ? __ldg(p.x_scale + m_clamped(fm, h)) : 0.0f;
#pragma unroll
  for (int fn = 0; fn < FN; ++fn)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = n0 + row_of(fn, 2 * h);
      wsc[fn][h] = dequant ? __ldg(p.w_scale + n) : 0.0f;
      bs[fn][h] = p.bias ? load_bias(p.bias, p.bias_kind, min(n, p.N - 1)) : 0.0f;
    }
  __syncthreads();  // every warp is done reading the pipeline buffers
  const int esize = p.out_kind == NXM_OUT_F16 || p.out_kind == NXM_OUT_BF16 ? 2 : 4;
#pragma unroll
  for (int fn = 0; fn < FN; ++fn)
#pragma unroll
    for (int fm = 0; fm < FM; ++fm)
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        uint8_t* dst = smem + tok_of(fm, q) * S::kOutPitch + row_of(fn, q) * esize;
        if (!dequant) {
          *reinterpret_cast<int32_t*>(dst) = acc[fn][fm][q];
          continue;
        }
        // Rows m >= M and columns n >= N are computed but never copied out.
        float v = (float)acc[fn][fm][q] * xs[fm][q & 1] * wsc[fn][q >> 1] + bs[fn][q >> 1];
        if (p.act == NXM_ACT_GELU) v = gelu_erf(v);
        if (p.out_kind == NXM_OUT_F16) *reinterpret_cast<__half*>(dst) = __float2half_rn(v);
        else if (p.out_kind == NXM_OUT_BF16) *reinterpret_cast<__nv_bfloat16*>(dst) = __float2bfloat16_rn(v);
        else *reinterpret_cast<float*>(dst) = v;
      }
  __syncthreads();

  // ---- coalesced copy-out: 16-byte chunks of each token row where aligned and in bounds.
  const int rows = min(Cfg::BM, p.M - m0), cols = min(Cfg::BN, p.N - n0);
  const int per_chunk = 16 / esize, chunks = Cfg::BN / per_chunk;
  const bool vec_ok = ((size_t)p.ldo * esize) % 16 == 0 && (reinterpret_cast<uintptr_t>(p.out) & 15) == 0;
  for (int c = tid; c < rows * chunks; c += kThreads) {
    const int r = c / chunks, col = (c % chunks) * per_chunk;
    if (col >= cols) continue;
    const uint8_t* src = smem + r * S::kOutPitch + col * esize;
    uint8_t* dst = static_cast<uint8_t*>(p.out) + ((size_t)(m0 + r) * p.ldo + n0 + col) * esize;
    if (vec_ok && col + per_chunk <= cols) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      for (int i = 0; i < per_chunk && col + i < cols; ++i)
        for (int b = 0; b < esize; ++b) dst[i * esize + b] = src[i * esize + b];
    }
  }
}

// ------------------------------------------------------------------------------------ quantizer
// One CTA per token row: amax reduction, then codes = clamp(rint(x / scale)) with an IEEE division
// (__fdiv_rn) so the codes equal the reference backend's bit for bit; columns K..KP-1 are zero.
// CTA 0 also zeroes the next GEMM's split-K counters.
template <typename T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void __launch_bounds__(256) quantize_rows_kernel(const T* __restrict__ x, long long ldx, int K, int KP,
                                                            int8_t* __restrict__ xq, float* __restrict__ scale,
                                                            int32_t* __restrict__ zero, int zero_count) {
  __shared__ float s_red[32];
  if (blockIdx.x == 0)
    for (int i = threadIdx.x; i < zero_count; i += blockDim.x) zero[i] = 0;
  const int row = blockIdx.x;
  const T* xr = x + (long long)row * ldx;
  float amax = 0.0f;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    const float a = fabsf(to_f32(xr[k]));
    amax = fmaxf(amax, a != a ? __int_as_float(0x7f800000) : a);  // NaN -> +inf: fmaxf drops NaN
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if ((threadIdx.x & 31) == 0) s_red[threadIdx.x >> 5] = amax;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? s_red[threadIdx.x] : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) s_red[0] = v;
  }
  __syncthreads();
  // Test the quotient, not amax: a subnormal amax underflows to a zero scale (reference rule).
  const float s0 = __fdiv_rn(s_red[0], 127.0f);
  const float s = s0 > 0.0f ? s0 : 1.0f;
  // A row holding NaN/Inf (amax = +inf) gets scale NaN and zero codes: its outputs are NaN (reference rule).
  const bool finite = s_red[0] < __int_as_float(0x7f800000);
  int8_t* qr = xq + (long long)row * KP;
  for (int k = threadIdx.x; k < KP; k += blockDim.x) {
    float q = 0.0f;
    if (k < K && finite) q = fminf(fmaxf(rintf(__fdiv_rn(to_f32(xr[k]), s)), -127.0f), 127.0f);
    qr[k] = static_cast<int8_t>(q);
  }
  if (threadIdx.x == 0) scale[row] = finite ? s : __int_as_float(0x7fc00000);
}

// ------------------------------------------------------------------------------------ probe
__global__ void mma_sp_probe_kernel(const uint32_t* a, const uint32_t* b, const int32_t* c, const uint32_t* e,
                                    int32_t* d) {
  const int l = threadIdx.x;
  const uint32_t ar[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
  const uint32_t br[4] = {b[4 * l], b[4 * l + 1], b[4 * l + 2], b[4 * l + 3]};
  int acc[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
  mma_sp_16864(acc, ar, br, e[l]);
  for (int q = 0; q < 4; ++q) d[4 * l + q] = acc[q];
}

}  // namespace nxm

// Launchers of the sparse-int GEMM, the activation quantizer and the mma.sp probe (C-style API in
// nxm_kernels.h). Configuration choice and split-K sizing live here so every caller gets the same.
#include <algorithm>

#include "nxm_sparse_gemm.cuh"

namespace nxm {
namespace {

// The configurations. Index = NxmGemmParams::config.
//   0..2: small M (memory-bound up to ~64 tokens): 4 warps side by side over 64 weight rows, 16/32/64
//         tokens, 4 stages; config 2 also serves larger M whenever 128 x 128 tiles would not fill the GPU.
//   3:    large M (compute-bound): 8 warps as 4 (weight rows) x 2 (tokens) over a 128 x 128 tile, 3 stages.
using Cfg0 = GemmConfig<64, 16, 4, 1, 4>;
using Cfg1 = GemmConfig<64, 32, 4, 1, 4>;
using Cfg2 = GemmConfig<64, 64, 4, 1, 4>;
using Cfg3 = GemmConfig<128, 128, 4, 2, 3>;
constexpr int kNumConfigs = 4;
constexpr int kBN[kNumConfigs] = {Cfg0::BN, Cfg1::BN, Cfg2::BN, Cfg3::BN};
constexpr int kBM[kNumConfigs] = {Cfg0::BM, Cfg1::BM, Cfg2::BM, Cfg3::BM};
constexpr bool kSplitK[kNumConfigs] = {Cfg0::kSplitK, Cfg1::kSplitK, Cfg2::kSplitK, Cfg3::kSplitK};

// The launch grid of configuration `cfg` (x: weight-row tiles, y: token tiles). nxm_gemm_select sizes
// the split-K counters from the same numbers the kernel indexes them by (blockIdx.y * gridDim.x + x).
dim3 tile_grid(int cfg, int M, int N, int splits = 1) {
  return dim3(ceil_div(N, kBN[cfg]), ceil_div(M, kBM[cfg]), splits);
}

// The problem-size rules of the prepared layout (backends/cuda/layout.py): Np, KP padded to 128.
bool bad_dims(int M, int N, int Np, int KP) {
  return M < 1 || N < 1 || Np < N || Np % 128 || KP < 128 || KP % 128;
}

template <class Cfg, bool W4>
int launch(const NxmGemmParams& p, cudaStream_t stream) {
  constexpr int smem = Cfg::template Smem<W4>::kTotal;
  static_assert(Cfg::template Smem<W4>::kOut <= Cfg::template Smem<W4>::kTotal, "staging must fit");
  auto kernel = sparse_gemm_kernel<Cfg, W4>;
  // Opt in to more than 48 KB of dynamic shared memory (per device, idempotent), only where needed.
  if constexpr (smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  kernel<<<tile_grid(p.config, p.M, p.N, p.splits), Cfg::kThreads, smem, stream>>>(p);
  return static_cast<int>(cudaGetLastError());
}

template <bool W4>
int dispatch(const NxmGemmParams& p, cudaStream_t stream) {
  switch (p.config) {
    case 0: return launch<Cfg0, W4>(p, stream);
    case 1: return launch<Cfg1, W4>(p, stream);
    case 2: return launch<Cfg2, W4>(p, stream);
    case 3: return launch<Cfg3, W4>(p, stream);
    default: return NXM_ERR_ARGUMENT;
  }
}

template <typename T>
int quantize(const void* x, int M, int K, long long ldx, int KP, int8_t* xq, float* scale, int32_t* zero,
             int zero_count, cudaStream_t stream) {
  quantize_rows_kernel<T><<<M, 256, 0, stream>>>(static_cast<const T*>(x), ldx, K, KP, xq, scale, zero, zero_count);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace
}  // namespace nxm

extern "C" int nxm_gemm_select(int M, int Np, int N, int KP, int sm_count, int* config, int* splits,
                               int* stages_per_split, int* num_tiles) {
  if (nxm::bad_dims(M, N, Np, KP) || sm_count < 1) return NXM_ERR_ARGUMENT;
  // 128 x 128 tiles only when there are enough of them to fill the GPU; otherwise 64 x 64 tiles
  // (which may also split K) keep every multiprocessor busy.
  const dim3 big = nxm::tile_grid(3, M, N);
  const long long big_tiles = (long long)big.x * big.y;
  const int cfg = M <= 16 ? 0 : M <= 32 ? 1 : (M > 256 && big_tiles >= sm_count) ? 3 : 2;
  const dim3 grid = nxm::tile_grid(cfg, M, N);
  const int tiles = grid.x * grid.y;
  const int ks_total = KP / nxm::kStageK;
  // Split K (small-M configurations) until about two CTAs per multiprocessor are streaming, keeping
  // >= 2 stages per split so the cp.async ring still overlaps copies with math.
  int s = !nxm::kSplitK[cfg] ? 1 : std::max(1, std::min((2 * sm_count) / tiles, ks_total / 2));
  const int per = nxm::ceil_div(ks_total, s);
  s = nxm::ceil_div(ks_total, per);  // no empty splits
  *config = cfg;
  *splits = s;
  *stages_per_split = per;
  *num_tiles = tiles;
  return NXM_OK;
}

extern "C" int nxm_sparse_gemm(const NxmGemmParams* p, cudaStream_t stream) {
  if (!p || !p->xq || !p->w_values || !p->w_meta || !p->out) return NXM_ERR_ARGUMENT;
  if (nxm::bad_dims(p->M, p->N, p->Np, p->KP)) return NXM_ERR_ARGUMENT;
  if (p->config < 0 || p->config >= nxm::kNumConfigs || p->splits < 1 || p->stages_per_split < 1)
    return NXM_ERR_ARGUMENT;
  if ((long long)p->splits * p->stages_per_split < p->KP / nxm::kStageK) return NXM_ERR_ARGUMENT;
  if (p->splits > 1 && (!p->workspace || !p->counters || !nxm::kSplitK[p->config])) return NXM_ERR_ARGUMENT;
  if (p->out_kind != NXM_OUT_INT32 && (!p->x_scale || !p->w_scale)) return NXM_ERR_ARGUMENT;
  if (p->ldo < p->N) return NXM_ERR_ARGUMENT;
  if ((reinterpret_cast<uintptr_t>(p->xq) | reinterpret_cast<uintptr_t>(p->w_values) |
       reinterpret_cast<uintptr_t>(p->w_meta)) & 15)
    return NXM_ERR_ALIGNMENT;
  if (nxm::tile_grid(p->config, p->M, p->N).y > 65535) return NXM_ERR_ARGUMENT;
  return p->w4 ? nxm::dispatch<true>(*p, stream) : nxm::dispatch<false>(*p, stream);
}

extern "C" int nxm_quantize_rows(const void* x, int x_kind, int M, int K, long long ldx, int KP, int8_t* xq,
                                 float* scale, int32_t* zero, int zero_count, cudaStream_t stream) {
  if (!x || !xq || !scale || M < 1 || K < 1 || KP < K || ldx < K) return NXM_ERR_ARGUMENT;
  if (zero_count < 0 || (zero_count > 0 && !zero)) return NXM_ERR_ARGUMENT;
  switch (x_kind) {
    case NXM_OUT_F16: return nxm::quantize<__half>(x, M, K, ldx, KP, xq, scale, zero, zero_count, stream);
    case NXM_OUT_BF16: return nxm::quantize<__nv_bfloat16>(x, M, K, ldx, KP, xq, scale, zero, zero_count, stream);
    case NXM_OUT_F32: return nxm::quantize<float>(x, M, K, ldx, KP, xq, scale, zero, zero_count, stream);
    default: return NXM_ERR_ARGUMENT;
  }
}

extern "C" int nxm_mma_sp_probe(const uint32_t* a, const uint32_t* b, const int32_t* c, const uint32_t* e,
                                int32_t* d, cudaStream_t stream) {
  if (!a || !b || !c || !e || !d) return NXM_ERR_ARGUMENT;
  nxm::mma_sp_probe_kernel<<<1, 32, 0, stream>>>(a, b, c, e, d);
  return static_cast<int>(cudaGetLastError());
}

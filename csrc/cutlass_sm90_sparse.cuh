// sm_90a: 2:4 int8 x int8 GEMM on Hopper's sparse warpgroup MMA (wgmma.mma_async.sp, SASS
// IGMMA...SP), built from CUTLASS 3.x collectives, with the fused epilogue of cutlass_epilogue.cuh.
//
// ---------------------------------------------------------------------------------------------
// Problem mapping
// ---------------------------------------------------------------------------------------------
// CUTLASS's sparse operand is A, so the GEMM is the transposed product D[N, M] = W[N, K] . xq[M, K]^T:
//   A = W:  GEMM-M = weight rows (out_features), K-major ("RowMajor" A), compressed to KP/2 codes per
//           row + metadata (layouts below);
//   B = xq: GEMM-N = tokens, K-major ("ColumnMajor" B), row pitch KP bytes;
//   D:      ColumnMajor [N, M] with leading dimension N, i.e. exactly y[M, N] row-major.
// The per-token scale varies along GEMM-N (a row broadcast in CUTLASS's terms); the per-channel
// scale and the bias vary along GEMM-M (column broadcasts).
//
// ---------------------------------------------------------------------------------------------
// Operand layouts (derived once in nxm_kernels/backends/cuda/layout.py: cutlass_sm90_layout)
// ---------------------------------------------------------------------------------------------
// Sm90GemmSparseConfig (cutlass/gemm/collective/builders/sm90_sparse_config.inl) for int8, K-major A,
// tile K = 128 (so MinTileShapeK = 128):
//   * compressed A: fill_layoutA = (m, (2, k/2)) : (K, (1, 2)) on logical coordinates, i.e. plain
//     row-major [Np, KP/2] int8 kept codes in group order: byte for byte the canonical `values`
//     (padded to Np rows and KP/2 columns);
//   * metadata E: one byte per 8 dense K (two 4-bit groups, low nibble first, 2-bit indices as in
//     PTX's sparse metadata) - the canonical metadata bytes - rearranged into atoms of 64 rows x 128
//     dense K (64 x 16 bytes, K-major inside the atom), atoms ordered along M first, then along K:
//     byte (n, b) of the canonical metadata sits at
//         ((b / 16) * (Np / 64) + n / 64) * 1024 + (n % 64) * 16 + b % 16.
//   tests/test_cutlass_layout.py checks both against CUTLASS's own fill_layoutA / fill_layoutE on the
//   host (tests/cutlass_host/sm90_layout_check.cu).
// The layouts describe Np >= N rows; the GEMM runs with GEMM-M = N, so tiles past N read padding and
// the epilogue predicates stores on N. can_implement is therefore asked about the padded (Np) problem
// the layouts describe (it compares the layouts with fill_layoutA/E of the problem it is given).
//
// ---------------------------------------------------------------------------------------------
// Tiling and schedule
// ---------------------------------------------------------------------------------------------
// KernelTmaWarpSpecializedCooperative: a persistent grid (one CTA per SM, tiles handed out by the
// tile scheduler), one producer warpgroup issuing TMA loads of A, E and B into a multi-stage smem
// ring (stage count: as many as fit next to the epilogue's smem), two consumer warpgroups each owning
// half of the CTA tile along GEMM-M (64 weight rows each) and issuing wgmma.sp m64nNk64. The
// epilogue (TmaWarpSpecializedCooperative) runs the visitor tree on the accumulators and stores D
// through smem with TMA. Tile shapes (M x N x K = weight rows x tokens x dense K): see the
// instantiation files csrc/cutlass_instances/sm90_*.cu and nxm_cutlass_select (cutlass_dispatch.cu).
#pragma once

#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/kernel_hardware_info.h"
#include "cutlass/util/packed_stride.hpp"

#include "cutlass_epilogue.cuh"
#include "nxm_cutlass.h"
#include "nxm_kernels.h"

namespace nxm {
namespace sm90 {

using namespace cute;

// The fused epilogue as a CUTLASS 3.x visitor tree (float compute), see cutlass_epilogue.cuh.
template <class TileShape, class ElementD>
struct FusedEpilogue {
  static constexpr auto RN = cutlass::FloatRoundStyle::round_to_nearest;
  // Per token (GEMM-N): a row broadcast; per weight row (GEMM-M): column broadcasts.
  using XScale = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>>;
  using WScale = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>>;
  using Bias = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>>;
  using ActFlag = cutlass::epilogue::fusion::Sm90ScalarBroadcast<float>;
  using Acc = cutlass::epilogue::fusion::Sm90AccFetch;
  template <template <class> class Fn, class Out = float>
  using Op = cutlass::epilogue::fusion::Sm90Compute<Fn, Out, float, RN>;
  using ScaledX = cutlass::epilogue::fusion::Sm90EVT<Op<cutlass::multiplies>, Acc, XScale>;     // acc * xs[m]
  using ScaledW = cutlass::epilogue::fusion::Sm90EVT<Op<cutlass::multiplies>, ScaledX, WScale>; // ... * ws[n]
  using Biased = cutlass::epilogue::fusion::Sm90EVT<Op<cutlass::plus>, ScaledW, Bias>;          // ... + bias[n]
  using Tree = cutlass::epilogue::fusion::Sm90EVT<Op<cutlass_epi::GeluIf, ElementD>, Biased, ActFlag>;

  static typename Tree::Arguments args(const NxmCutlassParams& p) {
    return {
        {                                                     // Biased
            {                                                 // ScaledW
                {{}, {p.x_scale, 0.0f, {_0{}, _1{}, 0}}, {}}, // ScaledX: acc, x_scale, multiply
                {p.w_scale, 0.0f, {_1{}, _0{}, 0}},           // w_scale
                {}},                                          // multiply
            {p.bias, 0.0f, {_1{}, _0{}, 0}},                  // bias (NULL -> 0)
            {}},                                              // plus
        {{p.act == NXM_ACT_GELU ? 1.0f : 0.0f}},              // the GELU flag
        {}};                                                  // GeluIf
  }
};

// The int32-output mode (exactness tests): D = acc, no float math at all.
template <class TileShape>
struct RawEpilogue {
  using Tree = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::epilogue::thread::Identity, int32_t, int32_t,
                                             cutlass::FloatRoundStyle::round_to_nearest>,
      cutlass::epilogue::fusion::Sm90AccFetch>;
  static typename Tree::Arguments args(const NxmCutlassParams&) { return {{}, {}}; }
};

template <class TileShape, class ClusterShape, class ElementD>
struct SparseGemm {
  using ElementA = int8_t;
  using LayoutTagA = cutlass::layout::RowMajor;      // W [N, K]: K-major
  using ElementB = int8_t;
  using LayoutTagB = cutlass::layout::ColumnMajor;   // xq [M, K] as B (K x M): K-major
  using LayoutTagD = cutlass::layout::ColumnMajor;   // D [N, M] col-major == y [M, N] row-major
  using ElementAcc = int32_t;
  static constexpr bool kRaw = std::is_same_v<ElementD, int32_t>;
  using ElementCompute = std::conditional_t<kRaw, int32_t, float>;
  static constexpr int kAlignAB = 16;                                  // 16 bytes of int8 (TMA)
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  using Epi = std::conditional_t<kRaw, RawEpilogue<TileShape>, FusedEpilogue<TileShape, ElementD>>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, ElementCompute,
      void, LayoutTagD, kAlignD,            // no source operand C
      ElementD, LayoutTagD, kAlignD,
      cutlass::epilogue::TmaWarpSpecializedCooperative, typename Epi::Tree>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp,
      ElementA, LayoutTagA, kAlignAB, ElementB, LayoutTagB, kAlignAB, ElementAcc,
      TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<
          static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      cutlass::gemm::KernelTmaWarpSpecializedCooperative>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,
                                                      CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using SparseConfig = typename CollectiveMainloop::SparseConfig;
  using StrideB = typename Kernel::StrideB;
  using StrideD = typename Kernel::StrideD;

  static_assert(size<2>(TileShape{}) == 128, "the prepared metadata layout assumes tile K = 128");

  // The current device and its SM count (the persistent grid's size).
  static cutlass::KernelHardwareInfo hw_info() {
    cutlass::KernelHardwareInfo hw;
    hw.device_id = 0;
    cudaGetDevice(&hw.device_id);
    hw.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(hw.device_id);
    return hw;
  }

  // Arguments for problem (gemm_m, M, KP); the operand layouts always describe the padded Np rows.
  static typename Gemm::Arguments arguments(const NxmCutlassParams& p, int gemm_m, cutlass::KernelHardwareInfo hw) {
    const auto padded = make_shape(p.Np, p.M, p.KP, 1);
    const auto layout_a = SparseConfig::fill_layoutA(padded);
    const auto layout_e = SparseConfig::fill_layoutE(padded);
    const StrideB stride_b = cutlass::make_cute_packed_stride(StrideB{}, make_shape(p.M, p.KP, 1));
    // Column-major D [N, M]: unit stride along GEMM-M, N elements between tokens.
    const StrideD stride_d = cutlass::make_cute_packed_stride(StrideD{}, make_shape(p.N, p.M, 1));
    return typename Gemm::Arguments{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {gemm_m, p.M, p.KP, 1},
        {p.w_values, layout_a, p.xq, stride_b, p.w_meta, layout_e},
        {Epi::args(p), static_cast<ElementD*>(p.out), stride_d, static_cast<ElementD*>(p.out), stride_d},
        hw};
  }

  // CUTLASS's own admission check (host only, no GPU needed): the layouts describe Np rows, so it is
  // asked about the padded problem; the kernel then runs on the N real rows.
  static bool can_implement(const NxmCutlassParams& p) {
    return Gemm::can_implement(arguments(p, p.Np, cutlass::KernelHardwareInfo{})) == cutlass::Status::kSuccess;
  }

  static int workspace_size(const NxmCutlassParams& p, size_t* bytes) {
    *bytes = Gemm::get_workspace_size(arguments(p, p.N, hw_info()));
    return NXM_OK;
  }

  static int run(const NxmCutlassParams& p, void* workspace, cudaStream_t stream) {
    if (!can_implement(p)) return NXM_ERR_ARGUMENT;
    auto args = arguments(p, p.N, hw_info());
    Gemm gemm;
    cutlass::Status st = gemm.initialize(args, workspace, stream);
    if (st != cutlass::Status::kSuccess) {
      cudaError_t err = cudaGetLastError();
      return err != cudaSuccess ? static_cast<int>(err) : NXM_ERR_ARGUMENT;
    }
    st = gemm.run(stream);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
    return st == cutlass::Status::kSuccess ? NXM_OK : NXM_ERR_ARGUMENT;
  }
};

}  // namespace sm90
}  // namespace nxm

// One instantiation: defines the two entry points the dispatcher (cutlass_dispatch.cu) calls.
//   NXM_SM90_INSTANCE(name, tile M, tile N, cluster M, cluster N, output element)
#define NXM_SM90_INSTANCE(NAME, TM, TN, CM, CN, ELEMENT_D)                                              \
  using NAME##_gemm = nxm::sm90::SparseGemm<cute::Shape<cute::Int<TM>, cute::Int<TN>, cute::_128>,      \
                                            cute::Shape<cute::Int<CM>, cute::Int<CN>, cute::_1>,        \
                                            ELEMENT_D>;                                                 \
  extern "C" int nxm_cutlass_##NAME##_workspace(const NxmCutlassParams* p, size_t* bytes) {             \
    return NAME##_gemm::workspace_size(*p, bytes);                                                      \
  }                                                                                                     \
  extern "C" int nxm_cutlass_##NAME##_run(const NxmCutlassParams* p, void* ws, cudaStream_t stream) {   \
    return NAME##_gemm::run(*p, ws, stream);                                                            \
  }

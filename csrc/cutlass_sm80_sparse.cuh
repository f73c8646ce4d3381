// sm_80 / sm_86 / sm_89: 2:4 int8 x int8 GEMM on Ampere-generation sparse tensor cores
// (mma.sp::ordered_metadata m16n8k64, SASS IMMA.SP.16864.S8.S8), CUTLASS 2.x SparseGemmWithVisitor,
// with the fused epilogue of cutlass_epilogue.cuh as a 2.x epilogue visitor tree.
//
// ---------------------------------------------------------------------------------------------
// Problem mapping (as on sm_90a, see cutlass_sm90_sparse.cuh)
// ---------------------------------------------------------------------------------------------
// D[GEMM-M = weight rows, GEMM-N = tokens] = W . xq^T: A = W (RowMajor, compressed), B = xq
// (ColumnMajor = K-major tokens), D written column-major = y[M, N] row-major.
// The GEMM runs on all Np (padded) weight rows: the reordered metadata interleaves rows inside groups
// of 16 (below), so predicating the E loads on a ragged N could mask metadata of real rows. It also runs
// on Mp = M rounded up to 16 tokens (SparseGemm's can_implement requires GEMM-N % 16 == 0, the int8 B
// access width): the binding allocates xq and x_scale with Mp rows. The store predicates on the real
// (N, M) instead (ColumnMajorStore), and the per-row vectors (w_scale, bias) hold Np entries (the
// binding pads the bias).
//
// ---------------------------------------------------------------------------------------------
// Operand layouts (nxm_kernels/backends/cuda/layout.py: cutlass_sm80_layout)
// ---------------------------------------------------------------------------------------------
//   * compressed A: RowMajor [Np, KP/2] int8 = the canonical `values` (padded);
//   * E: ElementE = uint32 (16 groups of 4 dense K = 32 dense K per word, 2-bit indices, group 0 in
//     the low bits): the canonical metadata bytes of a row read as little-endian uint32 words,
//     logically [Np, KP/32], then cutlass::reorder_meta (tools/util/include/cutlass/util/host_reorder.h)
//     into Gemm::LayoutE = ColumnMajorInterleaved<2> so that ldmatrix delivers each lane its word.
//   tests/test_cutlass_layout.py proves this on the host with CUTLASS's own reorder_meta and
//   uncompress (tests/cutlass_host/sm80_layout_check.cu) against our dense decode.
//
// ---------------------------------------------------------------------------------------------
// Tiling
// ---------------------------------------------------------------------------------------------
// Threadblock 128 (weight rows) x 128 (tokens) x 128 (dense K), 4 warps of 64 x 64 x 128, instruction
// 16 x 8 x 64, 3-stage cp.async pipeline (26 KB of smem a stage: fits sm_86/sm_89's 100 KB).
//
// Output store: the 2.x epilogue hands each thread a run of consecutive GEMM-N (token) elements of
// one weight row, which are N elements apart in y. ColumnMajorStore below writes them one element at
// a time (predicated); this is correct but not coalesced, and it is this kernel's known weak point at
// large M x N (a store that transposes through shared memory would fix it). Not measured on a GPU.
#pragma once

#include <cuda_runtime.h>

#include "cutlass/cutlass.h"
// (this order: the visitor headers need cutlass::gemm declared first)
#include "cutlass/gemm/device/gemm_sparse_with_visitor.h"
#include "cutlass/epilogue/threadblock/fusion/visitors.hpp"

#include "cutlass_epilogue.cuh"
#include "nxm_cutlass.h"
#include "nxm_kernels.h"

namespace nxm {
namespace sm80 {

using namespace cute;

// Element-wise store of the visitor tree's output into a column-major [rows, cols] tensor, predicated
// on (valid_rows, cols). Modelled on cutlass::epilogue::threadblock::VisitorAuxStore, which assumes
// the thread map's vector runs along a unit-stride dimension (row-major output).
template <class ThreadMap, class Element>
struct ColumnMajorStore {
  struct Arguments {
    Element* ptr = nullptr;
    int64_t ld = 0;          // elements between consecutive GEMM-N columns (= y's row pitch)
    int valid_rows = 0;      // GEMM-M rows to write (the real N; the GEMM runs on Np)
    int valid_cols = 0;      // GEMM-N columns to write (the real M; the GEMM runs on Mp)
  };
  using Params = Arguments;
  struct SharedStorage {};

  template <class ProblemShape>
  static constexpr Params to_underlying_arguments(ProblemShape const&, Arguments const& args, void*) { return args; }
  template <class ProblemShape>
  static size_t get_workspace_size(ProblemShape const&, Arguments const&) { return 0; }

  CUTLASS_HOST_DEVICE ColumnMajorStore() {}
  CUTLASS_HOST_DEVICE ColumnMajorStore(Params const& params, SharedStorage const&) : params_ptr(&params) {}
  Params const* params_ptr;

  template <class GTensor, class RTensor, class CTensor, class Bound>
  struct Callbacks : cutlass::epilogue::threadblock::detail::EmptyCallbacks {
    CUTLASS_DEVICE Callbacks(GTensor&& g, RTensor&& r, CTensor&& c, Bound bound)
        : tC_g(cute::forward<GTensor>(g)), tC_r(cute::forward<RTensor>(r)), tC_c(cute::forward<CTensor>(c)),
          bound(bound) {}
    GTensor tC_g;
    RTensor tC_r;
    CTensor tC_c;
    Bound bound;

    CUTLASS_DEVICE void begin_step(int) { clear(tC_r); }

    template <class ElementAccumulator, class ElementInput, int FragmentSize>
    CUTLASS_DEVICE auto visit(int, int, int, int frg_idx, cutlass::Array<ElementAccumulator, FragmentSize> const&,
                              cutlass::Array<ElementInput, FragmentSize> const& frg_input) {
      cutlass::NumericArrayConverter<Element, ElementInput, FragmentSize, cutlass::FloatRoundStyle::round_to_nearest> cvt;
      Tensor frg = recast<cutlass::Array<Element, FragmentSize>>(coalesce(tC_r));
      frg(frg_idx) = cvt(frg_input);
      return frg_input;
    }

    CUTLASS_DEVICE void end_step(int step_idx) {
      Tensor dst = tC_g(_, _, _, step_idx);
      Tensor crd = tC_c(_, _, _, step_idx);
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(tC_r); ++i) {
        if (elem_less(crd(i), bound)) dst(i) = tC_r(i);
      }
    }
  };

  template <class ProblemShape>
  CUTLASS_DEVICE auto get_callbacks(cutlass::gemm::GemmCoord tb_offset, int thread_idx, ProblemShape problem_shape) {
    Tensor mD = make_tensor(make_gmem_ptr(params_ptr->ptr), problem_shape,
                            make_stride(_1{}, params_ptr->ld, int64_t(0)));  // (M, N, L), column-major
    // VECTOR, FRAGMENT_COLUMN, FRAGMENT_ROW, (ITERATION_ROW, ITERATION_GROUP, ITERATION_CLUSTER)
    Tensor tC_g = group_modes<3, 6>(ThreadMap::partition(mD, thread_idx, tb_offset));
    // Registers: compact and column-major over (VECTOR, FRAGMENT_COLUMN, FRAGMENT_ROW), so that fragment
    // frg_idx is FragmentSize consecutive registers (make_tensor_like would copy the column-major gmem
    // stride order and put FRAGMENT_ROW first).
    Tensor tC_r = make_tensor<Element>(make_layout(shape(take<0, 3>(tC_g))));
    Tensor tC_c = group_modes<3, 6>(ThreadMap::partition(make_identity_tensor(mD.shape()), thread_idx, tb_offset));
    auto bound = make_shape(params_ptr->valid_rows, params_ptr->valid_cols, get<2>(problem_shape));
    return Callbacks<decltype(tC_g), decltype(tC_r), decltype(tC_c), decltype(bound)>(
        cute::move(tC_g), cute::move(tC_r), cute::move(tC_c), bound);
  }
};

template <class ElementD>
struct SparseGemm {
  using TB = cutlass::gemm::GemmShape<128, 128, 128>;
  using Warp = cutlass::gemm::GemmShape<64, 64, 128>;
  using Inst = cutlass::gemm::GemmShape<16, 8, 64>;
  static constexpr int kStages = 3;
  static constexpr int kEpiStages = 1;
  static constexpr bool kRaw = std::is_same_v<ElementD, int32_t>;
  static constexpr auto RN = cutlass::FloatRoundStyle::round_to_nearest;
  // The 2.x epilogue's thread map vector width comes from ElementC (128 bits of it); every visitor's
  // thread map must use the same width. float/int32 compute: 4 elements per access.
  using ElementC = std::conditional_t<kRaw, int32_t, float>;
  static constexpr int kVec = 128 / cutlass::sizeof_bits<ElementC>::value;
  template <class E>
  using Map = cutlass::epilogue::threadblock::OutputTileThreadLayout<TB, Warp, E, kVec, kEpiStages>;

  using Acc = cutlass::epilogue::threadblock::VisitorAccFetch;
  using XScale = cutlass::epilogue::threadblock::VisitorRowBroadcast<Map<float>, float, Stride<_0, _1, int64_t>>;
  using WScale = cutlass::epilogue::threadblock::VisitorColBroadcast<Map<float>, float, Stride<_1, _0, int64_t>>;
  using Bias = cutlass::epilogue::threadblock::VisitorColBroadcast<Map<float>, float, Stride<_1, _0, int64_t>>;
  using ActFlag = cutlass::epilogue::threadblock::VisitorScalarBroadcast<float>;
  template <template <class> class Fn, class Out = float>
  using Op = cutlass::epilogue::threadblock::VisitorCompute<Fn, Out, float, RN>;
  using ScaledX = cutlass::epilogue::threadblock::Sm80EVT<Op<cutlass::multiplies>, Acc, XScale>;
  using ScaledW = cutlass::epilogue::threadblock::Sm80EVT<Op<cutlass::multiplies>, ScaledX, WScale>;
  using Biased = cutlass::epilogue::threadblock::Sm80EVT<Op<cutlass::plus>, ScaledW, Bias>;
  using Activated = cutlass::epilogue::threadblock::Sm80EVT<Op<cutlass_epi::GeluIf, ElementD>, Biased, ActFlag>;
  using Store = ColumnMajorStore<Map<ElementD>, ElementD>;
  using Tree = std::conditional_t<kRaw, cutlass::epilogue::threadblock::Sm80EVT<Store, Acc>,
                                  cutlass::epilogue::threadblock::Sm80EVT<Store, Activated>>;

  using Gemm = cutlass::gemm::device::SparseGemmWithVisitor<
      int8_t, cutlass::layout::RowMajor, int8_t, cutlass::layout::ColumnMajor, ElementC, cutlass::layout::RowMajor,
      int32_t, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80, TB, Warp, Inst, Tree,
      cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<>, kStages, 16, 16,
      cutlass::arch::OpMultiplyAddSaturate, kEpiStages>;
  using ElementE = typename Gemm::GemmKernel::ElementE;
  using LayoutE = typename Gemm::GemmKernel::LayoutE;
  static_assert(sizeof(ElementE) == 4, "int8 metadata words are 32-bit");

  static typename Tree::Arguments tree_args(const NxmCutlassParams& p) {
    typename Store::Arguments store{static_cast<ElementD*>(p.out), p.N, p.N, p.M};
    if constexpr (kRaw) {
      return {{}, store};
    } else {
      return {
          {                                                       // Activated
              {                                                   // Biased
                  {                                               // ScaledW
                      {{}, {p.x_scale, 0.0f, {_0{}, _1{}, 0}}, {}},  // acc * x_scale[token]
                      {p.w_scale, 0.0f, {_1{}, _0{}, 0}},            // * w_scale[row]
                      {}},
                  {p.bias, 0.0f, {_1{}, _0{}, 0}},                   // + bias[row] (Np entries or NULL)
                  {}},
              {{p.act == NXM_ACT_GELU ? 1.0f : 0.0f}},              // GELU flag
              {}},
          store};
    }
  }

  static typename Gemm::Arguments arguments(const NxmCutlassParams& p) {
    const int e_cols = p.KP / 2 / Gemm::kElementsPerElementE;  // 32 dense K per uint32
    return typename Gemm::Arguments(
        {p.Np, p.Mp, p.KP},
        {p.w_values, cutlass::layout::RowMajor(p.KP / 2)},
        {p.xq, cutlass::layout::ColumnMajor(p.KP)},
        {reinterpret_cast<ElementE*>(const_cast<uint8_t*>(p.w_meta)), LayoutE::packed({p.Np, e_cols})},
        tree_args(p));
  }

  // CUTLASS's own admission check (host only, no GPU needed).
  static bool can_implement(const NxmCutlassParams& p) {
    return Gemm::can_implement(arguments(p)) == cutlass::Status::kSuccess;
  }

  static int workspace_size(const NxmCutlassParams& p, size_t* bytes) {
    *bytes = Gemm::get_workspace_size(arguments(p));
    return NXM_OK;
  }

  static int run(const NxmCutlassParams& p, void* workspace, cudaStream_t stream) {
    if (!can_implement(p)) return NXM_ERR_ARGUMENT;
    auto args = arguments(p);
    Gemm gemm;
    cutlass::Status st = gemm.initialize(args, workspace, stream);
    if (st == cutlass::Status::kSuccess) st = gemm(stream);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
    return st == cutlass::Status::kSuccess ? NXM_OK : NXM_ERR_ARGUMENT;
  }
};

}  // namespace sm80
}  // namespace nxm

// One instantiation: NXM_SM80_INSTANCE(name, output element).
#define NXM_SM80_INSTANCE(NAME, ELEMENT_D)                                                              \
  using NAME##_gemm = nxm::sm80::SparseGemm<ELEMENT_D>;                                                 \
  extern "C" int nxm_cutlass_##NAME##_workspace(const NxmCutlassParams* p, size_t* bytes) {             \
    return NAME##_gemm::workspace_size(*p, bytes);                                                      \
  }                                                                                                     \
  extern "C" int nxm_cutlass_##NAME##_run(const NxmCutlassParams* p, void* ws, cudaStream_t stream) {   \
    return NAME##_gemm::run(*p, ws, stream);                                                            \
  }

// The fused epilogue of the CUTLASS kernels, shared by sm_80 (2.x epilogue visitor tree) and sm_90a
// (3.x epilogue visitor tree): both trees compute, per accumulator of weight row n and token m,
//
//   t = (float(acc) * x_scale[m]) * w_scale[n]         two float32 multiplies, in the reference order
//   t = t + bias[n]                                    (bias 0 when no bias pointer is given)
//   y = act ? gelu_erf(t) : t                          exact-erf GELU, chosen at run time
//   y -> output dtype                                  round to nearest
//
// Float order versus the reference backend (docs/FORMAT.md, "What a kernel computes with it"): each
// step is a separate node of the tree, so the operations happen in the reference order, but nvcc
// contracts the second multiply and the bias add into one FMA (-fmad=true, the default): t + bias is
// then rounded once instead of twice. The difference is at most one float32 ulp of t before the
// cast to the output dtype (the same as the hand-written kernel's epilogue), inside the tests'
// stated tolerances.
#pragma once

#include "cutlass/array.h"
#include "cutlass/cutlass.h"

namespace nxm {
namespace cutlass_epi {

// Exact-erf GELU as the reference: 0.5 * v * (1 + erf(v / sqrt(2))), written with the multiply by
// 1/sqrt(2) like csrc/nxm_sparse_gemm.cuh (erff, not the tanh approximation).
CUTLASS_HOST_DEVICE float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

// Binary compute node (t, flag) -> flag != 0 ? gelu(t) : t. `flag` is a scalar broadcast argument, so
// one compiled kernel serves both activations (the branch is uniform across the grid).
template <class T>
struct GeluIf {
  CUTLASS_HOST_DEVICE T operator()(T const& t, T const& flag) const { return flag != T(0) ? gelu_erf(t) : t; }
};

template <class T, int N>
struct GeluIf<cutlass::Array<T, N>> {
  CUTLASS_HOST_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& t,
                                                      cutlass::Array<T, N> const& flag) const {
    cutlass::Array<T, N> y;
    if (flag[0] != T(0)) {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < N; ++i) y[i] = gelu_erf(t[i]);
    } else {
      y = t;
    }
    return y;
  }
};

}  // namespace cutlass_epi
}  // namespace nxm

// The one PyTorch binding of the CUDA kernels: checks tensors, allocates outputs and workspaces with
// PyTorch's caching allocator on the current stream (so CUDA graph capture works), and calls the
// C-style launchers of nxm_kernels.h. The Python side (nxm_kernels/backends/cuda/backend.py) has already
// validated shapes and dtypes for users; the checks here guard the kernel itself.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <climits>

#include "nxm_kernels.h"
#include "nxm_cutlass.h"

namespace {

void check_status(int code, const char* what) {
  if (code == NXM_OK) return;
  if (code == NXM_ERR_ALIGNMENT) TORCH_CHECK(false, what, ": a tensor is not 16-byte aligned");
  if (code < 0) TORCH_CHECK(false, what, ": invalid argument");
  TORCH_CHECK(false, what, ": CUDA error: ", cudaGetErrorString(static_cast<cudaError_t>(code)));
}

int kind_of(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return NXM_OUT_F16;
    case at::kBFloat16: return NXM_OUT_BF16;
    case at::kFloat: return NXM_OUT_F32;
    default: TORCH_CHECK(false, "unsupported floating dtype ", t); return -1;
  }
}

void check_weights(const torch::Tensor& values, const torch::Tensor& meta, const torch::Tensor& w_scale,
                   int64_t kp, bool w4) {
  TORCH_CHECK(values.is_cuda() && values.scalar_type() == at::kByte && values.is_contiguous(),
              "values must be a contiguous uint8 CUDA tensor");
  TORCH_CHECK(meta.is_cuda() && meta.scalar_type() == at::kInt && meta.is_contiguous(),
              "meta must be a contiguous int32 CUDA tensor");
  TORCH_CHECK(w_scale.is_cuda() && w_scale.scalar_type() == at::kFloat && w_scale.dim() == 1,
              "w_scale must be a float32 CUDA vector");
  const int64_t np = w_scale.size(0);
  TORCH_CHECK(np % 128 == 0 && kp % 128 == 0, "prepared weights must be padded to multiples of 128");
  TORCH_CHECK(values.numel() == np * kp / (w4 ? 4 : 2), "values size does not match the prepared shape");
  TORCH_CHECK(meta.numel() == np * kp / 32, "meta size does not match the prepared shape");
}

// The kernel configuration and split-K workspace of one GEMM (nxm_gemm_select).
struct Plan {
  int config, splits, per, tiles;
  torch::Tensor workspace;  // partials then counters (int32)
  int32_t* counters() const { return splits > 1 ? workspace.data_ptr<int32_t>() + workspace.numel() - tiles : nullptr; }
};

Plan plan_for(int64_t m, int64_t n, int64_t np, int64_t kp, const torch::Tensor& like) {
  TORCH_CHECK(m <= INT32_MAX && n <= INT32_MAX && kp <= INT32_MAX, "problem too large");
  int sms = 0;
  check_status(static_cast<int>(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, like.get_device())),
               "reading the multiprocessor count");
  Plan pl{};
  check_status(nxm_gemm_select(static_cast<int>(m), static_cast<int>(np), static_cast<int>(n), static_cast<int>(kp),
                               sms, &pl.config, &pl.splits, &pl.per, &pl.tiles),
               "nxm GEMM configuration");
  if (pl.splits > 1) pl.workspace = torch::empty({pl.splits * m * np + pl.tiles}, like.options().dtype(at::kInt));
  return pl;
}

// Quantizes x per token into fresh (codes [M, KP], scales [M]); also zeroes `zero_count` split-K
// counters of the GEMM that follows (saves a memset launch on the latency-critical small-M path).
std::pair<torch::Tensor, torch::Tensor> quantize(const torch::Tensor& x, int64_t kp, int32_t* zero, int zero_count) {
  const int64_t m = x.size(0);
  auto xq = torch::empty({m, kp}, x.options().dtype(at::kChar));
  auto xs = torch::empty({m}, x.options().dtype(at::kFloat));
  if (m > 0)
    check_status(nxm_quantize_rows(x.data_ptr(), kind_of(x.scalar_type()), static_cast<int>(m),
                                   static_cast<int>(x.size(1)), x.stride(0), static_cast<int>(kp),
                                   xq.data_ptr<int8_t>(), xs.data_ptr<float>(), zero, zero_count,
                                   c10::cuda::getCurrentCUDAStream()),
                 "nxm activation quantizer");
  return {xq, xs};
}

// Runs the GEMM planned by `pl`; its split-K counters must be zero already.
torch::Tensor run_gemm(const torch::Tensor& xq, const float* x_scale, const torch::Tensor& values,
                       const torch::Tensor& meta, const torch::Tensor& w_scale, const c10::optional<torch::Tensor>& bias,
                       int64_t n, bool w4, int out_kind, at::ScalarType out_dtype, int64_t act, const Plan& pl) {
  const int64_t m = xq.size(0), kp = xq.size(1), np = w_scale.size(0);
  auto out = torch::empty({m, n}, xq.options().dtype(out_dtype));
  NxmGemmParams p{};
  p.xq = xq.data_ptr<int8_t>();
  p.x_scale = x_scale;
  p.w_values = values.data_ptr<uint8_t>();
  p.w_meta = reinterpret_cast<const uint32_t*>(meta.data_ptr<int32_t>());
  p.w_scale = w_scale.data_ptr<float>();
  p.bias = nullptr;
  p.bias_kind = NXM_BIAS_NONE;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_cuda() && bias->dim() == 1 && bias->size(0) == n && bias->is_contiguous(),
                "bias must be a contiguous CUDA vector of length N");
    p.bias = bias->data_ptr();
    p.bias_kind = kind_of(bias->scalar_type());
  }
  p.out = out.data_ptr();
  p.workspace = pl.splits > 1 ? pl.workspace.data_ptr<int32_t>() : nullptr;
  p.counters = pl.counters();
  p.M = static_cast<int>(m);
  p.N = static_cast<int>(n);
  p.KP = static_cast<int>(kp);
  p.Np = static_cast<int>(np);
  p.ldo = static_cast<int>(n);
  p.w4 = w4 ? 1 : 0;
  p.out_kind = out_kind;
  p.act = static_cast<int>(act);
  p.config = pl.config;
  p.splits = pl.splits;
  p.stages_per_split = pl.per;
  check_status(nxm_sparse_gemm(&p, c10::cuda::getCurrentCUDAStream()), "nxm sparse GEMM");
  return out;
}

}  // namespace

// x[M, K] (fp16/bf16/fp32, unit column stride) -> y[M, N] in x's dtype.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
                     const torch::Tensor& w_scale, const c10::optional<torch::Tensor>& bias, int64_t n, int64_t k,
                     int64_t kp, bool w4, int64_t act) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.stride(1) == 1 && x.size(1) == k, "x must be a CUDA [M, K] tensor");
  check_weights(values, meta, w_scale, kp, w4);
  c10::cuda::CUDAGuard guard(x.device());
  Plan pl = plan_for(x.size(0), n, w_scale.size(0), kp, x);
  auto [xq, xs] = quantize(x, kp, pl.counters(), pl.splits > 1 ? pl.tiles : 0);
  return run_gemm(xq, xs.data_ptr<float>(), values, meta, w_scale, bias, n, w4, kind_of(x.scalar_type()),
                  x.scalar_type(), act, pl);
}

// xq[M, KP] int8 (already padded) -> raw int32 accumulators [M, N].
torch::Tensor int_mm(const torch::Tensor& xq, const torch::Tensor& values, const torch::Tensor& meta,
                     const torch::Tensor& w_scale, int64_t n, bool w4) {
  TORCH_CHECK(xq.is_cuda() && xq.scalar_type() == at::kChar && xq.dim() == 2 && xq.is_contiguous(),
              "xq must be a contiguous int8 CUDA [M, KP] tensor");
  const int64_t kp = xq.size(1);
  check_weights(values, meta, w_scale, kp, w4);
  c10::cuda::CUDAGuard guard(xq.device());
  Plan pl = plan_for(xq.size(0), n, w_scale.size(0), kp, xq);
  if (pl.splits > 1) {
    cudaError_t err = cudaMemsetAsync(pl.counters(), 0, sizeof(int32_t) * pl.tiles, c10::cuda::getCurrentCUDAStream());
    check_status(static_cast<int>(err), "nxm split-K counters");
  }
  return run_gemm(xq, nullptr, values, meta, w_scale, c10::nullopt, n, w4, NXM_OUT_INT32, at::kInt, NXM_ACT_NONE, pl);
}

// x[M, K] -> (codes int8 [M, KP], scale float32 [M]).
std::vector<torch::Tensor> quantize_rows(const torch::Tensor& x, int64_t kp) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.stride(1) == 1, "x must be a CUDA [M, K] tensor with unit stride");
  c10::cuda::CUDAGuard guard(x.device());
  auto [xq, xs] = quantize(x, kp, nullptr, 0);
  return {xq, xs};
}

// One mma.sp m16n8k64 on explicit fragments (int32 [32, 4] a, b, c; int32 [32] e) -> d [32, 4].
torch::Tensor mma_sp_probe(const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& c,
                           const torch::Tensor& e) {
  for (const auto* t : {&a, &b, &c})
    TORCH_CHECK(t->is_cuda() && t->scalar_type() == at::kInt && t->is_contiguous() && t->numel() == 128,
                "fragments must be contiguous int32 CUDA [32, 4] tensors");
  TORCH_CHECK(e.is_cuda() && e.scalar_type() == at::kInt && e.numel() == 32, "e must be an int32 CUDA [32] tensor");
  c10::cuda::CUDAGuard guard(a.device());
  auto d = torch::empty_like(c);
  check_status(nxm_mma_sp_probe(reinterpret_cast<const uint32_t*>(a.data_ptr<int32_t>()),
                                reinterpret_cast<const uint32_t*>(b.data_ptr<int32_t>()), c.data_ptr<int32_t>(),
                                reinterpret_cast<const uint32_t*>(e.data_ptr<int32_t>()), d.data_ptr<int32_t>(),
                                c10::cuda::getCurrentCUDAStream()),
               "nxm mma.sp probe");
  return d;
}

// ------------------------------------------------------------------ CUTLASS-built 2:4 int8 kernels
// (csrc/cutlass_*.cuh, C-style API in nxm_cutlass.h). Weights in the arch's CUTLASS layout
// (backends/cuda/cutlass_layout.py): values int8 [Np, KP/2], meta (uint8 for sm_90a, int32 for sm_80),
// w_scale float32 [Np].
namespace {

void check_cutlass_weights(const torch::Tensor& values, const torch::Tensor& meta, const torch::Tensor& w_scale,
                           int64_t n, int64_t kp) {
  TORCH_CHECK(values.is_cuda() && values.scalar_type() == at::kChar && values.is_contiguous() && values.dim() == 2,
              "CUTLASS values must be a contiguous int8 CUDA [Np, KP/2] tensor");
  TORCH_CHECK(meta.is_cuda() && meta.is_contiguous() && meta.nbytes() == static_cast<size_t>(values.size(0) * kp / 8),
              "CUTLASS metadata must be a contiguous CUDA tensor of Np * KP / 8 bytes");
  TORCH_CHECK(w_scale.is_cuda() && w_scale.scalar_type() == at::kFloat && w_scale.dim() == 1 &&
                  w_scale.size(0) == values.size(0),
              "w_scale must be a float32 CUDA vector of length Np");
  TORCH_CHECK(values.size(1) * 2 == kp && kp % 128 == 0 && values.size(0) % 128 == 0,
              "CUTLASS weights must be padded to multiples of 128 (prepared layout)");
  TORCH_CHECK(n >= 1 && n <= values.size(0) && n % 8 == 0,
              "the CUTLASS kernels need out_features N to be a multiple of 8, got ", n);
}

// Token rows the CUTLASS kernel of `arch` reads: M rounded up to nxm_cutlass_token_multiple.
int64_t cutlass_rows(int64_t arch, int64_t m) {
  const int64_t t = nxm_cutlass_token_multiple(static_cast<int>(arch));
  return (m + t - 1) / t * t;
}

// Per-token quantization into buffers of `mp` >= M rows (rows M.. zero: read by the kernel, never stored).
std::pair<torch::Tensor, torch::Tensor> quantize_padded(const torch::Tensor& x, int64_t kp, int64_t mp) {
  const int64_t m = x.size(0);
  auto xq = torch::empty({mp, kp}, x.options().dtype(at::kChar));
  auto xs = torch::empty({mp}, x.options().dtype(at::kFloat));
  if (mp > m) {
    xq.narrow(0, m, mp - m).zero_();
    xs.narrow(0, m, mp - m).zero_();
  }
  if (m > 0)
    check_status(nxm_quantize_rows(x.data_ptr(), kind_of(x.scalar_type()), static_cast<int>(m),
                                   static_cast<int>(x.size(1)), x.stride(0), static_cast<int>(kp),
                                   xq.data_ptr<int8_t>(), xs.data_ptr<float>(), nullptr, 0,
                                   c10::cuda::getCurrentCUDAStream()),
                 "nxm activation quantizer");
  return {xq, xs};
}

// xq holds Mp >= m rows (cutlass_rows); the result has the m real rows.
torch::Tensor run_cutlass(int64_t arch, const torch::Tensor& xq, int64_t m, const float* x_scale,
                          const torch::Tensor& values, const torch::Tensor& meta, const torch::Tensor& w_scale,
                          const c10::optional<torch::Tensor>& bias, int64_t n, int out_kind, at::ScalarType out_dtype,
                          int64_t act) {
  const int64_t kp = xq.size(1), np = values.size(0);
  TORCH_CHECK(xq.size(0) >= m && xq.size(0) % nxm_cutlass_token_multiple(static_cast<int>(arch)) == 0,
              "xq rows must be padded for the CUTLASS kernel");
  TORCH_CHECK(m <= INT32_MAX && np <= INT32_MAX && kp <= INT32_MAX, "problem too large");
  auto out = torch::empty({m, n}, xq.options().dtype(out_dtype));
  if (m == 0) return out;
  NxmCutlassParams p{};
  p.xq = xq.data_ptr<int8_t>();
  p.x_scale = x_scale;
  p.w_values = values.data_ptr<int8_t>();
  p.w_meta = static_cast<const uint8_t*>(meta.data_ptr());
  p.w_scale = w_scale.data_ptr<float>();
  // The kernels read a float32 bias of Np entries (sm_80 runs on all Np rows): padded with zeros.
  torch::Tensor bias_f;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_cuda() && bias->dim() == 1 && bias->size(0) == n, "bias must be a CUDA vector of length N");
    bias_f = torch::zeros({np}, xq.options().dtype(at::kFloat));
    bias_f.narrow(0, 0, n).copy_(*bias);
    p.bias = bias_f.data_ptr<float>();
  }
  p.out = out.data_ptr();
  p.M = static_cast<int>(m);
  p.Mp = static_cast<int>(xq.size(0));
  p.N = static_cast<int>(n);
  p.KP = static_cast<int>(kp);
  p.Np = static_cast<int>(np);
  p.out_kind = out_kind;
  p.act = static_cast<int>(act);
  const int a = static_cast<int>(arch);
  const int sel = nxm_cutlass_select(a, p.M, p.N, out_kind, &p.config);
  TORCH_CHECK(sel != NXM_ERR_UNSUPPORTED, "this build of the CUDA extension has no CUTLASS kernel for sm_", a,
              " with output kind ", out_kind, " (see nxm_kernels/backends/cuda/build.py)");
  check_status(sel, "CUTLASS kernel selection");
  size_t ws_bytes = 0;
  check_status(nxm_cutlass_workspace_size(a, &p, &ws_bytes), "CUTLASS workspace size");
  torch::Tensor ws;
  if (ws_bytes > 0) ws = torch::empty({static_cast<int64_t>(ws_bytes)}, xq.options().dtype(at::kByte));
  check_status(nxm_cutlass_sparse_gemm(a, &p, ws_bytes > 0 ? ws.data_ptr() : nullptr,
                                       c10::cuda::getCurrentCUDAStream()),
               "CUTLASS sparse GEMM");
  return out;
}

}  // namespace

// 1 when this build holds the CUTLASS kernels of `arch` (80: sm_80/86/89, 90: sm_90a).
bool cutlass_available(int64_t arch) { return nxm_cutlass_available(static_cast<int>(arch)) == 1; }

// x[M, K] (fp16/bf16/fp32) -> y[M, N] in x's dtype through the CUTLASS kernel of `arch`.
torch::Tensor cutlass_linear(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& meta,
                             const torch::Tensor& w_scale, const c10::optional<torch::Tensor>& bias, int64_t n,
                             int64_t k, int64_t kp, int64_t arch, int64_t act) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.stride(1) == 1 && x.size(1) == k, "x must be a CUDA [M, K] tensor");
  check_cutlass_weights(values, meta, w_scale, n, kp);
  c10::cuda::CUDAGuard guard(x.device());
  auto [xq, xs] = quantize_padded(x, kp, cutlass_rows(arch, x.size(0)));
  return run_cutlass(arch, xq, x.size(0), xs.data_ptr<float>(), values, meta, w_scale, bias, n,
                     kind_of(x.scalar_type()), x.scalar_type(), act);
}

// xq[M, KP] int8 (already padded) -> raw int32 accumulators [M, N] through the CUTLASS kernel of `arch`.
torch::Tensor cutlass_int_mm(const torch::Tensor& xq, const torch::Tensor& values, const torch::Tensor& meta,
                             const torch::Tensor& w_scale, int64_t n, int64_t arch) {
  TORCH_CHECK(xq.is_cuda() && xq.scalar_type() == at::kChar && xq.dim() == 2 && xq.is_contiguous(),
              "xq must be a contiguous int8 CUDA [M, KP] tensor");
  check_cutlass_weights(values, meta, w_scale, n, xq.size(1));
  c10::cuda::CUDAGuard guard(xq.device());
  const int64_t m = xq.size(0), mp = cutlass_rows(arch, m);
  auto xp = mp == m ? xq : torch::constant_pad_nd(xq, {0, 0, 0, mp - m}, 0);
  return run_cutlass(arch, xp, m, nullptr, values, meta, w_scale, c10::nullopt, n, NXM_OUT_INT32, at::kInt,
                     NXM_ACT_NONE);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "nxm-kernels CUDA kernels: 2:4 sparse int8/int4 x int8 GEMM on sparse tensor cores";
  m.def("linear", &linear, "quantize x per token and run the sparse GEMM with the fused epilogue");
  m.def("int_mm", &int_mm, "raw int32 accumulators of the sparse GEMM");
  m.def("quantize_rows", &quantize_rows, "per-token int8 quantization");
  m.def("mma_sp_probe", &mma_sp_probe, "one mma.sp m16n8k64 on explicit fragments");
  m.def("cutlass_available", &cutlass_available, "whether the CUTLASS kernels of an arch (80, 90) are built");
  m.def("cutlass_linear", &cutlass_linear, "quantize x per token and run the CUTLASS 2:4 GEMM with the fused epilogue");
  m.def("cutlass_int_mm", &cutlass_int_mm, "raw int32 accumulators of the CUTLASS 2:4 GEMM");
}

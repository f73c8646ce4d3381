// Dispatch of the CUTLASS-built 2:4 int8 GEMMs (C-style API in nxm_cutlass.h). No CUTLASS code here:
// each instantiation lives in its own translation unit under csrc/cutlass_instances/ (one CUTLASS
// instantiation costs about a minute and 4.5 GB of memory to compile), and the build defines
// NXM_WITH_CUTLASS_SM90 / NXM_WITH_CUTLASS_SM80 when it compiled that architecture's set
// (nxm_kernels/backends/cuda/build.py). Without them every entry point answers NXM_ERR_UNSUPPORTED.
//
// The instantiation set (tile = weight rows x tokens x dense K):
//   sm_90a  config 0: 128 x 128 x 128, cluster 1x1, outputs fp16, bf16, fp32, int32
//           config 1: 128 x 256 x 128, cluster 2x1 (B tiles multicast to the CTA pair), fp16, bf16
//   sm_80   config 0: 128 x 128 x 128 (4 warps of 64 x 64), outputs fp16, bf16, fp32, int32
// fp32 and int32 outputs (tests, rare callers) get one tile each; the large-token tile serves the
// fp16/bf16 outputs of BERT-sized problems. GELU and bias are run-time arguments of every kernel.
#include "nxm_cutlass.h"
#include "nxm_kernels.h"

namespace {

using RunFn = int (*)(const NxmCutlassParams*, void*, cudaStream_t);
using WsFn = int (*)(const NxmCutlassParams*, size_t*);
struct Entry {
  RunFn run;
  WsFn workspace;
};

#define NXM_DECLARE(NAME)                                                                        \
  extern "C" int nxm_cutlass_##NAME##_run(const NxmCutlassParams*, void*, cudaStream_t);         \
  extern "C" int nxm_cutlass_##NAME##_workspace(const NxmCutlassParams*, size_t*);
#define NXM_ENTRY(NAME) Entry{nxm_cutlass_##NAME##_run, nxm_cutlass_##NAME##_workspace}
constexpr Entry kNone{nullptr, nullptr};

constexpr int kOutKinds = 4;  // NXM_OUT_INT32, F16, BF16, F32

// One declaration list and table per architecture family, alike on purpose: each is compiled only
// when its family was built (NXM_WITH_CUTLASS_SM90 / _SM80), the two sets of instances differ (sm_90a
// has a second, large-token tile), and spelling each entry out keeps every symbol greppable beside
// the translation unit under csrc/cutlass_instances/ that defines it. A macro generating both would
// hide those names for the sake of a few lines.

#ifdef NXM_WITH_CUTLASS_SM90
NXM_DECLARE(sm90_128x128_i32)
NXM_DECLARE(sm90_128x128_f16)
NXM_DECLARE(sm90_128x128_bf16)
NXM_DECLARE(sm90_128x128_f32)
NXM_DECLARE(sm90_128x256_f16)
NXM_DECLARE(sm90_128x256_bf16)
// [config][out_kind]
const Entry kSm90[2][kOutKinds] = {
    {NXM_ENTRY(sm90_128x128_i32), NXM_ENTRY(sm90_128x128_f16), NXM_ENTRY(sm90_128x128_bf16),
     NXM_ENTRY(sm90_128x128_f32)},
    {kNone, NXM_ENTRY(sm90_128x256_f16), NXM_ENTRY(sm90_128x256_bf16), kNone},
};
#endif

#ifdef NXM_WITH_CUTLASS_SM80
NXM_DECLARE(sm80_128x128_i32)
NXM_DECLARE(sm80_128x128_f16)
NXM_DECLARE(sm80_128x128_bf16)
NXM_DECLARE(sm80_128x128_f32)
const Entry kSm80[1][kOutKinds] = {
    {NXM_ENTRY(sm80_128x128_i32), NXM_ENTRY(sm80_128x128_f16), NXM_ENTRY(sm80_128x128_bf16),
     NXM_ENTRY(sm80_128x128_f32)},
};
#endif

// The compiled kernel for (arch, config, out_kind), or kNone.
Entry lookup(int arch, int config, int out_kind) {
  if (out_kind < 0 || out_kind >= kOutKinds || config < 0) return kNone;
#ifdef NXM_WITH_CUTLASS_SM90
  if (arch == NXM_CUTLASS_SM90 && config < 2) return kSm90[config][out_kind];
#endif
#ifdef NXM_WITH_CUTLASS_SM80
  if (arch == NXM_CUTLASS_SM80 && config < 1) return kSm80[config][out_kind];
#endif
  (void)arch;
  return kNone;
}

// The shape rules every CUTLASS kernel here relies on (the prepared layouts guarantee KP and Np;
// N % 8 keeps every output row 16-byte aligned for the TMA store on sm_90a).
bool bad_params(const NxmCutlassParams* p) {
  if (!p || !p->xq || !p->w_values || !p->w_meta || !p->out) return true;
  if (p->M < 1 || p->N < 1 || p->N % 8 || p->Np < p->N || p->Np % 128 || p->KP < 128 || p->KP % 128) return true;
  if (p->Mp < p->M) return true;
  if (p->out_kind != NXM_OUT_INT32 && (!p->x_scale || !p->w_scale)) return true;
  return false;
}

}  // namespace

extern "C" int nxm_cutlass_available(int arch) {
  return lookup(arch, 0, NXM_OUT_F16).run != nullptr ? 1 : 0;
}

extern "C" int nxm_cutlass_token_multiple(int arch) { return arch == NXM_CUTLASS_SM80 ? 16 : 1; }

extern "C" int nxm_cutlass_select(int arch, int M, int N, int out_kind, int* config) {
  if (!config || M < 1 || N < 1) return NXM_ERR_ARGUMENT;
  (void)N;
  // sm_90a: the 128 x 256 tile once there are enough tokens for whole 256-token tiles to keep the
  // persistent grid busy (M >= 1024: with BERT-base N = 768 that is 6 x 4 = 24+ tiles per wave
  // unit); smaller M, and the fp32/int32 outputs, use 128 x 128. Not tuned on a GPU yet: the
  // measured dispatch (nxm tune) replaces this rule.
  int cfg = 0;
  if (arch == NXM_CUTLASS_SM90 && M >= 1024 && lookup(arch, 1, out_kind).run) cfg = 1;
  if (!lookup(arch, cfg, out_kind).run) return NXM_ERR_UNSUPPORTED;
  *config = cfg;
  return NXM_OK;
}

extern "C" int nxm_cutlass_workspace_size(int arch, const NxmCutlassParams* p, size_t* bytes) {
  if (bad_params(p) || !bytes) return NXM_ERR_ARGUMENT;
  Entry e = lookup(arch, p->config, p->out_kind);
  if (!e.workspace) return NXM_ERR_UNSUPPORTED;
  return e.workspace(p, bytes);
}

extern "C" int nxm_cutlass_sparse_gemm(int arch, const NxmCutlassParams* p, void* workspace, cudaStream_t stream) {
  if (bad_params(p)) return NXM_ERR_ARGUMENT;
  if ((reinterpret_cast<uintptr_t>(p->xq) | reinterpret_cast<uintptr_t>(p->w_values) |
       reinterpret_cast<uintptr_t>(p->w_meta) | reinterpret_cast<uintptr_t>(p->out)) & 15)
    return NXM_ERR_ALIGNMENT;
  if (p->Mp % nxm_cutlass_token_multiple(arch)) return NXM_ERR_ARGUMENT;
  Entry e = lookup(arch, p->config, p->out_kind);
  if (!e.run) return NXM_ERR_UNSUPPORTED;
  return e.run(p, workspace, stream);
}

// nxm-kernels: C-style interface of the CUTLASS-built 2:4 int8 GEMMs (framework-free: plain pointers
// and a stream). The only caller is csrc/torch_binding.cpp.
//
//   y[M, N] = epilogue(xq[M, KP] . W[N, KP]^T)        W 2:4 sparse int8, xq int8, int32 accumulation
//
// CUTLASS's sparse operand is A, so every kernel computes the transposed product
// D[N, M] = W[N, K] . xq^T (GEMM M = weight rows, GEMM N = tokens) and stores D column-major, which
// is y[M, N] row-major. The weight operands come in the arch's prepared layout
// (nxm_kernels/backends/cuda/layout.py: cutlass_sm90_layout / cutlass_sm80_layout).
//
// Launchers return 0 (NXM_OK) on success, a negative NXM_ERR_* code (nxm_kernels.h) for arguments the
// kernels cannot take, NXM_ERR_UNSUPPORTED when the kernel is not compiled into this build, or the
// positive cudaError_t of a failed launch.
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { NXM_ERR_UNSUPPORTED = -3 };  // no CUTLASS kernel for this arch / output kind in this build

// Architectures of the CUTLASS kernels (the prepared layouts differ between them).
enum { NXM_CUTLASS_SM80 = 80, NXM_CUTLASS_SM90 = 90 };

typedef struct {
  const int8_t* xq;         // [M, KP] int8 activations, row pitch KP bytes, columns >= K zero
  const float* x_scale;     // [M] per-token scales (unused for NXM_OUT_INT32)
  const int8_t* w_values;   // compressed weights [Np, KP/2] int8, row-major (both archs)
  const uint8_t* w_meta;    // metadata in the arch's reordered layout (layout.py)
  const float* w_scale;     // [Np] per-channel scales (unused for NXM_OUT_INT32)
  const float* bias;        // [N] float32 or NULL
  void* out;                // [M, N] row-major (row pitch N elements)
  int M, N, KP, Np;         // KP % 128 == 0, Np % 128 == 0, N % 8 == 0
  int Mp;                   // token rows allocated in xq and x_scale: Mp >= M, a multiple of
                            // nxm_cutlass_token_multiple(arch); rows M..Mp-1 are read, never stored
  int out_kind;             // NXM_OUT_INT32 / F16 / BF16 / F32 (nxm_kernels.h)
  int act;                  // NXM_ACT_NONE / NXM_ACT_GELU (ignored for NXM_OUT_INT32)
  int config;               // tile configuration (nxm_cutlass_select)
} NxmCutlassParams;

// 1 when this build holds CUTLASS kernels for `arch` (NXM_CUTLASS_SM80 / SM90), else 0.
int nxm_cutlass_available(int arch);

// The multiple the token rows of xq and x_scale are allocated to (NxmCutlassParams::Mp): 16 on sm_80
// (CUTLASS 2.x SparseGemm requires GEMM-N % 16 == 0, the int8 B access width, and reads all of them),
// 1 on sm_90a (TMA loads are bounds-checked).
int nxm_cutlass_token_multiple(int arch);

// Pick the tile configuration for an M-token problem on `arch` with output `out_kind`; writes it to
// `config`. NXM_ERR_UNSUPPORTED when no compiled kernel serves this (arch, out_kind).
int nxm_cutlass_select(int arch, int M, int N, int out_kind, int* config);

// Bytes of device workspace the launch of `p` needs (may be 0).
int nxm_cutlass_workspace_size(int arch, const NxmCutlassParams* p, size_t* bytes);

// Runs the GEMM with the fused epilogue. `workspace` holds nxm_cutlass_workspace_size bytes.
int nxm_cutlass_sparse_gemm(int arch, const NxmCutlassParams* p, void* workspace, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

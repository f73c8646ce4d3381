// nxm-kernels: C-style interface of the CUDA kernels (framework-free: plain pointers and a stream).
//
// The only caller is csrc/torch_binding.cpp, which validates tensors and adapts them to this API.
// Every launcher returns 0 on success or a negative NXM_ERR_* code; a CUDA launch error is returned
// as the positive cudaError_t value.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  NXM_OK = 0,
  NXM_ERR_ARGUMENT = -1,   // a size or pointer the kernels cannot take
  NXM_ERR_ALIGNMENT = -2,  // a pointer or stride not 16-byte aligned where the kernel needs it
};

enum { NXM_OUT_INT32 = 0, NXM_OUT_F16 = 1, NXM_OUT_BF16 = 2, NXM_OUT_F32 = 3 };
enum { NXM_BIAS_NONE = 0, NXM_BIAS_F16 = 1, NXM_BIAS_BF16 = 2, NXM_BIAS_F32 = 3 };
enum { NXM_ACT_NONE = 0, NXM_ACT_GELU = 1 };

// y[M, N] = epilogue(xq[M, KP] . W[N, KP]^T), W 2:4 sparse int8/int4 in the prepared layout
// (nxm_kernels/backends/cuda/layout.py).
typedef struct {
  const int8_t* xq;        // [M, KP] int8 activations, row pitch KP bytes (16-byte aligned)
  const float* x_scale;    // [M] per-token scales (unused for NXM_OUT_INT32)
  const uint8_t* w_values; // prepared values (int8: [Np/16, KP/64, 32, 16]; int4: [Np/16, KP/128, 32, 16])
  const uint32_t* w_meta;  // prepared metadata [Np/16, KP/64, 32]
  const float* w_scale;    // [Np] per-channel scales (unused for NXM_OUT_INT32)
  const void* bias;        // [N] or NULL
  void* out;               // [M, ldo] row-major
  int32_t* workspace;      // split-K partials [splits, M, Np] int32 (only when splits > 1)
  int32_t* counters;       // split-K tile counters [tiles], zero on entry (see nxm_quantize_rows)
  int M, N, KP, Np;        // KP % 128 == 0, Np % 128 == 0
  int ldo;                 // output row stride in elements
  int w4;                  // 1: int4 weights, 0: int8
  int out_kind, bias_kind, act;
  int config;              // kernel configuration (nxm_gemm_select)
  int splits;              // split-K factor (1 = none)
  int stages_per_split;    // 128-wide K stages per split
} NxmGemmParams;

// Pick a configuration and split-K factor for an M x Np x KP problem on a GPU with `sm_count`
// multiprocessors. Writes config, splits, stages_per_split and the number of counters needed.
int nxm_gemm_select(int M, int Np, int N, int KP, int sm_count, int* config, int* splits,
                    int* stages_per_split, int* num_tiles);

int nxm_sparse_gemm(const NxmGemmParams* p, cudaStream_t stream);

// Per-token symmetric int8 quantization of x[M, K] (row stride ldx elements; dtype by x_kind,
// NXM_OUT_F16/BF16/F32): xq[M, KP] (columns >= K zero), scale[M]. It also zeroes `zero_count` ints at
// `zero` (the split-K counters of the GEMM launched next), saving a memset launch.
int nxm_quantize_rows(const void* x, int x_kind, int M, int K, long long ldx, int KP, int8_t* xq,
                      float* scale, int32_t* zero, int zero_count, cudaStream_t stream);

// One warp executes one mma.sp m16n8k64 on given fragments (a, b, c: [32][4], e: [32]) -> d [32][4].
// Used by the GPU test that checks the CPU model of the instruction.
int nxm_mma_sp_probe(const uint32_t* a, const uint32_t* b, const int32_t* c, const uint32_t* e,
                     int32_t* d, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

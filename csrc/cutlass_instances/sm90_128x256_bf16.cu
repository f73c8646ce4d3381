// sm_90a, tile 128 (weight rows) x 256 (tokens) x 128 (dense K), cluster 2x1, bf16 output.
#include "../cutlass_sm90_sparse.cuh"
NXM_SM90_INSTANCE(sm90_128x256_bf16, 128, 256, 2, 1, cutlass::bfloat16_t)

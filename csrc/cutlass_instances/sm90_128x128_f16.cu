// sm_90a, tile 128 (weight rows) x 128 (tokens) x 128 (K), cluster 1x1, fp16 output.
#include "../cutlass_sm90_sparse.cuh"
NXM_SM90_INSTANCE(sm90_128x128_f16, 128, 128, 1, 1, cutlass::half_t)

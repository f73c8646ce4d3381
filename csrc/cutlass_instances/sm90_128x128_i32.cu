// sm_90a, tile 128 (weight rows) x 128 (tokens) x 128 (dense K), cluster 1x1, int32 (raw accumulator) output.
#include "../cutlass_sm90_sparse.cuh"
NXM_SM90_INSTANCE(sm90_128x128_i32, 128, 128, 1, 1, int32_t)

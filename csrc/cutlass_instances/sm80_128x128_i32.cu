// sm_80/86/89, tile 128 (weight rows) x 128 (tokens) x 128 (dense K), int32 output.
#include "../cutlass_sm80_sparse.cuh"
NXM_SM80_INSTANCE(sm80_128x128_i32, int32_t)

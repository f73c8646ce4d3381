// Host-side proof of the sm_80 CUTLASS weight layout (no GPU): CUTLASS's own host utilities applied to
// the canonical packed weight.
//
//   sm80_layout_check DIR NP KP
//
// Reads DIR/values.bin (int8 [NP, KP/2], the canonical kept codes, padded) and DIR/meta.bin (uint8
// [NP, KP/8], the canonical metadata bytes, padded), then writes
//   DIR/dense.bin          int8 [NP, KP]: cutlass::uncompress(values, metadata read as the kernel's
//                          ElementE words) - must equal our dense decode (PackedWeight.int_weight);
//   DIR/meta_reordered.bin the same words after cutlass::reorder_meta into the kernel's LayoutE - must
//                          equal nxm_kernels.backends.cuda.cutlass_layout.cutlass_sm80_layout's meta.
// The kernel type itself (csrc/cutlass_sm80_sparse.cuh) supplies ElementE, LayoutE and the sparsity
// constants, so a change of CUTLASS version or configuration shows up here.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cutlass_sm80_sparse.cuh"
#include "cutlass/util/host_reorder.h"
#include "cutlass/util/host_tensor.h"
#include "cutlass/util/host_uncompress.h"

using Gemm = nxm::sm80::SparseGemm<cutlass::half_t>::Gemm;
using ElementE = typename Gemm::GemmKernel::ElementE;
using LayoutE = typename Gemm::GemmKernel::LayoutE;

static std::vector<char> read_file(const std::string& path, size_t bytes) {
  std::vector<char> buf(bytes);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(buf.data(), 1, bytes, f) != bytes) {
    std::fprintf(stderr, "cannot read %zu bytes from %s\n", bytes, path.c_str());
    std::exit(2);
  }
  std::fclose(f);
  return buf;
}

static void write_file(const std::string& path, const void* data, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(data, 1, bytes, f) != bytes) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(2);
  }
  std::fclose(f);
}

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s DIR NP KP\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const int np = std::atoi(argv[2]), kp = std::atoi(argv[3]);
  static_assert(Gemm::kSparse == 2, "2:4 for int8");
  static_assert(sizeof(ElementE) == 4, "32-bit metadata words for int8");
  const int e_cols = kp / Gemm::kSparse / Gemm::kElementsPerElementE;
  if (e_cols * 32 != kp) {
    std::fprintf(stderr, "unexpected kElementsPerElementE %d\n", int(Gemm::kElementsPerElementE));
    return 3;
  }

  std::vector<char> values = read_file(dir + "/values.bin", size_t(np) * kp / 2);
  std::vector<char> meta = read_file(dir + "/meta.bin", size_t(np) * kp / 8);

  cutlass::HostTensor<int8_t, cutlass::layout::RowMajor> a({np, kp / 2}, false);  // host only: no device allocation
  cutlass::HostTensor<int8_t, cutlass::layout::RowMajor> dense({np, kp}, false);
  cutlass::HostTensor<ElementE, cutlass::layout::RowMajor> e({np, e_cols}, false);
  cutlass::HostTensor<ElementE, LayoutE> e_reordered({np, e_cols}, false);
  std::memcpy(a.host_data(), values.data(), values.size());
  std::memcpy(e.host_data(), meta.data(), meta.size());  // canonical bytes of a row = little-endian words

  cutlass::uncompress(dense.host_ref(), a.host_ref(), e.host_ref(), np, kp);
  cutlass::reorder_meta(e_reordered.host_ref(), e.host_ref(), {np, 0, e_cols});

  write_file(dir + "/dense.bin", dense.host_data(), size_t(np) * kp);
  write_file(dir + "/meta_reordered.bin", e_reordered.host_data(), e_reordered.capacity() * sizeof(ElementE));
  std::printf("ok sm80 np=%d kp=%d e_cols=%d capacity=%zu\n", np, kp, e_cols, size_t(e_reordered.capacity()));
  return 0;
}

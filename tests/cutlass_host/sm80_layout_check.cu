// Host-side proof of the sm_80 CUTLASS weight layout (no GPU): CUTLASS's own host utilities applied to
// the canonical packed weight.
//
//   sm80_layout_check DIR NP KP
//
// Reads DIR/values.bin (int8 [NP, KP/2], the canonical kept codes, padded) and DIR/meta.bin (uint8
// [NP, KP/8], the canonical metadata bytes, padded), then writes
//   DIR/dense.bin          int8 [NP, KP]: cutlass::uncompress(values, metadata read as the kernel's
//                          ElementE words) - must equal our dense decode (PackedWeight.int_weight);
//   (with N: can_implement of the kernel for this weight at several token counts, see below)
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

// With N given: CUTLASS's own admission check (can_implement, host code) of the kernel for problems with
// this weight at several token counts, with the arguments the launcher builds. Returns the failures.
static int check_can_implement(int np, int kp, int n) {
  alignas(256) static char dummy[256];  // 16-byte aligned stand-ins: can_implement reads no data
  int failures = 0;
  for (int m : {1, 7, 255, 256, 300, 2048, 4099}) {
    NxmCutlassParams p{};
    p.xq = reinterpret_cast<const int8_t*>(dummy);
    p.x_scale = reinterpret_cast<const float*>(dummy);
    p.w_values = reinterpret_cast<const int8_t*>(dummy);
    p.w_meta = reinterpret_cast<const uint8_t*>(dummy);
    p.w_scale = reinterpret_cast<const float*>(dummy);
    p.out = dummy;
    p.M = m;
    p.Mp = (m + 15) / 16 * 16;  // nxm_cutlass_token_multiple: the launcher's padding of the token rows
    p.N = n;
    p.KP = kp;
    p.Np = np;
    p.out_kind = NXM_OUT_F16;
    const bool ok = nxm::sm80::SparseGemm<cutlass::half_t>::can_implement(p);
    std::printf("can_implement M=%d N=%d KP=%d: %d\n", m, n, kp, ok ? 1 : 0);
    failures += !ok;
  }
  return failures;
}

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
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: %s DIR NP KP [N]\n", argv[0]);
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
  return argc == 5 && check_can_implement(np, kp, std::atoi(argv[4])) ? 4 : 0;
}

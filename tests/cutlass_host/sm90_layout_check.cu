// Host-side check of the sm_90a CUTLASS weight layout (no GPU): decodes our prepared buffers through
// CUTLASS's own layout functions, built exactly as CUTLASS's compressor builds its global tensors
// (cutlass/transform/kernel/sm90_sparse_gemm_compressor.hpp, structure_sparse_compress):
//
//   layout_A = SparseConfig::fill_layoutA(problem), layout_E = SparseConfig::fill_layoutE(problem)
//   gAC = recast<uint8>(tensor(sparse_elem<2, uint8>*, layout_A))     compressed codes (m, kc)
//   gE  = recast<uint8>(tensor(ElementEMma*, layout_E))               metadata bytes (m, k/8)
//
// with SparseConfig taken from the kernel type of csrc/cutlass_sm90_sparse.cuh. A metadata byte holds
// the 4-bit descriptions of groups 2b (low nibble, as the compressor's recast<uint4_t> writes it) and
// 2b + 1; each is i0 | i1 << 2 (PTX sparse metadata).
//
//   sm90_layout_check DIR NP KP
//
// Reads DIR/values.bin (int8 [NP, KP/2]) and DIR/meta.bin (NP*KP/8 bytes) as produced by
// nxm_kernels.backends.cuda.cutlass_layout.cutlass_sm90_layout, writes DIR/dense.bin (int8 [NP, KP]),
// which must equal our dense decode (PackedWeight.int_weight). With N, it also asks the kernel type's
// can_implement about the launcher's arguments for this weight at several token counts. The GPU compressor itself cannot run on
// the host; its index maths is what is exercised here.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cutlass_sm90_sparse.cuh"

using namespace cute;
using Kernel = nxm::sm90::SparseGemm<Shape<_128, _128, _128>, Shape<_1, _1, _1>, cutlass::half_t>;
using SparseConfig = Kernel::SparseConfig;
using ElementEMma = typename SparseConfig::ElementEMma;
using ElementEMmaRaw = typename SparseConfig::ElementEMmaRaw;

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
    p.Mp = (m + 0) / 1 * 1;  // nxm_cutlass_token_multiple: the launcher's padding of the token rows
    p.N = n;
    p.KP = kp;
    p.Np = np;
    p.out_kind = NXM_OUT_F16;
    const bool ok = Kernel::can_implement(p);
    std::printf("can_implement M=%d N=%d KP=%d: %d\n", m, n, kp, ok ? 1 : 0);
    failures += !ok;
  }
  return failures;
}

static std::vector<uint8_t> read_file(const std::string& path, size_t bytes) {
  std::vector<uint8_t> buf(bytes);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(buf.data(), 1, bytes, f) != bytes) {
    std::fprintf(stderr, "cannot read %zu bytes from %s\n", bytes, path.c_str());
    std::exit(2);
  }
  std::fclose(f);
  return buf;
}

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: %s DIR NP KP [N]\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  const int np = std::atoi(argv[2]), kp = std::atoi(argv[3]);
  static_assert(SparseConfig::IsI8, "int8 sparse config");
  static_assert(typename SparseConfig::ElementEMmaSparsity{} == 8, "one metadata byte per 8 dense K");

  const auto problem = make_shape(np, 1, kp, 1);
  const auto layout_a = SparseConfig::fill_layoutA(problem);
  const auto layout_e = SparseConfig::fill_layoutE(problem);
  const size_t e_bytes = size_t(cosize(layout_e)) / 8;
  const size_t a_bytes = size_t(cosize(layout_a)) / 2;
  if (a_bytes != size_t(np) * kp / 2 || e_bytes != size_t(np) * kp / 8) {
    std::fprintf(stderr, "unexpected layout sizes: A %zu E %zu\n", a_bytes, e_bytes);
    return 3;
  }
  std::vector<uint8_t> values = read_file(dir + "/values.bin", a_bytes);
  std::vector<uint8_t> meta = read_file(dir + "/meta.bin", e_bytes);

  Tensor gAC_sparse = make_tensor(make_gmem_ptr(recast_ptr<sparse_elem<2, uint8_t>>(values.data())), layout_a);
  Tensor gAC = recast<uint8_t>(gAC_sparse);
  Tensor gE_sparse = make_tensor(make_gmem_ptr(recast_ptr<ElementEMma>(meta.data())), layout_e);
  Tensor gE = recast<ElementEMmaRaw>(gE_sparse);
  if (size<0>(gAC) != np || size<1>(gAC) != kp / 2 || size<0>(gE) != np || size<1>(gE) != kp / 8) {
    std::fprintf(stderr, "unexpected tensor shapes\n");
    print(gAC.layout()); print("\n"); print(gE.layout()); print("\n");
    return 3;
  }

  std::vector<int8_t> dense(size_t(np) * kp, 0);
  for (int m = 0; m < np; ++m) {
    for (int b = 0; b < kp / 8; ++b) {
      const uint8_t byte = gE(m, b, 0);
      for (int h = 0; h < 2; ++h) {
        const int g = 2 * b + h, e = (byte >> (4 * h)) & 0xF, i0 = e & 3, i1 = e >> 2;
        dense[size_t(m) * kp + 4 * g + i0] = static_cast<int8_t>(gAC(m, 2 * g, 0));
        dense[size_t(m) * kp + 4 * g + i1] = static_cast<int8_t>(gAC(m, 2 * g + 1, 0));
      }
    }
  }
  FILE* f = std::fopen((dir + "/dense.bin").c_str(), "wb");
  if (!f || std::fwrite(dense.data(), 1, dense.size(), f) != dense.size()) return 2;
  std::fclose(f);
  std::printf("ok sm90 np=%d kp=%d layout_e=", np, kp);
  print(layout_e);
  std::printf("\n");
  return argc == 5 && check_can_implement(np, kp, std::atoi(argv[4])) ? 4 : 0;
}

#!/usr/bin/env bash
# compute-sanitizer (memcheck, then racecheck) over the CUDA kernels on a few shapes that reach every
# code path: each of the four tile configurations, split-K with the last-CTA reduction, int8 and int4
# weights, ragged M/N/K, bias + GELU, and the raw int32 output. Needs a GPU and a built extension.
#
#   bash csrc/sanitize.sh            # logs in $NXM_SANITIZE_OUT (default: /tmp/nxm-sanitizer)
#
# Exit status 0 only when both tools report no errors.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${NXM_SANITIZE_OUT:-/tmp/nxm-sanitizer}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python}
SAN=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}

DRIVER=$(cat <<'EOF'
import torch, nxm_kernels as nxm
torch.manual_seed(0)
dev = "cuda"
# (M, N, K): small-M configs with split-K, a ragged shape, the 128x128 config with split-K.
# (300, 768, 768): M >= 256 runs the CUTLASS kernel (nxm_kernels/backends/cuda/backend.py, select_kernel).
for m, n, k in [(1, 768, 768), (20, 100, 200), (64, 1024, 1024), (200, 384, 640), (300, 768, 768)]:
    for bits in (8, 4):
        # packed on the CPU so the sanitizer instruments few kernels besides ours
        p = nxm.pack(torch.randn(n, k), bits=bits, pattern="2:4", prune=True).to(dev)
        x = torch.randn(m, k, device=dev, dtype=torch.float16)
        b = torch.randn(n, device=dev, dtype=torch.float16)
        y = nxm.sparse_int_linear(x, p, b, "gelu", backend="cuda")
        xq, _ = nxm.quantize_per_token(x)
        acc = nxm.sparse_int_mm(xq, p, backend="cuda")
        assert torch.equal(acc, nxm.sparse_int_mm(xq, p, backend="reference")), (m, n, k, bits)
torch.cuda.synchronize()
print("sanitize driver: ok")
EOF
)

status=0
for tool in memcheck racecheck; do
  echo "== compute-sanitizer --tool $tool (kernels matching 'nxm')"
  "$SAN" --tool "$tool" --kernel-regex kns=nxm --error-exitcode 99 --target-processes all "$PY" -c "$DRIVER" \
    > "$OUT_DIR/$tool.log" 2>&1
  rc=$?
  if [[ $rc != 0 ]] && grep -qiE "unrecogni|unknown option|invalid option" "$OUT_DIR/$tool.log"; then
    echo "   (this compute-sanitizer has no --kernel-regex: checking every kernel)"
    "$SAN" --tool "$tool" --error-exitcode 99 --target-processes all "$PY" -c "$DRIVER" > "$OUT_DIR/$tool.log" 2>&1
    rc=$?
  fi
  tail -n 5 "$OUT_DIR/$tool.log"
  if [[ $rc != 0 ]]; then
    echo "$tool: FAILED (rc=$rc), see $OUT_DIR/$tool.log"
    status=1
  else
    echo "$tool: no errors"
  fi
done
exit $status

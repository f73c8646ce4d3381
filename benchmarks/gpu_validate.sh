#!/usr/bin/env bash
# One command for a GPU machine (no network needed), in under ten minutes:
#   install the project, build the CUDA extension, run the GPU tests, run short versions of the GEMM
#   and end-to-end benchmarks, run compute-sanitizer (memcheck, racecheck) on the CUDA kernels, and
#   print a compact summary LAST (a remote caller often sees only the tail of the output).
#
#   bash benchmarks/gpu_validate.sh            # results in $OUT if set, else benchmarks/results/<gpu>-<date>-<commit>/
#   NXM_COMMIT=$(git rev-parse --short=10 HEAD) bash benchmarks/gpu_validate.sh   # a copied tree without .git
#
# Every step is time-boxed (`timeout`) against one overall budget (NXM_VALIDATE_BUDGET seconds, default
# 570), keeping back enough time for the steps after it; a failing step never stops the later ones.
# Full logs go to <results>/logs/<step>.log; the console shows one line per step (plus the tail of a
# failing step's log) and then the summary. Exit status: 0 only if every step passed.
set -u -o pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
START=$(date +%s)
BUDGET=${NXM_VALIDATE_BUDGET:-570}
PY=${PYTHON:-python}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"   # works even if the editable install does not
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 8)}  # ninja parallelism for the extension build
export TQDM_DISABLE=1

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)
gpu=${gpu:-no-gpu}
commit=$(git rev-parse --short=10 HEAD 2>/dev/null || echo "${NXM_COMMIT:-unknown}")
export NXM_COMMIT=$commit
slug=$(echo "${gpu#NVIDIA }" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')
RESULTS=${OUT:-$REPO/benchmarks/results/$slug-$(date -u +%Y%m%d)-$commit}
mkdir -p "$RESULTS/logs"
STEPS=$RESULTS/steps.tsv
: > "$STEPS"
FAILED=0

# run_step NAME CAP_SECONDS RESERVE_SECONDS COMMAND
#   The step may use at most CAP seconds, and never eat into RESERVE: the least the later steps need
#   (build 120, gpu-tests 60, gemm 90, e2e 60, sanitize 30, summary 15). If every step ran to its cap,
#   the times would be 30 + 90 + 195 + 60 + 90 + 60 + 30 = 555s of the 570s budget.
run_step() {
  local name=$1 cap=$2 reserve=$3 cmd=$4
  local now left limit t0 rc status secs note=""
  now=$(date +%s)
  left=$(( BUDGET - (now - START) - reserve ))
  limit=$(( cap < left ? cap : left ))
  if (( limit < 10 )); then
    printf '%s\tSKIPPED\t-\t0\tno time left in the %ss budget\n' "$name" "$BUDGET" >> "$STEPS"
    echo "[gpu_validate] $name: SKIPPED (no time left)"
    FAILED=1
    return
  fi
  echo "[gpu_validate] $name: running (time box ${limit}s) ..."
  t0=$(date +%s)
  timeout -k 20 "$limit" bash -c "$cmd" > "$RESULTS/logs/$name.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - t0 ))
  if (( rc == 0 )); then
    status=PASS
  elif (( rc == 124 || rc == 137 )); then
    status=TIMEOUT; FAILED=1; note="stopped after ${limit}s"
  else
    status=FAIL; FAILED=1
    note=$(grep -v '^\s*$' "$RESULTS/logs/$name.log" | tail -n 1 | cut -c1-160 | tr '\t' ' ')
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" "$note" >> "$STEPS"
  echo "[gpu_validate] $name: $status (rc=$rc, ${secs}s; log: logs/$name.log)"
  if [[ $status != PASS ]]; then
    tail -n 12 "$RESULTS/logs/$name.log" | cut -c1-200 | sed 's/^/    | /'
  fi
}

# 1. What machine is this (also written to environment.json).
run_step env 30 405 "nvidia-smi; $PY -c 'import json, torch; from benchmarks import common; \
d = torch.device(\"cuda\" if torch.cuda.is_available() else \"cpu\"); e = common.environment(d); \
print(json.dumps(e, indent=1)); common.write_json(common.Path(\"$RESULTS/environment.json\"), e); \
assert torch.cuda.is_available(), \"no CUDA GPU visible to torch\"'"

# 2. Install without network (the machine has torch, triton, transformers; no package registry).
#    The CUTLASS headers (nvidia-cutlass, pinned in the 'cuda' extra) come as a carried wheel when the machine
#    lacks them: `pip download --no-deps nvidia-cutlass==4.2.0.0 -d .whl` beforehand, carry .whl.
run_step install 90 375 "if ! $PY -c 'import importlib.util as u; assert u.find_spec(\"cutlass_library\")' 2>/dev/null; then \
  ls .whl/nvidia_cutlass-*.whl >/dev/null 2>&1 && $PY -m pip install -q --no-deps --no-index .whl/nvidia_cutlass-*.whl \
  || echo 'nvidia-cutlass not installed and no .whl/nvidia_cutlass-*.whl: building without the CUTLASS kernels'; fi; \
  $PY -m pip install --no-deps --no-build-isolation -e . && $PY -c 'import nxm_kernels; print(nxm_kernels.__file__)'"

# 3. Build the CUDA extension (csrc/) through the cuda backend's build function, then show the backends.
run_step build 240 255 "$PY - <<'EOF'
import torch
from nxm_kernels.backends.cuda import backend as cuda
cuda.build(verbose=True)
from nxm_kernels.backends import BACKENDS, unavailable_reason
for name in BACKENDS:
    print(f'backend {name}:', unavailable_reason(name, 'cuda') or 'available')
assert unavailable_reason('cuda', 'cuda') is None, 'cuda backend still unavailable after the build'
print('CUTLASS kernels:', cuda.cutlass_unavailable_reason(torch.device('cuda')) or 'available')
EOF"

# 4. The GPU tests (marked @pytest.mark.gpu; the CPU tests are CI's job).
#    (includes tests/test_cutlass_backend.py: the CUTLASS kernels and cuSPARSELt, exactness and epilogue)
run_step gpu-tests 170 300 "$PY -m pytest -m gpu tests/test_cutlass_backend.py tests -q -rfE --tb=short -p no:cacheprovider --junitxml='$RESULTS/gpu-tests.xml'"

# 5. Short GEMM microbenchmark (all BERT shapes, a few M; every provider checked before timing).
run_step gemm 140 160 "$PY benchmarks/bench_gemm.py --quick ${NXM_GEMM_ARGS:-} --out '$RESULTS'"

# 6. Short end-to-end benchmark (BERT-base, a few batch x seq, eager and CUDA graphs).
run_step e2e 80 80 "$PY benchmarks/bench_e2e.py --quick --out '$RESULTS'"

# 7. compute-sanitizer (memcheck, racecheck) on the CUDA kernels, through the CUDA backend's script.
run_step sanitize 75 5 "NXM_SANITIZE_OUT='$RESULTS/sanitizer' bash csrc/sanitize.sh"

# 8. The summary, last.
$PY benchmarks/summarize.py "$RESULTS" --write "$RESULTS/summary.txt" > "$RESULTS/logs/summary.log" 2>&1 \
  || echo "[gpu_validate] summary: FAILED (see logs/summary.log)"
$PY benchmarks/summarize.py "$RESULTS" --markdown --write "$RESULTS/summary.md" > /dev/null 2>&1 || true
echo
echo "================================================================ summary ($(( $(date +%s) - START ))s)"
if [[ -f $RESULTS/summary.txt ]]; then cat "$RESULTS/summary.txt"; else tail -n 20 "$RESULTS/logs/summary.log"; fi
echo "gpu_validate: $([[ $FAILED == 0 ]] && echo 'all steps passed' || echo 'SOME STEPS FAILED')"
exit $FAILED

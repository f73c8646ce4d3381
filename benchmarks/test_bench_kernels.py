"""pytest-benchmark entry points for the GEMM providers of :mod:`benchmarks.bench_gemm`.

    pytest benchmarks/ --benchmark-only                        # on a GPU
    pytest benchmarks/ --benchmark-only --benchmark-json=out.json --benchmark-group-by=param:shape

One test per (provider, shape, M). Each builds the provider exactly as ``bench_gemm.py`` does,
checks its result (a wrong answer fails the test; an unsupported provider or problem is skipped
with the reason), then lets pytest-benchmark time one call plus ``torch.cuda.synchronize()`` (the
ecosystem's wall-clock view, launch overhead included). ``extra_info`` carries the problem, the bytes
moved and the kernel time from ``triton.testing.do_bench`` (cold L2, host overhead hidden), which is
the number ``bench_gemm.py`` reports.
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks import bench_gemm, common
from nxm_kernels.timing import measure  # after common, which sets TRITON_INTERPRET on a CPU

GPU = torch.cuda.is_available()
SMOKE = not GPU and os.environ.get("NXM_BENCH_SMOKE") == "1"
DEVICE = torch.device("cuda" if GPU else "cpu")

SHAPES = [(40, 72)] if SMOKE else [(3072, 768), (768, 3072), (4096, 1024), (1024, 4096)]
MS = [5] if SMOKE else [1, 64, 2048]
BACKENDS = ["reference", "triton"] if SMOKE else ["cuda", "triton"]
SPECS = ["2:4-w8a8", "2:4-w4a8"] if SMOKE else ["2:4-w8a8", "2:4-w4a8", "dense-w8a8"]
PROVIDERS = {p.name: p for p in bench_gemm.all_providers(BACKENDS, SPECS, ["op", "gemm"])}

_problems: dict = {}
_reasons: dict = {}


def _problem(n: int, k: int) -> bench_gemm.Problem:
    if (n, k) not in _problems:
        _problems.clear()  # one shape's data at a time
        _problems[(n, k)] = bench_gemm.Problem(n, k, DEVICE, lambda nbytes: common.rotation_count(nbytes, DEVICE))
    return _problems[(n, k)]


def _backend_reasons() -> dict:
    if not _reasons:
        _reasons.update(common.backend_status(DEVICE))
    return _reasons


@pytest.mark.parametrize("m", MS, ids=lambda m: f"M{m}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(PROVIDERS))
def test_gemm(benchmark, name, shape, m):
    prov = PROVIDERS[name]
    why = bench_gemm.unavailable(prov, DEVICE, _backend_reasons())
    if why:
        pytest.skip(f"{name} unavailable: {why}")
    problem = _problem(*shape)
    try:
        case = prov.build(problem, m)  # raises Incorrect (a failure) on a wrong answer
    except bench_gemm.Unsupported as exc:
        pytest.skip(f"{name} cannot run {shape[0]}x{shape[1]} M={m}: {exc}")
    for _ in range(case.n_sets):
        case.run()
    sync = torch.cuda.synchronize if GPU else (lambda: None)

    def one_call():
        case.run()
        sync()

    n, k = shape
    benchmark.group = f"{n}x{k} M={m}"
    benchmark.extra_info.update(provider=name, label=prov.label, n=n, k=k, m=m, padded_m=case.padded_m,
                                bytes=case.bytes, dense_equivalent_ops=2 * m * n * k, check=case.check,
                                note=case.note)
    if GPU:
        t = measure(case.run, DEVICE, timer="do_bench", warmup_ms=5, rep_ms=20)
        benchmark.extra_info.update(do_bench_median_us=t.median_ms * 1e3,
                                    do_bench_tops=2 * m * n * k / (t.median_ms * 1e-3) / 1e12)
    benchmark(one_call)

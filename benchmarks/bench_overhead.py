"""Host time per call of ``NxMLinear`` against ``nn.Linear``, with our kernel replaced by a no-op.

What is measured is the Python/PyTorch work around the kernel: ``NxMLinear.forward``'s checks, its
per-M-bucket kernel lookup, the reshapes, and the call into the backend, with the kernel itself a
no-op that only allocates its output (as every kernel launcher does). The baseline is
``nn.Linear`` on a problem so small (1 token, 16 x 16) that its matmul costs next to nothing: its
module call, ``F.linear`` dispatch and output allocation. Both run on the CPU under
``torch.inference_mode()``, timed with ``time.perf_counter_ns`` over many calls (best of several
repeats, the least disturbed by other processes). Goal: NxMLinear <= 1.5x nn.Linear.

Two layers are timed: one on the reference backend, whose kernel variant is replaced by the no-op
(``NxMLinear`` alone), and, where Triton's interpreter makes the backend available on the CPU
(``TRITON_INTERPRET=1``, set here), one on the triton backend with its two launchers replaced by
no-ops (``NxMLinear`` plus the backend's glue, as on a GPU, minus Triton's own launcher). The no-ops
are in place while the layers are built, so they are built by the real resolution path. Also
reported, for information: the public ``nxm.sparse_int_linear`` (which checks every argument and
resolves the backend per call) with the same no-op kernels.

    python benchmarks/bench_overhead.py                 # ~20 s
    python benchmarks/bench_overhead.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


import torch
import torch.nn as nn

# The triton backend runs on a CPU only through Triton's interpreter, which must be chosen before the
# backend is imported; its launchers are replaced by no-ops here, so nothing is interpreted.
os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import report_goal  # noqa: E402
import nxm_kernels as nxm  # noqa: E402
from nxm_kernels.backends import Variant, get_backend, unavailable_reason  # noqa: E402
from nxm_kernels.modules import NxMLinear  # noqa: E402
from nxm_kernels.timing import text_table  # noqa: E402

GOAL = 1.5


def _noop_kernel(x2d, layout, bias, activation):
    return x2d.new_empty((x2d.shape[0], layout.meta.n))


class NoopKernels:
    """While active, the reference backend's default variant and the Triton launchers
    (``quant.quantize_per_token``, ``gemm.int_gemm``) are no-ops that allocate their outputs (why: the
    module docstring)."""

    def __enter__(self):
        self.reference = get_backend("reference")
        self.saved = self.reference.VARIANTS
        self.reference.VARIANTS = (Variant("reference", _noop_kernel),) + tuple(self.saved[1:])
        self.triton = None
        if unavailable_reason("triton", "cpu") is None:
            from nxm_kernels.backends.triton import gemm, quant

            self.triton = (gemm, gemm.int_gemm, quant, quant.quantize_per_token)
            gemm.int_gemm = lambda xq, values, metadata, *, n, out_dtype=None, x_scale=None, **kw: xq.new_empty(
                (xq.shape[0], n), dtype=out_dtype if x_scale is not None else torch.int32)
            quant.quantize_per_token = lambda x2d: (x2d.new_empty(x2d.shape, dtype=torch.int8),
                                                    x2d.new_empty((x2d.shape[0], 1), dtype=torch.float32))
        return self

    def __exit__(self, *exc):
        self.reference.VARIANTS = self.saved
        if self.triton is not None:
            gemm, int_gemm, quant, quantize = self.triton
            gemm.int_gemm, quant.quantize_per_token = int_gemm, quantize
        from nxm_kernels import dispatch

        dispatch.reload()


def per_call_us(fn, calls: int, repeats: int) -> float:
    """Best over ``repeats`` of the mean time of ``calls`` calls of ``fn()``, in microseconds."""
    for _ in range(min(calls, 200)):  # warm-up: caches, lazy imports
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / calls / 1e3)
    return best


def measure(calls: int = 20000, repeats: int = 7, hidden: int = 768, tokens: int = 128) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(1, tokens, hidden)
    base = nn.Linear(16, 16).eval()
    xb = torch.randn(1, 1, 16)
    lin = nn.Linear(hidden, hidden)
    rows = {}
    with NoopKernels() as noop, torch.inference_mode():
        rows["nn.Linear (1 x 16 x 16)"] = per_call_us(lambda: base(xb), calls, repeats)
        backends = ["reference"] + (["triton"] if noop.triton is not None else [])
        for backend in backends:
            layer = NxMLinear.from_linear(lin, "2:4-w8a8", backend=backend).eval()
            assert layer(x).shape == (1, tokens, hidden) and layer.resolved_backend == backend
            rows[f"NxMLinear, {backend} backend"] = per_call_us(lambda: layer(x), calls, repeats)
        packed, bias = layer.packed, layer.bias
        rows[f"nxm.sparse_int_linear, {backend} backend (public, checked)"] = per_call_us(
            lambda: nxm.sparse_int_linear(x, packed, bias, backend=backend), max(calls // 4, 1), repeats)
    linear_us = rows["nn.Linear (1 x 16 x 16)"]
    worst = max(v for k, v in rows.items() if k.startswith("NxMLinear"))
    return {"us_per_call": rows, "ratio": worst / linear_us, "ratios": {k: v / linear_us for k, v in rows.items()},
            "goal_ratio": GOAL, "calls": calls, "repeats": repeats, "shape": {"tokens": tokens, "hidden": hidden},
            "torch": torch.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few calls (the test suite's smoke run)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    r = measure(calls=500, repeats=2) if args.quick else measure()
    print(f"host time per call on the CPU, no-op kernels, x = 1 x {r['shape']['tokens']} x {r['shape']['hidden']} "
          f"({r['calls']} calls, best of {r['repeats']}):")
    print(text_table(["", "us per call", "vs nn.Linear"], [[name, f"{us:.2f}", f"{r['ratios'][name]:.2f}x"]
                                                           for name, us in r["us_per_call"].items()]))
    report_goal("NxMLinear / nn.Linear (worst backend)", r["ratio"], GOAL, r, json_path=args.json,
                quick_note="too few calls for the numbers to mean much" if args.quick else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""pytest setup for ``pytest benchmarks/ --benchmark-only`` (pytest-benchmark).

The kernel benchmarks need a CUDA GPU. Without one they are skipped, unless ``NXM_BENCH_SMOKE=1``
asks for the CPU smoke run (a tiny shape on the reference and interpreted-Triton backends, run once
with ``--benchmark-disable``): that is how the test suite keeps these entry points from rotting.
"""

import os

import pytest
import torch

from benchmarks import common  # noqa: F401  (sets TRITON_INTERPRET on a CPU before nxm_kernels loads Triton)

SMOKE = os.environ.get("NXM_BENCH_SMOKE") == "1"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() or SMOKE:
        return
    skip = pytest.mark.skip(reason="kernel benchmarks need a CUDA GPU (NXM_BENCH_SMOKE=1 runs the CPU smoke mode)")
    for item in items:
        item.add_marker(skip)

"""Shared test setup.

* Without a GPU, Triton kernels run through Triton's interpreter: ``TRITON_INTERPRET`` must be set
  before any ``@triton.jit`` function is created, so it is set here, before the package is imported.
* Every test draws fresh random inputs: an autouse fixture seeds torch with a new seed per test and
  prints it, so a failure shows the seed that reproduces it (``NXM_TEST_SEED=<seed>``).
* ``@pytest.mark.gpu`` tests skip cleanly without a CUDA device.
* Under pytest-xdist, one intra-op thread per worker.
* ``@pytest.mark.slow`` marks the tests that start a process importing torch (or a compiler) or run an
  example/benchmark program end to end; ``-m "not slow"`` is the quick run, CI runs everything.
* ``run_program`` runs a repository program (``python/``, ``benchmarks/``) in the test's process, as
  ``python PATH ARGS...`` would, without paying a fresh interpreter's imports of torch and transformers.
"""

import os
import random
import runpy
import sys
from pathlib import Path

import pytest
import torch

HAS_GPU = torch.cuda.is_available()

if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist each worker gets one intra-op thread: two workers with two threads each on a
# 2-core CI machine oversubscribe it and make small-model tests several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, also without xdist (modules of tiny models opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``): on a shared 2-core machine more threads
    spin against each other and a tiny forward pass runs 10-100x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def fresh_seed():
    seed = int(os.environ.get("NXM_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"[seed] NXM_TEST_SEED={seed}")
    torch.manual_seed(seed)
    random.seed(seed)
    yield seed


@pytest.fixture
def run_program(monkeypatch, capsys):
    """``run(path, *args, cwd=None) -> stdout``: run the program at ``path`` (relative to the repository
    root) as ``__main__`` with ``sys.argv = [path, *args]`` in this process, and return what it printed.
    A non-zero exit fails the test with the output. For tests of what a program does, not of the process
    boundary (those start a subprocess)."""
    root = Path(__file__).resolve().parents[1]

    def run(path, *args, cwd=None) -> str:
        path = root / path
        if not path.is_file():
            raise FileNotFoundError(f"path must be a program in the repository, got {path}")
        monkeypatch.setattr(sys, "argv", [str(path), *map(str, args)])
        monkeypatch.syspath_prepend(str(path.parent))  # as `python PATH` puts the program's folder first
        monkeypatch.chdir(cwd or root)
        code, threads = 0, torch.get_num_threads()
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
        finally:
            torch.set_num_threads(threads)  # a benchmark may pin it (bench_overhead times one thread)
        captured = capsys.readouterr()
        assert code in (0, None), f"{path.name} exited {code}\n{captured.out[-3000:]}\n{captured.err[-3000:]}"
        return captured.out

    return run


# ------------------------------------------------------------------------------ GPU-only kernel tests
@pytest.fixture(scope="module")
def cuda():
    """The CUDA device, for the cuda backend's tests (marked ``gpu``: a GPU machine without the backend fails)."""
    from nxm_kernels.backends import unavailable_reason

    why = unavailable_reason("cuda", "cuda")
    if why is not None:
        pytest.fail(f"cuda backend unavailable on a GPU machine: {why}")
    return torch.device("cuda")


@pytest.fixture
def poison_allocator():
    """Fill the caching allocator's free blocks with 0x7F bytes so unwritten outputs cannot pass."""
    if torch.cuda.is_available():
        junk = torch.full((64 << 20,), 0x7F, dtype=torch.uint8, device="cuda")
        del junk
    yield

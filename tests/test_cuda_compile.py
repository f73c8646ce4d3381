"""CI checks of the CUDA kernels without a GPU: compile csrc/ for sm_80, sm_86, sm_89 and sm_90a,
fail on register spills in the GEMM kernels, and disassemble to check every GEMM kernel really uses
the sparse tensor cores (SASS ``IMMA.SP.16864.S8.S8``).

On a machine without nvcc these tests skip, except under CI (``CI`` set), where they must run.
"""

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from nxm_kernels.backends.cuda.build import (CI_ARCHS, csrc_dir, device_archs, extension_kwargs, gencode_flags,
                                              nvcc_flags, parse_archs)

NVCC = shutil.which("nvcc")


def _cuobjdump():
    try:
        import triton

        cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if cand.is_file():
            return str(cand)
    except ImportError:
        pass
    return shutil.which("cuobjdump")


def _require(tool, name):
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI for the CUDA compile checks")
        pytest.skip(f"{name} not found")


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cuda_build")


def _compile(arch, out_dir):
    _require(NVCC, "nvcc")
    cubin = out_dir / f"gemm_sm{arch}.cubin"
    cmd = [NVCC, "-cubin", *nvcc_flags([arch]), "-Xptxas", "-v", "-o", str(cubin),
           str(csrc_dir() / "nxm_sparse_gemm.cu")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"nvcc failed for sm_{arch}:\n{res.stderr[-4000:]}"
    return cubin, res.stderr


def _ptxas_report(stderr):
    """{kernel mangled name: (spill stores, spill loads, registers)} from ``-Xptxas -v``."""
    report, current = {}, None
    for line in stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            report.setdefault(current, [0, 0, 0])[:2] = [int(m.group(1)), int(m.group(2))]
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            report.setdefault(current, [0, 0, 0])[2] = int(m.group(1))
    return report


def _sass_by_function(cubin):
    tool = _cuobjdump()
    _require(tool, "cuobjdump")
    res = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    funcs, current = {}, None
    for line in res.stdout.splitlines():
        m = re.search(r"Function : (\w+)", line)
        if m:
            current = m.group(1)
            funcs[current] = []
        elif current:
            funcs[current].append(line)
    return funcs


@pytest.mark.slow
@pytest.mark.parametrize("arch", CI_ARCHS)
def test_gemm_kernels_compile_without_spills_and_use_sparse_tensor_cores(arch, build_dir):
    cubin, log = _compile(arch, build_dir)
    report = _ptxas_report(log)
    gemms = {k: v for k, v in report.items() if "sparse_gemm_kernel" in k}
    assert len(gemms) == 8, f"expected 4 configs x 2 weight widths, got {sorted(gemms)}"
    spilled = {k: v for k, v in gemms.items() if v[0] or v[1]}
    assert not spilled, f"register spills on sm_{arch}: {spilled}"

    sass = _sass_by_function(cubin)
    gemm_sass = {k: v for k, v in sass.items() if "sparse_gemm_kernel" in k}
    assert set(gemm_sass) == set(gemms)
    for name, lines in gemm_sass.items():
        n_sp = sum("IMMA.SP.16864.S8.S8" in ln for ln in lines)
        assert n_sp > 0, f"{name} on sm_{arch} has no IMMA.SP.16864.S8.S8"
        # Dense IMMA would mean the sparse path was not taken.
        assert not any(re.search(r"IMMA\.(?!SP)", ln) for ln in lines), f"{name} uses dense IMMA"
    probe = [v for k, v in sass.items() if "mma_sp_probe" in k]
    assert probe and any("IMMA.SP.16864.S8.S8" in ln for ln in probe[0])


@pytest.mark.slow
def test_torch_binding_compiles():
    """Syntax-check the PyTorch binding against this torch's headers (no CUDA torch needed)."""
    gxx = shutil.which("g++")
    _require(gxx, "g++")
    cuda_inc = Path(NVCC).resolve().parent.parent / "include" if NVCC else None
    candidates = [p for p in (cuda_inc, Path("/usr/local/cuda/include")) if p and (p / "cuda_runtime.h").is_file()]
    _require(candidates[0] if candidates else None, "CUDA headers (cuda_runtime.h)")
    from torch.utils.cpp_extension import include_paths

    # CPU wheels of torch omit one generated c10/cuda header that only holds build macros.
    stub = Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / "nxm_c10_stub"
    (stub / "c10" / "cuda" / "impl").mkdir(parents=True, exist_ok=True)
    macros = stub / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not macros.exists():
        macros.write_text("#pragma once\n")
    cmd = [gxx, "-std=c++17", "-fsyntax-only", f"-I{stub}", *[f"-I{p}" for p in include_paths()],
           f"-I{sysconfig.get_paths()['include']}", f"-I{candidates[0]}", f"-I{csrc_dir()}",
           "-DTORCH_EXTENSION_NAME=nxm_syntax_check", str(csrc_dir() / "torch_binding.cpp")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]


def test_cuda_archs_env_is_parsed_alike_for_setup_and_jit(monkeypatch):
    """``NXM_CUDA_ARCHS`` with spaces (``"80; 90a"``) gives clean -gencode flags for setup.py's ahead-of-time
    build too (it used to pass ``compute_ 90a``), and the same list as the first-use build."""
    assert parse_archs(" 80; 86,,90a ;") == ["80", "86", "90a"]
    monkeypatch.setenv("NXM_CUDA_ARCHS", "80; 90a , 86")
    assert device_archs() == ["80", "90a", "86"]
    flags = extension_kwargs()["extra_compile_args"]["nvcc"]
    assert [f for f in flags if f.startswith("-gencode")] == [
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a",
        "-gencode=arch=compute_86,code=sm_86"]
    monkeypatch.delenv("NXM_CUDA_ARCHS")
    flags = extension_kwargs()["extra_compile_args"]["nvcc"]
    assert [f for f in flags if f.startswith("-gencode")] == gencode_flags(CI_ARCHS)

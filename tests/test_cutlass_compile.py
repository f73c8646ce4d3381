"""CI checks of the CUTLASS-built kernels without a GPU: compile one sm_90a and one sm_80 instantiation
(``csrc/cutlass_instances/``) with the project's flags (``-DNDEBUG``), then read ptxas's report and the SASS:
sparse tensor-core instructions only (``IGMMA.SP...`` on sm_90a, ``IMMA.SP.16864.S8.S8`` on sm_80), no
register spills, no ptxas warnings (C7510: wgmma serialised, C7515 and friends).

The compiles are cached by a hash of their inputs (``tests/cutlass_compile.py``), so only the first run
pays for them (about 1 minute of CPU for sm_90a, 20 s for sm_80). The whole instantiation set:
``python tests/cutlass_compile.py``. Skips without nvcc or without the CUTLASS headers
(``pip install nvidia-cutlass==4.2.0.0``), except under CI (``CI`` set) for nvcc.
"""

import os
import re
import shutil
import subprocess

import pytest

from nxm_kernels.backends.cuda.build import (CUTLASS_INSTANCES, csrc_dir, cutlass_families, cutlass_missing_reason,
                                              extension_kwargs, nvcc_flags)

NVCC = shutil.which("nvcc")

#: The CI instantiations: the 128 x 128 tile serves every output kind on both architectures.
CI_INSTANCES = {"sm90": "sm90_128x128_f16.cu", "sm80": "sm80_128x128_f16.cu"}


def _require_toolchain():
    if NVCC is None:
        if os.environ.get("CI"):
            pytest.fail("nvcc is required in CI for the CUDA compile checks")
        pytest.skip("nvcc not found")
    why = cutlass_missing_reason()
    if why is not None:
        pytest.skip(why)


@pytest.fixture(scope="module")
def cc():
    _require_toolchain()
    import cutlass_compile

    if cutlass_compile.cuobjdump() is None:
        pytest.skip("cuobjdump not found")
    return cutlass_compile


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sm90", "sm80"])
def test_ci_instance_compiles_clean_with_sparse_tensor_cores(cc, family):
    instance = CI_INSTANCES[family]
    r = cc.compile_instance(instance)
    report = cc.ptxas_report(r["log"])
    kernels = {k: v for k, v in report.items() if "device_kernel" in k or "Kernel" in k}
    assert len(kernels) == 1, f"expected one GEMM kernel in {instance}, got {sorted(kernels)}"
    (name, stats), = kernels.items()
    assert stats["spill_stores"] == 0 and stats["spill_loads"] == 0, f"register spills in {instance}: {stats}"
    # -DNDEBUG keeps ptxas from serialising wgmma (C7510); any ptxas warning is a finding.
    assert not cc.ptxas_warnings(r["log"]), cc.ptxas_warnings(r["log"])

    kinds = cc.mma_kinds(cc.sass_by_function(r["cubin"])[name])
    if family == "sm90":
        assert any(re.fullmatch(r"IGMMA\.SP\.64x\d+x64\.S8\.S8", k) for k in kinds), kinds
        assert all(".SP." in k for k in kinds), f"dense tensor-core instructions in {instance}: {kinds}"
    else:
        assert any(k.startswith("IMMA.SP.16864.S8.S8") for k in kinds), kinds
        assert all(k.startswith("IMMA.SP.") for k in kinds), f"dense tensor-core instructions in {instance}: {kinds}"


def test_instantiation_set_is_complete_and_named_consistently():
    """Every file the build lists exists, defines exactly the entry points its name says, and every entry
    point the dispatcher declares has a file (a typo would only show as a link error on a GPU machine)."""
    inst_dir = csrc_dir() / "cutlass_instances"
    listed = {f for fam in CUTLASS_INSTANCES.values() for f in fam}
    assert listed == {p.name for p in inst_dir.glob("*.cu")}
    dispatch = (csrc_dir() / "cutlass_dispatch.cu").read_text()
    declared = set(re.findall(r"NXM_DECLARE\((\w+)\)", dispatch)) - {"NAME"}  # minus the macro itself
    assert declared == {f[:-3] for f in listed}
    for f in listed:
        text = (inst_dir / f).read_text()
        macro = "NXM_SM90_INSTANCE" if f.startswith("sm90") else "NXM_SM80_INSTANCE"
        assert re.search(rf"{macro}\({f[:-3]},", text), f


@pytest.mark.slow
def test_dispatch_compiles_with_and_without_cutlass():
    """``csrc/cutlass_dispatch.cu`` holds no CUTLASS code: it compiles without the headers, and with the
    NXM_WITH_CUTLASS_* defines it only declares the instantiations' entry points."""
    if NVCC is None:
        pytest.skip("nvcc not found")
    for defines in ([], ["-DNXM_WITH_CUTLASS_SM90", "-DNXM_WITH_CUTLASS_SM80"]):
        res = subprocess.run([NVCC, "-c", *nvcc_flags(["80"]), *defines, f"-I{csrc_dir()}", "-o", os.devnull,
                              str(csrc_dir() / "cutlass_dispatch.cu")], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]


def test_build_selects_instances_by_arch_and_uses_ndebug(monkeypatch):
    assert cutlass_families(["90a"]) == ["sm90"]
    assert cutlass_families(["80", "86", "89"]) == ["sm80"]
    assert cutlass_families(["80", "90a"]) == ["sm90", "sm80"]
    monkeypatch.setenv("NXM_CUDA_ARCHS", "90a")
    kw = extension_kwargs()
    assert "-DNDEBUG" in kw["extra_compile_args"]["nvcc"]
    if cutlass_missing_reason() is None:
        assert "-DNXM_WITH_CUTLASS_SM90" in kw["extra_compile_args"]["nvcc"]
        assert "-DNXM_WITH_CUTLASS_SM80" not in kw["extra_compile_args"]["nvcc"]
        assert sum("cutlass_instances" in s for s in kw["sources"]) == len(CUTLASS_INSTANCES["sm90"])

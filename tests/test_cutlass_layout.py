"""The CUTLASS kernels' weight layouts (``nxm_kernels/backends/cuda/cutlass_layout.py``) on the CPU:
round trips, and proofs with CUTLASS's own host code (no GPU needed):

* sm_80: ``tests/cutlass_host/sm80_layout_check.cu`` runs ``cutlass::uncompress`` on the canonical values and
  metadata (read as the kernel's ``ElementE`` words) -> must equal our dense decode; and
  ``cutlass::reorder_meta`` into the kernel's ``LayoutE`` -> must equal our prepared metadata byte for byte.
* sm_90a: ``tests/cutlass_host/sm90_layout_check.cu`` decodes our prepared values and metadata through
  ``Sm90GemmSparseConfig::fill_layoutA / fill_layoutE`` of the kernel type, the way CUTLASS's compressor
  addresses them -> must equal our dense decode.
* both: the kernel types' ``can_implement`` (host code) accepts the launcher's arguments for these weights
  at several token counts (it caught sm_80's GEMM-N % 16 rule, now met by padding the token rows).

The host programs are compiled once and cached (``tests/cutlass_compile.py``). They skip cleanly without
nvcc or without the CUTLASS headers (``pip install nvidia-cutlass==4.2.0.0``).
"""

import shutil
import subprocess

import numpy as np
import pytest
import torch

import nxm_kernels as nxm
from nxm_kernels.backends.cuda.build import cutlass_missing_reason
from nxm_kernels.backends.cuda.cutlass_layout import (cutlass_layout, cutlass_sm80_layout, cutlass_sm90_layout,
                                                      restore_cutlass)
from nxm_kernels.backends.cuda.layout import prepared_dims

SHAPES = [(33, 72), (200, 130), (256, 512), (1, 5), (384, 1000)]


def _packed(n, k, bits):
    return nxm.pack(torch.randn(n, k), bits=bits, pattern="2:4", prune=True)


def _dense_padded(p):
    np_, kp = prepared_dims(*p.shape)
    want = torch.zeros(np_, kp, dtype=torch.int8)
    w = p.int_weight()
    want[: w.shape[0], : w.shape[1]] = w
    return want


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip(arch, bits, shape):
    p = _packed(*shape, bits)
    prep = cutlass_layout(p, arch)
    np_, kp = prepared_dims(*shape)
    values, meta, scales = prep
    assert values.shape == (np_, kp // 2) and values.dtype == torch.int8
    assert meta.numel() * meta.element_size() == np_ * kp // 8
    assert scales.shape == (np_,) and torch.equal(scales[: shape[0]], p.scales)
    assert restore_cutlass(prep, *shape, bits, arch) == p


@pytest.mark.parametrize("bits", [8, 4])
def test_values_are_the_canonical_codes_expanded_to_int8(bits):
    """Compressed A is the canonical kept codes, row-major, int8 (int4 codes widened, not re-ordered)."""
    p = _packed(128, 256, bits)
    for fn in (cutlass_sm80_layout, cutlass_sm90_layout):
        values = fn(p)[0]
        assert torch.equal(values, p.codes())


def test_layout_rejects_dense_and_unknown_arch():
    with pytest.raises(ValueError, match="2:4"):
        cutlass_sm90_layout(nxm.pack(torch.randn(16, 16), bits=8, pattern="dense"))
    with pytest.raises(ValueError, match="arch"):
        cutlass_layout(_packed(16, 16, 8), 75)
    with pytest.raises(TypeError):
        cutlass_sm80_layout(torch.zeros(4, 4))


# ---------------------------------------------------------------------------------------- host proofs
@pytest.fixture(scope="module")
def host_check():
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found")
    why = cutlass_missing_reason()
    if why is not None:
        pytest.skip(why)
    import cutlass_compile

    return cutlass_compile.compile_host_check


def _run(exe, d, np_, kp, n):
    """Run a host check; with ``n`` it also asks the kernel's can_implement (CUTLASS's own admission check)
    about the launcher's arguments for this weight at several token counts (exit code 4 on a refusal)."""
    res = subprocess.run([str(exe), str(d), str(np_), str(kp), str(n)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("can_implement") >= 5, res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_sm80_layout_matches_cutlass_host_utilities(host_check, tmp_path, bits):
    exe = host_check("sm80_layout_check")
    for n, k in [(200, 130), (256, 768), (33, 72)]:
        p = _packed(n, k, bits)
        np_, kp = prepared_dims(n, k)
        values, meta_words, _ = cutlass_sm80_layout(p)
        canon_meta = torch.full((np_, kp // 8), 0x44, dtype=torch.uint8)
        canon_meta[:n, : p.metadata.shape[1]] = p.metadata
        values.numpy().tofile(tmp_path / "values.bin")
        canon_meta.numpy().tofile(tmp_path / "meta.bin")
        _run(exe, tmp_path, np_, kp, n if n % 8 == 0 else 8)
        dense = torch.from_numpy(np.fromfile(tmp_path / "dense.bin", dtype=np.int8)).view(np_, kp)
        assert torch.equal(dense, _dense_padded(p)), f"cutlass::uncompress disagrees, shape {(n, k)}"
        reordered = torch.from_numpy(np.fromfile(tmp_path / "meta_reordered.bin", dtype=np.int32))
        assert torch.equal(reordered, meta_words), f"cutlass::reorder_meta disagrees, shape {(n, k)}"


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_sm90_layout_decodes_through_cutlass_layouts(host_check, tmp_path, bits):
    exe = host_check("sm90_layout_check")
    for n, k in [(200, 130), (384, 1000), (64, 128)]:
        p = _packed(n, k, bits)
        np_, kp = prepared_dims(n, k)
        values, meta, _ = cutlass_sm90_layout(p)
        values.numpy().tofile(tmp_path / "values.bin")
        meta.numpy().tofile(tmp_path / "meta.bin")
        _run(exe, tmp_path, np_, kp, n if n % 8 == 0 else 8)
        dense = torch.from_numpy(np.fromfile(tmp_path / "dense.bin", dtype=np.int8)).view(np_, kp)
        assert torch.equal(dense, _dense_padded(p)), f"fill_layoutA/E decode disagrees, shape {(n, k)}"


# ---------------------------------------------------------------------------------------- kernel choice
def test_select_kernel_rule():
    """The cuda backend's one choice between its kernels (replaced by the measured dispatch later)."""
    from nxm_kernels.backends.cuda.backend import CUTLASS_MIN_M, select_kernel

    assert select_kernel(CUTLASS_MIN_M, 768, True) == "cutlass"
    assert select_kernel(CUTLASS_MIN_M - 1, 768, True) == "mma_sp"       # small M: mma.sp (split-K, int4 packed)
    assert select_kernel(4096, 770, True) == "mma_sp"                    # N % 8 != 0: the kernels' store rule
    assert select_kernel(4096, 768, False) == "mma_sp"                   # no CUTLASS layout (no kernels here)


def test_prepare_off_the_gpu_has_no_cutlass_layout():
    from nxm_kernels.backends.cuda.backend import prepare

    assert len(prepare(_packed(64, 64, 8))) == 3


def test_cutlass_unavailable_reason_names_the_rule(monkeypatch):
    from nxm_kernels.backends.cuda.backend import CUTLASS_ENV, cutlass_unavailable_reason

    assert "sm_80/86/89 or sm_90" in cutlass_unavailable_reason(torch.device("cpu"))
    monkeypatch.setenv(CUTLASS_ENV, "0")
    assert f"{CUTLASS_ENV}=0" in cutlass_unavailable_reason(torch.device("cpu"))

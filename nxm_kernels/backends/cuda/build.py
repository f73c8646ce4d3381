"""Building the CUDA extension: ahead of time (``NXM_BUILD_CUDA=1 pip install .``) or on first use.

On first use the sources in ``csrc/`` are compiled with ``torch.utils.cpp_extension.load`` (ninja) for
the current GPU's architecture (``sm_90a`` on Hopper) into a cache directory keyed by a hash of the
sources, the torch version and the architectures, so later processes load it in seconds.
``NXM_CUDA_ARCHS`` (e.g. ``"80;86;89;90a"``) overrides the architectures; ``NXM_CACHE_DIR`` the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = ("nxm_sparse_gemm.cu", "torch_binding.cpp")
HEADERS = ("nxm_kernels.h", "nxm_sparse_gemm.cuh")
#: Architectures CI compiles for (sm_90a: the Hopper-specific target).
CI_ARCHS = ("80", "86", "89", "90a")


def csrc_dir() -> Path:
    """The CUDA sources: ``<repo>/csrc`` in a checkout, ``nxm_kernels/_csrc`` in an installed wheel."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "csrc", here.parents[2] / "_csrc"):
        if (candidate / SOURCES[0]).is_file():
            return candidate
    raise FileNotFoundError("the CUDA sources (csrc/nxm_sparse_gemm.cu) are not shipped with this install")


def gencode_flags(archs) -> list[str]:
    flags = []
    for a in archs:
        a = str(a).replace("sm_", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{a},code=sm_{a}")
    return flags


def nvcc_flags(archs) -> list[str]:
    return ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", *gencode_flags(archs)]


def parse_archs(text: str) -> list[str]:
    """``"80; 86,90a"`` -> ``["80", "86", "90a"]`` (``;`` or ``,`` separated, spaces and empty items dropped)."""
    return [a.strip() for a in text.replace(",", ";").split(";") if a.strip()]


def device_archs() -> list[str]:
    """Architectures to build for: ``NXM_CUDA_ARCHS`` or the current device's."""
    env = os.environ.get("NXM_CUDA_ARCHS")
    if env:
        return parse_archs(env)
    import torch

    major, minor = torch.cuda.get_device_capability()
    return [f"{major}{minor}a" if (major, minor) == (9, 0) else f"{major}{minor}"]


def extension_kwargs() -> dict:
    """Arguments of ``CUDAExtension`` for an ahead-of-time build (used by setup.py)."""
    src = csrc_dir()
    archs = parse_archs(os.environ.get("NXM_CUDA_ARCHS", ";".join(CI_ARCHS)))
    return {
        "name": "nxm_kernels._cuda_ext",
        "sources": [str(src / s) for s in SOURCES],
        "include_dirs": [str(src)],
        "extra_compile_args": {"cxx": ["-O3", "-std=c++17"], "nvcc": nvcc_flags(archs)},
    }


def _source_hash(archs) -> str:
    import torch

    h = hashlib.sha256()
    src = csrc_dir()
    for name in SOURCES + HEADERS:
        h.update((src / name).read_bytes())
    h.update(torch.__version__.encode())
    h.update(";".join(archs).encode())
    return h.hexdigest()[:16]


def load(verbose: bool = False):
    """Import the ahead-of-time extension if installed, else JIT-build (cached) and import it."""
    try:
        from ... import _cuda_ext  # type: ignore[attr-defined]

        return _cuda_ext
    except ImportError:
        pass
    from torch.utils.cpp_extension import load as _load

    archs = device_archs()
    tag = _source_hash(archs)
    cache = Path(os.environ.get("NXM_CACHE_DIR", Path.home() / ".cache" / "nxm_kernels")) / tag
    cache.mkdir(parents=True, exist_ok=True)
    src = csrc_dir()
    log.info("building the nxm CUDA extension for sm_%s in %s (first use only)", ",".join(archs), cache)
    return _load(
        name=f"nxm_kernels_cuda_{tag}",
        sources=[str(src / s) for s in SOURCES],
        extra_include_paths=[str(src)],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=nvcc_flags(archs),
        build_directory=str(cache),
        verbose=verbose,
    )

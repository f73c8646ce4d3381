"""Building the CUDA extension: ahead of time (``NXM_BUILD_CUDA=1 pip install .``) or on first use.

On first use the sources in ``csrc/`` are compiled with ``torch.utils.cpp_extension.load`` (ninja) for
the current GPU's architecture (``sm_90a`` on Hopper) into a cache directory keyed by a hash of the
sources, the torch version and the architectures, so later processes load it in seconds.
``NXM_CUDA_ARCHS`` (e.g. ``"80;86;89;90a"``) overrides the architectures; ``NXM_CACHE_DIR`` the cache.

The CUTLASS-built kernels (``csrc/cutlass_*.cuh``, one instantiation per file under
``csrc/cutlass_instances/``) need the CUTLASS headers of the pinned ``nvidia-cutlass`` package
(:data:`CUTLASS_PIN`, the ``cuda`` extra). When that package is missing the extension is built without
them (the mma.sp kernel still runs) and :func:`cutlass_missing_reason` says why; ``NXM_REQUIRE_CUTLASS=1``
turns that into a build error. The sm_90a instantiations are compiled when the architectures include
``90a``, the sm_80 ones when they include an sm_8x; the build defines ``NXM_WITH_CUTLASS_SM90`` /
``NXM_WITH_CUTLASS_SM80`` for ``csrc/cutlass_dispatch.cu`` accordingly. Every build uses ``-DNDEBUG``
(without it ptxas serialises wgmma: warning C7510).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = ("nxm_sparse_gemm.cu", "cutlass_dispatch.cu", "torch_binding.cpp")
HEADERS = ("nxm_kernels.h", "nxm_sparse_gemm.cuh", "nxm_cutlass.h", "cutlass_epilogue.cuh", "cutlass_sm80_sparse.cuh",
           "cutlass_sm90_sparse.cuh")
#: The pinned CUTLASS headers package (the ``cuda`` extra of pyproject.toml).
CUTLASS_PIN = "nvidia-cutlass==4.2.0.0"
#: One CUTLASS instantiation per file (``csrc/cutlass_instances/``), by architecture family.
CUTLASS_INSTANCES = {
    "sm90": ("sm90_128x128_f16.cu", "sm90_128x128_bf16.cu", "sm90_128x128_f32.cu", "sm90_128x128_i32.cu",
             "sm90_128x256_f16.cu", "sm90_128x256_bf16.cu"),
    "sm80": ("sm80_128x128_f16.cu", "sm80_128x128_bf16.cu", "sm80_128x128_f32.cu", "sm80_128x128_i32.cu"),
}
#: Architectures CI compiles for (sm_90a: the Hopper-specific target).
CI_ARCHS = ("80", "86", "89", "90a")


def csrc_dir() -> Path:
    """The CUDA sources: ``<repo>/csrc`` in a checkout, ``nxm_kernels/_csrc`` in an installed wheel."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[3] / "csrc", here.parents[2] / "_csrc"):
        if (candidate / SOURCES[0]).is_file():
            return candidate
    raise FileNotFoundError("the CUDA sources (csrc/nxm_sparse_gemm.cu) are not shipped with this install")


def cutlass_include_dirs() -> list[str]:
    """The CUTLASS include directories of the installed ``nvidia-cutlass`` package
    (``cutlass_library/source/include`` and ``.../tools/util/include``); raises ``RuntimeError`` naming the
    package to install when it is missing."""
    import importlib.util

    # Located, not imported: the headers are all we need from the nvidia-cutlass wheel's package.
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the CUTLASS kernels need the CUTLASS headers: pip install '{CUTLASS_PIN}' "
                           "(or the 'cuda' extra: pip install 'nxm-kernels[cuda]')")
    root = Path(list(spec.submodule_search_locations)[0]).resolve() / "source"
    dirs = [root / "include", root / "tools" / "util" / "include"]
    if not (dirs[0] / "cutlass" / "cutlass.h").is_file():
        raise RuntimeError(f"the installed nvidia-cutlass has no headers under {dirs[0]}; reinstall '{CUTLASS_PIN}'")
    return [str(d) for d in dirs]


def cutlass_missing_reason() -> str | None:
    """``None`` when the CUTLASS headers are installed, else why the CUTLASS kernels cannot be built."""
    try:
        cutlass_include_dirs()
    except RuntimeError as exc:
        return str(exc)
    return None


def cutlass_families(archs) -> list[str]:
    """The CUTLASS instantiation families (``"sm90"``, ``"sm80"``) that ``archs`` need."""
    norm = [str(a).replace("sm_", "").replace(".", "") for a in archs]
    fams = []
    if any(a.startswith("90") for a in norm):
        fams.append("sm90")
    if any(a.startswith("8") for a in norm):
        fams.append("sm80")
    return fams


def cutlass_build_plan(archs) -> tuple[list[str], list[str], list[str]]:
    """``(sources, include_dirs, defines)`` of the CUTLASS kernels for ``archs``: empty when the headers are
    missing (logged; an error under ``NXM_REQUIRE_CUTLASS=1``)."""
    why = cutlass_missing_reason()
    if why is not None:
        if os.environ.get("NXM_REQUIRE_CUTLASS") == "1":
            raise RuntimeError(why)
        log.warning("building the CUDA extension without the CUTLASS kernels: %s", why)
        return [], [], []
    src = csrc_dir() / "cutlass_instances"
    sources, defines = [], []
    for fam in cutlass_families(archs):
        sources += [str(src / f) for f in CUTLASS_INSTANCES[fam]]
        defines.append(f"-DNXM_WITH_CUTLASS_{fam.upper()}")
    return sources, (cutlass_include_dirs() if sources else []), defines


def gencode_flags(archs) -> list[str]:
    flags = []
    for a in archs:
        a = str(a).replace("sm_", "").replace(".", "")
        flags.append(f"-gencode=arch=compute_{a},code=sm_{a}")
    return flags


def nvcc_flags(archs) -> list[str]:
    # -DNDEBUG: CUTLASS's device asserts off (with them ptxas serialises wgmma, warning C7510).
    return ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo", "-DNDEBUG", *gencode_flags(archs)]


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
    c_sources, c_includes, c_defines = cutlass_build_plan(archs)
    return {
        "name": "nxm_kernels._cuda_ext",
        "sources": [str(src / s) for s in SOURCES] + c_sources,
        "include_dirs": [str(src), *c_includes],
        "extra_compile_args": {"cxx": ["-O3", "-std=c++17", "-DNDEBUG"], "nvcc": nvcc_flags(archs) + c_defines},
    }


def _source_hash(archs) -> str:
    import torch

    h = hashlib.sha256()
    src = csrc_dir()
    for name in SOURCES + HEADERS:
        h.update((src / name).read_bytes())
    for fam in sorted(CUTLASS_INSTANCES):
        for name in CUTLASS_INSTANCES[fam]:
            h.update((src / "cutlass_instances" / name).read_bytes())
    h.update(str(cutlass_missing_reason() is None).encode())  # a build with and one without CUTLASS
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
    c_sources, c_includes, c_defines = cutlass_build_plan(archs)
    log.info("building the nxm CUDA extension for sm_%s in %s (first use only; %d CUTLASS instantiations)",
             ",".join(archs), cache, len(c_sources))
    return _load(
        name=f"nxm_kernels_cuda_{tag}",
        sources=[str(src / s) for s in SOURCES] + c_sources,
        extra_include_paths=[str(src), *c_includes],
        extra_cflags=["-O3", "-std=c++17", "-DNDEBUG"],
        extra_cuda_cflags=nvcc_flags(archs) + c_defines,
        build_directory=str(cache),
        verbose=verbose,
    )

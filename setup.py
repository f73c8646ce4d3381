"""Packaging. Everything is declared in pyproject.toml; this file adds two things:

* wheels carry the CUDA sources (``csrc/``) as ``nxm_kernels/_csrc`` so the extension can be built on
  first use after a plain ``pip install`` (an editable install reads ``csrc/`` in place);
* the CUDA extension is built ahead of time only when ``NXM_BUILD_CUDA=1``; otherwise it is compiled
  on first use (torch.utils.cpp_extension + ninja, cached), so a CPU-only install needs no nvcc and
  no GPU.
"""

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithCudaSources(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "nxm_kernels" / "_csrc"
        target.mkdir(parents=True, exist_ok=True)
        for src in (HERE / "csrc").rglob("*"):
            if src.suffix in (".h", ".cuh", ".cu", ".cpp"):  # with csrc/cutlass_instances/
                dst = target / src.relative_to(HERE / "csrc")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)


ext_modules, cmdclass = [], {"build_py": BuildPyWithCudaSources}
if os.environ.get("NXM_BUILD_CUDA") == "1":
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension  # needs torch at build time

    from nxm_kernels.backends.cuda.build import extension_kwargs  # noqa: E402

    ext_modules = [CUDAExtension(**extension_kwargs())]
    cmdclass["build_ext"] = BuildExtension

setup(ext_modules=ext_modules, cmdclass=cmdclass)

"""Packaging. Everything is declared in pyproject.toml; this file only adds the optional CUDA extension.

The extension is built ahead of time only when ``NXM_BUILD_CUDA=1``; otherwise it is compiled on first
use (torch.utils.cpp_extension + ninja, cached), so a CPU-only install needs no nvcc and no GPU.
"""

import os

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("NXM_BUILD_CUDA") == "1":
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension  # needs torch at build time

    from nxm_kernels.backends._cuda_build import extension_kwargs  # noqa: E402

    ext_modules = [CUDAExtension(**extension_kwargs())]
    cmdclass = {"build_ext": BuildExtension}

setup(ext_modules=ext_modules, cmdclass=cmdclass)

"""The CUDA backend: the sparse tensor-core kernels of ``csrc/``.

:mod:`.backend` is the backend interface (see :mod:`nxm_kernels.backends`), :mod:`.layout` derives
the kernels' in-memory weight layout from the canonical packed format, and :mod:`.build` compiles the
extension (first-use JIT, or ahead of time with ``NXM_BUILD_CUDA=1``). Nothing is imported here, so
importing the package needs no compiler or GPU.
"""

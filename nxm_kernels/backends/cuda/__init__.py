"""The CUDA backend: the sparse tensor-core kernels of ``csrc/``.

:mod:`.backend` is the backend interface (see :mod:`nxm_kernels.backends`) and chooses between the
CUTLASS-built kernels and the hand-written mma.sp kernel; :mod:`.layout` derives the mma.sp kernel's
in-memory weight layout and :mod:`.cutlass_layout` the CUTLASS kernels' layouts from the canonical packed
format; :mod:`.cusparselt` is cuSPARSELt (through torch) as a candidate kernel; :mod:`.build` compiles the
extension (first-use JIT, or ahead of time with ``NXM_BUILD_CUDA=1``). Nothing is imported here, so
importing the package needs no compiler or GPU.
"""

"""The Triton backend: the portable GPU path, and through ``TRITON_INTERPRET=1`` the CPU test path.

:mod:`.backend` is the backend interface (see :mod:`nxm_kernels.backends`); :mod:`.gemm` holds the
sparse/dense int GEMM kernel and :mod:`.quant` the per-token activation quantizer. Nothing is imported
here, so importing the package needs no Triton.
"""

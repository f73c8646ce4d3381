"""The Triton backend: the portable GPU path, and through ``TRITON_INTERPRET=1`` the CPU test path.

:mod:`.backend` is the backend interface (see :mod:`nxm_kernels.backends`); :mod:`.gemm` holds the
sparse/dense int GEMM kernel, :mod:`.quant` the per-token activation quantizer and :mod:`.fused` the
small-M kernel that does both in one launch. Nothing is imported
here, so importing the package needs no Triton.
"""

"""Benchmarks for nxm-kernels (not part of the installed package).

Run them as scripts (``python benchmarks/bench_gemm.py``) or modules (``python -m benchmarks.bench_gemm``);
see the README's benchmark section.
"""

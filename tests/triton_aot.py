"""Compile the Triton kernels for a GPU architecture on a machine without a GPU (ahead of time).

Triton's interpreter checks what the kernels compute, not that they compile: block shapes, types,
layouts and register/shared-memory budgets are only checked by the real compiler. The compiler needs
no GPU, so this module runs it for a chosen architecture (``80`` = A100, ``86``, ``89``, ``90`` =
H100) with the same argument specialisation a real launch at a given shape would get (16-byte aligned
pointers, unit strides as constants, sizes divisible by 16 marked so), and reports what came out:
PTX, registers, spills (stack bytes), shared memory, which MMA instruction was used, and whether the
loads became asynchronous copies (i.e. the software pipeline formed).

A check tool, not part of the package. Used by the tests (a subprocess: kernels must be created with ``TRITON_INTERPRET`` unset) and from the
command line to check configs before a GPU is at hand::

    python tests/triton_aot.py --arch 90 --m 16 --n 768 --k 3072
    python tests/triton_aot.py --arch 80 --m 16 --n 768 --k 3072 --fused --split-k 6
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from nxm_kernels.format import packed_shapes, padded_k
from nxm_kernels.spec import kernel_spec

__all__ = ["AotResult", "compile_fused", "compile_gemm", "compile_quantizer", "main"]


@dataclass
class AotResult:
    """One compiled kernel: its PTX, resource use and the instruction facts the tests check."""

    name: str
    arch: int
    ptx: str
    shared_bytes: int
    registers: int | None     # from cuobjdump, None if the tool is missing
    stack_bytes: int | None   # spills land on the stack: 0 means no spills

    @property
    def mma(self) -> str:
        if "wgmma.mma_async" in self.ptx:
            return "wgmma"
        if "mma.sync.aligned" in self.ptx:
            return "mma.sync"
        return "none"

    @property
    def async_copies(self) -> int:
        return len(re.findall(r"cp\.async\.(?:ca|cg)\.shared", self.ptx))

    def summary(self) -> str:
        regs = "?" if self.registers is None else self.registers
        stack = "?" if self.stack_bytes is None else self.stack_bytes
        return (f"{self.name} sm_{self.arch}: regs={regs} stack(spill)={stack}B smem={self.shared_bytes}B "
                f"mma={self.mma} cp.async={self.async_copies}")


def _require_compiled_kernels():
    from nxm_kernels.backends.triton import gemm as triton_gemm
    if triton_gemm.is_interpreted():
        raise RuntimeError("ahead-of-time compilation needs the real Triton kernels: import nxm_kernels' "
                           "Triton backend with TRITON_INTERPRET unset (e.g. in a subprocess)")


def _resources(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, stack bytes) from cuobjdump (shipped with the triton wheel), or (None, None)."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        tool = shutil.which("cuobjdump")
    if not tool:
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def _compile(fn, name, arch, signature, constexprs, attrs, num_warps, num_stages, maxnreg=None) -> AotResult:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    # enable_fp_fusion as the launchers set it
    options = {"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": False}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    regs, stack = _resources(kernel.asm["cubin"])
    return AotResult(name, arch, kernel.asm["ptx"], int(kernel.metadata.shared), regs, stack)


def _specialise(fn, pointers: dict, ints: dict, constexprs: dict):
    """Signature, constexprs and attributes as a launch with these values would specialise them."""
    signature, attrs, constexprs = {}, {}, dict(constexprs)
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        else:
            value = ints[name]
            if value == 1:  # Triton turns integer arguments equal to 1 into constants
                signature[name] = "constexpr"
                constexprs[name] = 1
            else:
                signature[name] = "i32"
                if value % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


#: Float types the kernels take, as Triton names them (``*fp16`` pointers).
_FLOAT_TYPES = ("fp16", "bf16", "fp32")


def compile_gemm(config, *, arch: int = 90, bits: int = 8, sparse: bool = True, epilogue: bool = True,
                 bias: bool = True, gelu: bool = False, out_dtype: str = "fp16", m: int = 16, n: int = 768,
                 k: int = 768) -> AotResult:
    """Compile the GEMM kernel with ``config`` (a :class:`~nxm_kernels.backends.triton.gemm.GemmConfig`) for ``sm_<arch>``
    as a contiguous launch at ``M, N, K = m, n, k`` would specialise it."""
    _require_compiled_kernels()
    from nxm_kernels.backends.triton import gemm as g

    if out_dtype not in _FLOAT_TYPES:
        raise ValueError(f"out_dtype must be one of {_FLOAT_TYPES}, got {out_dtype!r}")
    kp = padded_k(k)
    wcols = packed_shapes(n, k, bits, sparse)["values"][1]
    ints = dict(M=m, N=n, K=k, K_PAD=kp, M_BUCKET=g.m_bucket(m), stride_xm=k, stride_xk=1, stride_wn=wcols,
                stride_mn=kp // 8, stride_ym=n, stride_yn=1)
    pointers = dict(x_ptr="*i8", w_ptr="*i8" if bits == 8 else "*u8", meta_ptr="*u8", xs_ptr="*fp32",
                    ws_ptr="*fp32", bias_ptr="*" + out_dtype, y_ptr=("*" + out_dtype) if epilogue else "*i32")
    cons = dict(BITS=bits, SPARSE=sparse, EPILOGUE=epilogue, HAS_BIAS=epilogue and bias, GELU=epilogue and gelu,
                BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], BLOCK_K=config["BLOCK_K"],
                GROUP_M=config["GROUP_M"], EVEN_K=k % config["BLOCK_K"] == 0)
    fn = g._nxm_gemm_kernel
    signature, constexprs, attrs = _specialise(fn, pointers, ints, cons)
    spec = f"{'2:4' if sparse else 'dense'}-w{bits}a8"
    name = (f"gemm {spec} {config['BLOCK_M']}x{config['BLOCK_N']}x{config['BLOCK_K']} "
            f"w{config['num_warps']} s{config['num_stages']} {'epilogue' if epilogue else 'int32'}")
    return _compile(fn, name, arch, signature, constexprs, attrs, config["num_warps"], config["num_stages"])


def compile_fused(config, *, arch: int = 90, bits: int = 8, sparse: bool = True, epilogue: bool = True,
                  bias: bool = True, gelu: bool = False, x_dtype: str = "fp16", split_k: int = 1, m: int = 16,
                  n: int = 768, k: int = 768) -> AotResult:
    """Compile the fused quantize+GEMM kernel (:mod:`~nxm_kernels.backends.triton.fused`) with ``config``
    for ``sm_<arch>`` as a contiguous launch at ``M, N, K = m, n, k`` with ``split_k`` K slices would
    specialise it (the output dtype is ``x_dtype``, or int32 without ``epilogue``)."""
    _require_compiled_kernels()
    from nxm_kernels.backends.triton import fused as f
    from nxm_kernels.quant import ACT_QMAX

    if x_dtype not in _FLOAT_TYPES:
        raise ValueError(f"x_dtype must be one of {_FLOAT_TYPES}, got {x_dtype!r}")
    kp = padded_k(k)
    bk = config["BLOCK_K"]
    k_tiles = -(-k // bk)
    per = -(-k_tiles // split_k)
    wcols = packed_shapes(n, k, bits, sparse)["values"][1]
    ints = dict(M=m, N=n, K=k, K_PAD=kp, SPLIT_K=split_k, K_TILES_PER_SPLIT=per, stride_xm=k, stride_xk=1,
                stride_wn=wcols, stride_mn=kp // 8, stride_ym=n, stride_yn=1)
    pointers = dict(x_ptr="*" + x_dtype, w_ptr="*i8" if bits == 8 else "*u8", meta_ptr="*u8", ws_ptr="*fp32",
                    bias_ptr="*" + x_dtype, y_ptr=("*" + x_dtype) if epilogue else "*i32", xs_out_ptr="*fp32",
                    part_ptr="*i32", cnt_ptr="*i32")
    cons = dict(QMAX=ACT_QMAX, BITS=bits, SPARSE=sparse, EPILOGUE=epilogue, HAS_BIAS=epilogue and bias,
                GELU=epilogue and gelu, WRITE_SCALE=False, SPLIT=split_k > 1, BLOCK_M=config["BLOCK_M"],
                BLOCK_N=config["BLOCK_N"], BLOCK_K=bk, EVEN_K=k % bk == 0)
    fn = f._nxm_fused_kernel
    signature, constexprs, attrs = _specialise(fn, pointers, ints, cons)
    spec = f"{'2:4' if sparse else 'dense'}-w{bits}a8"
    name = (f"fused {spec} {x_dtype} {config['BLOCK_M']}x{config['BLOCK_N']}x{bk} w{config['num_warps']} "
            f"s{config['num_stages']} split_k={split_k} {'epilogue' if epilogue else 'int32'}")
    return _compile(fn, name, arch, signature, constexprs, attrs, config["num_warps"], config["num_stages"],
                    config.get("maxnreg"))


def compile_quantizer(*, arch: int = 90, x_dtype: str = "fp16", k: int = 768) -> AotResult:
    """Compile the per-token quantizer for ``sm_<arch>`` for rows of ``k`` contiguous elements."""
    _require_compiled_kernels()
    from nxm_kernels.backends.triton import quant as q
    from nxm_kernels.quant import ACT_QMAX

    if x_dtype not in _FLOAT_TYPES:
        raise ValueError(f"x_dtype must be one of {_FLOAT_TYPES}, got {x_dtype!r}")
    block_k = q.quant_block_k(k)
    fn = q._quantize_per_token_kernel
    signature, constexprs, attrs = _specialise(
        fn, dict(x_ptr="*" + x_dtype, q_ptr="*i8", s_ptr="*fp32"),
        dict(K=k, stride_xm=k, stride_xk=1), dict(QMAX=ACT_QMAX, BLOCK_K=block_k))
    return _compile(fn, f"quantize_per_token {x_dtype} K={k}", arch, signature, constexprs, attrs,
                    8 if block_k >= 2048 else 4, 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability as an int: 80, 86, 89, 90")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--n", type=int, default=768)
    ap.add_argument("--k", type=int, default=768)
    ap.add_argument("--specs", default="2:4-w8a8,2:4-w4a8,dense-w8a8,dense-w4a8")
    ap.add_argument("--int32", action="store_true", help="the raw accumulator variant (no epilogue)")
    ap.add_argument("--fused", action="store_true",
                    help="the fused quantize+GEMM kernel (the config of M's bucket) instead of the GEMM")
    ap.add_argument("--split-k", type=int, default=1, help="K slices of the fused kernel (with --fused)")
    args = ap.parse_args(argv)
    from nxm_kernels.backends.triton import gemm as g

    specs = [kernel_spec(s, name="--specs entry") for s in args.specs.split(",")]
    if args.fused:
        from nxm_kernels.backends.triton import fused as f

        config = f.FUSED_CONFIGS[min(g.m_bucket(args.m), max(f.FUSED_CONFIGS))]
        for spec in specs:
            print(compile_fused(config, arch=args.arch, bits=spec.weight_bits, sparse=spec.sparse,
                                epilogue=not args.int32, gelu=True, split_k=args.split_k, m=args.m, n=args.n,
                                k=args.k).summary(), flush=True)
        return 0
    if args.m <= g.SMALL_M_MAX:  # the configs the small-M autotuner keeps for this M
        configs = [c for c in g.SMALL_M_CONFIGS if c["BLOCK_M"] == g.small_m_block_m(g.m_bucket(args.m))]
    else:
        configs = g.LARGE_M_CONFIGS
    print(compile_quantizer(arch=args.arch, k=args.k).summary())
    for spec in specs:
        for c in configs:
            r = compile_gemm(c, arch=args.arch, bits=spec.weight_bits, sparse=spec.sparse, epilogue=not args.int32,
                             gelu=True, m=args.m, n=args.n, k=args.k)
            print(r.summary(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

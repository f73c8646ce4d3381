"""The Triton backend against the reference: exact int32 accumulators, exact quantizer, epilogue tolerance.

Without a GPU these run the real kernels through Triton's interpreter (``TRITON_INTERPRET=1``, set by
conftest.py), on small shapes. ``TestOnGPU`` runs the same checks, plus the autotuned path at BERT
shapes, on a CUDA device.

Epilogue tolerance: the codes, scales and int32 accumulators are bit-identical to the reference's,
and the kernel's float32 epilogue performs the same operations in the same order without FMA
contraction, so outputs differ only through erf's implementation (GELU) and, in the interpreter
only, its float32 -> bfloat16 cast (it truncates; GPUs round to nearest even): at most one ulp of
the output dtype. The test allows ``rtol = atol/max|y| = eps(dtype)`` (1e-5 fp32, 2**-10 fp16,
2**-7 bf16) and requires bitwise equality without GELU (bfloat16 in the interpreter excepted).
"""

import math

import pytest
import torch

pytest.importorskip("triton")

import nxm_kernels as nxm  # noqa: E402
from nxm_kernels.backends import WeightMeta, get_backend  # noqa: E402
from nxm_kernels.backends.triton import backend as tb  # noqa: E402
from nxm_kernels.backends.triton import gemm as triton_gemm  # noqa: E402
from nxm_kernels.backends.triton.gemm import GemmConfig  # noqa: E402
from nxm_kernels.quant import quantize_per_token as ref_quantize  # noqa: E402

ref = get_backend("reference")

SPECS = ("2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8")
FLOATS = (torch.float16, torch.bfloat16, torch.float32)
TOL = {torch.float32: 1e-5, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
SENTINEL = -(2 ** 31) + 12345  # poison for int32 outputs: no real accumulator here comes near it

#: Every (BLOCK_M, BLOCK_N, BLOCK_K) the GPU autotuner may pick.
GPU_TILES = sorted({(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"])
                    for c in triton_gemm.SMALL_M_CONFIGS + triton_gemm.LARGE_M_CONFIGS})

cpu_ready = pytest.mark.skipif(tb.unavailable_reason(torch.device("cpu")) is not None,
                               reason=f"triton backend unavailable on cpu: {tb.unavailable_reason(torch.device('cpu'))}")


# ------------------------------------------------------------------------------------------ helpers
def make_packed(spec: str, n: int, k: int, device) -> nxm.PackedWeight:
    """A random weight packed per ``spec`` (2:4 specs are pruned first); never all zero."""
    w = torch.randn(n, k, device=device)
    return nxm.pack(w, pattern=spec, prune=spec.startswith("2:4"))


def random_codes(m: int, k: int, device) -> torch.Tensor:
    """int8 activation codes in the symmetric range, including the extremes."""
    xq = torch.randint(-127, 128, (m, k), dtype=torch.int8, device=device)
    xq.view(-1)[0] = 127
    xq.view(-1)[-1] = -127
    return xq


def check_int_mm(spec, m, n, k, device, config=None):
    p = make_packed(spec, n, k, device)
    meta = WeightMeta.of(p)
    xq = random_codes(m, k, device)
    want = ref.int_mm(xq, ref.prepare(p), meta)
    values, metadata, _ = tb._split_weights(tb.prepare(p), meta)
    out = torch.full((m, n), SENTINEL, dtype=torch.int32, device=device)
    got = triton_gemm.int_gemm(xq, values, metadata, n=n, k=k, bits=meta.bits, sparse=meta.sparse,
                               config=config, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(got, want), f"{spec} m={m} n={n} k={k} config={config}: int32 accumulators differ"
    # And through the backend's own entry point (allocating its output).
    assert torch.equal(tb.int_mm(xq, tb.prepare(p), meta), want)


def assert_epilogue_close(got, want, dtype):
    assert got.dtype == want.dtype == dtype
    assert got.shape == want.shape
    assert torch.isfinite(got).all()
    tol = TOL[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * float(want.float().abs().max()))


def check_epilogue(spec, m, n, k, dtype, with_bias, activation, device, config=None, whole_op=True):
    p = make_packed(spec, n, k, device)
    meta = WeightMeta.of(p)
    x = (torch.randn(m, k, device=device) * 2).to(dtype)
    bias = torch.randn(n, device=device).to(dtype) if with_bias else None
    want = ref.linear(x, ref.prepare(p), meta, bias, activation)
    # The fused epilogue alone, into a NaN-poisoned buffer: every element must be written.
    xq, xs = tb.quantize_per_token(x)
    values, metadata, scales = tb._split_weights(tb.prepare(p), meta)
    out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
    triton_gemm.int_gemm(xq, values, metadata, n=n, k=k, bits=meta.bits, sparse=meta.sparse, x_scale=xs,
                         w_scale=scales, bias=bias, gelu=activation == "gelu", out_dtype=dtype, out=out,
                         config=config)
    assert_epilogue_close(out, want, dtype)
    if activation == "none" and not (dtype == torch.bfloat16 and str(device) == "cpu"):
        # Without GELU every float op matches the reference's (no FMA contraction, round-to-nearest
        # casts), so the result is bitwise equal; the interpreter's float32 -> bfloat16 cast truncates.
        assert torch.equal(out, want), "epilogue without GELU should be bitwise equal to the reference"
    if whole_op:  # the whole backend op (quantize + GEMM + epilogue)
        assert_epilogue_close(tb.linear(x, tb.prepare(p), meta, bias, activation), want, dtype)


def tie_rows(k: int, dtype, device) -> torch.Tensor:
    """Rows whose quotients x/scale are exact ties k + 0.5 (scale a power of two), plus extremes."""
    rows = []
    for s in (0.25, 2.0 ** -6):
        j = torch.randint(-127, 127, (k,), device=device).float() + 0.5
        j[0] = 127.0  # sets amax = 127 * s, so scale = s exactly
        rows.append(j * s)
    return torch.stack(rows).to(dtype)


def check_quantizer(m, k, dtype, device):
    x = (torch.randn(m, k, device=device) * 3).to(dtype)
    special = m >= 4 and k >= 8
    if special:
        x[0] = 0.0                                   # all-zero row: scale 1.0
        x[1:3] = tie_rows(k, dtype, device)          # exact .5 ties
    codes, scale = tb.quantize_per_token(x)
    want_codes, want_scale = ref_quantize(x)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (m, 1)
    assert torch.equal(scale, want_scale), f"{dtype} {m}x{k}: scales differ"
    assert torch.equal(codes, want_codes), f"{dtype} {m}x{k}: codes differ"
    if special:
        assert float(scale[0]) == 1.0 and not codes[0].any()
        # The tie rows really hold ties, and they went to the even neighbour, up and down.
        q = x[1].float() / scale[1]
        ties = (q - q.floor()) == 0.5
        assert int(ties.sum()) >= k // 2
        assert bool((codes[1][ties] % 2 == 0).all())
        assert bool((codes[1][ties] > q[ties]).any()) and bool((codes[1][ties] < q[ties]).any())


# ------------------------------------------------------------------------------------------ CPU (interpreter)
@cpu_ready
class TestInterpreter:
    device = "cpu"

    @pytest.mark.parametrize("spec", SPECS)
    @pytest.mark.parametrize("m", [1, 7, 130])
    def test_int_mm_exact(self, spec, m):
        check_int_mm(spec, m, 33, 72, self.device)

    @pytest.mark.parametrize("spec", SPECS)
    @pytest.mark.parametrize("n,k", [(1, 1), (16, 16), (5, 300), (18, 64)])
    def test_int_mm_exact_odd_shapes(self, spec, n, k):
        # k=64 is a multiple of the interpreter's BLOCK_K: the unmasked (EVEN_K) main loop.
        check_int_mm(spec, 3, n, k, self.device)

    @pytest.mark.parametrize("tile", GPU_TILES)
    def test_gpu_tilings(self, tile):
        # Every tile shape the GPU autotuner may pick decodes the packed weight correctly: K=512 runs
        # the unmasked (EVEN_K) loop over several steps, K=300 the masked one; M, N cross tile edges.
        bm, bn, bk = tile
        config = GemmConfig(bm, bn, bk, GROUP_M=2)
        for spec, k in (("2:4-w8a8", 512), ("2:4-w4a8", 300), ("dense-w4a8", 512), ("dense-w8a8", 300)):
            check_int_mm(spec, 19, 37, k, self.device, config=config)

    def test_grouped_order_covers_every_tile(self):
        # GROUP_M = 3 with 5 tile-rows: the last group is partial.
        check_int_mm("2:4-w8a8", 5 * 32 - 3, 3 * 32 + 1, 40, self.device, config=GemmConfig(32, 32, 32, GROUP_M=3))

    @pytest.mark.parametrize("dtype", FLOATS)
    @pytest.mark.parametrize("with_bias", [False, True])
    @pytest.mark.parametrize("activation", ["none", "gelu"])
    def test_epilogue(self, dtype, with_bias, activation):
        check_epilogue("2:4-w8a8", 7, 33, 72, dtype, with_bias, activation, self.device)

    @pytest.mark.parametrize("spec", SPECS[1:])
    def test_epilogue_other_specs(self, spec):
        check_epilogue(spec, 40, 33, 72, torch.bfloat16, True, "gelu", self.device)

    @pytest.mark.parametrize("dtype", FLOATS)
    @pytest.mark.parametrize("m,k", [(9, 72), (4, 1), (5, 2100)])
    def test_quantizer_exact(self, dtype, m, k):
        check_quantizer(m, k, dtype, self.device)

    def test_quantizer_tiny_and_subnormal_rows(self):
        x = torch.randn(4, 40)
        x[0] = 1e-42                         # subnormal: amax / 127 underflows to 0 -> scale 1.0
        x[1] = torch.randn(40) * 1e-38       # near the bottom of the normal range
        x[2, :20] = 0.0
        codes, scale = tb.quantize_per_token(x)
        want_codes, want_scale = ref_quantize(x)
        assert torch.equal(scale, want_scale) and torch.equal(codes, want_codes)

    def test_quantizer_non_contiguous(self):
        base = torch.randn(20, 9, dtype=torch.float16)
        x = base.t()  # [9, 20] with strides (1, 9)
        codes, scale = tb.quantize_per_token(x)
        want_codes, want_scale = ref_quantize(x.contiguous())
        assert torch.equal(codes, want_codes) and torch.equal(scale, want_scale)

    def test_m_zero(self):
        p = make_packed("2:4-w4a8", 33, 72, self.device)
        meta = WeightMeta.of(p)
        y = tb.linear(torch.randn(0, 72), tb.prepare(p), meta, None, "none")
        assert y.shape == (0, 33) and y.dtype == torch.float32
        acc = tb.int_mm(torch.zeros(0, 72, dtype=torch.int8), tb.prepare(p), meta)
        assert acc.shape == (0, 33) and acc.dtype == torch.int32
        codes, scale = tb.quantize_per_token(torch.randn(0, 72))
        assert codes.shape == (0, 72) and scale.shape == (0, 1)
        assert nxm.sparse_int_linear(torch.randn(2, 0, 72), p, backend="triton").shape == (2, 0, 33)

    def test_non_contiguous_inputs(self):
        p = make_packed("2:4-w8a8", 33, 72, self.device)
        meta = WeightMeta.of(p)
        x = torch.randn(72, 10, dtype=torch.float16).t()          # [10, 72], column-major
        y = tb.linear(x, tb.prepare(p), meta, None, "gelu")
        assert_epilogue_close(y, ref.linear(x.contiguous(), ref.prepare(p), meta, None, "gelu"), torch.float16)
        xq = random_codes(10, 144, self.device)[:, ::2]           # [10, 72], stride 2 along K
        assert torch.equal(tb.int_mm(xq, tb.prepare(p), meta), ref.int_mm(xq.contiguous(), ref.prepare(p), meta))
        # A strided output view is written in place, its gaps untouched.
        values, metadata, _ = tb._split_weights(tb.prepare(p), meta)
        big = torch.full((10, 66), SENTINEL, dtype=torch.int32)
        triton_gemm.int_gemm(xq, values, metadata, n=33, k=72, bits=8, sparse=True, out=big[:, ::2])
        assert torch.equal(big[:, ::2], ref.int_mm(xq.contiguous(), ref.prepare(p), meta))
        assert bool((big[:, 1::2] == SENTINEL).all())

    @pytest.mark.parametrize("spec", SPECS)
    def test_public_api(self, spec):
        p = make_packed(spec, 33, 72, self.device)
        x = torch.randn(2, 3, 72, dtype=torch.bfloat16)
        bias = torch.randn(33, dtype=torch.bfloat16)
        y = nxm.sparse_int_linear(x, p, bias=bias, activation="gelu", backend="triton")
        want = nxm.sparse_int_linear(x, p, bias=bias, activation="gelu", backend="reference")
        assert y.shape == (2, 3, 33)
        assert_epilogue_close(y, want, torch.bfloat16)
        # Sanity against the float product of the dequantized operands (catches a wrong reference too).
        xd = nxm.fake_quant_per_token(x.float(), ste=False)
        exact = torch.nn.functional.gelu(xd @ p.unpack().t() + bias.float())
        torch.testing.assert_close(y.float(), exact, rtol=2e-2, atol=2e-2 * float(exact.abs().max()))
        xq, _ = nxm.quantize_per_token(x.reshape(-1, 72))
        assert torch.equal(nxm.sparse_int_mm(xq, p, backend="triton"), nxm.sparse_int_mm(xq, p, backend="reference"))

    def test_prepare_is_the_canonical_layout(self):
        for spec in SPECS:
            p = make_packed(spec, 9, 40, self.device)
            prepared = tb.prepare(p)
            assert ref.as_packed(prepared, WeightMeta.of(p)) == p

    def test_prepare_realigns_values(self):
        # Values viewed at an odd address (e.g. inside a loaded buffer) are copied to an aligned
        # tensor: the kernel reads them as 16-bit words. Handing the kernel the odd view is refused.
        p = make_packed("2:4-w8a8", 9, 40, self.device)
        buf = torch.empty(p.values.numel() + 1, dtype=torch.int8)
        odd = buf[1:].view(p.values.shape)
        odd.copy_(p.values)
        q = nxm.PackedWeight(odd, p.metadata, p.scales, p.shape, p.bits, p.pattern)
        prepared = tb.prepare(q)
        assert prepared[0].data_ptr() % 16 == 0 and torch.equal(prepared[0], p.values)
        xq = random_codes(3, 40, self.device)
        meta = WeightMeta.of(q)
        assert torch.equal(tb.int_mm(xq, prepared, meta), ref.int_mm(xq, ref.prepare(p), meta))
        with pytest.raises(ValueError, match="even byte address"):
            tb.int_mm(xq, [odd, p.metadata, p.scales], meta)
        with pytest.raises(ValueError, match="contiguous"):
            tb.int_mm(xq, [torch.empty(9, 48, dtype=torch.int8)[:, ::2], p.metadata, p.scales], meta)

    def test_bad_inputs(self):
        p = make_packed("2:4-w8a8", 33, 72, self.device)
        meta = WeightMeta.of(p)
        w = tb.prepare(p)
        with pytest.raises(TypeError, match="xq"):
            tb.int_mm(torch.zeros(2, 72), w, meta)
        with pytest.raises(ValueError, match=r"xq must have shape \[M, 72\]"):
            tb.int_mm(torch.zeros(2, 71, dtype=torch.int8), w, meta)
        with pytest.raises(ValueError, match="weights must hold 3"):
            tb.int_mm(torch.zeros(2, 72, dtype=torch.int8), w[:2], meta)
        with pytest.raises(ValueError, match="values must be"):
            tb.int_mm(torch.zeros(2, 72, dtype=torch.int8), w, meta._replace(bits=4))
        with pytest.raises(ValueError, match="activation"):
            tb.linear(torch.randn(2, 72), w, meta, None, "relu")
        with pytest.raises(TypeError, match="x2d"):
            tb.linear(torch.randn(2, 72).double(), w, meta, None, "none")
        with pytest.raises(ValueError, match="bias"):
            tb.linear(torch.randn(2, 72), w, meta, torch.randn(32), "none")
        with pytest.raises(TypeError, match="x2d"):
            tb.quantize_per_token(torch.zeros(2, 3, dtype=torch.int32))
        with pytest.raises(ValueError, match="BLOCK_K must be >= 32"):
            GemmConfig(16, 16, 16)
        with pytest.raises(ValueError, match="BLOCK_N must be a power of two"):
            GemmConfig(16, 48, 32)

    def test_unavailable_reason(self, monkeypatch):
        assert tb.unavailable_reason(torch.device("cpu")) is None
        assert "cuda" in tb.unavailable_reason(torch.device("meta")).lower()
        monkeypatch.setattr(triton_gemm, "is_interpreted", lambda: False)
        why = tb.unavailable_reason(torch.device("cpu"))
        assert why is not None and "TRITON_INTERPRET=1" in why
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            nxm.sparse_int_linear(torch.randn(2, 72), make_packed("2:4-w8a8", 4, 72, "cpu"), backend="triton")


# ------------------------------------------------------------------------------------------ AOT
_AOT_SCRIPT = r"""
import json, re, sys
try:
    from triton_aot import compile_fused, compile_gemm, compile_quantizer
    from nxm_kernels.backends.triton.fused import FUSED_CONFIGS
    from nxm_kernels.backends.triton.gemm import LARGE_M_CONFIGS, SMALL_M_CONFIGS
    q = compile_quantizer(arch=90, x_dtype="bf16", k=3000)
    small = compile_gemm(SMALL_M_CONFIGS[0], arch=80, bits=4, sparse=True, gelu=True, m=16, n=768, k=3072)
    large = compile_gemm(LARGE_M_CONFIGS[0], arch=90, bits=8, sparse=True, gelu=True, m=4096, n=3072, k=768)
    # The fused kernel with split-K: int4 decode on sm_80, the 64-row tile (wgmma) on sm_90.
    fused80 = compile_fused(FUSED_CONFIGS[16], arch=80, bits=4, sparse=True, gelu=True, split_k=4, m=16, n=768,
                            k=3072)
    fused90 = compile_fused(FUSED_CONFIGS[64], arch=90, bits=8, sparse=True, gelu=True, split_k=4, m=64, n=768,
                            k=3072, x_dtype="bf16")
except ImportError as exc:  # a triton without this ahead-of-time API
    print(json.dumps({"skip": str(exc)}))
    sys.exit(0)
info = lambda r: {"mma": r.mma, "async": r.async_copies, "stack": r.stack_bytes, "summary": r.summary(),
                  "s8": bool(re.search(r"mma[._a-z0-9]*\.s32\.s8\.s8", r.ptx)),
                  "fdivs": sorted(set(re.findall(r"div\.[a-z0-9.]*f32", r.ptx)))}
print(json.dumps({"quant_divs": sorted(set(re.findall(r"div\.[a-z0-9.]+", q.ptx))), "quant": info(q),
                  "small": info(small), "large": info(large), "fused80": info(fused80), "fused90": info(fused90)}))
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, TestOnGPU compiles and runs the kernels for real")
def test_kernels_compile_for_real_gpus():
    """The interpreter checks values, not compilability: compile for sm_80 and sm_90a without a GPU.

    Checks what the exactness and speed rely on: the quantizer divides with ``div.rn.f32`` (IEEE, not
    the approximate ``div.full``); the GEMM uses int8 tensor-core MMAs (``mma.sync`` on sm_80,
    ``wgmma`` on sm_90), its loads became asynchronous copies (the software pipeline formed), and no
    registers spill. The fused quantize+GEMM kernel (one config per architecture, with split-K) is
    held to all of these at once: int8 MMA, pipelined loads, 0 spills, and only ``div.rn.f32``
    float divisions.
    """
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # triton_aot is a check tool beside the tests, not part of the package.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(__file__), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in res:
        pytest.skip(f"ahead-of-time compilation API unavailable: {res['skip']}")
    print(*(res[key]["summary"] for key in ("quant", "small", "large", "fused80", "fused90")), sep="\n")
    assert res["quant_divs"] == ["div.rn.f32"]
    assert res["small"]["mma"] == "mma.sync" and res["large"]["mma"] == "wgmma"
    assert res["fused80"]["mma"] == "mma.sync" and res["fused90"]["mma"] == "wgmma"
    for key in ("fused80", "fused90"):
        assert res[key]["fdivs"] == ["div.rn.f32"], f"{key}: the quantization must divide with div.rn.f32"
    for key in ("small", "large", "fused80", "fused90"):
        assert res[key]["s8"], f"{key}: no int8 MMA in the PTX"
        assert res[key]["async"] > 0, f"{key}: loads were not pipelined"
        assert res[key]["stack"] in (0, None), f"{key}: register spills ({res[key]['stack']} stack bytes)"
    assert res["quant"]["stack"] in (0, None)


def test_small_m_block_m_covers_m_with_one_small_config_height():
    """The small-M autotuner keeps one BLOCK_M per bucket (the AOT CLI asks the same function)."""
    heights = {c["BLOCK_M"] for c in triton_gemm.SMALL_M_CONFIGS}
    for m in range(1, triton_gemm.SMALL_M_MAX + 1):
        block_m = triton_gemm.small_m_block_m(triton_gemm.m_bucket(m))
        assert block_m in heights and block_m >= m and (block_m == 16 or block_m // 2 < m)


@pytest.mark.parametrize("spec", ["1:4-w8a8", "fp", "2:4-w8"])
def test_aot_cli_refuses_specs_the_kernels_do_not_run(spec):
    """``--specs`` entries are parsed as specs before anything is compiled (``1:4-w8a8`` used to be
    compiled as a dense kernel)."""
    from triton_aot import main

    with pytest.raises(ValueError, match="spec"):
        main(["--specs", f"2:4-w8a8,{spec}"])


# ------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
class TestOnGPU:
    """The same checks compiled for a real GPU, plus the autotuned path at BERT shapes.

    Autotuning compiles every config of a bucket, so the matrix is chosen to exercise each config
    list (M buckets 16 and 64, large M) with few distinct compilations (about 110 in all).
    """

    device = "cuda"

    def test_available(self):
        assert tb.unavailable_reason(torch.device("cuda")) is None

    @pytest.mark.parametrize("spec", SPECS)
    @pytest.mark.parametrize("m,n,k", [(1, 768, 768), (64, 3072, 768), (300, 768, 3072)])
    def test_int_mm_exact_autotuned(self, spec, m, n, k):
        if spec.startswith("dense") and m != 300:
            pytest.skip("dense specs: one autotuned shape keeps the compile count down")
        check_int_mm(spec, m, n, k, self.device)

    @pytest.mark.parametrize("spec", SPECS)
    @pytest.mark.parametrize("m,config", [(7, GemmConfig(16, 16, 256)), (130, GemmConfig(128, 128, 64, num_warps=8))])
    def test_int_mm_exact_odd_shapes(self, spec, m, config):
        check_int_mm(spec, m, 33, 72, self.device, config=config)

    @pytest.mark.parametrize("tile", GPU_TILES)
    def test_gpu_tilings(self, tile):
        bm, bn, bk = tile
        check_int_mm("2:4-w4a8", 19, 37, 300, self.device, config=GemmConfig(bm, bn, bk, GROUP_M=2))

    @pytest.mark.parametrize("dtype", FLOATS)
    @pytest.mark.parametrize("with_bias", [False, True])
    @pytest.mark.parametrize("activation", ["none", "gelu"])
    def test_epilogue(self, dtype, with_bias, activation):
        check_epilogue("2:4-w4a8", 300, 768, 768, dtype, with_bias, activation, self.device,
                       config=GemmConfig(64, 64, 64), whole_op=False)

    @pytest.mark.parametrize("m", [16, 300])
    def test_linear_autotuned(self, m):
        check_epilogue("2:4-w8a8", m, 3072, 768, torch.float16, True, "gelu", self.device)

    @pytest.mark.parametrize("dtype", FLOATS)
    @pytest.mark.parametrize("m,k", [(9, 72), (64, 768), (5, 3072), (3, 5000)])
    def test_quantizer_exact(self, dtype, m, k):
        check_quantizer(m, k, dtype, self.device)

    def test_public_api_and_non_contiguous(self):
        p = make_packed("2:4-w8a8", 768, 768, self.device)
        x = torch.randn(768, 40, dtype=torch.float16, device=self.device).t()
        y = nxm.sparse_int_linear(x, p, activation="gelu", backend="triton")
        want = nxm.sparse_int_linear(x.contiguous(), p, activation="gelu", backend="reference")
        assert_epilogue_close(y, want, torch.float16)
        assert not math.isnan(float(y.float().sum()))

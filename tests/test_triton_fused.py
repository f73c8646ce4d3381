"""The fused small-M kernel (quantize + GEMM + epilogue in one launch) against the reference.

Exactness: with ``int32=True`` the kernel returns its int32 accumulator, which must be
``torch.equal`` to the reference's (reference ``quantize_per_token`` codes times the weight codes),
and the per-token scales it computed (``x_scale_out``) must equal the reference's bit for bit; so the
in-kernel quantization is proven identical, not merely close. Float outputs use the epilogue
tolerance of test_triton_backend.py (the same epilogue code runs in both kernels).

Without a GPU these run through Triton's interpreter with :data:`fused.FUSED_INTERPRETER_CONFIG`
(16 x 32 x 32 tiles), so small shapes cover several tile rows and columns, K steps, K slices and the
K masks. ``TestOnGPU`` runs the GPU configs at BERT shapes and under CUDA graph capture.
"""

import math

import pytest
import torch

pytest.importorskip("triton")

from nxm_kernels.backends import WeightMeta, get_backend  # noqa: E402
from nxm_kernels.backends.triton import backend as tb  # noqa: E402
from nxm_kernels.backends.triton import fused  # noqa: E402
from nxm_kernels.backends.triton.gemm import GemmConfig  # noqa: E402
from nxm_kernels.quant import quantize_per_token as ref_quantize  # noqa: E402
from test_triton_backend import SENTINEL, SPECS, assert_epilogue_close, make_packed  # noqa: E402

ref = get_backend("reference")

_CPU_WHY = tb.unavailable_reason(torch.device("cpu"))
cpu_ready = pytest.mark.skipif(_CPU_WHY is not None, reason=f"triton backend unavailable on cpu: {_CPU_WHY}")

#: Large finite values per dtype for the "one huge value" rows.
HUGE = {torch.float16: 60000.0, torch.bfloat16: 1e30, torch.float32: 1e30}


def special_rows(x: torch.Tensor, huge: float | None = None) -> torch.Tensor:
    """Row 0 all zeros, row 1 one huge value among ordinary ones (the rest random). ``huge``
    defaults to near the dtype's top (int32 checks); float outputs need one they can hold."""
    x[0] = 0.0
    if x.shape[0] > 1:
        x[1, x.shape[1] // 2] = HUGE[x.dtype] if huge is None else huge
    return x


def weights(p):
    meta = WeightMeta.of(p)
    values, metadata, scales = tb._split_weights(tb.prepare(p), meta)
    return meta, values, metadata, scales


def check_int32(spec, m, n, k, dtype, device, split_k=None, config=None):
    """int32 accumulator and scales of the fused kernel == the reference's (poisoned buffers)."""
    p = make_packed(spec, n, k, device)
    meta, values, metadata, scales = weights(p)
    x = special_rows((torch.randn(m, k, device=device) * 3).to(dtype))
    xq, xs = ref_quantize(x)
    want = ref.int_mm(xq, ref.prepare(p), meta)
    out = torch.full((m, n), SENTINEL, dtype=torch.int32, device=device)
    xs_out = torch.full((m, 1), float("nan"), device=device)
    got = fused.fused_linear(x, values, metadata, scales, n=n, k=k, bits=meta.bits, sparse=meta.sparse,
                             int32=True, out=out, x_scale_out=xs_out, split_k=split_k, config=config)
    what = f"{spec} {dtype} m={m} n={n} k={k} split_k={split_k}"
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(got, want), f"{what}: int32 accumulators differ"
    assert torch.equal(xs_out, xs), f"{what}: per-token scales differ"
    return p, x


@cpu_ready
class TestInterpreter:
    device = "cpu"

    @pytest.mark.parametrize("spec", SPECS)
    def test_int32_exact_random_shapes(self, spec):
        # Random M over the whole fused range, K never a multiple of BLOCK_K=32, every input dtype,
        # split-K off, forced and chosen by the rule (tiles < INTERPRETER_SM_COUNT -> it splits).
        ms = [1, fused.FUSED_M_MAX] + torch.randint(2, fused.FUSED_M_MAX, (2,)).tolist()
        ks = (torch.randint(1, 5, (4,)) * 32 + torch.randint(1, 32, (4,))).tolist()
        dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float16)
        splits = (1, None, 2, None)
        for m, k, dtype, split_k in zip(ms, ks, dtypes, splits):
            n = 20 if m > 16 else 40   # m > 16: two tile rows or more, one tile column (N < BLOCK_N)
            check_int32(spec, m, n, k, dtype, self.device, split_k=split_k)

    def test_split_k_every_slice_count(self):
        # K = 200 -> 7 steps of 32: 7 slices of one step, 3 uneven slices (3+3+1), 2 (4+3).
        for split_k in (7, 3, 2):
            check_int32("2:4-w4a8", 9, 33, 200, torch.bfloat16, self.device, split_k=split_k)
        assert not fused._counters(torch.device(self.device)).any(), "split-K counters were not reset"

    def test_even_k_and_wide_config(self):
        # K a multiple of BLOCK_K: the unmasked main loop; and a GPU config's 16-row tile.
        check_int32("2:4-w8a8", 5, 33, 128, torch.float16, self.device, split_k=2)
        check_int32("dense-w4a8", 3, 40, 300, torch.float32, self.device, config=fused.FUSED_CONFIGS[16], split_k=1)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
    @pytest.mark.parametrize("with_bias,activation", [(False, "none"), (True, "gelu")])
    def test_float_epilogue(self, dtype, with_bias, activation):
        p = make_packed("2:4-w8a8", 33, 72, self.device)
        meta, values, metadata, scales = weights(p)
        x = special_rows((torch.randn(20, 72) * 2).to(dtype), huge=1000.0)  # y must fit in float16
        bias = torch.randn(33).to(dtype) if with_bias else None
        want = ref.linear(x, ref.prepare(p), meta, bias, activation)
        for split_k in (1, 3):
            out = torch.full((20, 33), float("nan"), dtype=dtype)
            fused.fused_linear(x, values, metadata, scales, bias, n=33, k=72, bits=8, sparse=True,
                               gelu=activation == "gelu", out=out, split_k=split_k)
            assert_epilogue_close(out, want, dtype)
            if activation == "none" and dtype != torch.bfloat16:
                # Same float ops in the same order as the reference (bf16: the interpreter's cast truncates).
                assert torch.equal(out, want)

    def test_backend_linear_runs_fused_for_small_m(self, monkeypatch):
        calls = []
        real = fused.launch
        monkeypatch.setattr(fused, "launch", lambda *a, **kw: calls.append(a[0].shape[0]) or real(*a, **kw))
        p = make_packed("2:4-w4a8", 33, 72, self.device)
        meta = WeightMeta.of(p)
        for m in (3, fused.FUSED_M_MAX + 1):
            x = (torch.randn(m, 72) * 2).to(torch.bfloat16)
            bias = torch.randn(33, dtype=torch.bfloat16)
            got = tb.linear(x, tb.prepare(p), meta, bias, "gelu")
            assert_epilogue_close(got, ref.linear(x, ref.prepare(p), meta, bias, "gelu"), torch.bfloat16)
        assert calls == [3], "fused for M <= FUSED_M_MAX, two launches above"

    def test_strided_input_and_output(self):
        p = make_packed("2:4-w8a8", 33, 72, self.device)
        meta, values, metadata, scales = weights(p)
        x = torch.randn(72, 10, dtype=torch.float16).t()                 # [10, 72], column-major
        xq, _ = ref_quantize(x.contiguous())
        big = torch.full((10, 66), SENTINEL, dtype=torch.int32)
        fused.fused_linear(x, values, metadata, scales, n=33, k=72, bits=8, sparse=True, int32=True,
                           out=big[:, ::2], split_k=2)
        assert torch.equal(big[:, ::2], ref.int_mm(xq, ref.prepare(p), meta))
        assert bool((big[:, 1::2] == SENTINEL).all())

    def test_m_zero(self):
        p = make_packed("2:4-w8a8", 33, 72, self.device)
        meta, values, metadata, scales = weights(p)
        y = fused.fused_linear(torch.randn(0, 72), values, metadata, scales, n=33, k=72, bits=8, sparse=True)
        assert y.shape == (0, 33) and y.dtype == torch.float32

    def test_bad_inputs(self):
        p = make_packed("2:4-w8a8", 33, 72, self.device)
        meta, values, metadata, scales = weights(p)
        kw = dict(n=33, k=72, bits=8, sparse=True)
        x = torch.randn(4, 72)
        with pytest.raises(TypeError, match="x must have dtype"):
            fused.fused_linear(x.double(), values, metadata, scales, **kw)
        with pytest.raises(ValueError, match=r"x must have shape \[M, 72\]"):
            fused.fused_linear(torch.randn(4, 71), values, metadata, scales, **kw)
        with pytest.raises(ValueError, match="values must be"):
            fused.fused_linear(x, values, metadata, scales, **{**kw, "bits": 4})
        with pytest.raises(TypeError, match="metadata must be a torch.Tensor"):
            fused.fused_linear(x, values, None, scales, **kw)
        with pytest.raises(ValueError, match="w_scale must be"):
            fused.fused_linear(x, values, metadata, scales.double(), **kw)
        with pytest.raises(ValueError, match="bias must be"):
            fused.fused_linear(x, values, metadata, scales, torch.randn(32), **kw)
        with pytest.raises(ValueError, match="split_k must be an int in"):
            fused.fused_linear(x, values, metadata, scales, split_k=4, **kw)   # 72 = 3 steps of 32
        with pytest.raises(ValueError, match="out must be"):
            fused.fused_linear(x, values, metadata, scales, out=torch.empty(4, 33), int32=True, **kw)
        with pytest.raises(ValueError, match="x_scale_out must be"):
            fused.fused_linear(x, values, metadata, scales, x_scale_out=torch.empty(3), **kw)
        with pytest.raises(TypeError, match="config must be a GemmConfig"):
            fused.fused_linear(x, values, metadata, scales, config={"BLOCK_M": 16}, **kw)


def test_split_k_rule():
    """Split only while the tiles cannot fill the SMs; at least MIN_K_TILES_PER_SPLIT steps a slice;
    no empty slice; never more than MAX_SPLIT_K."""
    c = GemmConfig(16, 32, 256)
    assert fused.fused_split_k(16, 768, 3072, c, 132) == 6            # 24 tiles, 12 steps: 6 slices of 2
    assert fused.fused_split_k(16, 3072, 768, c, 132) == 1            # 96 tiles, 3 steps: too short to split
    assert fused.fused_split_k(16, 768 * 8, 3072, c, 132) == 1        # 192 tiles >= 132 SMs
    assert fused.fused_split_k(1, 32, 131072, c, 132) == fused.MAX_SPLIT_K
    for k in range(16, 4000, 97):
        for n in (32, 96, 768):
            s = fused.fused_split_k(3, n, k, c, 132)
            steps = math.ceil(k / 256)
            per = math.ceil(steps / s)
            assert 1 <= s <= fused.MAX_SPLIT_K and (s == 1 or per >= fused.MIN_K_TILES_PER_SPLIT)
            assert (s - 1) * per < steps, "an empty K slice"
    assert fused.use_fused(fused.FUSED_M_MAX) and not fused.use_fused(fused.FUSED_M_MAX + 1)
    assert {m: fused.FUSED_CONFIGS[m]["BLOCK_M"] for m in fused.FUSED_CONFIGS} == {16: 16, 32: 32, 64: 64}


# ------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
class TestOnGPU:
    device = "cuda"

    @pytest.mark.parametrize("spec", SPECS)
    @pytest.mark.parametrize("m,n,k", [(1, 768, 3072), (16, 3072, 768), (40, 768, 768), (64, 1000, 300)])
    def test_int32_exact_default_tiling(self, spec, m, n, k):
        check_int32(spec, m, n, k, torch.float16, self.device)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
    def test_linear_bert_shapes(self, dtype):
        for m, (n, k) in ((1, (768, 3072)), (32, (3072, 768)), (64, (768, 768))):
            p = make_packed("2:4-w4a8", n, k, self.device)
            meta = WeightMeta.of(p)
            x = special_rows(torch.randn(m, k, device=self.device).to(dtype), huge=1000.0)
            bias = torch.randn(n, device=self.device).to(dtype)
            got = tb.linear(x, tb.prepare(p), meta, bias, "gelu")
            assert_epilogue_close(got, ref.linear(x, ref.prepare(p), meta, bias, "gelu"), dtype)

    def test_cuda_graph_replay_with_split_k(self):
        p = make_packed("2:4-w8a8", 768, 3072, self.device)
        meta, values, metadata, scales = weights(p)
        x = torch.randn(8, 3072, device=self.device, dtype=torch.float16)
        run = lambda: fused.fused_linear(x, values, metadata, scales, n=768, k=3072, bits=8, sparse=True,  # noqa: E731
                                         int32=True)
        assert fused.fused_split_k(8, 768, 3072, fused.fused_config(8), fused._sm_count(x.device)) > 1
        run()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            run()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = run()
        for _ in range(3):
            x.copy_(torch.randn_like(x))
            g.replay()
            assert torch.equal(y, ref.int_mm(ref_quantize(x)[0], ref.prepare(p), meta))
            assert torch.equal(run(), y)   # eager calls between replays: counters stay consistent

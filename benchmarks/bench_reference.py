"""The reference backend on a CPU against the float32 model it replaces: a whole encoder forward.

The reference backend (plain PyTorch) is what a CPU runs: the demo, calibration's evaluation, the CPU
examples and most of the test suite. It is exact (its int32 accumulators equal the integer product),
and it should cost about what the float32 model costs: it decodes each weight once, then multiplies in
float32 (see :mod:`nxm_kernels.backends.reference`). Measured here: the built-in model's forward
(MiniLM on its 32 built-in sentences when installed, else the tiny random BERT) in float32, and
swapped to each weight kind on the reference backend, on the CPU under ``torch.inference_mode()``,
on one thread by default (``--threads``: on a shared machine, several threads wait on each other
whenever one is descheduled); each timed as the best of several forwards, the models taking turns,
so a busy machine disturbs them alike. Goal: reference / float32 <= 2x.

    python benchmarks/bench_reference.py                 # ~1 minute with MiniLM
    python benchmarks/bench_reference.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import report_goal  # noqa: E402
import nxm_kernels as nxm  # noqa: E402
from nxm_kernels.models.zoo import load_builtin  # noqa: E402
from nxm_kernels.timing import text_table  # noqa: E402

GOAL = 2.0
SPECS = ("2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8")


def measure(model_name: str = "auto", repeats: int = 5, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    builtin = load_builtin(model_name)
    inputs = builtin.inputs
    models = {"float32": builtin.model}
    for spec in SPECS:
        models[spec] = copy.deepcopy(builtin.model)
        nxm.swap_linears(models[spec], spec, backend="reference")
    best = dict.fromkeys(models, float("inf"))
    with torch.inference_mode():
        for model in models.values():  # warm-up: the first forward decodes each weight once
            model(**inputs)
        for _ in range(repeats):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(**inputs)
                best[name] = min(best[name], time.perf_counter() - t0)
    base = best["float32"]
    ratios = {name: t / base for name, t in best.items()}
    worst = max(v for k, v in ratios.items() if k != "float32")
    tokens = tuple(inputs["input_ids"].shape)
    return {"model": builtin.name, "tokens": list(tokens), "seconds": best, "ratios": ratios, "ratio": worst,
            "goal_ratio": GOAL, "repeats": repeats, "threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the tiny model, two forwards (the test suite's smoke run)")
    p.add_argument("--model", default="auto", help="built-in model: auto (MiniLM when installed), minilm or tiny")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="forwards per model (the best is kept)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    r = (measure("tiny", repeats=2, threads=args.threads) if args.quick
         else measure(args.model, repeats=args.repeats, threads=args.threads))
    print(f"{r['model']} forward on the CPU, {r['tokens'][0]} x {r['tokens'][1]} tokens, {r['threads']} threads "
          f"(best of {r['repeats']}):")
    print(text_table(["model", "s per forward", "vs float32"],
                     [[name, f"{t:.3f}", f"{r['ratios'][name]:.2f}x"] for name, t in r["seconds"].items()]))
    report_goal("reference / float32 (worst weight kind)", r["ratio"], GOAL, r, json_path=args.json,
                quick_note="a tiny model, too few forwards for the numbers to mean much" if args.quick else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

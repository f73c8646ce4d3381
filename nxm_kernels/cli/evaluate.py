"""``nxm evaluate``: GLUE metrics of a model directory, compressed (``nxm_config.json``, loaded with
:func:`nxm_kernels.io.load_compressed`) or a plain Hugging Face model."""

from __future__ import annotations

import logging
from pathlib import Path

from .._json import dump_json
from ._args import add_glue_args

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="GLUE metrics of a compressed or plain model directory",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a compressed checkpoint or a Hugging Face model directory")
    add_glue_args(p)
    p.add_argument("--split", default="dev", choices=("train", "dev"),
                   help="which split to score (default dev; mnli-mm reads dev_mismatched)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per forward pass (default 64)")
    p.add_argument("--max-samples", type=int, default=None, help="score only the first N examples")
    p.add_argument("--backend", default="auto", help="NxMLinear backend for compressed models")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--output", default=None, help="write the metrics JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .._checks import check_device
    from ..glue import evaluate, load_glue, task_info
    from ..io import CONFIG_NAME, load_compressed

    task = task_info(args.task)
    device = check_device("--device", args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    d = Path(args.model)
    if not d.is_dir():
        raise FileNotFoundError(f"--model must be a directory, got {str(args.model)!r}")
    compressed = (d / CONFIG_NAME).is_file()  # else a Hugging Face sequence-classification model
    if compressed:
        model = load_compressed(d, device=device, backend=args.backend)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(d)).to(device).eval()
    labels = getattr(getattr(model, "config", None), "num_labels", None)
    if labels is not None and labels != task.num_labels:
        raise ValueError(f"model has {labels} labels but task {task.name} has {task.num_labels}")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    data = load_glue(task, args.split, args.data_dir)
    if args.max_samples:
        data = data.subset(args.max_samples)
    metrics, _ = evaluate(model, tokenizer, data, batch_size=args.batch_size, max_length=args.max_length)
    result = {"task": task.name, "split": args.split, "model": str(args.model), "compressed": compressed,
              "n": len(data), "metrics": metrics}
    if args.output:
        dump_json(result, args.output, make_parents=True)
    print(f"{task.name} {args.split} ({len(data)} examples): " +
          ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "main"))
    return 0

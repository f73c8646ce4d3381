"""``nxm compress``: fine-tune a BERT-family model on a GLUE task while compressing it (ADMM N:M
sparsification + STE QAT, optionally distilling the dense model), export it to ``NxMLinear`` and
write a compressed checkpoint plus a metrics JSON.

Output directory::

    <out>/compressed/     the compressed checkpoint (nxm_kernels.io; with the tokenizer)
    <out>/metrics.json    dense, QAT and exported metrics, export agreement, sizes, ADMM residuals
    <out>/trainer/        Trainer checkpoints (with --save-steps), for --resume
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from pathlib import Path

from .._json import dump_json
from ._args import PLAN_HELP, add_glue_args, plan_arg

logger = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("compress", help="compress a BERT model on a GLUE task (ADMM + QAT, export)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="Hugging Face model folder or Hub id (ideally fine-tuned on the task), or a built-in: "
                        "minilm (all-MiniLM-L6-v2, a new task head), tiny (a random 2-layer BERT, seconds), "
                        "tiny-<family> (the same for another encoder family: tiny-distilbert, tiny-mpnet, "
                        "tiny-deberta-v2, tiny-modernbert)")
    add_glue_args(p)
    p.add_argument("--plan", default="2:4-w8a8", type=plan_arg, help=PLAN_HELP + " (default 2:4-w8a8)")
    p.add_argument("--output-dir", required=True, help="where the checkpoint and metrics.json go")
    p.add_argument("--backend", default="auto", help="NxMLinear backend of the exported model (default auto)")
    p.set_defaults(func=run)
    p.lazy = _add_training_options  # they import transformers: built only when `nxm compress` is parsed


def _add_training_options(p) -> None:
    from ..train.arguments import ADMM_ARGS, DISTILL_ARGS, SCHEDULE_ARGS, TRAINING_ARGS

    # Options that mirror a config dataclass are generated from its fields (nxm_kernels.train.arguments).
    g = SCHEDULE_ARGS.add_to(p, "schedule")
    ADMM_ARGS.add_to(g)
    g.add_argument("--init", choices=("magnitude", "sparsegpt", "wanda"), default="magnitude",
                   help="starting point: magnitude (the dense weights; Z and the prune-at-once mask by magnitude), or "
                        "calibrated one-shot weights and masks (nxm_kernels.calibrate) from the first "
                        "--calibration-samples training examples [magnitude]")
    g.add_argument("--calibration-samples", type=int, default=512, help="examples used by --init [512]")
    g = TRAINING_ARGS.add_to(p, "training")
    g.add_argument("--max-train-samples", type=int, default=None, help="use only the first N training examples")
    g.add_argument("--max-eval-samples", type=int, default=None, help="evaluate on only the first N dev examples")
    g.add_argument("--resume", action="store_true", help="resume from the last checkpoint in <out>/trainer")
    g = DISTILL_ARGS.add_to(p, "distillation")
    g.add_argument("--distill", action="store_true", help="distil from the dense input model (or --teacher)")
    g.add_argument("--teacher", default=None, help="teacher model directory (implies --distill)")


def check_admm_updates(schedule, plan, n_train: int, args) -> None:
    """Refuse, before anything is trained, an ADMM phase too short for a single Z/U update.

    With the default interval (0.02 / lr: 400 steps at lr 5e-5) a small data set easily gives an ADMM
    phase of a few dozen steps: it would run without one update and only prune by magnitude at its end.
    """
    from ..spec import parse_spec

    if not any(parse_spec(spec).sparse for spec in plan.to_dict().values()):
        return  # no N:M layer, no ADMM phase
    # The optimizer steps of a single-process Trainer run (no gradient accumulation).
    per_epoch = max(1, math.ceil(n_train / args.per_device_train_batch_size))
    total = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * per_epoch)
    phase = schedule.admm_phase_steps(total, per_epoch)
    if phase == 0 or schedule.admm_updates(total, per_epoch) > 0:
        return
    how = "" if args.admm_interval_given else f" (the default, 0.02 / --lr {args.learning_rate:g})"
    raise ValueError(f"the ADMM phase would make no Z/U update: it lasts {phase} optimizer steps ({n_train} training "
                     f"examples, --batch-size {args.per_device_train_batch_size}, {total} steps in all) but "
                     "--admm-interval is "
                     f"{schedule.admm.interval}{how}; pass --admm-interval {max(1, phase // 4)} (at most {phase}), "
                     "train longer (--epochs, --max-steps, --admm-steps), or prune at once with --admm-steps 0")


def _calibrated_start(model, plan, train, tokenizer, args) -> dict:
    """Calibrate the model's weights in place (``--init``) and return the N:M masks chosen."""
    import torch

    from ..calibrate import calibrate_weights
    from ..glue import encode
    from ..search.batches import collate

    if args.calibration_samples < 1:
        raise ValueError(f"--calibration-samples must be >= 1, got {args.calibration_samples}")
    feats = encode(train.subset(min(args.calibration_samples, len(train))), tokenizer, args.max_length)
    batches = collate([{k: v for k, v in f.items() if k != "labels"} for f in feats], tokenizer, 32)
    device = "cuda" if torch.cuda.is_available() and not args.use_cpu else "cpu"
    model.to(device)
    t0 = time.time()
    results = calibrate_weights(model, plan, batches, args.init)
    logger.info("--init %s: calibrated %d linears on %d examples in %.1f s", args.init, len(results), len(feats),
                time.time() - t0)
    return {n: r.mask for n, r in results.items() if r.mask is not None}


def run(args) -> int:
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from ..glue import encode, evaluate, load_glue, load_glue_model, task_info
    from ..io import save_compressed
    from ..train import ADMMConfig, CompressionSchedule, DistillConfig, NxMCompression
    from ..train.arguments import ADMM_ARGS, DISTILL_ARGS, SCHEDULE_ARGS, TRAINING_ARGS

    task = task_info(args.task)
    if args.teacher is not None and not Path(args.teacher).is_dir():
        raise FileNotFoundError(f"--teacher must be a model directory, got {args.teacher!r}")
    plan = args.plan
    # Everything the command line can get wrong is checked before the model loads (seconds to minutes).
    train = load_glue(task, "train", args.data_dir)
    if args.max_train_samples:
        train = train.subset(args.max_train_samples)
    dev = load_glue(task, "dev", args.data_dir)
    if args.max_eval_samples:
        dev = dev.subset(args.max_eval_samples)
    args.admm_interval_given = args.interval is not None
    if args.interval is None:
        args.interval = max(1, round(0.02 / args.learning_rate))
        logger.info("ADMM interval: %d steps (0.02 / lr)", args.interval)
    schedule = CompressionSchedule(**SCHEDULE_ARGS.values(args), admm=ADMMConfig(**ADMM_ARGS.values(args)))
    check_admm_updates(schedule, plan, len(train), args)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(args.seed)
    model, tokenizer = load_glue_model(args.model, task, seed=args.seed)
    logger.info("task %s: %d training, %d evaluation examples; plan %s", task.name, len(train), len(dev), plan)

    t0 = time.time()
    score = functools.partial(evaluate, tokenizer=tokenizer, data=dev, batch_size=args.per_device_eval_batch_size,
                              max_length=args.max_length)  # (metrics, logits) of a model on the dev split
    dense_metrics, _ = score(model)
    logger.info("dense model: %s", dense_metrics)

    teacher = None
    if args.teacher:
        teacher, _ = load_glue_model(args.teacher, task, seed=args.seed)
    elif args.distill:
        teacher = copy.deepcopy(model)
    distill = DistillConfig(**DISTILL_ARGS.values(args)) if teacher is not None else None
    init_masks = None
    if args.init != "magnitude":
        init_masks = _calibrated_start(model, plan, train, tokenizer, args)
    compression = NxMCompression(plan, schedule=schedule, teacher=teacher, distill=distill, init_masks=init_masks)
    targs = TrainingArguments(**{
        **TRAINING_ARGS.values(args), "output_dir": str(out / "trainer"), "report_to": [],
        "logging_steps": max(1, min(50, args.interval)), "save_strategy": "steps" if args.save_steps > 0 else "no",
        "save_steps": args.save_steps if args.save_steps > 0 else 500,
        "use_cpu": args.use_cpu or not torch.cuda.is_available()})
    trainer = Trainer(model=model, args=targs, train_dataset=encode(train, tokenizer, args.max_length),
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[compression])
    resume = get_last_checkpoint(str(out / "trainer")) if args.resume and (out / "trainer").is_dir() else None
    if args.resume and resume is None:
        logger.warning("--resume: no checkpoint in %s, starting from scratch", out / "trainer")
    train_result = trainer.train(resume_from_checkpoint=resume)
    model = trainer.model

    qat_metrics, qat_logits = score(model)
    logger.info("QAT model: %s", qat_metrics)
    report = compression.export(model, backend=args.backend)
    exp_metrics, exp_logits = score(model)
    logger.info("exported model: %s", exp_metrics)
    if task.is_regression:
        agreement = None
    else:
        agreement = float((qat_logits.argmax(-1) == exp_logits.argmax(-1)).float().mean())
    diff = float((qat_logits - exp_logits).abs().max())
    ckpt = save_compressed(model, out / "compressed", plan=plan, tokenizer=tokenizer)
    admm_log = [h for h in trainer.state.log_history if "nxm_admm_update" in h]
    metrics = {
        "task": task.name, "model": str(args.model), "plan": plan.to_dict(), "n_train": len(train), "n_eval": len(dev),
        "dense": dense_metrics, "qat": qat_metrics, "exported": exp_metrics,
        "export_agreement": agreement, "export_max_abs_logit_diff": diff,
        "bytes_before": report.bytes_before, "bytes_after": report.bytes_after,
        "size_factor": report.size_factor, "backend": report.backend,
        "train_steps": trainer.state.global_step, "train_runtime_s": round(train_result.metrics.get("train_runtime", 0), 2),
        "admm": {"updates": len(admm_log),
                 "rel_primal_first": admm_log[0]["nxm_admm_rel_primal"] if admm_log else None,
                 "rel_primal_last": admm_log[-1]["nxm_admm_rel_primal"] if admm_log else None},
        "distilled": teacher is not None, "init": args.init, "checkpoint": str(ckpt),
        "wall_s": round(time.time() - t0, 2),
    }
    dump_json(metrics, out / "metrics.json")
    main = task.metrics[0]
    print(f"{task.name}: {main} dense {dense_metrics['main']:.4f} -> QAT {qat_metrics['main']:.4f} -> exported "
          f"{exp_metrics['main']:.4f}; {report.size_factor:.2f}x smaller encoder linears; checkpoint {ckpt}")
    return 0

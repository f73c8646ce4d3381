"""``nxm search``: pick a spec per BERT component that removes a target fraction of the bytes.

::

    nxm search --model runs/sst2-finetuned --task sst2 --data-dir glue/ --target 0.875 --out plan.json
    nxm search ... --kind true-fp32          # --target counts true (packed) bytes against fp32
    nxm search ... --granularity layer       # one spec per linear instead of per component type
    nxm search ... --validate 3              # measure the 3 best plans whole (measured vs predicted)

The sensitivity profile is cached (``--cache-dir``), so rerunning with another ``--target`` is instant.
Writes ``--out`` (the best plan, a plain plan JSON that ``nxm compress``, ``swap_linears`` and
checkpoints take unchanged), ``<out>.search.json`` (every ranked plan, the Pareto front, the greedy and
uniform references, the sensitivity profile and the best plan's accounting) and ``<out>.pareto.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .._json import dump_json
from ._args import add_glue_args

__all__ = ["register", "run_search"]


def register(subparsers) -> None:
    from ..accounting import KINDS
    from ..search.objective import OBJECTIVES
    from ..search.sensitivity import DEFAULT_CACHE_DESCRIPTION, DEFAULT_CANDIDATES, GRANULARITIES, MODES
    from ..search.validate import VALIDATION_MODES

    p = subparsers.add_parser(
        "search", help="heterogeneous compression search for a target fraction of the bytes removed",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="a fine-tuned Hugging Face BERT-family task model (folder or Hub id), or a built-in: "
                        "minilm (all-MiniLM-L6-v2 with a new head), tiny (a random 2-layer BERT, seconds), "
                        "tiny-<family> (the same for another encoder family: tiny-distilbert, tiny-mpnet, "
                        "tiny-deberta-v2, tiny-modernbert)")
    add_glue_args(p)
    p.add_argument("--target", type=float, required=True,
                   help="fraction of the bytes to remove, e.g. 0.875 (8x smaller)")
    p.add_argument("--kind", choices=KINDS, default="nominal",
                   help="what --target counts: nominal bits x density (default), or true packed bytes incl. "
                        "metadata, scales, padding against fp32 (true = true-fp32) or fp16")
    # The spellings of earlier versions keep working, unlisted: --ratio KIND and --true-ratio (= --kind true-fp32).
    p.add_argument("--ratio", choices=KINDS, dest="kind", help=argparse.SUPPRESS)
    p.add_argument("--true-ratio", action="store_const", const="true-fp32", dest="kind", help=argparse.SUPPRESS)
    p.add_argument("--out", required=True, help="where to write the best plan (JSON)")
    p.add_argument("--report", default=None, help="full search report JSON (default: <out>.search.json)")
    p.add_argument("--plot", default=None, help="Pareto-front PNG (default: <out>.pareto.png); 'none' to skip")
    p.add_argument("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES),
                   help=f"specs to consider (default: {' '.join(DEFAULT_CANDIDATES)}; fp is always an option)")
    p.add_argument("--granularity", choices=GRANULARITIES, default="component",
                   help="one spec per component type (default) or per linear layer")
    p.add_argument("--objective", choices=OBJECTIVES, default="divergence",
                   help="cost of a compression: output divergence (default), task loss increase, metric drop")
    p.add_argument("--mode", choices=MODES, default="oneshot", help="sensitivity estimate: one-shot or short QAT")
    p.add_argument("--qat-steps", type=int, default=20, help="optimizer steps per short QAT run")
    p.add_argument("--qat-lr", type=float, default=2e-5, help="learning rate of the short QAT runs (default 2e-5)")
    p.add_argument("--split", default="train",
                   help="split the held-out sample is drawn from (default train: the dev split stays untouched)")
    p.add_argument("--samples", type=int, default=256, help="examples in the held-out sample")
    p.add_argument("--train-samples", type=int, default=256, help="examples for short QAT runs (disjoint)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample draw")
    p.add_argument("--top-k", type=int, default=5, help="ranked plans to report")
    p.add_argument("--validate", type=int, default=0, metavar="K", help="measure the K best plans whole")
    p.add_argument("--validate-mode", nargs="+", choices=VALIDATION_MODES, default=["oneshot"],
                   help="how --validate measures a plan: oneshot (fake-quantized), deploy (the real NxMLinear "
                        "model), qat (after a short QAT run) (default oneshot)")
    p.add_argument("--backend", default="reference", help="backend for --validate-mode deploy")
    p.add_argument("--cache-dir", default=None, help=f"sensitivity cache folder (default: {DEFAULT_CACHE_DESCRIPTION})")
    p.add_argument("--no-cache", action="store_true", help="measure everything again, keep nothing")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_search)


def _sibling(out: Path, suffix: str) -> Path:
    return out.with_name(out.stem + suffix)


def run_search(args) -> int:
    import torch

    from .._checks import check_device
    from ..accounting import account
    from ..models.encoder import encoder_linears
    from ..search import plot_pareto, profile_sensitivity, search_plans, validate_plans
    from ..glue import GlueMetric, load_glue, load_glue_model, task_batches
    from ..search.sensitivity import candidate_specs, default_cache_dir

    if not 0.0 <= args.target < 1.0:
        raise ValueError(f"--target must be a fraction removed in [0, 1), e.g. 0.875; got {args.target}")
    device = str(check_device("--device", args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out must be a .json file, got {args.out!r}")
    progress = not args.no_progress

    # What the command line can get wrong is checked before the model loads (seconds to minutes).
    candidate_specs(args.candidates, "--candidates")
    data = load_glue(args.task, args.split, args.data_dir)
    model, tokenizer = load_glue_model(args.model, args.task, device=device, dtype=torch.float32,
                                       why="sensitivities of an untrained head say little; search a model "
                                           "fine-tuned on the task")
    need_train = args.mode == "qat" or ("qat" in args.validate_mode and args.validate > 0)
    held, train = task_batches(args.task, data, tokenizer, samples=args.samples,
                               train_samples=args.train_samples if need_train else 0,
                               batch_size=args.batch_size, max_length=args.max_length, seed=args.seed)
    metric_fn = GlueMetric(args.task) if args.objective == "metric" else None
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())

    sens = profile_sensitivity(model, held, args.candidates, granularity=args.granularity, objective=args.objective,
                               metric_fn=metric_fn, mode=args.mode, train_batches=train or None,
                               qat_steps=args.qat_steps, qat_lr=args.qat_lr, cache_dir=cache_dir, progress=progress)
    print(sens.table())
    print(f"({sens.computed} measured, {sens.reused} from the cache"
          f"{'' if cache_dir is None else ' in ' + str(cache_dir)})\n")
    sites = encoder_linears(model)
    result = search_plans(sens, sites, args.target, kind=args.kind, top_k=args.top_k)
    if args.validate:
        validate_plans(model, held, result, modes=args.validate_mode, top_k=args.validate, metric_fn=metric_fn,
                       backend=args.backend, train_batches=train or None, qat_steps=args.qat_steps,
                       qat_lr=args.qat_lr, progress=progress)
    print(result.table())
    best = result.best
    acct = account(sites, best.plan)
    print("\nbest plan, by component:")
    print(acct.table(per_layer=False))

    out.parent.mkdir(parents=True, exist_ok=True)
    best.plan.to_json(out)
    report = Path(args.report) if args.report else _sibling(out, ".search.json")
    data = result.to_dict()
    data["best_accounting"] = acct.to_dict()
    data["model"], data["task"] = str(args.model), str(args.task)
    dump_json(data, report)
    written = [str(out), str(report)]
    if (args.plot or "").lower() != "none":
        plot = Path(args.plot) if args.plot else _sibling(out, ".pareto.png")
        plot_pareto(result, plot, title=f"{Path(str(args.model)).name} on {args.task}: removing "
                                        f"{100 * args.target:.2f}% ({result.kind})")
        written.append(str(plot))
    print("\nwrote " + ", ".join(written))
    return 0

"""Search a heterogeneous compression plan for a BERT-family encoder that removes a target fraction of the bytes.

    python python/search_plan.py                       # MiniLM-L6 when installed, else a tiny BERT
    python python/search_plan.py --target 0.85 --kind true-fp32 --out-dir runs/search

Steps, all through the public API:

1. profile how much each component type (query, key, value, attn_out, ffn1, ffn2) suffers under each
   candidate spec: here the cost is 1 - cosine of the mean-pooled sentence embeddings against the
   float model, on a few sentences (cached on disk: a second run with another target is instant);
2. search the plan that meets the target at the least predicted cost, and the Pareto front;
3. measure the best plans whole, on the deployed NxMLinear model (reference backend);
4. account the bytes (nominal and true), write the plan JSON and a Pareto plot, swap the model with
   the plan, save it as a compressed checkpoint and load it back.

For a fine-tuned task model and GLUE data use ``nxm search`` (same machinery, task data and metrics).
"""

import argparse
import logging
from pathlib import Path

import torch

import nxm_kernels as nxm
from nxm_kernels.accounting import KINDS, account
from nxm_kernels.models.encoder import encoder_linears
from nxm_kernels.models.zoo import SENTENCES, load_builtin, sentence_embeddings, tokenized_batches
from nxm_kernels.search import plot_pareto, profile_sensitivity, search_plans, validate_plans
from nxm_kernels.search.sensitivity import DEFAULT_CACHE_DESCRIPTION, default_cache_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="auto", choices=["auto", "minilm", "tiny"],
                   help="built-in model: minilm, tiny, auto (minilm when installed) (default auto)")
    p.add_argument("--target", type=float, default=0.875, help="fraction of the bytes to remove (0.875 = 8x smaller)")
    p.add_argument("--kind", default="nominal", choices=KINDS,
                   help="what --target counts: nominal bits, or true packed bytes (incl. metadata) vs fp32/fp16")
    p.add_argument("--granularity", default="component", choices=["component", "layer"],
                   help="one spec per component type (default) or per linear layer")
    p.add_argument("--out-dir", default="search-out", help="where the plan, plot and checkpoint go (default search-out)")
    p.add_argument("--cache-dir", default=None, help=f"sensitivity cache folder (default: {DEFAULT_CACHE_DESCRIPTION})")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    builtin = load_builtin(args.model)
    model = builtin.model
    if builtin.tokenizer is not None:
        # Two batches of sentences: the held-out sample the costs are measured on.
        batches = tokenized_batches(builtin.tokenizer, SENTENCES, batch_size=len(SENTENCES) // 2)
    else:
        batches = [builtin.inputs]
    print(f"model: {builtin.description}; {len(encoder_linears(model))} encoder linears")

    # 1. Sensitivities (bare encoder: the cost is 1 - cosine of mean-pooled embeddings).
    sens = profile_sensitivity(model, batches, granularity=args.granularity, cache_dir=args.cache_dir or default_cache_dir())
    print(sens.table())
    print(f"({sens.computed} measured, {sens.reused} from the cache)\n")

    # 2. Search.
    result = search_plans(sens, encoder_linears(model), args.target, kind=args.kind, top_k=3)

    # 3. Measure the best plans whole, as deployed.
    validate_plans(model, batches, result, modes=("oneshot", "deploy"), top_k=2)
    print(result.table())

    # 4. Bytes, files, and the compressed model.
    best = result.best
    print("\n" + account(encoder_linears(model), best.plan).table(per_layer=False))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    best.plan.to_json(out / "plan.json")
    result.to_json(out / "search.json")
    plot_pareto(result, out / "pareto.png", title=f"{builtin.name}: removing {100 * args.target:.1f}% ({result.kind})")

    reference = sentence_embeddings(model, batches[:1])
    report = nxm.swap_linears(model, nxm.Plan.from_json(out / "plan.json"), backend="reference")
    print(f"\n{report}")
    nxm.save_compressed(model, out / "checkpoint", plan=best.plan)
    loaded = nxm.load_compressed(out / "checkpoint", backend="reference")
    cos = torch.nn.functional.cosine_similarity(sentence_embeddings(loaded, batches[:1]), reference, dim=-1)
    print(f"reloaded checkpoint: mean embedding cosine vs float {cos.mean():.4f} "
          f"(predicted cost {best.predicted_cost:.4g}, measured {best.measured['deploy']:.4g})")
    print(f"wrote {out / 'plan.json'}, {out / 'search.json'}, {out / 'pareto.png'}, {out / 'checkpoint'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

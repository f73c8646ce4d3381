"""``nxm account``: the bytes of a plan's encoder weights, nominal and true, per layer and in total.

::

    nxm account --model bert-base-uncased --plan '{"*": "2:4-w8a8", "ffn2": "dense-w8a8"}'
    nxm account --model minilm --plan plan.json --per-layer --json acct.json

Only the model's config is read (the model is built on the meta device: no weights are loaded).
"""

from __future__ import annotations

import argparse

from ..models.zoo import model_sites  # kept importable from here, where it used to live
from ._args import PLAN_HELP, plan_arg

__all__ = ["register", "run_account", "model_sites"]


def register(subparsers) -> None:
    p = subparsers.add_parser("account", help="compression accounting of a plan (nominal and true bytes)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="auto",
                   help="a Hugging Face encoder model folder or id, or a built-in: auto, minilm, tiny, tiny-<family> "
                        "(tiny-distilbert, tiny-mpnet, tiny-deberta-v2, tiny-modernbert)")
    p.add_argument("--plan", required=True, type=plan_arg, help=PLAN_HELP)
    p.add_argument("--per-layer", action="store_true", help="one row per linear (default: per component)")
    p.add_argument("--json", default=None, help="also write the accounting as JSON here")
    p.set_defaults(func=run_account)


def run_account(args) -> int:
    from ..accounting import account

    acct = account(model_sites(args.model), args.plan)
    print(acct.table(per_layer=args.per_layer))
    if args.json:
        acct.to_json(args.json)
        print(f"wrote {args.json}")
    return 0

"""Arguments several subcommands share (a leading underscore keeps this module out of discovery)."""

from __future__ import annotations

import argparse
from pathlib import Path

#: What every ``--plan`` takes, for its help text.
PLAN_HELP = ("a plan: one spec for every layer ('2:4-w8a8'), plan JSON ('{\"*\": \"2:4-w8a8\", \"ffn2\": "
             "\"dense-w8a8\"}'), or a path to a file holding either")


def plan_arg(text: str):
    """The argparse ``type`` of every ``--plan``: a :class:`~nxm_kernels.plan.Plan` from a spec, plan JSON,
    or a file (of any name) holding either. Bad text is an ``ArgumentTypeError`` naming the rule broken."""
    from ..plan import Plan

    try:
        # A path is read first: a plan file need not end in .json, and its text is JSON or a spec.
        if not text.lstrip().startswith("{") and Path(text).is_file():
            text = Path(text).read_text()
        return Plan.coerce(text.strip())
    except (ValueError, TypeError, OSError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_glue_args(p) -> None:
    """``--task`` (required), ``--data-dir`` and ``--max-length``: which GLUE task, read from where (see
    nxm_kernels.glue), tokenized how long."""
    from ..glue import GLUE_TASKS

    p.add_argument("--task", required=True, help=f"GLUE task: {', '.join(GLUE_TASKS)}")
    p.add_argument("--data-dir", default=None, help="folder in the standard GLUE layout (default: the datasets hub)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per example, longer ones are cut (default 128)")

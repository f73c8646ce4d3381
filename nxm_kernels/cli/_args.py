"""Arguments several subcommands share (a leading underscore keeps this module out of discovery)."""

from __future__ import annotations


def add_glue_args(p) -> None:
    """``--task`` (required) and ``--data-dir``: which GLUE task, read from where (see nxm_kernels.glue)."""
    from ..glue import GLUE_TASKS

    p.add_argument("--task", required=True, help=f"GLUE task: {', '.join(GLUE_TASKS)}")
    p.add_argument("--data-dir", default=None, help="folder in the standard GLUE layout (default: the datasets hub)")

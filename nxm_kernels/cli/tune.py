"""``nxm tune``: time every backend and kernel variant on this GPU and cache the dispatch table.

::

    nxm tune                                        # BERT shapes, every weight kind, every M bucket
    nxm tune --shapes 768x768,3072x768 --specs 2:4-w8a8 --m 16,64,256

The table is written to ``~/.cache/nxm_kernels/dispatch/<gpu>.json`` (``$NXM_CACHE_DIR/dispatch``
when set) and ``backend="auto"`` uses it from then on (see ``nxm_kernels.dispatch``). Needs a CUDA
GPU; a few minutes on BERT shapes (Triton autotunes each shape and M bucket once).
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run_tune"]


def register(subparsers) -> None:
    p = subparsers.add_parser("tune", help="time the kernels on this GPU and cache the dispatch table",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=None, help="comma-separated NxK weight shapes (default: BERT-base/-large)")
    p.add_argument("--specs", default=None, help="comma-separated weight kinds (default: the four packable specs)")
    p.add_argument("--m", default=None, help="comma-separated M values (default: every M bucket, 16 ... 8192)")
    p.add_argument("--reps", type=int, default=50, help="timed calls per point (median reported)")
    p.add_argument("--device", default="cuda", help="the CUDA device to tune (default: the current one)")
    p.set_defaults(func=run_tune)


def int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--{what} must list integers >= 1, got {text!r}")
    return values


def shape_list(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        n, sep, k = part.strip().lower().partition("x")
        try:
            shape = (int(n), int(k))
        except ValueError:
            shape = None
        if not sep or shape is None or min(shape) < 1:
            raise ValueError(f"--shapes must be comma-separated NxK (e.g. 768x3072), got {part!r}")
        out.append(shape)
    return out


def run_tune(args) -> int:
    import torch

    from .. import dispatch
    from ..spec import kernel_spec

    if not torch.cuda.is_available():
        raise RuntimeError("it times kernels on a CUDA GPU, and torch sees none on this machine (nothing written)")
    shapes = shape_list(args.shapes) if args.shapes else dispatch.BERT_SHAPES
    kinds = [str(kernel_spec(s.strip())) for s in args.specs.split(",")] if args.specs else dispatch.KINDS
    ms = int_list(args.m, "m") if args.m else dispatch.M_BUCKETS
    if args.reps < 1:
        raise ValueError(f"--reps must be >= 1, got {args.reps}")
    table, path = dispatch.tune(args.device, shapes, kinds, ms, reps=args.reps)
    print(f"{table.gpu}: {len(table.entries)} points timed; dispatch table written to {path}")
    for (kind, n, k, b), times in sorted(table.entries.items()):
        ranked = sorted(times, key=times.get)
        print(f"  {kind:10s} {n}x{k:<6d} M<={b:<5d} {ranked[0]:14s} "
              + "  ".join(f"{c} {times[c]:.1f} us" for c in ranked))
    return 0

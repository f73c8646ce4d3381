"""One timer (:func:`measure`) and one text table (:func:`text_table`) for whatever measures speed:
``nxm demo`` and the programs in ``benchmarks/``. CPU numbers show that a program runs, not how fast
a kernel is: on a GPU the timers are CUDA events or Triton's, on a CPU the wall clock."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Timing", "TIMERS", "measure", "text_table"]

TIMERS = ("events", "do_bench", "cudagraph")


@dataclass
class Timing:
    """Milliseconds per call. Triton's timers give only the median and the 20th/80th percentiles."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    timer: str
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    iters: int | None = None


def measure(fn: Callable[[], object], device: "torch.device | str", *, timer: str = "events", warmup: int = 1,
            min_iters: int = 1, max_iters: int | None = None, budget_s: float = 0.0, warmup_ms: float = 25,
            rep_ms: float = 100) -> Timing:
    """Time ``fn()`` on ``device`` (``fn`` rotates its own inputs where caches matter).

    ``"events"``: ``warmup`` untimed calls, then calls timed one by one (CUDA events; the wall clock on
    a CPU) until ``max_iters`` (default ``min_iters``) or, past ``min_iters``, until ``budget_s`` has
    passed: a whole forward's latency and spread. ``"do_bench"``: ``triton.testing.do_bench`` for
    ``rep_ms`` after ``warmup_ms``, the L2 cleared before every call (one kernel, cold caches);
    ``"cudagraph"``: calls replayed from a CUDA graph (no host overhead). Without a GPU those two time
    ``min_iters`` calls of an ``fn`` the caller has warmed up, labelled as a CPU smoke timing.
    """
    device = torch.device(device)
    if timer not in TIMERS:
        raise ValueError(f"timer must be one of {TIMERS}, got {timer!r}")
    max_iters = min_iters if max_iters is None else max_iters
    for name, v, low in (("warmup", warmup, 0), ("min_iters", min_iters, 1), ("max_iters", max_iters, min_iters)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    cuda = device.type == "cuda"
    if timer != "events" and cuda:
        import triton.testing

        if timer == "cudagraph":
            q = triton.testing.do_bench_cudagraph(fn, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        else:
            q = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return Timing(*map(float, q), timer)
    label = "cuda events" if cuda else "wall-clock" if timer == "events" else "wall-clock (CPU smoke: no timing claims)"
    for _ in range(warmup if timer == "events" else 0):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    s: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(s) < max_iters and (len(s) < min_iters or time.perf_counter() < t_end):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            s.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            s.append((time.perf_counter() - t0) * 1e3)
    s.sort()
    pct = lambda q: s[min(len(s) - 1, int(round(q * (len(s) - 1))))]  # noqa: E731 - nearest rank
    return Timing(statistics.median(s), pct(0.2), pct(0.8), label, pct(0.99), sum(s) / len(s), s[0], len(s))


def text_table(header: list[str], rows: list[list], markdown: bool = False) -> str:
    """Columns padded to their widest cell, the first (row names) left-aligned and the rest right-aligned,
    a rule under the header; or a Markdown table."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row must have {len(header)} cells (one per header), got {[len(r) for r in rows]}")
    cells = [[str(c) for c in r] for r in [header, *rows]]
    if markdown:
        return "\n".join(["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(header)] +
                         ["| " + " | ".join(r) + " |" for r in cells[1:]])
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])

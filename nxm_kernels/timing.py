"""One timer and one text table for whatever measures speed: ``nxm demo`` and the programs in ``benchmarks/``.

:func:`measure` times a callable on a device. Three timers, one per question asked:

* ``"events"``: each call timed on its own after warm-up calls (CUDA events on a GPU, the wall clock
  on a CPU), until ``max_iters`` calls or, past ``min_iters``, until ``budget_s`` is spent: the
  latency of a whole forward, with its spread (p50/p99);
* ``"do_bench"``: ``triton.testing.do_bench``, the L2 cleared before every call (cold caches; the
  launch overhead is hidden behind the cache-clearing kernel): one kernel's time;
* ``"cudagraph"``: ``triton.testing.do_bench_cudagraph``, calls replayed from a CUDA graph (no host
  overhead at all).

Without a GPU the last two fall back to the wall clock over ``min_iters`` calls of an already
warmed-up callable, labelled as such: CPU numbers show that a program runs, not how fast a kernel is.

:func:`text_table` is the one plain-text table the demo and the benchmarks print.
"""

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
    """Milliseconds per call: the median and the 20th/80th percentiles always; the 99th percentile, the
    mean, the minimum and the number of calls where each call was timed on its own (``iters``)."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    timer: str
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    iters: int | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _samples_ms(fn: Callable[[], object], device: torch.device, min_iters: int, max_iters: int,
                budget_s: float) -> list[float]:
    samples: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(samples) < max_iters and (len(samples) < min_iters or time.perf_counter() < t_end):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return sorted(samples)


def measure(fn: Callable[[], object], device: "torch.device | str", *, timer: str = "events", warmup: int = 1,
            min_iters: int = 1, max_iters: int | None = None, budget_s: float = 0.0, warmup_ms: float = 25,
            rep_ms: float = 100) -> Timing:
    """Time ``fn()`` (which should rotate its own inputs where caches matter) on ``device``.

    ``timer="events"``: ``warmup`` untimed calls, then calls timed one by one until ``max_iters``
    (default ``min_iters``) or, once ``min_iters`` are done, until ``budget_s`` seconds have passed.
    ``"do_bench"`` / ``"cudagraph"`` on a GPU: Triton's timers for ``rep_ms`` after ``warmup_ms``; on a
    CPU, ``min_iters`` wall-clock calls of an ``fn`` the caller has warmed up.
    """
    device = torch.device(device)
    if timer not in TIMERS:
        raise ValueError(f"timer must be one of {TIMERS}, got {timer!r}")
    max_iters = min_iters if max_iters is None else max_iters
    for name, v, low in (("warmup", warmup, 0), ("min_iters", min_iters, 1), ("max_iters", max_iters, min_iters)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    if timer != "events" and device.type == "cuda":
        import triton.testing

        bench = triton.testing.do_bench_cudagraph if timer == "cudagraph" else triton.testing.do_bench
        kwargs = {} if timer == "cudagraph" else {"warmup": warmup_ms}
        med, lo, hi = bench(fn, rep=rep_ms, quantiles=[0.5, 0.2, 0.8], **kwargs)
        return Timing(float(med), float(lo), float(hi), timer)
    if timer != "events":
        warmup, label = 0, "wall-clock (CPU smoke: no timing claims)"
    else:
        label = "cuda events" if device.type == "cuda" else "wall-clock"
    for _ in range(warmup):
        fn()
    _sync(device)
    s = _samples_ms(fn, device, min_iters, max_iters, budget_s)
    pct = lambda q: s[min(len(s) - 1, int(round(q * (len(s) - 1))))]  # noqa: E731 - nearest rank
    return Timing(statistics.median(s), pct(0.2), pct(0.8), label, p99_ms=pct(0.99), mean_ms=sum(s) / len(s),
                  min_ms=s[0], iters=len(s))


def text_table(header: list[str], rows: list[list]) -> str:
    """Columns padded to their widest cell: the first (the row names) left-aligned, the numbers right-aligned,
    a rule under the header."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row must have {len(header)} cells (one per header), got {[len(r) for r in rows]}")
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])

"""PNG plots of the benchmark JSON (matplotlib, headless). Missing matplotlib means no plots, not a failure."""

from __future__ import annotations

import logging
import math
from pathlib import Path

logger = logging.getLogger("benchmarks.plots")

#: like-for-like pairing: our "op" (fp16 in/out) against fp16 baselines, our "gemm" against int8 ones
BASELINE_MODE = {"fp16-mm": "op", "cslt-fp16-2:4": "op", "int8-mm": "gemm", "cslt-int8-2:4": "gemm",
                 "cutlass-int8-2:4": "gemm"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return None
    return plt


def _panels(n_panels: int, n_labels: int, ncol: int, plt):
    """A grid of panels with room below for a legend of ``n_labels`` entries in ``ncol`` columns."""
    cols = min(4, n_panels)
    rows = math.ceil(n_panels / cols)
    legend_in = 0.22 * math.ceil(n_labels / ncol) + 0.3
    height = 3.4 * rows + legend_in + 0.6
    fig, axes = plt.subplots(rows, cols, figsize=(max(9.0, 4.2 * cols), height), squeeze=False)
    return fig, axes, (0, legend_in / height, 1, 1 - 0.6 / height)


def _style_axes(ax, xlabel: str, ylabel: str, ybase: int, title: str | None = None) -> None:
    """One panel: log2 on x (M, tokens), log ``ybase`` on y."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=ybase)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)


def _finish_panels(fig, axes, n_panels: int, rect, title: str, legend_fontsize: int, path: Path, plt) -> Path:
    """Blank the unused panels, put the first panel's legend below the grid, title, save, close."""
    for ax in list(axes.flat)[n_panels:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=legend_fontsize)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=rect)
    return _save(fig, path, plt)


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _title(result: dict) -> str:
    env = result["environment"]
    where = env.get("gpu") or "CPU smoke run (no timing claims)"
    return f"{where}, torch {env['torch']}, {env['date'][:10]}, {env['commit']}"


def plot_gemm(result: dict, outdir: Path) -> list[Path]:
    """``speedup_vs_<baseline>.png`` (one panel per shape, speedup vs M per our provider, in the
    like-for-like mode) and ``time_vs_m.png`` (median time per provider)."""
    plt = _pyplot()
    if plt is None:
        return []
    recs = [r for r in result["records"] if r.get("status") == "ok"]
    shapes = list(dict.fromkeys(r["shape"] for r in result["records"]))
    written = []
    baselines = [b for b in BASELINE_MODE if any(r["provider"] == b for r in recs)]
    for base in baselines:
        mode = BASELINE_MODE[base]
        ours = sorted({r["provider"] for r in recs if r["kind"] == "ours" and r["mode"] == mode
                       and base in r.get("speedup", {})})
        if not ours:
            continue
        fig, axes, rect = _panels(len(shapes), len(ours), 4, plt)
        for ax, shape in zip(axes.flat, shapes):
            for i, prov in enumerate(ours):
                pts = sorted((r["m"], r["speedup"][base]) for r in recs
                             if r["provider"] == prov and r["shape"] == shape and base in r.get("speedup", {}))
                if pts:
                    style = "-" if "2:4" in prov else "--"
                    ax.plot(*zip(*pts), style, marker="o", ms=3, color=plt.cm.tab10(i % 10),
                            label=prov.replace("nxm-", "").replace(f"-{mode}", ""))
            ax.axhline(1.0, color="grey", lw=0.8)
            _style_axes(ax, "M (tokens)", f"speedup vs {base}", 2, shape)
        written.append(_finish_panels(fig, axes, len(shapes), rect, f"nxm {mode} vs {base}\n{_title(result)}", 8,
                                      outdir / f"speedup_vs_{base.replace(':', '')}.png", plt))

    provs = list(dict.fromkeys(r["provider"] for r in recs))
    if provs:
        fig, axes, rect = _panels(len(shapes), len(provs), 4, plt)
        for ax, shape in zip(axes.flat, shapes):
            for i, prov in enumerate(provs):
                pts = sorted((r["m"], r["time_us"]) for r in recs if r["provider"] == prov and r["shape"] == shape)
                if pts:
                    base = next(r for r in recs if r["provider"] == prov)["kind"] == "baseline"
                    ax.plot(*zip(*pts), "-" if base else ":", marker="o", ms=2, lw=2 if base else 1,
                            color=plt.cm.tab20(i % 20), label=prov.replace("nxm-", ""))
            _style_axes(ax, "M (tokens)", "median time (us)", 10, shape)
        written.append(_finish_panels(fig, axes, len(shapes), rect, f"GEMM time per call\n{_title(result)}", 7,
                                      outdir / "time_vs_m.png", plt))
    return written


def plot_e2e(result: dict, outdir: Path) -> list[Path]:
    """``e2e_<model>.png``: p50 latency vs tokens (batch x seq) and speedup over HF fp16 eager."""
    plt = _pyplot()
    if plt is None:
        return []
    recs = [r for r in result["records"] if r.get("status") == "ok"]
    written = []
    for model in dict.fromkeys(r["model"] for r in recs):
        rows = [r for r in recs if r["model"] == model]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
        for key in dict.fromkeys((r["variant"], r["mode"]) for r in rows):
            pts = sorted((r["batch"] * r["seq"], r["p50_ms"], r.get("speedup_vs_hf_eager")) for r in rows
                         if (r["variant"], r["mode"]) == key)
            label = f"{key[0]} [{key[1]}]"
            style = "-" if key[1] == "eager" else "--"
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=label)
            sp = [(p[0], p[2]) for p in pts if p[2]]
            if sp:
                ax2.plot(*zip(*sp), style, marker="o", ms=3, label=label)
        _style_axes(ax1, "tokens per forward (batch x seq)", "p50 latency (ms)", 10)
        _style_axes(ax2, "tokens per forward (batch x seq)", "speedup vs HF fp16 eager", 2)
        ax2.axhline(1.0, color="grey", lw=0.8)
        ax1.legend(fontsize=6, ncol=2)
        fig.suptitle(f"{model} forward\n{_title(result)}", fontsize=9)
        fig.tight_layout()
        written.append(_save(fig, outdir / f"e2e_{model}.png", plt))
    return written

"""A picture of the search: predicted cost against fraction of bytes removed, the Pareto front, the plans
chosen, the greedy plan and the uniform plans, with the target as a vertical line (matplotlib PNG)."""

from __future__ import annotations

from pathlib import Path

from .optimize import SearchResult

__all__ = ["plot_pareto"]

_MEASURED_MARKERS = {"oneshot": "o", "deploy": "D", "qat": "^"}


def plot_pareto(result: SearchResult, path: "str | Path", *, title: str | None = None) -> Path:
    """Draw ``result`` into the PNG ``path`` and return the path. Needs matplotlib (the ``plot`` extra)."""
    if not isinstance(result, SearchResult):
        raise TypeError(f"result must be a SearchResult, got {type(result).__name__}")
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: never needs a display
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is in the test extra
        raise RuntimeError("plotting needs matplotlib: pip install 'nxm-kernels[plot]'") from exc
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)

    pct = 100.0

    def x(c):  # a plan's fraction removed of the searched kind, in %
        return c.fraction_removed[result.kind] * pct

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    fx = [c.fraction_removed * pct for c in result.front]
    fy = [c.predicted_cost for c in result.front]
    ax.step(fx, fy, where="post", color="0.6", lw=1, zorder=1)
    ax.scatter(fx, fy, s=14, color="0.45", label=f"Pareto front ({len(result.front)} plans)", zorder=2)
    for j, c in enumerate(result.uniform):
        ax.scatter([x(c)], [c.predicted_cost], marker="s", s=36, facecolor="none", edgecolor="tab:blue",
                   zorder=3, label="uniform plans" if j == 0 else None)
        # Alternate label sides: uniform plans often share a fraction removed (2:4-w8a8 and dense-w4a8
        # both remove 87.5% nominally).
        ax.annotate(next(iter(c.choices.values())), (x(c), c.predicted_cost), fontsize=7,
                    xytext=(-6, 4) if j % 2 else (5, -9), ha="right" if j % 2 else "left",
                    textcoords="offset points", color="tab:blue")
    if result.greedy is not None:
        g = result.greedy
        ax.scatter([x(g)], [g.predicted_cost], marker="x", s=50, color="tab:orange", label="greedy", zorder=4)
    for i, c in enumerate(result.ranked, 1):
        ax.scatter([x(c)], [c.predicted_cost], marker="*", s=140 if i == 1 else 70,
                   color="tab:red", edgecolor="k", lw=0.5, zorder=5, label=f"ranked plans ({len(result.ranked)})" if i == 1 else None)
        if i == 1:
            ax.annotate("best", (x(c), c.predicted_cost), fontsize=8, xytext=(6, -10),
                        textcoords="offset points")
        for mode, value in c.measured.items():
            ax.scatter([x(c)], [value], marker=_MEASURED_MARKERS.get(mode, "o"), s=34, facecolor="none",
                       edgecolor="tab:green", zorder=6, label=f"measured ({mode})" if i == 1 else None)
    ax.axvline(result.target * pct, color="tab:red", ls="--", lw=1, label=f"target {result.target * pct:.2f}%")
    ax.set_xlabel(f"fraction of the bytes removed, {result.kind} (%)")
    ax.set_ylabel(f"predicted cost ({result.sensitivity.objective}, {result.sensitivity.mode})")
    positive = [v for v in fy if v > 0]
    if positive and max(positive) / min(positive) > 1e3:
        # Costs span decades; symlog keeps the zero-cost plans visible.
        ax.set_yscale("symlog", linthresh=min(positive))
    ax.set_ylim(bottom=0)
    ax.set_title(title or f"Compression plans: {result.sensitivity.granularity} granularity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

"""The search: per-group specs that remove a target fraction of the bytes at the least predicted cost.

Inputs are a :class:`~nxm_kernels.search.sensitivity.Sensitivity` profile (cost of each group under
each candidate spec) and the layer shapes (their sizes are :meth:`nxm_kernels.accounting.LayerAccount.size`,
so the fractions removed are the accounting's exactly). A plan assigns one option to every group: ``fp`` (cost
0, full size) or a candidate spec. Its **predicted cost** is the sum of its groups' measured costs
(negative measurements count as 0): an additivity assumption that :func:`~nxm_kernels.search.
validate.validate_plans` checks by measuring whole plans.

Two algorithms (both run; the result reports both):

* ``pareto`` (the answer): a multiple-choice knapsack solved by merging the groups one at a time
  while keeping only non-dominated (size, cost) states. It is exact while the number of states
  stays under ``max_states`` (always, for the six component groups); beyond that, sizes are
  bucketed to ``1/max_states`` of the baseline and the cheapest state per bucket is kept. It gives
  the whole Pareto front of fraction removed against predicted cost; the ranked plans are the front's plans
  that meet the target, cheapest first.
* ``greedy`` (the paper's heuristic, for comparison): start with everything ``fp`` and repeatedly
  take the step with the least added cost per byte saved until the target is met.

The target is a *fraction removed* (``0.875`` = 8x smaller) of one of the kinds of :mod:`nxm_kernels.accounting`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from .._json import dump_json
from ..accounting import account, check_kind, layer_shapes
from ..plan import COMPONENTS, SITE_COMPONENTS, Plan, qkv_members
from ..spec import parse_spec
from .sensitivity import Sensitivity

__all__ = ["FrontPoint", "PlanCandidate", "SearchResult", "search_plans", "compact_plan"]

logger = logging.getLogger(__name__)


def compact_plan(assignment: Mapping[str, str], names) -> Plan:
    """The shortest plain plan giving ``assignment`` (layer name -> spec) over ``names``.

    A component whose layers all share a spec becomes one ``<component>`` entry; otherwise its most
    common spec becomes the component entry and the rest ``layer.<i>.<component>`` entries (more
    specific, so they win). Every name is covered explicitly, ``fp`` included, so the plan reads
    the same whatever defaults a reader assumes. A ``layer.<i>.qkv`` name (one linear computing query,
    key and value) is written as its three components with its spec: the plan vocabulary has no ``qkv``.
    Checked: the plan resolves to ``assignment``.
    """
    names = list(names)
    assignment = {n: str(parse_spec(s)) for n, s in assignment.items()}
    missing = [n for n in names if n not in assignment]
    if missing:
        raise ValueError(f"assignment has no spec for {missing[:5]}")
    entries: list[tuple[str, str]] = []
    by_comp: dict[str, list[tuple[str, str]]] = {}  # component -> [(plan name, spec)]
    others = []
    for n in names:
        parts = n.split(".")
        if len(parts) == 3 and parts[0] == "layer" and parts[2] in SITE_COMPONENTS:
            for member in qkv_members(n):
                by_comp.setdefault(member.rsplit(".", 1)[1], []).append((member, assignment[n]))
        else:
            others.append(n)
    for comp in COMPONENTS:
        members = by_comp.get(comp)
        if not members:
            continue
        specs = [spec for _, spec in members]
        common = max(dict.fromkeys(specs), key=specs.count)  # ties: the first seen
        entries.append((comp, common))
        entries.extend((n, spec) for n, spec in members if spec != common)
    entries.extend((n, assignment[n]) for n in others)
    plan = Plan(entries)
    resolved = {n: str(s) for n, s in plan.resolve(names).items()}
    if resolved != {n: assignment[n] for n in names}:  # pragma: no cover - guards the construction above
        raise RuntimeError("compact_plan built a plan that does not reproduce the assignment")
    return plan


@dataclass
class PlanCandidate:
    """One plan with its predicted cost, its fraction removed of every kind (``{"nominal",
    "true-fp32", "true-fp16"}``, ``None`` without a packed size; from
    :func:`nxm_kernels.accounting.account`) and, after validation, its measured cost."""

    plan: Plan
    choices: dict[str, str]          # group -> spec
    predicted_cost: float
    fraction_removed: dict[str, float | None]
    measured: dict = field(default_factory=dict)   # mode -> measured cost

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "choices": self.choices, "predicted_cost": self.predicted_cost,
                "fraction_removed": self.fraction_removed, "measured": self.measured}


@dataclass
class FrontPoint:
    """A plan on the Pareto front, kept light (the front of a per-layer search has thousands): its
    fraction removed of the searched kind, from the same byte/bit sums the accounting uses, and the
    group choices."""

    fraction_removed: float
    predicted_cost: float
    choices: dict[str, str]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    """Ranked plans removing at least ``target`` (a fraction of ``kind``), the Pareto front, the greedy
    plan and uniform references."""

    target: float
    kind: str
    ranked: list[PlanCandidate]
    front: list[FrontPoint]
    greedy: PlanCandidate | None
    uniform: list[PlanCandidate]
    sensitivity: Sensitivity
    exact: bool = True

    @property
    def best(self) -> PlanCandidate:
        return self.ranked[0]

    def to_dict(self) -> dict:
        return {"target": self.target, "kind": self.kind, "exact_front": self.exact,
                "best": self.best.plan.to_dict(),
                "ranked": [c.to_dict() for c in self.ranked],
                "greedy": None if self.greedy is None else self.greedy.to_dict(),
                "uniform": [c.to_dict() for c in self.uniform],
                "front": [c.to_dict() for c in self.front],
                "sensitivity": self.sensitivity.to_dict()}

    def to_json(self, path: "str | Path | None" = None) -> str:
        return dump_json(self.to_dict(), path)

    def table(self) -> str:
        """The ranked plans (and greedy / uniform references) as text."""
        head = f"{'':<10} {'pred. cost':>11} {'target':>7} {'nominal':>8} {'true32':>8} {'true16':>8} {'measured':>10}  plan"
        rows = [f"plans removing >= {100 * self.target:.2f}% of the bytes ({self.kind}; cost: "
                f"{self.sensitivity.objective}, {self.sensitivity.mode}; lower is better)", head, "-" * len(head)]

        def pct(v):
            return "-" if v is None else f"{100 * v:7.2f}%"

        def row(label, c):
            meas = ", ".join(f"{v:.4g}" for v in c.measured.values()) or "-"
            f = c.fraction_removed
            rows.append(f"{label:<10} {c.predicted_cost:>11.4g} {pct(f[self.kind]):>7} {pct(f['nominal']):>8} "
                        f"{pct(f['true-fp32']):>8} {pct(f['true-fp16']):>8} {meas:>10}  {json.dumps(c.plan.to_dict())}")

        for i, c in enumerate(self.ranked, 1):
            row(f"#{i}", c)
        if self.greedy is not None:
            row("greedy", self.greedy)
        for c in self.uniform:
            row("uniform", c)
        return "\n".join(rows)


def _prune_front(states: list, bucket: float | None) -> list:
    """Keep the (size, cost) states no other state beats on both; optionally one per size bucket."""
    states.sort(key=lambda s: (s[0], s[1]))
    if bucket:
        # Per size bucket keep the cheapest state and the smallest one: dropping the smallest would
        # let the most compressed reachable plan drift up, bucket by bucket, until a feasible target
        # became unreachable.
        best: dict[int, tuple] = {}
        smallest: dict[int, tuple] = {}
        for s in states:  # sorted by size: the first state seen in a bucket is its smallest
            b = int(s[0] // bucket)
            smallest.setdefault(b, s)
            if b not in best or s[1] < best[b][1]:
                best[b] = s
        states = sorted(set(best.values()) | set(smallest.values()), key=lambda s: (s[0], s[1]))
    out, best_cost = [], math.inf
    for s in states:
        if s[1] < best_cost:
            out.append(s)
            best_cost = s[1]
    return out


def search_plans(sensitivity: Sensitivity, layers, target: float, *, kind: str = "nominal", top_k: int = 5,
                 max_states: int = 20000) -> SearchResult:
    """Plans whose fraction removed (of ``kind``) is at least ``target``, cheapest predicted cost first
    (see the module docstring).

    Args:
        sensitivity: the measured costs (:func:`~nxm_kernels.search.sensitivity.profile_sensitivity`).
        layers: the encoder linears' shapes (anything :func:`nxm_kernels.accounting.layer_shapes` takes:
            ``encoder_linears(model)`` or ``{name: (out, in)}``); names no group covers stay ``fp``.
        target: the fraction of the bytes to remove, in ``[0, 1)`` (``0.875`` = 8x smaller).
        kind: ``"nominal"``, ``"true"`` (= ``"true-fp32"``) or ``"true-fp16"``
            (:data:`nxm_kernels.accounting.KINDS`).
        top_k: how many ranked plans to return.
        max_states: front size above which sizes are bucketed (the search then becomes approximate;
            ``SearchResult.exact`` says which).

    Raises ``ValueError`` when the target cannot be met with the profiled specs (the message gives
    the largest reachable fraction removed).
    """
    if not isinstance(sensitivity, Sensitivity):
        raise TypeError(f"sensitivity must be a Sensitivity, got {type(sensitivity).__name__}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not (0.0 <= target < 1.0):
        raise ValueError(f"target must be a fraction removed in [0, 1) (e.g. 0.875), got {target!r}")
    kind = check_kind(kind)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    shapes = layer_shapes(layers)
    groups = {g: m for g, m in sensitivity.groups.items() if g in sensitivity.costs}
    for g, members in groups.items():
        if unknown := [n for n in members if n not in shapes]:
            raise ValueError(f"sensitivity group {g!r} names layers the model does not have: {unknown[:5]} "
                             f"(was the profile measured on another model?)")
    names = list(shapes)
    layer_sizes: dict[str, dict] = {}  # spec -> {name: size}, the accounting's (LayerAccount.size)

    def group_size(spec: str, members) -> float | None:
        """The summed size of ``members`` under ``spec`` (``None``: no packed size, only nominal)."""
        if spec not in layer_sizes:
            layer_sizes[spec] = {a.name: a.size(kind) for a in account(shapes, spec).layers}
        sizes = [layer_sizes[spec][n] for n in members]
        return None if None in sizes else sum(sizes)

    grouped = {n for m in groups.values() for n in m}
    baseline = group_size("fp", names)
    fixed = group_size("fp", [n for n in names if n not in grouped])  # ungrouped layers stay fp

    # Options per group: (size, cost, spec); a spec with a non-finite cost or no size is not an option.
    options: dict[str, list[tuple[float, float, str]]] = {}
    for g, members in groups.items():
        opts = [(group_size("fp", members), 0.0, "fp")]
        for spec, cost in sensitivity.costs[g].items():
            if math.isfinite(cost) and group_size(spec, members) is not None:
                opts.append((group_size(spec, members), max(0.0, float(cost)), spec))
        options[g] = opts
    budget = (1.0 - target) * baseline
    smallest = fixed + sum(min(o[0] for o in opts) for opts in options.values())
    if smallest > budget * (1 + 1e-12):
        raise ValueError(f"target: removing {target:.4f} of the bytes ({kind}) cannot be reached with candidates "
                         f"{sensitivity.candidates}: the most compressed plan reaches {1 - smallest / baseline:.4f}")

    def candidate(choices: dict[str, str]) -> PlanCandidate:
        assignment = {n: "fp" for n in names}
        for g, spec in choices.items():
            for n in groups[g]:
                assignment[n] = spec
        plan = compact_plan(assignment, names)
        acct = account(shapes, plan)
        cost = sum(max(0.0, sensitivity.cost(g, s)) for g, s in choices.items() if s != "fp")
        return PlanCandidate(plan=plan, choices=dict(choices), predicted_cost=cost,
                             fraction_removed=acct.summary()["fraction_removed"])

    # ---- Pareto front over (size, cost), merging one group at a time.
    order = list(groups)
    states = [(fixed, 0.0, ())]
    exact = True
    for g in order:
        states = [(s + o[0], c + o[1], ch + (o[2],)) for s, c, ch in states for o in options[g]]
        states = _prune_front(states, None)
        if len(states) > max_states:
            exact = False
            states = _prune_front(states, baseline / max_states)
    front = sorted((FrontPoint(1.0 - size / baseline, cost, dict(zip(order, ch))) for size, cost, ch in states),
                   key=lambda p: p.fraction_removed)
    # Full candidates (plan + accounting) only for the plans reported; the accounting has the last
    # word on "meets the target" (a float hair between the two sums cannot sneak a plan through).
    ranked = []
    for point in sorted((p for p in front if p.fraction_removed >= target - 1e-9),
                        key=lambda p: (p.predicted_cost, -p.fraction_removed)):
        c = candidate(point.choices)
        if c.fraction_removed[kind] >= target:
            ranked.append(c)
            if len(ranked) == top_k:
                break
    if not ranked:  # pragma: no cover - the feasibility check above rules this out
        raise RuntimeError("no plan on the front meets the target although the most compressed one does")

    # ---- Greedy: least cost added per byte saved.
    cur = {g: options[g][0] for g in order}  # all fp
    size = fixed + sum(o[0] for o in cur.values())
    while size > budget * (1 + 1e-12):
        best = None
        for g in order:
            for o in options[g]:
                saved = cur[g][0] - o[0]
                if saved <= 0:
                    continue
                score = ((o[1] - cur[g][1]) / saved, -saved)
                if best is None or score < best[0]:
                    best = (score, g, o)
        _, g, o = best
        size += o[0] - cur[g][0]
        cur[g] = o
    greedy = candidate({g: o[2] for g, o in cur.items()})
    if greedy.fraction_removed[kind] < target:  # float edge: the budget test passed by a rounding hair
        logger.warning("greedy plan removes %.6f, below the target %.6f", greedy.fraction_removed[kind], target)

    uniform = [candidate({g: spec for g in order}) for spec in sensitivity.candidates
               if all(spec in sensitivity.costs[g] for g in order)
               and group_size(spec, names) is not None]
    logger.info("search: %d front plans (%s), best predicted cost %.4g removing %.4f (%s)", len(front),
                "exact" if exact else "bucketed", ranked[0].predicted_cost, ranked[0].fraction_removed[kind], kind)
    return SearchResult(target=float(target), kind=kind, ranked=ranked, front=front, greedy=greedy,
                        uniform=uniform, sensitivity=sensitivity, exact=exact)

"""Checking the search's predictions: measure whole plans and put the numbers next to the predicted cost.

The search predicts a plan's cost as the sum of its groups' costs measured one at a time. Compressing
several groups at once interacts, so the best plans are measured whole, on the same sample with
the same objective, in one or more modes:

* ``"oneshot"``: the plan applied in place with the kernels' math (:func:`.sensitivity.fake_compressed`).
* ``"deploy"``: a copy of the model really swapped to ``NxMLinear`` (:func:`nxm_kernels.models.encoder.
  swap_linears`, ``backend`` as given; ``"reference"`` by default, any device), i.e. what ships.
* ``"qat"``: a short QAT run of the whole plan (:func:`.qat.short_qat`), to compare with a profile
  measured in ``"qat"`` mode.

Results go into each candidate's ``measured`` dict (mode -> cost) and show in the tables and plots.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable, Iterable

import torch.nn as nn
from tqdm.auto import tqdm

from ..models.encoder import swap_linears
from .objective import Evaluator, check_batches
from .optimize import PlanCandidate, SearchResult
from .sensitivity import fake_compressed

__all__ = ["VALIDATION_MODES", "validate_plans"]

logger = logging.getLogger(__name__)

VALIDATION_MODES = ("oneshot", "deploy", "qat")


def validate_plans(model: nn.Module, batches, plans: "SearchResult | Iterable[PlanCandidate]", *,
                   modes: Iterable[str] = ("oneshot",), top_k: int | None = None, objective: str | None = None,
                   metric_fn: Callable | None = None, evaluator: Evaluator | None = None, backend: str = "reference",
                   train_batches=None, qat_steps: int = 20, qat_lr: float = 2e-5,
                   progress: bool = True) -> list[PlanCandidate]:
    """Measure the cost of whole plans; fill ``candidate.measured[mode]``; return the candidates.

    ``plans`` is a :class:`~.optimize.SearchResult` (its ranked plans, ``top_k`` of them) or a list of
    candidates. The objective defaults to the one the profile used; pass the same held-out
    ``batches`` so measured and predicted numbers are comparable (or a ready ``evaluator``).
    """
    if isinstance(plans, SearchResult):
        objective = objective or plans.sensitivity.objective
        candidates = list(plans.ranked)
    else:
        candidates = list(plans)
    if not all(isinstance(c, PlanCandidate) for c in candidates):
        raise TypeError("plans must be a SearchResult or a list of PlanCandidate")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        candidates = candidates[:top_k]
    if isinstance(modes, str):
        modes = [modes]
    modes = list(modes)
    for m in modes:
        if m not in VALIDATION_MODES:
            raise ValueError(f"modes must be drawn from {VALIDATION_MODES}, got {m!r}")
    if "qat" in modes:
        if train_batches is None:
            raise ValueError("mode 'qat' needs train_batches")
        train_batches = check_batches(train_batches)
    if evaluator is None:
        evaluator = Evaluator(model, batches, objective or "divergence", metric_fn)
    jobs = [(c, m) for c in candidates for m in modes]
    for c, m in tqdm(jobs, desc="validating plans", disable=not progress):
        if m == "oneshot":
            with fake_compressed(model, c.plan):
                cost = evaluator.cost(model)
        elif m == "deploy":
            swapped = copy.deepcopy(model)
            swap_linears(swapped, c.plan, backend=backend)
            cost = evaluator.cost(swapped)
            del swapped
        else:
            from .qat import short_qat_cost
            cost = short_qat_cost(model, c.plan, evaluator, train_batches, steps=qat_steps, lr=qat_lr)
        c.measured[m] = float(cost)
        logger.info("plan %s: predicted %.4g, measured (%s) %.4g", c.plan.to_dict(), c.predicted_cost, m, cost)
    return candidates

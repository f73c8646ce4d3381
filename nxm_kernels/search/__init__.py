"""Heterogeneous compression search: remove a target fraction of the bytes at the least cost.

Different parts of a transformer tolerate compression differently. The search measures how much
each component type (or each linear) suffers under each spec (:mod:`.sensitivity`, cached on
disk), then picks a spec per component that removes a target fraction of the bytes at the least
predicted cost (:mod:`.optimize`), checks the best plans by measuring them whole
(:mod:`.validate`), and draws the Pareto front (:mod:`.plot`). Byte counts come from
:mod:`nxm_kernels.accounting`, so the fractions removed here are the accounting's.

::

    from nxm_kernels.models.encoder import encoder_linears
    from nxm_kernels.search import profile_sensitivity, search_plans

    sens = profile_sensitivity(model, heldout_batches, cache_dir="~/.cache/nxm")   # minutes, once
    result = search_plans(sens, encoder_linears(model), target=0.875, kind="nominal")  # instant
    result.best.plan.to_json("plan.json")       # swap_linears / nxm compress / checkpoints take it
"""

from .objective import OBJECTIVES, Evaluator
from .optimize import PlanCandidate, SearchResult, compact_plan, search_plans
from .plot import plot_pareto
from .sensitivity import (DEFAULT_CANDIDATES, GRANULARITIES, MODES, Sensitivity, default_cache_dir, fake_compressed,
                          group_sites, profile_sensitivity)
from .validate import validate_plans

__all__ = ["OBJECTIVES", "Evaluator", "PlanCandidate", "SearchResult", "compact_plan", "search_plans",
           "plot_pareto", "DEFAULT_CANDIDATES", "GRANULARITIES", "MODES", "Sensitivity", "default_cache_dir",
           "fake_compressed", "group_sites", "profile_sensitivity", "validate_plans"]

"""Applying a plan to a model: :func:`replace_sites`, the one place that replaces a model's layers (for
the swaps to ``NxMLinear``, ``prepare_qat``, the search's fake compression and the checkpoint loaders).
It matches the plan against the sites once (which entry wins: :mod:`nxm_kernels.plan`) and installs the
replacements once all were built, so an error leaves the model as it was. A site (:class:`LinearSite`) is
named ``layer.<i>.<component>`` in an encoder (``models.encoder.encoder_linears``), else by module name.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, NamedTuple

import torch.nn as nn
from tqdm.auto import tqdm

from .._checks import preview
from ..modules import NxMLinear, SwappedLayer, SwapReport, after_swap, linear_nbytes
from ..plan import Plan
from ..spec import LayerSpec, kernel_spec

__all__ = ["LinearSite", "module_sites", "replace_sites", "swap_sites", "swap_named_linears"]

logger = logging.getLogger(__name__)


class LinearSite(NamedTuple):
    """One layer site: its plan name, parent module, attribute, the module there, its qualified name."""

    name: str
    parent: nn.Module
    attr: str
    module: nn.Module
    qualified_name: str


def module_sites(model: nn.Module, names: Iterable[str] | None = None) -> list[LinearSite]:
    """Sites of the modules at qualified ``names`` (default: every ``nn.Linear``), named by those names."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    if names is None:
        names = [name for name, m in modules.items() if isinstance(m, nn.Linear) and name]
    sites = []
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        if name not in modules:
            raise ValueError(f"{type(model).__name__} has no module {name!r}")
        sites.append(LinearSite(name, modules[parent_name], attr, modules[name], name))
    return sites


def replace_sites(sites: Iterable[LinearSite], plan, make: Callable[[LinearSite, LayerSpec], nn.Module], *,
                  strict: bool = True, progress: str | None = None) -> list[tuple[LinearSite, LayerSpec, nn.Module]]:
    """Replace each site the plan (anything :meth:`Plan.coerce` takes; ``strict``: every pattern must match a
    site) does not leave ``fp`` by ``make(site, spec)``, in place. All are built before any is installed
    (``make`` may return the site's own module, changed in place). ``progress`` names a progress bar.
    Returns ``[(site, spec, new module)]`` in site order."""
    sites = list(sites)  # a generator would be spent by the first pass
    specs = Plan.coerce(plan).resolve([s.name for s in sites], strict=strict)
    todo = [(site, specs[site.name]) for site in sites if not specs[site.name].is_fp]
    built = [(site, spec, make(site, spec))
             for site, spec in tqdm(todo, desc=progress, unit="layer", disable=None if progress else True,
                                    leave=False)]
    for site, _, new in built:
        setattr(site.parent, site.attr, new)
    return built


def swap_sites(sites: list[LinearSite], plan, build: Callable[[LinearSite, LayerSpec], NxMLinear], *,
               strict: bool = True) -> tuple[SwapReport, list[tuple[LinearSite, LayerSpec, nn.Module]]]:
    """:func:`replace_sites` with ``NxMLinear`` layers from ``build(site, spec)``, and the swap's report."""
    report = SwapReport()

    def make(site: LinearSite, spec: LayerSpec) -> NxMLinear:
        spec = kernel_spec(spec, name=f"spec for {site.name}")
        new = build(site, spec)
        # The float layer's bytes as they were (an nn.Linear, or a QATLinear on export).
        report.swapped.append(SwappedLayer(site.name, site.qualified_name, str(spec), tuple(site.module.weight.shape),
                                           linear_nbytes(site.module), linear_nbytes(new), new.activation))
        report.backend = new.resolved_backend
        return new

    replaced = replace_sites(sites, plan, make, strict=strict, progress="swapping linears")
    done = {site.name for site, _, _ in replaced}
    report.kept = [site.name for site in sites if site.name not in done]
    return report, replaced


def swap_named_linears(model: nn.Module, patterns, backend: str = "auto") -> SwapReport:
    """Replace ``nn.Linear`` modules of any model, chosen by qualified-name globs, with ``NxMLinear``.

    ``patterns`` is a plan of ``fnmatch`` globs over module names (as in ``model.named_modules()``),
    e.g. ``{"encoder.*.fc1": "2:4-w8a8", "*": "dense-w8a8"}``, or one spec for all; which entry wins:
    :mod:`nxm_kernels.plan` (among module-name globs, the later). ``fp`` leaves a module alone. Every glob
    must match an ``nn.Linear`` (the error lists them). In place; returns a :class:`SwapReport`.
    For BERT-family models, :func:`nxm_kernels.swap_linears` takes component plans instead.
    """
    sites = module_sites(model)
    plan = Plan.coerce(patterns)
    if not sites:
        raise ValueError(f"{type(model).__name__} has no nn.Linear submodules to swap")
    names = [site.name for site in sites]
    for glob in plan.unmatched(names):
        raise ValueError(f"pattern {glob!r} matches no nn.Linear; the linears are: {preview(names)}")
    report, _ = swap_sites(sites, plan, lambda site, spec: NxMLinear.from_linear(site.module, spec, backend=backend),
                           strict=False)
    after_swap(model)
    logger.info("%s", report)
    return report

"""Applying a plan to a model: the one place that replaces a model's layers.

Every way a plan reaches a model goes through :func:`replace_sites`: swapping linears for
``NxMLinear`` (:func:`swap_named_linears` here, :func:`nxm_kernels.swap_linears` and
:func:`nxm_kernels.calibrate` for BERT encoders, the training export), preparing ``QATLinear`` layers
(:func:`nxm_kernels.train.prepare_qat`), the search's temporary fake compression, and putting a
checkpoint's layers back on load (:mod:`nxm_kernels.records`). It resolves the plan against the
sites once (:meth:`~nxm_kernels.plan.Plan.resolve`: which entry wins is written once, in
:mod:`nxm_kernels.plan`, for component patterns and module-name globs alike), builds every
replacement first and installs them only once all were built, so an error leaves the model as it was.

A *site* (:class:`LinearSite`) is one place in the model that holds a layer: its plan name, the parent
module, the attribute, the module there now and its qualified name. BERT encoders name their sites
``layer.<i>.<component>`` (:func:`nxm_kernels.models.bert.bert_linears`); any model can name them by
qualified module name (:func:`linear_sites`, :func:`module_sites`).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, NamedTuple

import torch.nn as nn
from tqdm.auto import tqdm

from .._checks import preview
from ..modules import NxMLinear, SwappedLayer, SwapReport, after_swap
from ..plan import Plan
from ..spec import LayerSpec, kernel_spec

__all__ = ["LinearSite", "linear_sites", "module_sites", "replace_sites", "swap_sites", "swap_named_linears"]

logger = logging.getLogger(__name__)


class LinearSite(NamedTuple):
    """One layer site: its plan name, its parent module, the attribute holding it, and the module."""

    name: str
    parent: nn.Module
    attr: str
    module: nn.Module
    qualified_name: str  # the module's dotted name inside the whole model


def module_sites(model: nn.Module, names: Iterable[str]) -> list[LinearSite]:
    """The sites of the modules at qualified ``names``, each named by its qualified name."""
    sites = []
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            module = getattr(parent, attr)
        except AttributeError:
            raise ValueError(f"{type(model).__name__} has no module {name!r}") from None
        sites.append(LinearSite(name, parent, attr, module, name))
    return sites


def linear_sites(model: nn.Module) -> list[LinearSite]:
    """Every ``nn.Linear`` of ``model`` (the model itself excepted) as a site named by its qualified name."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return module_sites(model, [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name])


def replace_sites(sites: Iterable[LinearSite], plan, make: Callable[[LinearSite, LayerSpec], nn.Module], *,
                  strict: bool = True, progress: str | None = None) -> list[tuple[LinearSite, LayerSpec, nn.Module]]:
    """Replace each site the plan does not leave ``fp`` by ``make(site, spec)``, in place.

    ``plan`` is anything :meth:`Plan.coerce` takes, matched against the sites' names once (with
    ``strict``, a pattern matching no site is an error naming them). Every replacement is built before
    any is installed: an exception from ``make`` leaves the model unchanged. ``make`` may return the
    site's own module (changed in place) to keep it. ``progress`` names a progress bar over the builds.
    Returns ``[(site, spec, new module)]`` in site order; sites left ``fp`` are not listed.
    """
    sites = list(sites)
    specs = Plan.coerce(plan).resolve([s.name for s in sites], strict=strict)
    todo = [(site, specs[site.name]) for site in sites if not specs[site.name].is_fp]
    built = [(site, spec, make(site, spec))
             for site, spec in tqdm(todo, desc=progress, unit="layer", disable=None if progress else True,
                                    leave=False)]
    for site, _, new in built:
        setattr(site.parent, site.attr, new)
    return built


def swap_sites(sites: Iterable[LinearSite], plan, build: Callable[[LinearSite, LayerSpec], NxMLinear], *,
               strict: bool = True) -> tuple[SwapReport, list[tuple[LinearSite, LayerSpec, nn.Module]]]:
    """:func:`replace_sites` with ``NxMLinear`` layers from ``build(site, spec)`` (each spec must be one the
    kernels run); returns the :class:`~nxm_kernels.modules.SwapReport` and what was replaced."""
    sites = list(sites)
    report = SwapReport()

    def make(site: LinearSite, spec: LayerSpec) -> NxMLinear:
        spec = kernel_spec(spec, name=f"spec for {site.name}")
        new = build(site, spec)
        # The float layer's bytes as they were: its weight and bias (an nn.Linear, or a QATLinear on export).
        before = sum(p.numel() * p.element_size() for p in site.module.parameters())
        report.swapped.append(SwappedLayer(site.name, site.qualified_name, str(spec), tuple(site.module.weight.shape),
                                           before, new.nbytes()["total"], new.activation))
        report.backend = new.resolved_backend
        return new

    replaced = replace_sites(sites, plan, make, strict=strict, progress="swapping linears")
    done = {site.name for site, _, _ in replaced}
    report.kept = [site.name for site in sites if site.name not in done]
    return report, replaced


def swap_named_linears(model: nn.Module, patterns, backend: str = "auto") -> SwapReport:
    """Replace ``nn.Linear`` modules of any model, chosen by qualified-name globs, with ``NxMLinear``.

    ``patterns`` maps ``fnmatch`` globs over module names (as in ``model.named_modules()``) to specs,
    e.g. ``{"encoder.*.fc1": "2:4-w8a8", "*": "dense-w8a8"}``; a plain spec string means ``{"*": spec}``.
    It is a plan (:class:`~nxm_kernels.plan.Plan`), matched by the same rule as component plans (for
    module-name globs: the later entry wins); ``fp`` leaves a module alone. Every glob must match at
    least one ``nn.Linear`` (the error lists them). In place; returns a :class:`SwapReport`.
    For BERT-family models, :func:`nxm_kernels.swap_linears` takes component plans instead.
    """
    sites = linear_sites(model)
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

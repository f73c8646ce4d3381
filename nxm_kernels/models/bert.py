"""Where the compressible linears of a Hugging Face BERT-family encoder live.

Works for ``BertModel``, ``BertFor*`` task models and models with the same encoder layout
(MiniLM, RoBERTa, ELECTRA, ...): an ``encoder.layer`` list whose items hold
``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense`` and
``output.dense``. The pooler and task heads are not encoder linears.

:func:`swap_linears` replaces those linears with :class:`~nxm_kernels.modules.NxMLinear` per a plan.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch.nn as nn
from tqdm.auto import tqdm

from ..modules import NxMLinear, SwapReport, swap_in
from ..plan import COMPONENTS, Plan, layer_name
from ..spec import kernel_spec

__all__ = ["COMPONENT_PATHS", "LinearSite", "find_encoder_layers", "bert_linears", "as_plan", "swap_linears"]

logger = logging.getLogger(__name__)

#: The activation module of a BERT intermediate block (``BertIntermediate.intermediate_act_fn``).
GELU_ATTR = "intermediate_act_fn"

#: Attribute path of each component inside one encoder layer.
COMPONENT_PATHS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "ffn1": "intermediate.dense",
    "ffn2": "output.dense",
}
assert tuple(COMPONENT_PATHS) == COMPONENTS


class LinearSite(NamedTuple):
    """One encoder linear: its plan name, its parent module, the attribute holding it, and the module."""

    name: str
    parent: nn.Module
    attr: str
    module: nn.Module
    qualified_name: str  # the module's dotted name inside the whole model


def find_encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(dotted prefix, encoder.layer)`` of a BERT-like model; a clear error for anything else."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for prefix, module in model.named_modules():
        layers = getattr(getattr(module, "encoder", None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0 and all(
                _get(layer, COMPONENT_PATHS["query"]) is not None for layer in layers):
            return (prefix + "." if prefix else "") + "encoder.layer", layers
    raise ValueError(
        f"{type(model).__name__} does not have a BERT-like encoder (expected encoder.layer[i] with "
        "attention.self.query/key/value, attention.output.dense, intermediate.dense, output.dense); "
        "for other models use swap_linears with explicit module-name patterns")


def _get(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def bert_linears(model: nn.Module) -> list[LinearSite]:
    """Every encoder linear of ``model`` in layer order, named ``layer.<i>.<component>``."""
    prefix, layers = find_encoder_layers(model)
    sites = []
    for i, layer in enumerate(layers):
        for comp, path in COMPONENT_PATHS.items():
            parent_path, attr = path.rsplit(".", 1)
            parent = _get(layer, parent_path)
            module = getattr(parent, attr, None) if parent is not None else None
            if module is None:
                raise ValueError(f"encoder layer {i} has no {path} (component {comp!r})")
            sites.append(LinearSite(layer_name(i, comp), parent, attr, module, f"{prefix}.{i}.{path}"))
    return sites


# ---------------------------------------------------------------------------------- swapping
def as_plan(plan) -> Plan:
    """:meth:`Plan.coerce`: a :class:`Plan`, a ``{pattern: spec}`` mapping, a list of pairs, a spec
    string (applied to every encoder linear), plan JSON text or a path to a ``.json`` file."""
    return Plan.coerce(plan)


def _is_exact_gelu(act) -> bool:
    """True for the activation modules that compute the exact (erf) GELU the kernels fuse."""
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    # Imported here so that finding linears (used by the training path) needs no transformers import.
    from transformers.activations import GELUActivation

    return type(act) is GELUActivation  # subclasses (e.g. approximations) are left alone


def swap_linears(model: nn.Module, plan="2:4-w8a8", backend: str = "auto", *, fuse_gelu: bool = True,
                 strict: bool = True) -> SwapReport:
    """Replace the encoder linears of a Hugging Face BERT-family model with :class:`NxMLinear`, in place.

    ``plan`` says which spec each of ``layer.<i>.{query,key,value,attn_out,ffn1,ffn2}`` gets (see
    :mod:`nxm_kernels.plan` for the patterns and which entry wins); layers no entry names stay
    ``nn.Linear``, as do the pooler and task heads. With ``strict`` every plan pattern must match
    some layer (the error lists the names). With ``fuse_gelu``, a compressed ``ffn1`` followed by an
    exact GELU computes the GELU in its epilogue and the model's activation module becomes
    ``nn.Identity`` (outputs unchanged up to float rounding).

    Works for ``BertModel``, ``BertFor*`` and models with the same encoder layout (MiniLM, RoBERTa,
    ...); anything else raises ``ValueError`` (use :func:`nxm_kernels.swap_named_linears`).
    Returns a :class:`~nxm_kernels.modules.SwapReport`. For calibrated compression (SparseGPT/GPTQ,
    Wanda) use :func:`nxm_kernels.calibrate`, which returns the same report.
    """
    return _swap(model, plan, backend, fuse_gelu=fuse_gelu, strict=strict)


def _swap(model: nn.Module, plan, backend: str, *, fuse_gelu: bool, strict: bool, scales: dict | None = None):
    """:func:`swap_linears`, optionally packing layers with given per-channel ``scales`` (by plan name), which is
    how :func:`nxm_kernels.calibrate` stores exactly the codes its algorithm chose."""
    scales = scales or {}
    plan = as_plan(plan)
    sites = bert_linears(model)
    specs = plan.resolve([s.name for s in sites], strict=strict)
    for site in sites:
        spec = specs[site.name]
        if spec.is_fp:
            continue
        kernel_spec(spec, name=f"spec for {site.name}")
        if isinstance(site.module, NxMLinear):
            raise ValueError(f"{site.name} ({site.qualified_name}) already is an NxMLinear ({site.module.spec}); "
                             "swap a fresh model, or leave it out of the plan")
        if not isinstance(site.module, nn.Linear):
            raise TypeError(f"{site.name} ({site.qualified_name}) must be an nn.Linear to be swapped, "
                            f"got {type(site.module).__name__}")
    report = SwapReport()
    todo = [s for s in sites if not specs[s.name].is_fp]
    report.kept = [s.name for s in sites if specs[s.name].is_fp]
    for site in tqdm(todo, desc="swapping linears", unit="layer", disable=None, leave=False):
        spec = specs[site.name]
        activation, act_site = None, None
        if fuse_gelu and site.name.endswith(".ffn1"):
            act = getattr(site.parent, GELU_ATTR, None)
            if _is_exact_gelu(act):
                activation, act_site = "gelu", site.qualified_name.rsplit(".", 1)[0] + "." + GELU_ATTR
        swap_in(report, site.parent, site.attr, site.module, spec, name=site.name, qualified_name=site.qualified_name,
                backend=backend, activation=activation, scale=scales.get(site.name))
        if act_site is not None:
            setattr(site.parent, GELU_ATTR, nn.Identity())
            report.fused_activations.append(act_site)
    # Remembered for checkpoints (nxm_kernels.io records the plan); later swaps add their entries.
    previous = getattr(model, "_nxm_plan", None)
    model._nxm_plan = Plan(list(Plan(previous).entries if previous else []) + plan.entries).to_dict()
    logger.info("%s", report)
    return report

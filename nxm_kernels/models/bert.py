"""Where the compressible linears of a Hugging Face BERT-family encoder live.

Works for ``BertModel``, ``BertFor*`` task models and models with the same encoder layout
(MiniLM, RoBERTa, ELECTRA, ...): an ``encoder.layer`` list whose items hold
``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense`` and
``output.dense``. The pooler and task heads are not encoder linears.

:func:`swap_linears` replaces those linears with :class:`~nxm_kernels.modules.NxMLinear` per a plan,
and by default fuses each layer's query, key and value into one ``NxMLinear`` registered as
``attention.self.qkv`` (:func:`fuse_qkv`; how the fused layer plugs into Hugging Face's attention
forward is explained in :mod:`nxm_kernels.fusion`).
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import torch.nn as nn

from ..fusion import FusedProjection, fusable_reason, fuse_linears
from ..modules import NxMLinear, SwapReport, after_swap
from ..plan import COMPONENTS, Plan, layer_name
from ..spec import LayerSpec
from .swap import LinearSite, swap_sites

__all__ = ["COMPONENT_PATHS", "QKV", "QKV_ATTR", "LinearSite", "find_encoder_layers", "bert_linears",
           "swap_linears", "fuse_qkv"]

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
#: The components fused into one layer, in the fused layer's row order.
QKV = ("query", "key", "value")
#: Attribute of ``attention.self`` holding the fused query/key/value ``NxMLinear``.
QKV_ATTR = "qkv"


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
        "for other models use nxm_kernels.swap_named_linears with module-name globs")


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
            parent, module = _get(layer, parent_path), _get(layer, path)
            if module is None:
                raise ValueError(f"encoder layer {i} has no {path} (component {comp!r})")
            sites.append(LinearSite(layer_name(i, comp), parent, attr, module, f"{prefix}.{i}.{path}"))
    return sites


# ---------------------------------------------------------------------------------- swapping
def _is_exact_gelu(act) -> bool:
    """True for the activation modules that compute the exact (erf) GELU the kernels fuse."""
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    # Imported here so that finding linears (used by the training path) needs no transformers import.
    from transformers.activations import GELUActivation

    return type(act) is GELUActivation  # subclasses (e.g. approximations) are left alone


def swap_linears(model: nn.Module, plan="2:4-w8a8", backend: str = "auto", *, fuse_gelu: bool = True,
                 fuse_qkv: bool = True, strict: bool = True, scales: Mapping | None = None,
                 build: "Callable[[LinearSite, LayerSpec, str | None], NxMLinear] | None" = None) -> SwapReport:
    """Replace the encoder linears of a Hugging Face BERT-family model with :class:`NxMLinear`, in place.

    ``plan`` says which spec each of ``layer.<i>.{query,key,value,attn_out,ffn1,ffn2}`` gets (see
    :mod:`nxm_kernels.plan` for the patterns and which entry wins); layers no entry names stay
    ``nn.Linear``, as do the pooler and task heads. With ``strict`` every plan pattern must match
    some layer (the error lists the names). With ``fuse_gelu``, a compressed ``ffn1`` followed by an
    exact GELU computes the GELU in its epilogue and the model's activation module becomes
    ``nn.Identity`` (outputs unchanged up to float rounding). With ``fuse_qkv``, a layer whose
    query, key and value get the same spec computes them as one ``NxMLinear`` of ``3 x hidden``
    outputs at ``attention.self.qkv`` (one activation quantization and one GEMM instead of three;
    the outputs are bit-identical to the unfused swap, see :func:`fuse_qkv`); the report still lists
    the three linears, each with ``fused_into`` naming the fused layer.

    ``scales`` fixes layers' per-channel scales by plan name (:func:`nxm_kernels.calibrate`'s codes);
    ``build(site, spec, activation)`` makes each ``NxMLinear`` instead of ``NxMLinear.from_linear`` (the
    training export packs its QAT layers so).

    Works for ``BertModel``, ``BertFor*`` and models with the same encoder layout (MiniLM, RoBERTa,
    ...); anything else raises ``ValueError`` (use :func:`nxm_kernels.swap_named_linears`).
    Returns a :class:`~nxm_kernels.modules.SwapReport`. For calibrated compression (SparseGPT/GPTQ,
    Wanda) use :func:`nxm_kernels.calibrate`, which returns the same report.
    """
    if not isinstance(fuse_qkv, bool):
        raise TypeError(f"fuse_qkv must be a bool, got {type(fuse_qkv).__name__}")
    plan = Plan.coerce(plan)
    scales = scales or {}
    gelus = []

    def make(site: LinearSite, spec: LayerSpec) -> NxMLinear:
        if isinstance(site.module, NxMLinear):
            raise ValueError(f"{site.name} ({site.qualified_name}) already is an NxMLinear ({site.module.spec}); "
                             "swap a fresh model, or leave it out of the plan")
        if isinstance(site.module, FusedProjection):
            raise ValueError(f"{site.name} ({site.qualified_name}) is already swapped: rows of the fused NxMLinear "
                             f"{site.module.fused_name} ({site.module.spec}); swap a fresh model, or leave it out "
                             "of the plan")
        activation = None
        if fuse_gelu and site.name.endswith(".ffn1") and _is_exact_gelu(getattr(site.parent, GELU_ATTR, None)):
            activation = "gelu"
            gelus.append(site)
        if build is not None:
            return build(site, spec, activation)
        if not isinstance(site.module, nn.Linear):
            raise TypeError(f"{site.name} ({site.qualified_name}) must be an nn.Linear to be swapped, "
                            f"got {type(site.module).__name__}")
        return NxMLinear.from_linear(site.module, spec, backend=backend, activation=activation,
                                     scale=scales.get(site.name))

    report, replaced = swap_sites(bert_linears(model), plan, make, strict=strict)
    for site in gelus:
        setattr(site.parent, GELU_ATTR, nn.Identity())
        report.fused_activations.append(site.qualified_name.rsplit(".", 1)[0] + "." + GELU_ATTR)
    if fuse_qkv:
        # Only layers whose three projections this call swapped: the report then covers every member.
        report.fused = _fuse_groups(model, [site._replace(module=new) for site, _, new in replaced])
        for entry in report.swapped:
            entry.fused_into = next((f for f, ms in report.fused.items() if entry.module_name in ms), None)
    # Remembered for checkpoints (nxm_kernels.io records the plan); later swaps add their entries.
    previous = getattr(model, "_nxm_plan", None)
    model._nxm_plan = Plan(list(Plan(previous).entries if previous else []) + plan.entries).to_dict()
    after_swap(model)
    logger.info("%s", report)
    return report


# ---------------------------------------------------------------------------------- fused QKV
def _fuse_groups(model: nn.Module, sites: list[LinearSite]) -> dict[str, list[str]]:
    """Fuse the query, key and value of each encoder layer all three of which are among ``sites`` (not fused
    yet) where they can be, logging why not elsewhere; ``{fused layer name: [their module names]}``."""
    by_layer: dict[str, dict[str, LinearSite]] = {}
    for site in sites:
        layer, _, comp = site.name.rpartition(".")
        if comp in QKV and not isinstance(site.module, FusedProjection):
            by_layer.setdefault(layer, {})[comp] = site
    out = {}
    for layer, comps in by_layer.items():
        if len(comps) < len(QKV):
            continue
        members = [comps[c] for c in QKV]
        why = fusable_reason([m.module for m in members])
        if why is None and hasattr(members[0].parent, QKV_ATTR):
            why = f"{type(members[0].parent).__name__} already has an attribute {QKV_ATTR!r}"
        if why is not None:
            logger.info("%s: query, key and value stay separate layers (%s)", layer, why)
            continue
        fused_name = members[0].qualified_name.rsplit(".", 1)[0] + "." + QKV_ATTR
        out[fused_name] = [m.qualified_name for m in members]
        fuse_linears(model, fused_name, out[fused_name])
    return out


def fuse_qkv(model: nn.Module) -> dict[str, list[str]]:
    """Fuse the query, key and value ``NxMLinear`` of each encoder layer into one, in place.

    A layer whose three projections are ``NxMLinear`` with the same spec, bias presence, device and
    backend gets one ``NxMLinear`` of ``N = N_q + N_k + N_v`` rows at ``attention.self.qkv``: its packed
    weight is the row concatenation of the three (the same codes, 2:4 metadata and per-channel
    scales: the format is per output row), its bias the concatenation of theirs. ``query``, ``key``
    and ``value`` become :class:`~nxm_kernels.fusion.FusedProjection` modules returning their rows
    of it, so Hugging Face's attention forward runs unchanged and the model's outputs are
    bit-identical to the unfused ones. Layers that do not qualify (or are already fused) are left as
    they are, with the reason logged.

    :func:`swap_linears` does this by default; call it yourself for a model swapped with
    ``fuse_qkv=False`` or loaded from a checkpoint written unfused. Returns
    ``{fused layer name: [query, key, value module names]}`` for the layers fused by this call.
    """
    return _fuse_groups(model, bert_linears(model))

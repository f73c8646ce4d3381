"""The compressible linears of a Hugging Face encoder, and swapping them for ``NxMLinear``.

Works for every family of :mod:`nxm_kernels.models.families` (BERT and its layout: RoBERTa, MiniLM,
ELECTRA, ...; DistilBERT; MPNet; DeBERTa-v2/v3; ModernBERT), base models and their ``*For*`` task
models alike: :func:`encoder_linears` lists each encoder layer's ``query``, ``key``, ``value``,
``attn_out``, ``ffn1`` and ``ffn2`` (or its one ``qkv`` linear) from the family's record. The pooler,
task heads and anything outside the encoder layers are not encoder linears.

:func:`swap_linears` replaces those linears with :class:`~nxm_kernels.modules.NxMLinear` per a plan,
and by default fuses each layer's separate query, key and value into one ``NxMLinear`` registered
beside them as ``qkv`` (e.g. ``attention.self.qkv``; :func:`fuse_qkv`; how the fused layer plugs into
Hugging Face's attention forward is explained in :mod:`nxm_kernels.fusion`).
"""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import torch.nn as nn

from ..fusion import FusedProjection, fusable_reason, fuse_linears
from ..modules import NxMLinear, SwapReport, after_swap
from ..plan import QKV, Plan, layer_name
from ..spec import LayerSpec
from .families import find_encoder
from .swap import LinearSite, swap_sites

__all__ = ["QKV", "QKV_ATTR", "LinearSite", "encoder_linears", "swap_linears", "fuse_qkv"]

logger = logging.getLogger(__name__)

#: Attribute, beside the query projection, of the ``NxMLinear`` computing a layer's query, key and value.
QKV_ATTR = "qkv"


def encoder_linears(model: nn.Module) -> list[LinearSite]:
    """Every encoder linear of ``model`` in layer order, named ``layer.<i>.<component>`` (``layer.<i>.qkv``
    where the checkpoint holds query, key and value as one linear); a clear error for models of no known
    family (:func:`~nxm_kernels.models.families.find_encoder`)."""
    encoder = find_encoder(model)
    sites = []
    for i in range(len(encoder.layers)):
        for comp in encoder.family.components:
            parent, attr = encoder.place(i, comp)
            sites.append(LinearSite(layer_name(i, comp), parent, attr, getattr(parent, attr), encoder.path(i, comp)))
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
    """Replace the encoder linears of a Hugging Face encoder with :class:`NxMLinear`, in place.

    ``plan`` says which spec each of ``layer.<i>.{query,key,value,attn_out,ffn1,ffn2}`` gets (see
    :mod:`nxm_kernels.plan` for the patterns and which entry wins); layers no entry names stay
    ``nn.Linear``, as do the pooler and task heads. With ``strict`` every plan pattern must match
    some layer (the error lists the names). With ``fuse_gelu``, a compressed ``ffn1`` followed by an
    exact GELU computes the GELU in its epilogue and the model's activation module becomes
    ``nn.Identity`` (outputs unchanged up to float rounding; not for a GLU ``ffn1``, whose activation
    applies to half its outputs). With ``fuse_qkv``, a layer whose separate query, key and value get
    the same spec computes them as one ``NxMLinear`` of ``3 x hidden`` outputs registered beside them
    as ``qkv`` (one activation quantization and one GEMM instead of three; the outputs are
    bit-identical to the unfused swap, see :func:`fuse_qkv`); the report still lists the three
    linears, each with ``fused_into`` naming the fused layer. A checkpoint that already holds them as
    one linear (``layer.<i>.qkv``) needs one spec for the three (else ``ValueError`` naming the layer).

    ``scales`` fixes layers' per-channel scales by plan name (:func:`nxm_kernels.calibrate`'s codes);
    ``build(site, spec, activation)`` makes each ``NxMLinear`` instead of ``NxMLinear.from_linear`` (the
    training export packs its QAT layers so).

    Works for the families of :mod:`nxm_kernels.models.families` (BERT, RoBERTa, MiniLM, ELECTRA, ...,
    DistilBERT, MPNet, DeBERTa-v2/v3, ModernBERT), base and task models; anything else raises
    ``ValueError`` (use :func:`nxm_kernels.swap_named_linears`).
    Returns a :class:`~nxm_kernels.modules.SwapReport`. For calibrated compression (SparseGPT/GPTQ,
    Wanda) use :func:`nxm_kernels.calibrate`, which returns the same report.
    """
    if not isinstance(fuse_qkv, bool):
        raise TypeError(f"fuse_qkv must be a bool, got {type(fuse_qkv).__name__}")
    plan = Plan.coerce(plan)
    scales = scales or {}
    encoder = find_encoder(model)
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
        index = int(site.name.split(".")[1])
        if fuse_gelu and site.name.endswith(".ffn1") and not encoder.family.glu and \
                _is_exact_gelu(getattr(*encoder.place(index, "activation"), None)):
            activation = "gelu"
            gelus.append(index)
        if build is not None:
            return build(site, spec, activation)
        if not isinstance(site.module, nn.Linear):
            raise TypeError(f"{site.name} ({site.qualified_name}) must be an nn.Linear to be swapped, "
                            f"got {type(site.module).__name__}")
        return NxMLinear.from_linear(site.module, spec, backend=backend, activation=activation,
                                     scale=scales.get(site.name))

    report, replaced = swap_sites(encoder_linears(model), plan, make, strict=strict)
    for index in gelus:
        setattr(*encoder.place(index, "activation"), nn.Identity())
        report.fused_activations.append(encoder.path(index, "activation"))
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
    """Fuse the separate query, key and value ``NxMLinear`` of each encoder layer into one, in place.

    A layer whose three projections are ``NxMLinear`` with the same spec, bias presence, device and
    backend gets one ``NxMLinear`` of ``N = N_q + N_k + N_v`` rows registered beside them as ``qkv``
    (BERT: ``attention.self.qkv``; DistilBERT: ``attention.qkv``; MPNet: ``attention.attn.qkv``): its packed
    weight is the row concatenation of the three (the same codes, 2:4 metadata and per-channel
    scales: the format is per output row), its bias the concatenation of theirs. ``query``, ``key``
    and ``value`` become :class:`~nxm_kernels.fusion.FusedProjection` modules returning their rows
    of it, so Hugging Face's attention forward runs unchanged and the model's outputs are
    bit-identical to the unfused ones (also where the attention calls a projection on other inputs too, as
    DeBERTa's does on its relative position embeddings: such a call computes the fused projection of that
    input). Layers that do not qualify (or are already fused, or one linear in the checkpoint) are left
    as they are, with the reason logged.

    :func:`swap_linears` does this by default; call it yourself for a model swapped with
    ``fuse_qkv=False`` or loaded from a checkpoint written unfused. Returns
    ``{fused layer name: [query, key, value module names]}`` for the layers fused by this call.
    """
    return _fuse_groups(model, encoder_linears(model))

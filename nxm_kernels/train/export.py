"""Export a trained QAT model to the kernels: ``QATLinear`` -> ``NxMLinear``, with nothing lost.

In one step per layer: each ``QATLinear`` becomes
``NxMLinear.from_packed(pack(layer.export_weight(), bits, pattern), bias)`` through the one swap of
:func:`nxm_kernels.models.encoder.swap_linears` (its ``build``), which also fuses GELU into ``ffn1`` as usual.
The per-channel scales ``pack`` computes for the masked weight are the ones the QAT forward used, so the packed weight
dequantizes to the QAT layer's fake-quantized weight **bit for bit**; :func:`export_model` checks
this for every layer (``torch.equal``) and refuses to return a model where it fails. As with any
swap, query, key and value exported to one spec are fused into one ``NxMLinear`` per layer
(``fuse_qkv``); the check then reads each projection's rows of the fused weight.

What still differs between the QAT model and the exported one is float rounding: the kernels
accumulate integer products exactly and scale afterwards, the QAT forward multiplies dequantized
values in floating point. Logits agree to ~1e-5 relative and predictions essentially always
(measured by the tests; see the README).

Training may use any N:M pattern; export needs a weight that is 2:4-sparse (a 1:4 mask is, a 2:8
mask generally is not) or a ``dense-*`` spec.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..format import pack
from ..models.encoder import swap_linears
from ..modules import NxMLinear
from ..plan import Plan
from ..sparsity import count_nm_violations
from ..spec import LayerSpec
from .qat import QATLinear, ddp_ignored_keys, qat_layers

__all__ = ["export_spec", "export_model"]

logger = logging.getLogger(__name__)


def export_spec(layer: QATLinear) -> LayerSpec:
    """The kernel spec a trained layer exports to (``2:4-wXa8`` or ``dense-wXa8``); raises if none fits."""
    if not isinstance(layer, QATLinear):
        raise TypeError(f"layer must be a QATLinear, got {type(layer).__name__}")
    bits = layer.spec.weight_bits
    if not layer.spec.sparse:
        return LayerSpec("dense", bits, 8)
    if not layer.pruned:
        raise ValueError(f"layer {layer.name or '?'} ({layer.spec}) has no fixed N:M mask yet: finish the ADMM phase "
                         "(or call ADMM.prune()) before exporting")
    bad = count_nm_violations(layer.masked_weight().detach(), 2, 4)
    if bad:
        raise ValueError(f"layer {layer.name or '?'} was trained as {layer.spec}, which is not 2:4-compatible "
                         f"({bad} groups of 4 hold more than 2 non-zeros); the kernels run 2:4 only")
    return LayerSpec("2:4", bits, 8)


@torch.no_grad()
def export_model(model: nn.Module, *, backend: str = "auto", check: bool = True, fuse_qkv: bool = True):
    """Replace every ``QATLinear`` of ``model`` by an ``NxMLinear`` in place; returns the
    :class:`~nxm_kernels.modules.SwapReport` of the swap.

    ``check`` (default) verifies that each packed weight dequantizes exactly to the weight the QAT
    layer computed with. ``fuse_qkv`` (default) fuses each layer's query, key and value into one
    ``NxMLinear`` where they share a spec, as :func:`~nxm_kernels.models.encoder.swap_linears` does.
    The model is left in eval mode.
    """
    if not isinstance(fuse_qkv, bool):
        raise TypeError(f"fuse_qkv must be a bool, got {type(fuse_qkv).__name__}")
    layers = qat_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no QATLinear layers; train it with prepare_qat / "
                         "NxMCompression first (or use nxm_kernels.swap_linears for one-shot compression)")
    specs = {name: export_spec(layer) for name, layer in layers.items()}  # all checked before any change
    trained = {}
    for name, layer in layers.items() if check else ():
        on = layer.quantize_weights
        layer.quantize_weights = True
        trained[name] = layer.effective_weight().detach().float().cpu()
        layer.quantize_weights = on

    def build(site, spec, activation) -> NxMLinear:
        layer = site.module
        if layers.get(site.name) is not layer:
            raise ValueError(f"QATLinear {site.name!r} is not at its encoder position; export works on BERT-family "
                             "models prepared with prepare_qat")
        # The weight the layer trained toward, packed as is: pack derives the very scales the QAT forward used.
        bias = None if layer.bias is None else layer.bias.detach().clone()
        return NxMLinear.from_packed(pack(layer.export_weight(), spec.weight_bits, spec.pattern), bias,
                                     backend=backend, activation=activation)

    report = swap_linears(model, Plan(specs), backend=backend, fuse_qkv=fuse_qkv, build=build)
    if check:
        for entry in report.swapped:  # after fusion: what ships, each projection's rows of the fused weight
            got = model.get_submodule(entry.module_name).dequantized_weight(torch.float32).cpu()
            if not torch.equal(got, trained[entry.name]):
                diff = float((got - trained[entry.name]).abs().max())
                raise RuntimeError(f"export of {entry.name} is not exact: packed weight differs from the QAT weight "
                                   f"by up to {diff:g} (please report this bug)")
    # Drop the state-buffer entries prepare_qat added (those buffers are gone); keep the user's own.
    added = {key for entry in report.swapped for key in ddp_ignored_keys(entry.module_name)}
    model._ddp_params_and_buffers_to_ignore = [key for key in getattr(model, "_ddp_params_and_buffers_to_ignore", [])
                                               if key not in added]
    logger.info("exported %d QAT layers to NxMLinear (%s)", len(layers), report)
    model.eval()
    return report

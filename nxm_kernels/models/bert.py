"""Where the compressible linears of a Hugging Face BERT-family encoder live.

Works for ``BertModel``, ``BertFor*`` task models and models with the same encoder layout
(MiniLM, RoBERTa, ELECTRA, ...): an ``encoder.layer`` list whose items hold
``attention.self.{query,key,value}``, ``attention.output.dense``, ``intermediate.dense`` and
``output.dense``. The pooler and task heads are not encoder linears.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn as nn

from ..plan import COMPONENTS, layer_name

__all__ = ["COMPONENT_PATHS", "LinearSite", "find_encoder_layers", "bert_linears"]

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

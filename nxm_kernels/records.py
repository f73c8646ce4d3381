"""The JSON records of a compressed model's layers, and the one step that rebuilds the layers from them.

Both ways of saving a swapped model write these records: :func:`nxm_kernels.save_compressed`
(``nxm_config.json``) and ``save_pretrained`` through the Hugging Face quantizer
(:mod:`nxm_kernels.models.hf_quantizer`, ``config.json``'s ``quantization_config``). Both ways of loading
call :func:`place_compressed_layers` to put empty ``NxMLinear`` layers where the records say, ready to
receive the packed tensors.

A record is ``{"spec", "shape": [out, in], "bias", "activation"}``; a fused layer's record (one
``NxMLinear`` computing several linears of the model, :mod:`nxm_kernels.fusion`) adds
``"fused": [{"name": <linear it computes>, "rows": <its rows>}, ...]`` in row order.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn as nn

from .fusion import fused_groups, install_fused
from .modules import NxMLinear, compressed_linears

__all__ = ["layer_records", "identity_module_names", "place_compressed_layers"]


def layer_records(model: nn.Module) -> dict[str, dict]:
    """One JSON-ready record per ``NxMLinear`` of ``model`` (``spec``, ``shape`` ``[out, in]``, ``bias``,
    ``activation``, and ``fused`` for a fused layer): what :func:`place_compressed_layers` needs to
    rebuild the layers empty."""
    records = {name: {"spec": str(m.spec), "shape": [m.out_features, m.in_features], "bias": m.bias is not None,
                      "activation": m.activation} for name, m in compressed_linears(model).items()}
    modules = dict(model.named_modules())
    for name, members in fused_groups(model).items():
        records[name]["fused"] = [{"name": member, "rows": modules[member].out_features} for member in members]
    return records


def identity_module_names(model: nn.Module) -> list[str]:
    """Qualified names of every ``nn.Identity`` in ``model``.

    All of them are recorded, not only those standing for an activation fused into an ``NxMLinear``
    epilogue: replacing an Identity by an Identity on load is harmless, missing one would apply an
    activation twice.
    """
    return [name for name, m in model.named_modules() if isinstance(m, nn.Identity) and name]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        getattr(parent, attr)
    except AttributeError:
        raise ValueError(f"checkpoint does not match the model: it has no module {name!r}") from None
    setattr(parent, attr, module)


def _place_fused(model: nn.Module, modules: dict, name: str, members, layer: NxMLinear) -> None:
    """Register the fused placeholder ``layer`` at ``name`` and its projections where its record says."""
    if not isinstance(members, list) or not all(
            isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("rows"), int) for m in members):
        raise ValueError(f"checkpoint layer record {name!r} is invalid: 'fused' must be a list of "
                         "{'name': str, 'rows': int} objects")
    for m in members:
        existing = modules.get(m["name"])
        if existing is None:
            raise ValueError(f"checkpoint does not match the model: it has no module {m['name']!r} "
                             f"(computed by the fused layer {name})")
        if isinstance(existing, nn.Linear) and tuple(existing.weight.shape) != (m["rows"], layer.in_features):
            raise ValueError(f"checkpoint does not match the model config: {m['name']} is {m['rows']}x"
                             f"{layer.in_features} in the checkpoint but {tuple(existing.weight.shape)} in the model")
    try:
        install_fused(model, name, layer, [(m["name"], m["rows"]) for m in members])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint layer record {name!r} does not fit the model: {exc}") from None


def place_compressed_layers(model: nn.Module, layers: Mapping, identity_modules: Iterable[str],
                            backend: str = "auto", *, dtype: torch.dtype | None = None) -> None:
    """Put meta-device ``NxMLinear`` placeholders where ``layers`` (:func:`layer_records`) says and
    ``nn.Identity`` modules at ``identity_modules``, in place, ready to receive a compressed state dict.
    ``dtype`` is the placeholders' bias dtype (default float32).

    The one rebuild step of :func:`nxm_kernels.load_compressed` and of the Hugging Face quantizer.
    """
    if not isinstance(layers, Mapping):
        raise TypeError(f"layers must be a mapping of module names to layer records, got {type(layers).__name__}")
    modules = dict(model.named_modules())
    for name, rec in layers.items():
        try:
            out_f, in_f = (int(v) for v in rec["shape"])
            layer = NxMLinear(in_f, out_f, rec["spec"], bool(rec["bias"]), backend=backend,
                              activation=rec.get("activation"), device="meta", dtype=dtype)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint layer record {name!r} is invalid: {exc}") from None
        if "fused" in rec:  # one layer computing several linears of the model (format version 2)
            _place_fused(model, modules, name, rec["fused"], layer)
            continue
        existing = modules.get(name)
        if existing is not None and isinstance(existing, nn.Linear) and \
                tuple(existing.weight.shape) != (out_f, in_f):
            raise ValueError(f"checkpoint does not match the model config: {name} is {out_f}x{in_f} in the "
                             f"checkpoint but {tuple(existing.weight.shape)} in the model")
        _set_submodule(model, name, layer)
    for name in identity_modules:
        _set_submodule(model, name, nn.Identity())

"""The JSON records of a compressed model's layers, and the one step that rebuilds the layers from them.

Both ways of saving a swapped model write these records: :func:`nxm_kernels.save_compressed`
(``nxm_config.json``) and ``save_pretrained`` through the Hugging Face quantizer
(:mod:`nxm_kernels.models.hf_quantizer`, ``config.json``'s ``quantization_config``). Both ways of loading
call :func:`place_compressed_layers` to put ``NxMLinear`` layers where the records say:
:func:`nxm_kernels.load_compressed` builds each from its packed tensors, the Hugging Face loader puts
empty placeholders there to receive them.

A record is ``{"spec", "shape": [out, in], "bias", "activation"}``; a fused layer's record (one
``NxMLinear`` computing several linears of the model, :mod:`nxm_kernels.fusion`) adds
``"fused": [{"name": <linear it computes>, "rows": <its rows>}, ...]`` in row order.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, NamedTuple

import torch
import torch.nn as nn

from .fusion import fused_groups, install_fused
from .models.swap import module_sites, replace_sites
from .modules import NxMLinear, compressed_linears
from .ops import normalize_activation
from .spec import LayerSpec, kernel_spec

__all__ = ["LayerRecord", "layer_records", "identity_module_names", "placeholder", "place_compressed_layers"]


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


def _set_identity(model: nn.Module, modules: dict, name: str) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = modules.get(parent_name) if parent_name else model
    if parent is None or not hasattr(parent, attr):
        raise ValueError(f"checkpoint does not match the model: it has no module {name!r}")
    setattr(parent, attr, nn.Identity())


def _place_fused(model: nn.Module, modules: dict, name: str, members, layer: NxMLinear) -> None:
    """Register the fused ``layer`` at ``name`` and its projections where its record says."""
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


class LayerRecord(NamedTuple):
    """A layer record, checked: what building its ``NxMLinear`` needs."""

    shape: tuple[int, int]   # (out_features, in_features)
    spec: LayerSpec
    bias: bool
    activation: str | None
    fused: list | None       # [{"name", "rows"}] of a fused layer, else None


def _parse(name: str, rec) -> LayerRecord:
    try:
        out_f, in_f = (int(v) for v in rec["shape"])
        if min(out_f, in_f) < 1:
            raise ValueError(f"shape must be [out, in] with both >= 1, got {rec['shape']!r}")
        parsed = LayerRecord((out_f, in_f), kernel_spec(rec["spec"]), bool(rec["bias"]),
                             normalize_activation(rec.get("activation")), rec.get("fused"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint layer record {name!r} is invalid: {exc}") from None
    members = parsed.fused
    if members is not None and (not isinstance(members, list) or not all(
            isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("rows"), int) for m in members)):
        raise ValueError(f"checkpoint layer record {name!r} is invalid: 'fused' must be a list of "
                         "{'name': str, 'rows': int} objects")
    return parsed


def placeholder(record: LayerRecord, *, dtype: torch.dtype | None = None) -> NxMLinear:
    """An empty (meta-device) ``NxMLinear`` for ``record``, to load tensors into (the Hugging Face loader's way);
    ``dtype`` is its bias dtype (default float32)."""
    out_f, in_f = record.shape
    return NxMLinear(in_f, out_f, record.spec, record.bias, activation=record.activation, device="meta", dtype=dtype)


def place_compressed_layers(model: nn.Module, layers: Mapping, identity_modules: Iterable[str],
                            make: Callable[[str, LayerRecord], NxMLinear]) -> None:
    """Put ``make(name, record)`` where each of ``layers`` (:func:`layer_records`) says and ``nn.Identity``
    modules at ``identity_modules``, in place. Records are checked against the model (names, shapes)
    before anything is built; a fused record registers its layer and puts its projections in place.

    The one rebuild step of :func:`nxm_kernels.load_compressed` (``make`` builds each layer from its
    tensors) and of the Hugging Face quantizer (``make`` is :func:`placeholder`).
    """
    if not isinstance(layers, Mapping):
        raise TypeError(f"layers must be a mapping of module names to layer records, got {type(layers).__name__}")
    modules = dict(model.named_modules())
    records = {name: _parse(name, rec) for name, rec in layers.items()}
    for name, rec in records.items():
        if rec.fused is not None:
            continue
        existing = modules.get(name)
        if existing is None:
            raise ValueError(f"checkpoint does not match the model: it has no module {name!r}")
        if isinstance(existing, nn.Linear) and tuple(existing.weight.shape) != rec.shape:
            raise ValueError(f"checkpoint does not match the model config: {name} is {rec.shape[0]}x{rec.shape[1]} in "
                             f"the checkpoint but {tuple(existing.weight.shape)} in the model")
    plain = {name: str(rec.spec) for name, rec in records.items() if rec.fused is None}
    replace_sites(module_sites(model, plain), plain, lambda site, _: make(site.name, records[site.name]))
    for name, rec in records.items():  # one layer computing several linears of the model (format version 2)
        if rec.fused is not None:
            _place_fused(model, modules, name, rec.fused, make(name, rec))
    for name in identity_modules:
        _set_identity(model, modules, name)

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

import torch.nn as nn

from ..fusion import fused_groups, install_fused
from ..modules import NxMLinear, compressed_linears
from ..ops import normalize_activation
from ..spec import LayerSpec, kernel_spec
from .swap import module_sites, replace_sites

__all__ = ["LayerRecord", "layer_records", "identity_module_names", "place_compressed_layers"]


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


class LayerRecord(NamedTuple):
    """A checked layer record: what building its ``NxMLinear`` needs."""

    shape: tuple[int, int]   # (out_features, in_features)
    spec: LayerSpec
    bias: bool
    activation: str
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


def _check_fits(modules: dict, name: str, shape: tuple, fused_name: str | None = None) -> None:
    existing = modules.get(name)
    if existing is None:
        by = f" (computed by the fused layer {fused_name})" if fused_name else ""
        raise ValueError(f"checkpoint does not match the model: it has no module {name!r}{by}")
    if isinstance(existing, nn.Linear) and tuple(existing.weight.shape) != shape:
        raise ValueError(f"checkpoint does not match the model config: {name} is {shape[0]}x{shape[1]} in the "
                         f"checkpoint but {tuple(existing.weight.shape)} in the model")


def place_compressed_layers(model: nn.Module, layers: Mapping, identity_modules: Iterable[str],
                            make: Callable[[str, LayerRecord], NxMLinear]) -> None:
    """Put ``make(name, record)`` where each of ``layers`` (:func:`layer_records`) says and ``nn.Identity``
    modules at ``identity_modules``, in place, after checking every record against the model; a fused
    record registers its layer and puts its projections in place. The one rebuild step of
    :func:`nxm_kernels.load_compressed` (``make`` builds each layer from its tensors) and of the Hugging
    Face quantizer (``make`` builds an empty meta-device layer that transformers' loader fills).
    """
    if not isinstance(layers, Mapping):
        raise TypeError(f"layers must be a mapping of module names to layer records, got {type(layers).__name__}")
    modules = dict(model.named_modules())
    records = {name: _parse(name, rec) for name, rec in layers.items()}
    for name, rec in records.items():
        for member in rec.fused or [{"name": name, "rows": rec.shape[0]}]:
            _check_fits(modules, member["name"], (member["rows"], rec.shape[1]), rec.fused and name)
    try:  # found before anything changes, like every other site
        identity_sites = module_sites(model, identity_modules)
    except ValueError as exc:
        raise ValueError(f"checkpoint does not match the model: {exc}") from None
    plain = {name: str(rec.spec) for name, rec in records.items() if rec.fused is None}
    replace_sites(module_sites(model, plain), plain, lambda site, _: make(site.name, records[site.name]))
    for name, rec in records.items():  # one layer computing several linears of the model (format version 2)
        if rec.fused is not None:
            layer = make(name, rec)
            try:
                install_fused(model, name, layer, [(m["name"], m["rows"]) for m in rec.fused])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"checkpoint layer record {name!r} does not fit the model: {exc}") from None
    for site in identity_sites:
        setattr(site.parent, site.attr, nn.Identity())

"""Hugging Face integration: ``save_pretrained`` / ``from_pretrained`` of models holding ``NxMLinear``.

transformers lets a quantization library plug into ``from_pretrained`` the way bitsandbytes and
torchao do: a ``quantization_config`` in ``config.json`` names a method, and a quantizer registered
for that method rebuilds the quantized modules before the weights are loaded. This module is that
plug-in for the method ``"nxm"``:

* :class:`NxMQuantizationConfig` records what :func:`nxm_kernels.load_compressed` records in
  ``nxm_config.json``: one record per ``NxMLinear`` (spec, shape, bias, fused activation, and for a
  fused layer such as ``attention.self.qkv`` the linears it computes, see :mod:`nxm_kernels.models.records`), the
  ``nn.Identity`` modules standing for fused activations, the plan and the packed-format version.
* :class:`NxMHfQuantizer` puts meta-device ``NxMLinear`` placeholders where the records say
  before loading (so the dense encoder weights are never materialised), lets transformers load the
  packed buffers (``values``, ``metadata``, ``scales``, ``bias``) as they are, then checks them and
  derives each layer's backend layout.
* :func:`attach` is run on every swapped transformers model (and on models ``load_compressed``
  returns): it gives the model the quantizer, so ``model.save_pretrained(dir)`` (and
  sentence-transformers' ``save``) writes ``config.json`` with the ``quantization_config`` next to
  ``model.safetensors`` holding the packed tensors.

The registration itself happens when this module is imported; ``nxm_kernels.models`` arranges that
to happen as soon as transformers' quantizer registry is imported, so ``import nxm_kernels`` before
``AutoModel.from_pretrained`` is all a user needs. Where the installed transformers is older than
:data:`MIN_TRANSFORMERS` (whose loader this was written and tested against), nothing is registered
and ``save_pretrained`` on a swapped model raises an error pointing to ``save_compressed``, so it
never writes weights that would reload as random ``nn.Linear`` layers.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import transformers
from packaging.version import Version
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ..format import FORMAT_VERSION
from ..modules import NxMLinear, compressed_linears
from .records import identity_module_names, layer_records, place_compressed_layers

__all__ = ["QUANT_METHOD", "MIN_TRANSFORMERS", "NxMQuantizationConfig", "NxMHfQuantizer", "supported", "register",
           "attach"]

logger = logging.getLogger(__name__)

#: The ``quant_method`` in ``config.json``'s ``quantization_config``.
QUANT_METHOD = "nxm"
#: transformers' loader was rewritten in 5.0 (``core_model_loading``); this quantizer follows that
#: loader's contract (tested with 5.24). Older versions get the clear refusal instead.
MIN_TRANSFORMERS = (5, 0)
#: Version of :class:`NxMQuantizationConfig`'s fields, bumped when an older reader could misread them.
#: Version 2 adds fused layers (records with a ``"fused"`` list): a version-1 reader would not put the
#: projections in place and fail with a misleading "no module ...qkv"; told the version, it says to
#: upgrade instead. This reader also reads version 1.
CONFIG_VERSION = 2

_SAVE_HINT = ("save it with nxm_kernels.save_compressed(model, dir) and load it back with "
              "nxm_kernels.load_compressed(dir)")


def supported() -> bool:
    """Whether this transformers can save and load ``NxMLinear`` models through the quantizer registry."""
    from transformers.quantizers import auto

    return Version(transformers.__version__).release[:2] >= MIN_TRANSFORMERS and \
        hasattr(auto, "register_quantizer") and hasattr(HfQuantizer, "get_state_dict_and_metadata")


class NxMQuantizationConfig(QuantizationConfigMixin):
    """``quantization_config`` of an nxm-compressed transformers model (``quant_method="nxm"``).

    Args:
        layers: ``{module name: {"spec", "shape", "bias", "activation"[, "fused"]}}`` for every ``NxMLinear``
            (:func:`nxm_kernels.models.records.layer_records`).
        identity_modules: names of the ``nn.Identity`` modules (activations fused into a layer).
        plan: the plan the model was swapped with (informational), or ``None``.
        packed_format_version: the packed format (``docs/FORMAT.md``) the tensors are in.
        config_version: this record's own version.
    """

    def __init__(self, layers: dict | None = None, identity_modules: list | None = None, plan: dict | None = None,
                 packed_format_version: int = FORMAT_VERSION, config_version: int = CONFIG_VERSION, **kwargs):
        self.quant_method = QUANT_METHOD
        self.config_version = config_version
        self.packed_format_version = packed_format_version
        self.plan = plan
        self.layers = dict(layers or {})
        self.identity_modules = list(identity_modules or [])
        for key in kwargs:
            if key != "quant_method":
                logger.warning("ignoring unknown nxm quantization_config field %r", key)
        self.post_init()

    def post_init(self):
        """Check the record (a hand-edited or newer ``config.json`` is refused with the reason)."""
        if isinstance(self.config_version, bool) or not isinstance(self.config_version, int) or self.config_version < 1:
            raise ValueError(f"nxm quantization_config has an invalid config_version {self.config_version!r}")
        if self.config_version > CONFIG_VERSION:
            raise ValueError(f"nxm quantization_config version {self.config_version} was written by a newer "
                             f"nxm_kernels; this one reads versions up to {CONFIG_VERSION}: upgrade nxm_kernels")
        if self.packed_format_version != FORMAT_VERSION:
            raise ValueError(f"nxm quantization_config packs weights in format version {self.packed_format_version!r}; "
                             f"this nxm_kernels reads version {FORMAT_VERSION}")
        if not isinstance(self.layers, dict) or not all(isinstance(v, dict) for v in self.layers.values()):
            raise ValueError("nxm quantization_config 'layers' must map module names to layer records")
        if self.config_version < 2 and any("fused" in r for r in self.layers.values()):
            raise ValueError(f"nxm quantization_config is corrupt: version {self.config_version} has no fused layers, "
                             "but a layer record lists 'fused' projections")
        if not all(isinstance(n, str) for n in self.identity_modules):
            raise ValueError("nxm quantization_config 'identity_modules' must be a list of module names")

    @classmethod
    def from_model(cls, model: nn.Module) -> "NxMQuantizationConfig":
        """The record of ``model``'s ``NxMLinear`` layers as they are now."""
        return cls(layer_records(model), identity_module_names(model), getattr(model, "_nxm_plan", None))

    def to_dict(self) -> dict:
        # Sorted layer names: the same model gives the same config.json, byte for byte.
        return {"quant_method": QUANT_METHOD, "config_version": self.config_version,
                "packed_format_version": self.packed_format_version, "plan": self.plan,
                "layers": {k: dict(self.layers[k]) for k in sorted(self.layers)},
                "identity_modules": sorted(self.identity_modules)}


def _checkpoint_keys(files) -> set[str] | None:
    """Tensor names in the checkpoint's safetensors files (their headers only), or ``None`` if unknown."""
    if not files:
        return None
    from safetensors import safe_open

    keys: set[str] = set()
    for f in files:
        if not str(f).endswith(".safetensors"):
            return None
        with safe_open(str(f), framework="pt") as st:
            keys.update(st.keys())
    return keys


class NxMHfQuantizer(HfQuantizer):
    """Loads checkpoints whose ``config.json`` holds an :class:`NxMQuantizationConfig` (pre-quantized only:
    compressing a dense model on load is :func:`nxm_kernels.swap_linears`' job)."""

    requires_calibration = True

    # ---------------------------------------------------------------- loading
    def validate_environment(self, *args, **kwargs):
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError("nxm-compressed models cannot be offloaded to disk (device_map has 'disk')")

    @staticmethod
    def _module_name(model: nn.Module, name: str, modules: dict) -> str:
        """``name`` as recorded, adjusted for the base-model prefix when a checkpoint saved from a task model
        (``bert.encoder...``) loads into a base model, or the other way round, as transformers does for weights."""
        if name in modules:
            return name
        prefix = getattr(model, "base_model_prefix", "")
        if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in modules:
            return name[len(prefix) + 1:]
        if prefix and f"{prefix}.{name}" in modules:
            return f"{prefix}.{name}"
        return name  # place_compressed_layers reports the missing module

    @classmethod
    def _remap_record(cls, model: nn.Module, name: str, record: dict, modules: dict) -> tuple[str, dict]:
        """``(name, record)`` adjusted for the base-model prefix like :meth:`_module_name`, fused records included.

        A fused layer (``...attention.self.qkv``) does not exist in the model before it is placed, so its
        own name cannot say whether the prefix applies: its members (``query``, ``key``, ``value``, which
        do exist) decide, and the fused name moves with them. The record is copied, never edited in place:
        it belongs to the ``quantization_config`` that the loaded model's config keeps.
        """
        members = record.get("fused") if isinstance(record, dict) else None
        if not isinstance(members, list) or not members or \
                not all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in members):
            # Unfused, or a malformed "fused" list that place_compressed_layers refuses with the reason.
            return cls._module_name(model, name, modules), record
        first = members[0]["name"]
        mapped = cls._module_name(model, first, modules)
        if mapped == first:  # names fit as they are (or nothing fits: place_compressed_layers says which)
            return name, record
        prefix = model.base_model_prefix
        strip = mapped == first[len(prefix) + 1:]

        def move(n: str) -> str:
            if strip:
                # Every name of a task model's encoder starts with the prefix; one that does not belongs to
                # no module of the base model, and stays as recorded so the error names it.
                return n[len(prefix) + 1:] if n.startswith(prefix + ".") else n
            return f"{prefix}.{n}"

        fused = [{**m, "name": move(m["name"])} for m in members]
        return move(name), {**record, "fused": fused}

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        cfg = self.quantization_config
        modules = dict(model.named_modules())
        layers = dict(self._remap_record(model, n, rec, modules) for n, rec in cfg.layers.items())
        identity = [self._module_name(model, n, modules) for n in cfg.identity_modules]
        identity = [n for n in identity if n in modules]  # e.g. a base model's pooler is absent from a task model
        # Biases in the model's float dtype (from_pretrained(dtype=...) built it in that dtype; transformers
        # keeps a placeholder's dtype when loading); scales stay float32 as NxMLinear makes them.
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        place_compressed_layers(model, layers, identity, lambda name, r: NxMLinear(
            r.shape[1], r.shape[0], r.spec, r.bias, activation=r.activation, device="meta", dtype=dtype))
        # After loading, transformers runs the model's own weight initialisation on each module not marked
        # initialised (its init functions skip the tensors the checkpoint filled). Some families' init reaches
        # into child linears by name (ModernBERT's attention and MLP initialise ``Wqkv.weight``...), which an
        # NxMLinear does not have: the modules holding one are loaded from the checkpoint, so they are marked.
        for name in compressed_linears(model):
            holder = name.rpartition(".")[0]
            (model.get_submodule(holder) if holder else model)._is_hf_initialized = True
        keys = _checkpoint_keys(checkpoint_files)
        if keys is not None:
            # A placeholder left unloaded would compute with zero codes: refuse before loading instead.
            prefix = getattr(model, "base_model_prefix", "")
            missing = []
            for name, layer in compressed_linears(model).items():
                for attr, _ in layer.named_buffers(recurse=False):
                    key = f"{name}.{attr}"
                    alts = {key, f"{prefix}.{key}", key[len(prefix) + 1:] if key.startswith(prefix + ".") else key}
                    if not alts & keys:
                        missing.append(key)
            if missing:
                raise ValueError(f"nxm checkpoint is incomplete: {len(missing)} packed tensor(s) are missing from "
                                 f"its weights, e.g. {missing[:3]}")
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        for name, layer in compressed_linears(model).items():
            on_meta = [n for n, t in layer.named_buffers(recurse=False) if t.device.type == "meta"]
            if on_meta:
                raise ValueError(f"nxm checkpoint did not fill {name}: {on_meta} have no data")
            if layer.scales.dtype != torch.float32:
                raise ValueError(f"nxm checkpoint layer {name}: scales must be float32, got {layer.scales.dtype}")
            try:
                layer._refresh()  # the loader assigns tensors without load_state_dict: validate and prepare here
            except (TypeError, ValueError) as exc:
                raise ValueError(f"nxm checkpoint is corrupt: layer {name}: {exc}") from None
        model._nxm_plan = self.quantization_config.plan
        return model

    # ---------------------------------------------------------------- saving
    def is_serializable(self, *args, **kwargs) -> bool:
        if not supported():
            raise RuntimeError(f"save_pretrained cannot save a model with NxMLinear layers with transformers "
                               f"{transformers.__version__} (nxm_kernels plugs into transformers >= "
                               f"{'.'.join(map(str, MIN_TRANSFORMERS))}): {_SAVE_HINT}")
        return True

    def get_state_dict_and_metadata(self, model):
        # Called by save_pretrained before it writes config.json: record the layers as they are now (a
        # model swapped again since attach() must not be described by an old record).
        self.quantization_config = NxMQuantizationConfig.from_model(model)
        model.config.quantization_config = self.quantization_config
        return None, {}

    @property
    def is_trainable(self) -> bool:
        return False  # NxMLinear passes no gradient; train with nxm_kernels.train

    @property
    def is_qat_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True


def register() -> bool:
    """Register the ``"nxm"`` method with transformers (once); ``False`` where the version is unsupported."""
    if not supported():
        return False
    from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                              register_quantization_config, register_quantizer)

    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not NxMHfQuantizer:
        if QUANT_METHOD in AUTO_QUANTIZER_MAPPING:
            raise RuntimeError(f"another library registered transformers quantization method {QUANT_METHOD!r}")
        register_quantization_config(QUANT_METHOD)(NxMQuantizationConfig)
        register_quantizer(QUANT_METHOD)(NxMHfQuantizer)
    assert AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] is NxMQuantizationConfig
    return True


def attach(model: nn.Module) -> None:
    """Make a transformers model holding ``NxMLinear`` layers save through ``save_pretrained``.

    Gives it an :class:`NxMHfQuantizer` and the matching ``config.quantization_config``. Unlike a model
    loaded through ``from_pretrained``, the model is not flagged ``is_quantized``, so ``model.half()``
    keeps working (``NxMLinear`` keeps its scales float32). A no-op for other models.
    """
    if not isinstance(model, transformers.PreTrainedModel) or not compressed_linears(model):
        return
    config = NxMQuantizationConfig.from_model(model)
    model.hf_quantizer = NxMHfQuantizer(config, pre_quantized=True)
    model.config.quantization_config = config


register()

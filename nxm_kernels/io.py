"""Compressed checkpoints: safetensors for the tensors, JSON for everything else, no pickle.

A checkpoint is a directory::

    nxm_config.json          format name and version, model class and config, plan, one record per
                             NxMLinear (spec, shape, bias, fused activation, fused projections),
                             SHA-256 of the weights
    nxm_model.safetensors    the model's state dict: packed values/metadata/scales and biases of the
                             NxMLinear layers, every other (float) weight as it was
    (tokenizer files)        when a tokenizer was passed to save_compressed

The weights file is deliberately *not* called ``model.safetensors`` and there is no ``config.json``:
``AutoModel.from_pretrained`` on this folder then fails loudly instead of loading random weights.

A swapped transformers model can also be saved the Hugging Face way, ``model.save_pretrained(dir)``
and ``AutoModel.from_pretrained(dir)`` (see :mod:`nxm_kernels.models.hf_quantizer`).

**Fused layers** (format version 2) are stored once, under the fused layer's own name, their record
listing the linears they compute (``docs/FORMAT.md``, "Rows are independent"; :mod:`.models.records`).
Version 1 checkpoints (no ``"fused"`` records) load unfused; :func:`nxm_kernels.models.encoder.fuse_qkv`
fuses them afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn as nn

from ._checks import check_device
from ._version import __version__
from .backends import split_candidate
from .format import FORMAT_VERSION, PackedWeight
from .modules import NxMLinear, after_swap, compressed_linears
from .models.records import LayerRecord, identity_module_names, layer_records, place_compressed_layers

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CONFIG_NAME", "WEIGHTS_NAME", "save_compressed",
           "load_compressed", "read_checkpoint_config"]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "nxm-checkpoint"
#: Bumped whenever a reader of the previous version could misread a new checkpoint. Version 2 adds
#: fused layers (their records' ``"fused"`` lists); this reader also reads version 1.
CHECKPOINT_VERSION = 2
CONFIG_NAME = "nxm_config.json"
WEIGHTS_NAME = "nxm_model.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_safetensors(tensors: dict, metadata: dict, path: Path) -> None:
    """Write a safetensors file whose bytes depend only on the tensors and metadata.

    ``safetensors`` keeps the header's metadata in a hash map, so its key order (and with it the
    file's bytes and SHA-256) changes from call to call. The header is rewritten here with sorted
    keys; tensor offsets are explicit in it, so the data part is untouched. Written by Python, the
    file gets the usual permissions (safetensors' own writer creates it with mode 0600).
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items()))}
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(memoryview(data)[8 + n:])


def _dedupe(state: dict) -> tuple[dict, dict]:
    """Drop tensors that share storage with an earlier one (tied weights): ``(tensors, {alias: kept})``."""
    seen, out, aliases = {}, {}, {}
    for key, t in state.items():
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) \
            if t.numel() else None
        if ident is not None and ident in seen:
            aliases[key] = seen[ident]
            continue
        if ident is not None:
            seen[ident] = key
        out[key] = t.detach().contiguous()
    return out, aliases


def save_compressed(model: nn.Module, path, *, plan=None, tokenizer=None) -> Path:
    """Save a model holding ``NxMLinear`` layers to the directory ``path`` (created if needed).

    ``plan`` (optional) is recorded as given; by default the plan :func:`nxm_kernels.swap_linears`
    applied, else one entry per compressed layer. ``tokenizer`` (optional) is saved alongside with
    its own ``save_pretrained``. Returns the directory.
    """
    from .plan import Plan

    layers = compressed_linears(model)  # (checks that model is an nn.Module)
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no NxMLinear: swap its linears (nxm_kernels.swap_linears) "
                         "before saving a compressed checkpoint")
    state = model.state_dict()
    meta_keys = [k for k, t in state.items() if t.device.type == "meta"]
    if meta_keys:
        raise ValueError(f"model has tensors on the meta device (no data), e.g. {meta_keys[:3]}")
    tensors, aliases = _dedupe(state)
    if plan is None:
        plan = getattr(model, "_nxm_plan", None)
    plan_dict = Plan.coerce(plan).to_dict() if plan is not None else {n: str(m.spec) for n, m in layers.items()}
    identity = identity_module_names(model)
    records = layer_records(model)
    from .models.hf import describe

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"path must be a directory (or not exist yet), got the file {str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_NAME
    _write_safetensors({k: v.cpu() for k, v in tensors.items()},
                       {"format": "pt", "nxm_format": CHECKPOINT_FORMAT, "nxm_format_version": str(CHECKPOINT_VERSION)},
                       weights)
    config = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "packed_format_version": FORMAT_VERSION,
        "nxm_kernels_version": __version__,
        "model": describe(model),
        "plan": plan_dict,
        "layers": records,
        "identity_modules": identity,
        "aliases": aliases,
        "weights": {"file": WEIGHTS_NAME, "bytes": weights.stat().st_size, "sha256": _sha256(weights)},
    }
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    logger.info("saved %d compressed layers to %s (%.2f MiB)", len(layers), out, weights.stat().st_size / 2**20)
    return out


def read_checkpoint_config(path) -> dict:
    """Read and check ``nxm_config.json`` of a checkpoint directory (format name and version)."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(d)!r} does not exist")
    cfg_path = d / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(d)!r} is not an nxm checkpoint: {CONFIG_NAME} is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_path} is corrupt (not valid JSON: {exc})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{cfg_path} is not an {CHECKPOINT_FORMAT!r} config (format={cfg.get('format')!r})"
                         if isinstance(cfg, dict) else f"{cfg_path} is corrupt (not a JSON object)")
    version = cfg.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{cfg_path} has an invalid format_version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint format version {version} was written by a newer nxm_kernels "
                         f"({cfg.get('nxm_kernels_version', 'unknown')}); this nxm_kernels {__version__} reads "
                         f"versions up to {CHECKPOINT_VERSION}: upgrade nxm_kernels")
    packed_version = cfg.get("packed_format_version")
    if packed_version != FORMAT_VERSION:
        raise ValueError(f"checkpoint packs weights in format version {packed_version!r}; this nxm_kernels reads "
                         f"version {FORMAT_VERSION}")
    for key, kind in (("layers", dict), ("weights", dict), ("aliases", dict), ("identity_modules", list)):
        if not isinstance(cfg.get(key), kind):
            raise ValueError(f"{cfg_path} is corrupt: {key!r} must be a JSON {kind.__name__}")
    if version < 2 and any(isinstance(r, dict) and "fused" in r for r in cfg["layers"].values()):
        raise ValueError(f"{cfg_path} is corrupt: format version {version} has no fused layers, but a layer "
                         "record lists 'fused' projections")
    return cfg


def _read_weights(d: Path, cfg: dict, device, verify: bool) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = cfg["weights"]
    path = d / str(info.get("file", WEIGHTS_NAME))
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint weights {str(path)!r} are missing")
    if verify:
        size = path.stat().st_size
        if size != info.get("bytes"):
            raise ValueError(f"{path} is corrupt or truncated: {size} bytes, the checkpoint recorded {info.get('bytes')}")
        if _sha256(path) != info.get("sha256"):
            raise ValueError(f"{path} is corrupt: its SHA-256 does not match the one recorded in {CONFIG_NAME}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path} is corrupt (not a readable safetensors file: {exc})") from None


def _check_state(model: nn.Module, state: dict, where: Path) -> None:
    expected = model.state_dict()
    found = {
        "tensor(s) missing from the checkpoint": [k for k in expected if k not in state],
        "unexpected tensor(s) in the checkpoint": [k for k in state if k not in expected],
        "shape mismatch(es)": [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                               for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)],
        "dtype mismatch(es)": [f"{k}: checkpoint {state[k].dtype} vs model {v.dtype}" for k, v in expected.items()
                               if k in state and not v.is_floating_point() and state[k].dtype != v.dtype],
    }
    problems = [f"{len(keys)} {what} (e.g. {keys[:3]})" for what, keys in found.items() if keys]
    if problems:
        raise ValueError(f"checkpoint {where} does not match the model config: " + "; ".join(problems))


def load_compressed(path, *, device="cpu", dtype: torch.dtype | None = None, backend: str = "auto",
                    model: nn.Module | None = None, verify: bool = True) -> nn.Module:
    """Load a checkpoint written by :func:`save_compressed`; the ``from_pretrained`` of compressed models.

    Builds the recorded transformers model class from the recorded config with parameters on the meta
    device (so no dense encoder weight is ever materialised), builds each ``NxMLinear`` once from its saved
    tensors (checked, its backend layout derived once), assigns the other saved tensors on ``device`` and
    returns the model in eval mode. A newer format version, a corrupt file (checksum, contents) and tensors
    that do not fit the model are refused, each with an error saying which. ``dtype`` optionally casts the float
    tensors (e.g. ``torch.float16`` on a GPU; packed scales stay float32). ``backend`` is the
    ``NxMLinear`` backend. ``model``: load into this model instead (e.g. a non-transformers model, built
    as it was before swapping; it is modified in place). ``verify`` checks the weights file's SHA-256.
    """
    d = Path(path)
    cfg = read_checkpoint_config(d)
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"dtype must be None, torch.float16, torch.bfloat16 or torch.float32, got {dtype}")
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    device = check_device("device", device)  # before reading: a missing GPU is not a corrupt file
    from .models.hf import build_empty, config_differences

    if model is None:
        if cfg.get("model") is None:
            raise ValueError(f"checkpoint {d} was saved from a model that is not a transformers model; pass the "
                             "model to load into with model=")
        model = build_empty(cfg["model"])
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    else:
        diffs = config_differences(model, cfg.get("model"))
        if diffs:
            raise ValueError(f"checkpoint {d} does not match the model config: " + "; ".join(diffs))
    if backend != "auto":
        split_candidate(backend)  # the usual 'backend must be one of ...' error, not a 'corrupt' one below
    state = _read_weights(d, cfg, device, verify)
    for alias, kept in cfg["aliases"].items():
        if kept not in state:
            raise ValueError(f"checkpoint {d} is corrupt: alias {alias!r} points to missing tensor {kept!r}")
        state[alias] = state[kept]

    def build(name: str, record: LayerRecord) -> NxMLinear:
        # Each layer is built once, from the very tensors read, on the device, its layouts derived once:
        # assigning the state dict below hands it the same tensors and the move/cast leaves them as they are.
        tensors = {key: state.get(f"{name}.{key}") for key in ("values", "metadata", "scales", "bias")}
        missing = [f"{name}.{k}" for k in ("values", "scales", "metadata", "bias") if tensors[k] is None and
                   (k != "metadata" or record.spec.sparse) and (k != "bias" or record.bias)]
        if missing:  # (tensors the record does not expect are 'unexpected' in the check of the whole state below)
            raise ValueError(f"checkpoint {d} does not match the model config: {missing} missing from the checkpoint")
        try:
            packed = PackedWeight(tensors["values"], tensors["metadata"], tensors["scales"], record.shape,
                                  record.spec.weight_bits, record.spec.pattern, cfg["packed_format_version"])
            packed.validate(deep=True)  # before any kernel reads them
            return NxMLinear.from_packed(packed, tensors["bias"], backend=backend, activation=record.activation)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint {d} is corrupt: layer {name}: {exc}") from None

    place_compressed_layers(model, cfg["layers"], cfg["identity_modules"], build)
    _check_state(model, state, d)
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise ValueError(f"checkpoint {d} does not cover the model: {left[:3]} have no data")
    model.to(device=device, dtype=dtype)
    if backend != "auto":  # an explicit backend must run here, as set_backend would require
        for layer in compressed_linears(model).values():
            layer._require_backend()
    model._nxm_plan = cfg.get("plan")
    after_swap(model)  # e.g. lets a transformers model save again through save_pretrained
    logger.info("loaded %d compressed layers from %s", len(cfg["layers"]), d)
    return model.eval()

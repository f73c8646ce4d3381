"""Hugging Face model descriptions for checkpoints: what class and config a model was built from,
and how to rebuild it *empty* (parameters on the meta device) so loading never materialises the
dense weights that a compressed checkpoint replaces.
"""

from __future__ import annotations

import contextlib
import logging

import torch.nn as nn

__all__ = ["describe", "build_empty", "config_differences", "parameters_on_meta", "load_for_task", "not_found", "ARCH_KEYS"]

logger = logging.getLogger(__name__)

#: Config fields that fix tensor shapes and the computation; a mismatch in any of them is an error. Each family's
#: config spells some its own way (DistilBERT's ``dim``, ...) or has its own (attention windows, relative positions).
ARCH_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
             "dim", "n_layers", "n_heads", "hidden_dim", "activation", "hidden_activation", "local_attention",
             "global_attn_every_n_layers", "relative_attention", "pos_att_type", "share_att_key", "position_buckets",
             "max_relative_positions", "relative_attention_num_buckets")


def _is_hf_model(model) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel) and type(model).__module__.startswith("transformers.")


def describe(model: nn.Module) -> dict | None:
    """``{"library", "class", "config", "init_kwargs"}`` for a transformers model, else ``None``."""
    if not _is_hf_model(model):
        return None
    init_kwargs = {}
    # BertModel(config, add_pooling_layer=False) is not visible in the config: record it.
    if hasattr(model, "pooler") and model.pooler is None:
        init_kwargs["add_pooling_layer"] = False
    config = model.config.to_dict()
    # The Hugging Face quantizer's record (see hf_quantizer.attach) repeats what the checkpoint's own
    # layer records say; rebuilding from it would ask transformers for that quantizer.
    config.pop("quantization_config", None)
    return {"library": "transformers", "class": type(model).__name__, "config": config,
            "init_kwargs": init_kwargs}


@contextlib.contextmanager
def parameters_on_meta():
    """Create every ``nn.Parameter`` on the meta device while building a model (buffers stay real).

    ``nn.Linear`` and friends allocate their weight with ``torch.empty`` (uninitialised, untouched
    memory) and register it; it is moved to ``meta`` right there, so initialisation runs on ``meta``
    (no work) and no dense weight ever holds data. Non-persistent buffers such as BERT's
    ``position_ids`` are computed normally, since checkpoints do not carry them.
    """
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def build_empty(desc: dict) -> nn.Module:
    """Rebuild the model :func:`describe` described, with every parameter on the meta device."""
    import transformers

    if not isinstance(desc, dict) or desc.get("library") != "transformers":
        raise ValueError(f"checkpoint model description must name library 'transformers', got {desc!r}")
    name, cfg = desc.get("class"), desc.get("config")
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"checkpoint names model class {name!r}, which is not a transformers model class")
    if not isinstance(cfg, dict):
        raise ValueError(f"checkpoint model config must be a JSON object, got {type(cfg).__name__}")
    config = cls.config_class.from_dict(dict(cfg))
    with parameters_on_meta():
        model = cls(config, **dict(desc.get("init_kwargs") or {}))
    return model.eval()


def config_differences(model: nn.Module, desc: dict | None) -> list[str]:
    """Architecture fields where ``model``'s config and a checkpoint's description disagree."""
    if desc is None or not hasattr(model, "config") or not hasattr(model.config, "to_dict"):
        return []
    mine, theirs = model.config.to_dict(), desc.get("config") or {}
    out = []
    for key in ARCH_KEYS:
        if key in mine and key in theirs and mine[key] != theirs[key]:
            out.append(f"{key}: model {mine[key]!r} vs checkpoint {theirs[key]!r}")
    return out


def not_found(name: str, exc: Exception) -> FileNotFoundError:
    """A one-line error for a model transformers could not find (its own messages run over several lines)."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return FileNotFoundError(f"cannot load model {name!r}: no such folder here, and as a Hugging Face Hub id: "
                             f"{first}")


def load_for_task(path, num_labels: int, is_regression: bool = False, **kwargs):
    """A sequence-classification model from a Hugging Face model folder or Hub id, fitted to a task.

    A classification head of the wrong size is replaced (newly initialised) and regression tasks get
    the regression loss. Returns ``(model, fresh)`` where ``fresh`` lists the head parameters that were
    newly initialised (empty for a model already fine-tuned on the task). ``kwargs`` go to
    ``from_pretrained`` (e.g. ``dtype``). A model that cannot be found is a one-line ``FileNotFoundError``.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(path)
    except OSError as exc:  # a missing folder, an unknown or unreachable Hub id
        raise not_found(str(path), exc) from None
    kw = dict(kwargs)
    if getattr(config, "num_labels", None) != num_labels:
        kw.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    if is_regression:
        kw["problem_type"] = "regression"
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True, **kw)
    except OSError as exc:
        raise not_found(str(path), exc) from None
    fresh = [k for k in info.get("missing_keys", []) if "classifier" in k or "score" in k]
    fresh += [str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", [])]
    return model, sorted(set(fresh))

"""Where each encoder family keeps its linears: one record per family, as data.

The plan vocabulary is the same for every encoder (``query``, ``key``, ``value``, ``attn_out``,
``ffn1``, ``ffn2`` in ``layer.<i>``, :mod:`nxm_kernels.plan`); what differs between BERT, DistilBERT,
MPNet, DeBERTa-v2/v3 and ModernBERT is only where those linears sit. A :class:`Family` says that:
the path of the encoder's layer list, each component's module path inside one layer, and the
ffn1 activation. :func:`find_encoder` finds the family of a model from its structure (the config's
``model_type`` only decides which family is tried first) and
:func:`nxm_kernels.models.encoder.encoder_linears` lists the linears from the record; every other
module (swap, fusion, calibration, training, search, accounting, checkpoints) goes through that and
names no family itself.

Two layouts need more than paths:

* **Query, key and value already one linear** (ModernBERT's ``attn.Wqkv``): the record maps the
  component ``qkv`` (:data:`~nxm_kernels.plan.FUSED_QKV`) instead of the three; the site is named
  ``layer.<i>.qkv`` and takes the spec the plan gives query, key and value (the same one, or an error).
* **GLU feed-forward** (``glu``; ModernBERT's ``mlp.Wi`` has ``2 x intermediate`` rows, split in two
  halves, the activation applied to one and multiplied by the other): ``ffn1`` is compressed like any
  linear, but its activation cannot run in the kernel's epilogue (it applies to half the rows only),
  so it stays the model's own module.

Adding a family is one record in :data:`FAMILIES` (its ``tiny`` fields give it a built-in random
model, ``tiny-<name>``) and a tiny-model test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

import torch.nn as nn

from ..plan import COMPONENTS, FUSED_QKV, QKV

__all__ = ["Family", "FAMILIES", "Encoder", "find_encoder", "family_named", "get_path"]


@dataclass(frozen=True)
class Family:
    """Where one encoder family keeps its linears (paths are dotted attribute paths)."""

    name: str                        # short name: the built-in tiny model is tiny-<name>
    models: str                      # the models with this layout, for errors and docs
    model_types: tuple[str, ...]     # config.model_type values that try this family first
    layers: str                      # the encoder's nn.ModuleList of layers, from the model holding it
    components: Mapping[str, str]    # component -> module path inside one layer (QKV or FUSED_QKV, + the rest)
    activation: str                  # ffn1's activation module, inside one layer
    glu: bool = False                # ffn1 is a GLU input projection: compressed, but no activation epilogue
    tiny: Mapping = field(default_factory=dict)  # {"config": transformers config class, **its fields}

    def __post_init__(self):
        comps = tuple(self.components)
        if comps not in (COMPONENTS, (FUSED_QKV,) + COMPONENTS[len(QKV):]):
            raise ValueError(f"family {self.name}: components must be {COMPONENTS} (or {FUSED_QKV!r} in place of "
                             f"{QKV}), in that order, got {comps}")

    @property
    def native_qkv(self) -> bool:
        """True when the checkpoint holds query, key and value as one linear."""
        return FUSED_QKV in self.components

    def fits(self, layer: nn.Module) -> bool:
        """Whether ``layer`` has a module at every component path."""
        return all(isinstance(get_path(layer, path), nn.Module) for path in self.components.values())

    def describe(self) -> str:
        """One line: the family, its models and its layout."""
        comps = ", ".join(f"{c}={p}" for c, p in self.components.items())
        return f"{self.name} ({self.models}): {self.layers}[i] with {comps}"


#: The tiny built-ins' shared shape (hidden 128, 2 layers, 4 heads, FFN 512, 128 positions; the vocabulary is
#: the tokenizer's), spelt in each config class's own field names.
_TINY = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
             max_position_embeddings=128, pad_token_id=0)

FAMILIES: tuple[Family, ...] = (
    Family("bert", "BERT, RoBERTa, XLM-RoBERTa, ELECTRA, CamemBERT, MiniLM",
           ("bert", "roberta", "xlm-roberta", "electra", "camembert"), "encoder.layer",
           {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
            "attn_out": "attention.output.dense", "ffn1": "intermediate.dense", "ffn2": "output.dense"},
           "intermediate.intermediate_act_fn"),
    Family("distilbert", "DistilBERT", ("distilbert",), "transformer.layer",
           {"query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
            "attn_out": "attention.out_lin", "ffn1": "ffn.lin1", "ffn2": "ffn.lin2"},
           "ffn.activation",
           tiny=dict(config="DistilBertConfig", dim=128, n_layers=2, n_heads=4, hidden_dim=512,
                     max_position_embeddings=128, pad_token_id=0)),
    # MPNet's relative attention bias is an embedding added to the scores (encoder.relative_attention_bias),
    # not a linear: its attention calls q, k and v as modules like BERT's does.
    Family("mpnet", "MPNet (all-mpnet-base-v2)", ("mpnet",), "encoder.layer",
           {"query": "attention.attn.q", "key": "attention.attn.k", "value": "attention.attn.v",
            "attn_out": "attention.attn.o", "ffn1": "intermediate.dense", "ffn2": "output.dense"},
           "intermediate.intermediate_act_fn",
           # MPNet offsets positions by the padding index (1): two more positions than tokens.
           tiny=dict(config="MPNetConfig", **{**_TINY, "max_position_embeddings": 130})),
    # DeBERTa-v2 and -v3 (v3 is the v2 architecture with share_att_key): with share_att_key, query_proj and
    # key_proj are also applied to the relative position embeddings; without it (not in the released
    # checkpoints), pos_query_proj / pos_key_proj do that and stay float (they are not plan components).
    Family("deberta-v2", "DeBERTa-v2, DeBERTa-v3", ("deberta-v2",), "encoder.layer",
           {"query": "attention.self.query_proj", "key": "attention.self.key_proj",
            "value": "attention.self.value_proj", "attn_out": "attention.output.dense", "ffn1": "intermediate.dense",
            "ffn2": "output.dense"},
           "intermediate.intermediate_act_fn",
           # DeBERTa-v3's attention: relative positions (log buckets), shared keys, no absolute positions.
           tiny=dict(config="DebertaV2Config", **_TINY, relative_attention=True, pos_att_type=["p2c", "c2p"],
                     share_att_key=True, position_buckets=32, max_relative_positions=-1, norm_rel_ebd="layer_norm",
                     position_biased_input=False, type_vocab_size=0)),
    Family("modernbert", "ModernBERT", ("modernbert",), "layers",
           {FUSED_QKV: "attn.Wqkv", "attn_out": "attn.Wo", "ffn1": "mlp.Wi", "ffn2": "mlp.Wo"},
           "mlp.act", glu=True,
           # Every second layer attends globally, the others in a window of 16 tokens (ModernBERT-base: every
           # third, 128); special tokens as the tiny built-ins' tokenizer numbers them.
           tiny=dict(config="ModernBertConfig", **{**_TINY, "intermediate_size": 256}, global_attn_every_n_layers=2,
                     local_attention=16, bos_token_id=2, cls_token_id=2, eos_token_id=3, sep_token_id=3)),
)


def family_named(name: str) -> Family:
    """The record called ``name`` (a ``ValueError`` listing them otherwise)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"family must be one of {[f.name for f in FAMILIES]}, got {name!r}")


class Encoder(NamedTuple):
    """A model's encoder: its family, the qualified name of its layer list, and the layers."""

    family: Family
    prefix: str
    layers: nn.ModuleList

    def _inner(self, component: str) -> str:
        return self.family.activation if component == "activation" else self.family.components[component]

    def path(self, index: int, component: str) -> str:
        """Qualified module name of ``component`` (or the activation, ``"activation"``) in layer ``index``."""
        return f"{self.prefix}.{index}.{self._inner(component)}"

    def place(self, index: int, component: str) -> tuple[nn.Module, str]:
        """``(parent module, attribute)`` where ``component`` (or ``"activation"``) of layer ``index`` is."""
        holder, _, attr = self._inner(component).rpartition(".")
        layer = self.layers[index]
        return (get_path(layer, holder) if holder else layer), attr


def get_path(module: nn.Module, path: str):
    """The attribute at a dotted ``path`` below ``module``, or ``None``."""
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def find_encoder(model: nn.Module) -> Encoder:
    """The encoder of ``model`` (a base model, a ``*For*`` task model, or anything holding one, such as a
    sentence-transformers model): the first module, outermost first, holding a non-empty layer list of
    some family every layer of which has all the family's components. The config's ``model_type`` only
    orders the families tried. Anything else is a ``ValueError`` listing the families."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    families = sorted(FAMILIES, key=lambda f: model_type not in f.model_types)
    for prefix, module in model.named_modules():
        for family in families:
            layers = get_path(module, family.layers)
            if isinstance(layers, nn.ModuleList) and len(layers) > 0 and all(map(family.fits, layers)):
                return Encoder(family, f"{prefix}.{family.layers}" if prefix else family.layers, layers)
    known = ", ".join(f"{f.name} ({f.models})" for f in FAMILIES)
    raise ValueError(
        f"{type(model).__name__} (model_type {model_type!r}) has no encoder of a family nxm_kernels knows: {known}, "
        "each recognised by its layer list and linears (nxm_kernels.models.families). For other models use "
        "nxm_kernels.swap_named_linears with module-name globs")

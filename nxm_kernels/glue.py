"""GLUE: the nine evaluations (CoLA, SST-2, MRPC, STS-B, QQP, MNLI-m, MNLI-mm, QNLI, RTE; WNLI too),
read from a local directory in the standard GLUE file layout, or from the ``datasets`` hub when it is
installed and online (never required), with the task metrics from scikit-learn and scipy.

Local layout (as produced by the usual GLUE download script)::

    <data_dir>/CoLA/{train,dev,test}.tsv        no header: source, label, original label, sentence
    <data_dir>/SST-2/{train,dev}.tsv            sentence, label
    <data_dir>/MRPC/{train,dev}.tsv             Quality, #1 ID, #2 ID, #1 String, #2 String
    <data_dir>/STS-B/{train,dev}.tsv            ... sentence1, sentence2, score
    <data_dir>/QQP/{train,dev}.tsv              id, qid1, qid2, question1, question2, is_duplicate
    <data_dir>/MNLI/{train,dev_matched,dev_mismatched}.tsv   ... sentence1, sentence2, ..., gold_label
    <data_dir>/QNLI/{train,dev}.tsv             index, question, sentence, label
    <data_dir>/RTE/{train,dev}.tsv              index, sentence1, sentence2, label
    <data_dir>/WNLI/{train,dev}.tsv             index, sentence1, sentence2, label

Columns are found by header name (not position) wherever the files have a header. Text labels map to
the ``datasets`` hub's integer ids (MNLI: entailment 0, neutral 1, contradiction 2; QNLI/RTE/WNLI:
entailment 0, not_entailment 1), so both sources give the same labels.

This module needs neither transformers nor torch to load data; :func:`encode` takes any Hugging Face
tokenizer. :func:`load_glue_model`, :func:`task_batches` and :class:`GlueMetric` join a task to the
model zoo and the search (what ``nxm compress`` and ``nxm search`` do with ``--model`` and ``--task``);
they import those lazily, so that reading data stays free of them.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GlueTask", "GLUE_TASKS", "GlueData", "task_info", "load_glue", "glue_metrics", "encode",
           "predict", "evaluate", "EVAL_SPLIT", "GlueMetric", "load_glue_model", "task_batches"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueTask:
    """What one GLUE task is: where its files are, which columns hold text and label, and its metrics."""

    name: str                    # canonical key, e.g. "sst2", "mnli-mm"
    folder: str                  # local folder, e.g. "SST-2"
    text_columns: tuple          # header names of text a (and b)
    label_column: str | int      # header name, or column index for headerless files
    labels: tuple | None         # label names in id order; None for regression (STS-B)
    metrics: tuple               # metric names, the first is the task's headline metric
    dev_file: str = "dev"        # file stem of the evaluation split
    header: bool = True
    hub: tuple = ()              # (config, validation split, text fields...) on the datasets hub

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


_NLI2 = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, GlueTask] = {t.name: t for t in (
    GlueTask("cola", "CoLA", (3,), 1, ("0", "1"), ("matthews_correlation", "accuracy"), header=False,
             hub=("cola", "validation", "sentence")),
    GlueTask("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",),
             hub=("sst2", "validation", "sentence")),
    GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("f1", "accuracy"),
             hub=("mrpc", "validation", "sentence1", "sentence2")),
    GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"),
             hub=("stsb", "validation", "sentence1", "sentence2")),
    GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("f1", "accuracy"),
             hub=("qqp", "validation", "question1", "question2")),
    GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             ("accuracy",), dev_file="dev_matched", hub=("mnli", "validation_matched", "premise", "hypothesis")),
    GlueTask("mnli-mm", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             ("accuracy",), dev_file="dev_mismatched",
             hub=("mnli", "validation_mismatched", "premise", "hypothesis")),
    GlueTask("qnli", "QNLI", ("question", "sentence"), "label", _NLI2, ("accuracy",),
             hub=("qnli", "validation", "question", "sentence")),
    GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", _NLI2, ("accuracy",),
             hub=("rte", "validation", "sentence1", "sentence2")),
    GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", _NLI2, ("accuracy",),
             hub=("wnli", "validation", "sentence1", "sentence2")),
)}

#: The split evaluated by default.
EVAL_SPLIT = "dev"

_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli", "mnli-matched": "mnli",
            "mnli_mismatched": "mnli-mm", "mnli-mismatched": "mnli-mm", "mnlimm": "mnli-mm"}


def task_info(task: "str | GlueTask") -> GlueTask:
    """The :class:`GlueTask` for a name such as ``"SST-2"``, ``"sst2"``, ``"mnli-mm"`` (case-insensitive)."""
    if isinstance(task, GlueTask):
        return task
    if not isinstance(task, str):
        raise TypeError(f"task must be a GLUE task name such as 'sst2', got {type(task).__name__}")
    key = task.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(f"task must be one of {sorted(GLUE_TASKS)} (or aliases such as 'SST-2', 'MNLI-m'), got {task!r}")
    return GLUE_TASKS[key]


@dataclass
class GlueData:
    """One split of one task: ``text_a``, optional ``text_b`` and ``labels`` (ints, floats for STS-B, or None)."""

    task: GlueTask
    split: str
    text_a: list
    text_b: list | None
    labels: list | None

    def __len__(self) -> int:
        return len(self.text_a)

    def subset(self, n: int) -> "GlueData":
        """The first ``n`` examples."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        return GlueData(self.task, self.split, self.text_a[:n], None if self.text_b is None else self.text_b[:n],
                        None if self.labels is None else self.labels[:n])


def _split_file(task: GlueTask, split: str) -> str:
    if split in ("dev", "validation", "eval"):
        return task.dev_file
    if split in ("train", "test"):
        if split == "test" and task.folder == "MNLI":
            return "test_matched" if task.name == "mnli" else "test_mismatched"
        return split
    raise ValueError(f"split must be 'train', 'dev' or 'test', got {split!r}")


def _label_id(task: GlueTask, raw: str, where: str):
    raw = raw.strip()
    if task.is_regression:
        try:
            v = float(raw)
        except ValueError:
            raise ValueError(f"{where}: label must be a number for {task.name}, got {raw!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"{where}: label must be finite, got {raw!r}")
        return v
    if raw in task.labels:
        return task.labels.index(raw)
    raise ValueError(f"{where}: label must be one of {task.labels} for {task.name}, got {raw!r}")


def _read_local(task: GlueTask, data_dir: Path, split: str) -> GlueData:
    folder = data_dir / task.folder
    if not folder.is_dir() and (data_dir / task.dev_file).with_suffix(".tsv").is_file():
        folder = data_dir  # data_dir points at the task folder itself
    path = folder / f"{_split_file(task, split)}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"GLUE file not found: {path} (expected the standard layout "
                                f"<data_dir>/{task.folder}/{_split_file(task, split)}.tsv)")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    is_test = split == "test"
    if task.header or is_test:  # GLUE test files have a header even for CoLA
        if not rows:
            raise ValueError(f"{path}: empty file (expected a header row)")
        header, rows = [c.strip() for c in rows[0]], rows[1:]
        if task.header:
            text_idx = [header.index(c) if c in header else None for c in task.text_columns]
        else:
            text_idx = [header.index("sentence") if "sentence" in header else None]
        if any(i is None for i in text_idx):
            raise ValueError(f"{path}: header must contain {task.text_columns if task.header else ('sentence',)}, "
                             f"got {header}")
        label_idx = None
        if not is_test:
            if task.label_column not in header:
                raise ValueError(f"{path}: header must contain {task.label_column!r}, got {header}")
            label_idx = header.index(task.label_column)
    else:
        text_idx, label_idx = list(task.text_columns), task.label_column
    text_a, text_b, labels = [], [] if len(text_idx) > 1 else None, [] if label_idx is not None else None
    need = max(text_idx + ([label_idx] if label_idx is not None else []))
    for line, row in enumerate(rows, start=2 if task.header or is_test else 1):
        # MNLI's gold_label is the last column even when annotator columns are missing.
        if task.label_column == "gold_label" and label_idx is not None and len(row) <= need:
            if len(row) <= max(text_idx):
                raise ValueError(f"{path}:{line}: expected at least {need + 1} tab-separated columns, got {len(row)}")
            lab = row[-1]
        elif len(row) <= need:
            raise ValueError(f"{path}:{line}: expected at least {need + 1} tab-separated columns, got {len(row)}")
        else:
            lab = row[label_idx] if label_idx is not None else None
        text_a.append(row[text_idx[0]])
        if text_b is not None:
            text_b.append(row[text_idx[1]])
        if labels is not None:
            labels.append(_label_id(task, lab, f"{path}:{line}"))
    if not text_a:
        raise ValueError(f"{path}: no examples")
    return GlueData(task, split, text_a, text_b, labels)


def _read_hub(task: GlueTask, split: str) -> GlueData:
    try:
        import datasets
    except ImportError:
        raise RuntimeError("no data_dir given and the 'datasets' package is not installed; pass data_dir "
                           "(a folder in the standard GLUE layout) or pip install datasets") from None
    config, dev_split, *fields = task.hub
    # The hub's evaluation split has its own name; train and test (MNLI's two) are named as the files are.
    hub_split = dev_split if split in ("dev", "validation", "eval") else _split_file(task, split)
    ds = datasets.load_dataset("nyu-mll/glue", config, split=hub_split)
    labels = None if split == "test" else [float(v) if task.is_regression else int(v) for v in ds["label"]]
    return GlueData(task, split, list(ds[fields[0]]), list(ds[fields[1]]) if len(fields) > 1 else None, labels)


def load_glue(task: "str | GlueTask", split: str = "train", data_dir: "str | os.PathLike | None" = None) -> GlueData:
    """Load one split (``"train"``, ``"dev"``, ``"test"``) of a GLUE task.

    With ``data_dir`` (the folder holding ``SST-2/``, ``MNLI/``, ..., or a task folder itself) the
    local TSV files are read. Without it, the ``datasets`` hub is used (needs the package and a network).
    ``mnli`` evaluates on ``dev_matched``, ``mnli-mm`` on ``dev_mismatched``.
    """
    t = task_info(task)
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, got {type(split).__name__}")
    _split_file(t, split)
    if data_dir is None:
        return _read_hub(t, split)
    path = Path(data_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"data_dir must be an existing directory, got {str(data_dir)!r}")
    data = _read_local(t, path, split)
    logger.info("GLUE %s/%s: %d examples from %s", t.name, split, len(data), path)
    return data


def glue_metrics(task: "str | GlueTask", predictions, references) -> dict[str, float]:
    """The task's metrics (scikit-learn / scipy): accuracy, F1 (MRPC, QQP), Matthews correlation
    (CoLA), Pearson and Spearman (STS-B). ``predictions`` are class ids (or, for STS-B, scores);
    logits ``[n, classes]`` are accepted and arg-maxed. Returns ``{metric: value}`` plus ``"main"``."""
    import numpy as np

    t = task_info(task)
    pred = np.asarray(predictions)
    ref = np.asarray(references)
    if pred.ndim == 2 and not t.is_regression:
        pred = pred.argmax(-1)
    if pred.ndim == 2 and t.is_regression and pred.shape[1] == 1:
        pred = pred[:, 0]
    if pred.ndim != 1 or ref.ndim != 1 or pred.shape[0] != ref.shape[0]:
        raise ValueError(f"predictions and references must be 1-D of equal length, got {pred.shape} and {ref.shape}")
    if pred.shape[0] == 0:
        raise ValueError("predictions must not be empty")
    out: dict[str, float] = {}
    if t.is_regression:
        from scipy.stats import pearsonr, spearmanr

        out["pearson"] = float(pearsonr(pred.astype(float), ref.astype(float))[0])
        out["spearman"] = float(spearmanr(pred.astype(float), ref.astype(float))[0])
    else:
        from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

        pred, ref = pred.astype(int), ref.astype(int)
        out["accuracy"] = float(accuracy_score(ref, pred))
        if "f1" in t.metrics:
            out["f1"] = float(f1_score(ref, pred))
        if "matthews_correlation" in t.metrics:
            out["matthews_correlation"] = float(matthews_corrcoef(ref, pred))
    out["main"] = out[t.metrics[0]]
    return out


def encode(data: GlueData, tokenizer, max_length: int = 128) -> list[dict]:
    """Tokenize a split into a list of feature dicts (``input_ids``, ``attention_mask``,
    ``token_type_ids`` when the tokenizer makes them, ``labels``), ready for ``Trainer`` with
    ``DataCollatorWithPadding``."""
    if not isinstance(data, GlueData):
        raise TypeError(f"data must be a GlueData (see load_glue), got {type(data).__name__}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8:
        raise ValueError(f"max_length must be an int >= 8, got {max_length!r}")
    if data.text_b is None:
        enc = tokenizer(data.text_a, truncation=True, max_length=max_length)
    else:
        enc = tokenizer(data.text_a, data.text_b, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    feats = []
    for i in range(len(data)):
        f = {k: enc[k][i] for k in keys}
        if data.labels is not None:
            f["labels"] = data.labels[i]
        feats.append(f)
    return feats


def predict(model, features: list, tokenizer, batch_size: int = 64, desc: str = "predict"):
    """Logits ``[n, num_labels]`` (float32, CPU) of a sequence-classification ``model`` on encoded
    ``features`` (from :func:`encode`), batched and padded by :func:`~nxm_kernels.search.batches.collate`;
    shows a progress bar."""
    import torch
    from tqdm.auto import tqdm

    from .search.batches import collate

    batches = collate([{k: v for k, v in f.items() if k != "labels"} for f in features], tokenizer, batch_size)
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc=desc, unit="batch", disable=None, leave=False):
                out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def evaluate(model, tokenizer, data: GlueData, *, batch_size: int = 64, max_length: int = 128):
    """Run ``model`` on a labelled split; returns ``(metrics, logits)`` (see :func:`glue_metrics`)."""
    if data.labels is None:
        raise ValueError(f"split {data.split!r} of {data.task.name} has no labels (GLUE test files do not); "
                         "evaluate on 'dev'")
    logits = predict(model, encode(data, tokenizer, max_length), tokenizer, batch_size, desc=f"eval {data.task.name}")
    preds = logits[:, 0].numpy() if data.task.is_regression else logits.argmax(-1).numpy()
    return glue_metrics(data.task, preds, data.labels), logits


class GlueMetric:
    """``metric_fn(logits, labels)`` for the search's ``metric`` objective: the task's headline GLUE metric."""

    def __init__(self, task: "str | GlueTask"):
        self.task = task_info(task)
        self.cache_key = f"glue:{self.task.name}:{self.task.metrics[0]}"

    def __call__(self, logits, labels) -> float:
        return glue_metrics(self.task, logits.numpy(), labels.numpy())["main"]


def load_glue_model(name: str, task: "str | GlueTask", *, seed: int = 0, device=None, why: str = "", **kwargs):
    """``(model, tokenizer)`` for ``task``: a sequence-classification model with the task's head (a
    built-in, a model folder or a Hub id; see :func:`nxm_kernels.models.zoo.load_task_model`).

    A head the checkpoint does not hold is initialised at random, and that is logged as a warning
    (``why`` says what it means to the caller). ``device`` given: the model is moved there, in eval mode.
    """
    from .models import zoo  # looked up at call time, so tests can replace the loader

    t = task_info(task)
    model, tokenizer, fresh = zoo.load_task_model(name, t.num_labels, t.is_regression, seed=seed, **kwargs)
    if fresh:
        logger.warning("model %s has no trained %s head (%s newly initialised)%s", name, t.name, ", ".join(fresh[:3]),
                       f": {why}" if why else "")
    if device is not None:
        model = model.to(device).eval()
    return model, tokenizer


def task_batches(task: "str | GlueTask", data: GlueData, tokenizer, *, samples: int, train_samples: int,
                 batch_size: int, max_length: int, seed: int):
    """``(held-out batches, training batches)`` drawn disjointly from ``data`` (one split of ``task``)."""
    from .search.batches import collate, split_sample

    t = task_info(task)
    feats = encode(data, tokenizer, max_length=max_length)
    ev, tr = split_sample(len(feats), samples, train_samples, seed=seed)
    held = collate([feats[i] for i in ev], tokenizer, batch_size, regression=t.is_regression)
    train = collate([feats[i] for i in tr], tokenizer, batch_size, regression=t.is_regression) if tr else []
    logger.info("held-out sample: %d examples of %s; %d for short QAT", len(ev), t.name, len(tr))
    return held, train

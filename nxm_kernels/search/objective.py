"""What a compression *costs*: the objective the sensitivity profile and the search minimise.

An :class:`Evaluator` runs a model over a fixed, small held-out sample (a list of batches that
``model(**batch)`` accepts), remembers the uncompressed model's outputs once, and then scores a
compressed model against them. Objectives (all "lower is better", 0 for the uncompressed model):

* ``"divergence"`` (default): how far the outputs move. Classification logits: mean KL divergence
  ``KL(p_uncompressed || p_compressed)`` per example; a single regression output: mean squared
  difference; a bare encoder (no logits): ``1 - cosine`` of the mean-pooled last hidden states.
  Needs no labels and is smooth, which makes a small sample go a long way.
* ``"loss"``: the increase of the task loss (``model(**batch).loss``; batches need labels).
* ``"metric"``: the drop of a task metric: ``metric_fn(logits, labels) -> float`` (higher is better)
  over the whole sample, e.g. accuracy or Matthews correlation; noisy on small samples.

Costs of the last two may come out slightly negative (compression acting as noise on a small
sample); the profile keeps the measured value and the search treats a negative cost as zero.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable, Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_choice
from ..models.zoo import mean_pool

__all__ = ["OBJECTIVES", "Evaluator", "check_batches", "fingerprint_model", "fingerprint_batches"]

logger = logging.getLogger(__name__)

OBJECTIVES = ("divergence", "loss", "metric")


def check_batches(batches) -> list[dict]:
    """A non-empty list of ``{name: tensor}`` batches (materialised: the sample is read many times)."""
    if isinstance(batches, Mapping):
        batches = [batches]
    try:
        batches = list(batches)
    except TypeError:
        raise TypeError(f"batches must be an iterable of dicts of tensors, got {type(batches).__name__}") from None
    if not batches:
        raise ValueError("batches must hold at least one batch (the held-out sample is empty)")
    out = []
    for i, b in enumerate(batches):
        if not isinstance(b, Mapping) or not b:
            raise TypeError(f"batches[{i}] must be a non-empty dict of tensors, got {type(b).__name__}")
        for k, v in b.items():
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"batches[{i}][{k!r}] must be a torch.Tensor, got {type(v).__name__}")
        out.append(dict(b))
    return out


def _hash_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def fingerprint_model(model: nn.Module) -> str:
    """sha256 of the model's class and every parameter and buffer (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in model.state_dict().items():
        _hash_tensor(h, name, t)
    return h.hexdigest()


def fingerprint_batches(batches: list[dict]) -> str:
    """sha256 of the sample (every batch's tensors in key order)."""
    h = hashlib.sha256()
    for i, b in enumerate(batches):
        for k in sorted(b):
            _hash_tensor(h, f"{i}.{k}", b[k])
    return h.hexdigest()


class Evaluator:
    """Scores models on a fixed sample against the uncompressed model's outputs (see module docstring).

    Create it with the *uncompressed* model; :meth:`cost` then takes the same model (compressed in
    place, e.g. inside :func:`~nxm_kernels.search.sensitivity.fake_compressed`) or a compressed copy.
    ``evaluations`` counts the model passes over the sample after the baseline.
    """

    def __init__(self, model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]],
                 objective: str = "divergence", metric_fn: Callable | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_choice("objective", objective, OBJECTIVES)
        if objective == "metric" and not callable(metric_fn):
            raise ValueError("objective 'metric' needs metric_fn(logits, labels) -> float (higher is better)")
        self.objective = objective
        self.metric_fn = metric_fn
        self.batches = check_batches(batches)
        if objective in ("loss", "metric") and not all("labels" in b for b in self.batches):
            raise ValueError(f"objective {objective!r} needs a 'labels' tensor in every batch")
        self.evaluations = 0
        self._base = self._run(model)
        self.base_value = self._score_value(self._base)

    # ------------------------------------------------------------------ running
    @torch.no_grad()
    def _run(self, model: nn.Module) -> list[dict]:
        was_training = model.training
        model.eval()
        try:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            outs = []
            for b in self.batches:
                out = model(**{k: v.to(device) for k, v in b.items()})
                rec = {"n": next(iter(b.values())).shape[0]}
                logits = getattr(out, "logits", None)
                if logits is None and isinstance(out, dict):
                    logits = out.get("logits")
                if logits is not None:
                    rec["logits"] = logits.detach().float().cpu()
                else:
                    hidden = getattr(out, "last_hidden_state", None)
                    if hidden is None:
                        raise ValueError(f"{type(model).__name__} returned neither logits nor last_hidden_state; "
                                         "the search needs a Hugging Face encoder or task model")
                    hidden, mask = hidden.detach().float(), b.get("attention_mask")
                    # Mean over real tokens (sentence-transformers' pooling), plain mean without a mask.
                    pooled = hidden.mean(dim=1) if mask is None else mean_pool(hidden, mask.to(hidden.device))
                    rec["pooled"] = pooled.cpu()
                loss = getattr(out, "loss", None)
                if loss is not None:
                    rec["loss"] = float(loss)
                outs.append(rec)
            return outs
        finally:
            model.train(was_training)

    def _score_value(self, outs: list[dict]) -> float:
        """The objective's raw value (loss, metric) for ``outs``; 0 for divergence."""
        if self.objective == "loss":
            if any("loss" not in o for o in outs):
                raise ValueError("objective 'loss': the model returned no loss (are labels in the batches?)")
            return sum(o["loss"] * o["n"] for o in outs) / sum(o["n"] for o in outs)
        if self.objective == "metric":
            if any("logits" not in o for o in outs):
                raise ValueError("objective 'metric' needs a model with logits (a task head)")
            logits = torch.cat([o["logits"] for o in outs])
            labels = torch.cat([b["labels"].detach().cpu() for b in self.batches])
            return float(self.metric_fn(logits, labels))
        return 0.0

    def _divergence(self, outs: list[dict]) -> float:
        total, count = 0.0, 0
        for base, new in zip(self._base, outs):
            if "logits" in base:
                a, b = base["logits"].reshape(base["n"], -1), new["logits"].reshape(new["n"], -1)
                if a.shape[-1] == 1:
                    per = (a - b).pow(2).squeeze(-1)
                else:
                    la, lb = F.log_softmax(a.double(), -1), F.log_softmax(b.double(), -1)
                    per = (la.exp() * (la - lb)).sum(-1)
            else:
                per = 1.0 - F.cosine_similarity(base["pooled"].double(), new["pooled"].double(), dim=-1)
            total += float(per.sum())
            count += per.numel()
        return total / count

    def value(self, model: nn.Module) -> float:
        """The raw objective value of ``model`` (divergence, loss or metric)."""
        outs = self._run(model)
        self.evaluations += 1
        return self._divergence(outs) if self.objective == "divergence" else self._score_value(outs)

    def cost(self, model: nn.Module) -> float:
        """How much worse ``model`` is than the uncompressed one (lower is better, 0 = no change)."""
        v = self.value(model)
        if self.objective == "divergence":
            return v
        if self.objective == "loss":
            return v - self.base_value
        return self.base_value - v

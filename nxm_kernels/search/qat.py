"""Short QAT runs for the search: how much of a compression's cost a little fine-tuning wins back.

Used by the ``"qat"`` mode of :func:`~nxm_kernels.search.sensitivity.profile_sensitivity` (one
group at a time) and by :func:`~nxm_kernels.search.validate.validate_plans` (whole plans). Each run
works on a copy of the model: the assigned linears become the training path's ``QATLinear``
(:func:`nxm_kernels.train.qat.prepare_qat`, the kernels' arithmetic), their N:M mask is fixed by
magnitude at once (no ADMM phase: too short to matter), and the copy is trained for ``steps`` AdamW
steps to match the original model's outputs (logit distillation,
:func:`nxm_kernels.train.distill.distillation_loss`; the last hidden state's MSE for a bare
encoder). Distilling toward the original, not fitting labels, keeps the estimate about the
compression: a task loss would also move the uncompressed parts away from the model being scored.
"""

from __future__ import annotations

import copy
import itertools
import logging
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..plan import Plan
from ..train.distill import distillation_loss
from ..train.qat import prepare_qat
from .objective import Evaluator

__all__ = ["short_qat", "short_qat_cost"]

logger = logging.getLogger(__name__)


def short_qat(model: nn.Module, assignment: "Mapping[str, str] | Plan", train_batches: list[dict], *, steps: int = 20,
              lr: float = 2e-5, temperature: float = 2.0) -> nn.Module:
    """A fine-tuned compressed *copy* of ``model`` (``model`` itself is not touched); ``assignment`` is
    ``{layer name: spec}`` or anything :func:`~nxm_kernels.train.qat.prepare_qat` takes as a plan."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if not train_batches:
        raise ValueError("train_batches must not be empty")
    student = copy.deepcopy(model)
    layers = prepare_qat(student, assignment)
    for layer in layers.values():
        if layer.nm is not None:
            layer.prune_()
    if steps == 0:
        return student
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    teacher_was_training = model.training
    model.eval()
    student.train()
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    try:
        for batch in itertools.islice(itertools.cycle(train_batches), steps):
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            with torch.no_grad():
                t_out = model(**inputs)
            s_out = student(**inputs)
            t_logits, s_logits = getattr(t_out, "logits", None), getattr(s_out, "logits", None)
            if t_logits is not None:
                loss = distillation_loss(s_logits, t_logits, temperature)
            else:
                loss = F.mse_loss(s_out.last_hidden_state.float(), t_out.last_hidden_state.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for layer in layers.values():
                layer.apply_mask_()
    finally:
        model.train(teacher_was_training)
    student.eval()
    return student


def short_qat_cost(model: nn.Module, assignment: "Mapping[str, str] | Plan", evaluator: Evaluator,
                   train_batches: list[dict], *, steps: int = 20, lr: float = 2e-5) -> float:
    """The evaluator's cost of ``model`` compressed per ``assignment`` after :func:`short_qat`."""
    return evaluator.cost(short_qat(model, assignment, train_batches, steps=steps, lr=lr))

"""Knowledge distillation from the dense fine-tuned teacher.

:class:`Distiller` attaches to a student model with two hooks: during training, each student
forward also runs the (frozen, eval-mode) teacher on the same inputs and replaces the student's
``loss`` by::

    (1 - alpha) * task_loss + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
                            + hidden_weight * mean_l D(student_hidden_l, teacher_hidden_l)

where ``D`` is the plain MSE (``hidden_loss="mse"``) or SquareHead's normalised MSE over real tokens
(``hidden_loss="squarehead"``, the form published 2:4 recipes use to recover accuracy fastest; see
:func:`hidden_state_loss`). For a regression head (one output) the logit term is the MSE between
logits. Because the combined value is the model's own ``loss``, a ``Trainer`` scales, accumulates and
reduces it exactly like a task loss. Evaluation forwards are untouched. Hidden-state matching needs
student and teacher of the same width and depth (the compressed model and its dense original are).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_choice, check_number
__all__ = ["DistillConfig", "Distiller", "distillation_loss", "hidden_state_loss", "HIDDEN_LOSSES"]

logger = logging.getLogger(__name__)

HIDDEN_LOSSES = ("mse", "squarehead")


@dataclass
class DistillConfig:
    """Distillation settings, each described by its field's ``metadata["help"]`` (``nxm compress --help``)."""

    alpha: float = field(default=0.5, metadata={
        "help": "weight of the distillation term (the task loss gets 1 - alpha)"})
    temperature: float = field(default=2.0, metadata={"help": "distillation softmax temperature"})
    hidden_weight: float = field(default=0.0, metadata={"help": "weight of hidden-state matching (0: off)"})
    hidden_loss: str = field(default="mse", metadata={
        "help": "hidden-state term: plain MSE or SquareHead's per-layer MSE normalised by the teacher's energy",
        "choices": HIDDEN_LOSSES})

    def __post_init__(self):
        for key in ("alpha", "temperature", "hidden_weight"):
            check_number(key, getattr(self, key))
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.hidden_weight < 0:
            raise ValueError(f"hidden_weight must be >= 0, got {self.hidden_weight}")
        check_choice("hidden_loss", self.hidden_loss, HIDDEN_LOSSES)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0):
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over examples; MSE for one-output heads."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits must have the same shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    s, t = student_logits.float(), teacher_logits.float()
    if s.shape[-1] == 1:
        return F.mse_loss(s, t)
    s = s.reshape(-1, s.shape[-1])
    t = t.reshape(-1, t.shape[-1])
    return F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                    reduction="batchmean", log_target=True) * temperature ** 2


def hidden_state_loss(student_hidden, teacher_hidden, kind: str = "mse", attention_mask=None) -> torch.Tensor:
    """Mean over layers of the hidden-state distance between two equal-length sequences of ``[B, T, H]`` tensors.

    ``kind="mse"``: the mean squared error; ``"squarehead"``: ``sum (s - t)² / sum t²`` per layer
    (SquareHead, Kurtic et al. 2023), i.e. the MSE normalised by the teacher's energy in that layer, so every
    layer counts alike whatever its activations' scale. With ``attention_mask`` (``[B, T]``), only real tokens
    count (the :class:`Distiller` passes it for ``"squarehead"``; its plain MSE keeps the all-positions form).
    """
    check_choice("kind", kind, HIDDEN_LOSSES)
    student_hidden, teacher_hidden = list(student_hidden), list(teacher_hidden)
    if not student_hidden or len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"student_hidden and teacher_hidden must be non-empty and of equal length, got "
                         f"{len(student_hidden)} and {len(teacher_hidden)}")
    terms = []
    for i, (s, t) in enumerate(zip(student_hidden, teacher_hidden)):
        if s.shape != t.shape:
            raise ValueError(f"hidden state {i}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}")
        s, t = s.float(), t.float()
        if attention_mask is not None:
            if tuple(attention_mask.shape) != tuple(s.shape[:2]):
                raise ValueError(f"attention_mask must have shape {tuple(s.shape[:2])}, got "
                                 f"{tuple(attention_mask.shape)}")
            keep = attention_mask.to(torch.bool)
            s, t = s[keep], t[keep]
        sq = (s - t).pow(2)
        if kind == "mse":
            terms.append(sq.mean())
        else:
            # The teacher's energy is a constant: no gradient, and clamped so an all-zero layer cannot divide by 0.
            terms.append(sq.sum() / t.pow(2).sum().clamp_min(1e-12))
    return torch.stack(terms).mean()


def _get(output, key):
    if isinstance(output, dict):
        return output.get(key)
    return getattr(output, key, None)


class Distiller:
    """Distil ``teacher`` into the model it is :meth:`attach`-ed to (see the module docstring)."""

    def __init__(self, teacher: nn.Module, config: DistillConfig | None = None):
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        self.teacher = teacher
        self.config = config if config is not None else DistillConfig()
        if not isinstance(self.config, DistillConfig):
            raise TypeError(f"config must be a DistillConfig, got {type(self.config).__name__}")
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._handles = []
        #: The last training step's terms (detached tensors: no device sync per step), for logging.
        self.last: dict[str, torch.Tensor] = {}

    def attach(self, student: nn.Module) -> "Distiller":
        if self._handles:
            raise RuntimeError("this Distiller is attached already; detach() it first")
        self._handles = [student.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
                         student.register_forward_hook(self._hook, with_kwargs=True)]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre_hook(self, module, args, kwargs):
        if module.training and self.config.hidden_weight > 0:
            kwargs = dict(kwargs, output_hidden_states=True)
            return args, kwargs
        return None

    def _hook(self, module, args, kwargs, output):
        if not module.training:
            return None
        cfg = self.config
        teacher_kwargs = {k: v for k, v in kwargs.items() if k not in ("labels", "output_hidden_states")}
        dev = next(module.parameters()).device
        if next(self.teacher.parameters()).device != dev:
            self.teacher.to(dev)
        self.teacher.eval()
        with torch.no_grad():
            t_out = self.teacher(*args, output_hidden_states=cfg.hidden_weight > 0, **teacher_kwargs)
        s_logits, t_logits = _get(output, "logits"), _get(t_out, "logits")
        if s_logits is None or t_logits is None:
            raise ValueError("distillation needs models whose outputs have 'logits' (e.g. *ForSequenceClassification)")
        kd = distillation_loss(s_logits, t_logits, cfg.temperature)
        task = _get(output, "loss")
        loss = cfg.alpha * kd if task is None else (1.0 - cfg.alpha) * task + cfg.alpha * kd
        self.last = {"distill_logits": kd.detach()}
        if cfg.hidden_weight > 0:
            s_h, t_h = _get(output, "hidden_states"), _get(t_out, "hidden_states")
            if not s_h or not t_h or len(s_h) != len(t_h):
                raise ValueError("hidden-state distillation needs student and teacher with the same number of "
                                 "hidden states")
            hidden = hidden_state_loss(s_h, t_h, cfg.hidden_loss, kwargs.get("attention_mask") if cfg.hidden_loss
                                       == "squarehead" else None)
            loss = loss + cfg.hidden_weight * hidden
            self.last["distill_hidden"] = hidden.detach()
        if isinstance(output, dict):
            output["loss"] = loss
            return output
        if isinstance(output, tuple):
            return (loss,) + tuple(output[1:]) if task is not None else (loss,) + tuple(output)
        raise TypeError(f"cannot set the loss on a model output of type {type(output).__name__}")

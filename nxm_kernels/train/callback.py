"""Compression inside an ordinary Hugging Face ``Trainer``: add one object, :class:`NxMCompression`.

::

    compression = NxMCompression("2:4-w8a8", schedule=CompressionSchedule(admm_fraction=0.5),
                                 teacher=dense_model)                 # teacher optional
    trainer = Trainer(model=model, args=args, train_dataset=..., callbacks=[compression])
    trainer.train()
    compressed = compression.export(trainer.model)                    # NxMLinear modules

What the callback does, by Trainer event:

* ``on_init_end`` (end of ``Trainer.__init__``): swaps the plan's encoder linears for
  :class:`~nxm_kernels.train.qat.QATLinear` (sharing the Parameters) and attaches the distiller. This
  happens before any checkpoint is loaded, so ``resume_from_checkpoint`` restores the ADMM state.
* ``on_train_begin``: starts ADMM (``Z = proj(W)``, ``U = 0``) unless the state came from a checkpoint.
* ``on_pre_optimizer_step``: adds the gradient of ``(rho/2)||W - Z + U||^2`` to every compressed
  weight. This is the loss term, added where it needs no autograd graph and no hook into
  ``compute_loss``; gradients are then already reduced across ranks and accumulated, so the term
  counts exactly once per optimizer step. It is added after gradient clipping: clipping bounds the
  task gradient, not the pull toward the N:M set. With fp16 loss scaling the gradients are
  unscaled first (``GradScaler.unscale_``, as PyTorch documents for modifying gradients).
* ``on_step_end``: every ``interval`` steps, the Z/U update (residuals go to ``state.log_history``
  and the log); at the end of the ADMM phase, the hard prune to Z's N:M mask; in the fine-tune
  phase, re-zeroing of pruned master weights.
* ``on_train_end``: a run stopped before the prune step is pruned now, so the model is exportable.

Phases are driven by steps (``admm_steps``), epochs (``admm_epochs``) or a fraction of the run
(``admm_fraction``). All state is in the model's buffers, hence in every Trainer checkpoint.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch.nn as nn
from transformers import TrainerCallback

from .._checks import check_number
from .admm import ADMM, ADMMConfig
from .distill import DistillConfig, Distiller
from .qat import QATLinear, prepare_qat, qat_layers

__all__ = ["CompressionSchedule", "NxMCompression"]

logger = logging.getLogger(__name__)


@dataclass
class CompressionSchedule:
    """When ADMM ends and masked QAT fine-tuning begins, plus the ADMM hyper-parameters.

    Give at most one of ``admm_steps`` (optimizer steps) and ``admm_epochs`` (may be fractional);
    otherwise the ADMM phase is ``admm_fraction`` of the run's optimizer steps. ``admm_steps=0``
    prunes at once (one-shot magnitude pruning followed by QAT fine-tuning).
    """

    admm_steps: int | None = field(default=None, metadata={"help": "ADMM phase length in optimizer steps"})
    admm_epochs: float | None = field(default=None, metadata={"help": "ADMM phase length in epochs"})
    admm_fraction: float = field(default=0.5, metadata={"help": "share of the steps spent in ADMM"})
    admm: ADMMConfig = field(default_factory=ADMMConfig)

    def __post_init__(self):
        if self.admm_steps is not None and self.admm_epochs is not None:
            raise ValueError("give at most one of admm_steps and admm_epochs, got both")
        if self.admm_steps is not None and (isinstance(self.admm_steps, bool) or not isinstance(self.admm_steps, int)
                                            or self.admm_steps < 0):
            raise ValueError(f"admm_steps must be an int >= 0, got {self.admm_steps!r}")
        if self.admm_epochs is not None:
            check_number("admm_epochs", self.admm_epochs, minimum=0)
        if not isinstance(self.admm_fraction, (int, float)) or not 0 <= self.admm_fraction <= 1:
            raise ValueError(f"admm_fraction must be in [0, 1], got {self.admm_fraction!r}")
        if not isinstance(self.admm, ADMMConfig):
            raise TypeError(f"admm must be an ADMMConfig, got {type(self.admm).__name__}")

    def admm_phase_steps(self, total_steps: int, steps_per_epoch: float) -> int:
        """Optimizer steps in the ADMM phase of a run of ``total_steps`` (``steps_per_epoch`` per epoch)."""
        for name, v in (("total_steps", total_steps), ("steps_per_epoch", steps_per_epoch)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if self.admm_steps is not None:
            return min(self.admm_steps, int(total_steps))
        if self.admm_epochs is not None:
            return min(math.ceil(self.admm_epochs * steps_per_epoch - 1e-9), int(total_steps))
        return math.ceil(self.admm_fraction * total_steps)

    def admm_updates(self, total_steps: int, steps_per_epoch: float) -> int:
        """Z/U updates the ADMM phase makes (one every ``admm.interval`` steps)."""
        return self.admm_phase_steps(total_steps, steps_per_epoch) // self.admm.interval


class NxMCompression(TrainerCallback):
    """ADMM N:M sparsification + STE QAT (+ optional distillation) as one ``TrainerCallback``.

    Args:
        plan: a :class:`~nxm_kernels.plan.Plan`, ``{pattern: spec}`` mapping, JSON, or one spec for all layers.
        schedule: a :class:`CompressionSchedule` (default: ADMM for the first half of the run).
        teacher: the dense fine-tuned model to distil from (optional; frozen, never modified).
        distill: a :class:`~nxm_kernels.train.distill.DistillConfig` (defaults when a teacher is given).
        strict: a plan pattern matching no layer is an error.
        init_masks: N:M masks by layer name to start from, e.g. those of calibrated one-shot compression
            (``{n: r.mask for n, r in calibrate_weights(model, plan, batches).items() if r.mask is not None}``,
            run on the model before training, which also sets its weights): ADMM's initial Z is
            ``proj(W * mask)``, and a prune at once (``admm_steps=0``) uses these masks.
    """

    def __init__(self, plan, *, schedule: CompressionSchedule | None = None, teacher: nn.Module | None = None,
                 distill: DistillConfig | None = None, strict: bool = True, init_masks: dict | None = None):
        self.plan = plan
        self.schedule = schedule if schedule is not None else CompressionSchedule()
        if not isinstance(self.schedule, CompressionSchedule):
            raise TypeError(f"schedule must be a CompressionSchedule, got {type(self.schedule).__name__}")
        if distill is not None and teacher is None:
            raise ValueError("distill needs a teacher model")
        self.distiller = Distiller(teacher, distill) if teacher is not None else None
        self.strict = strict
        if init_masks is not None and not isinstance(init_masks, dict):
            raise TypeError(f"init_masks must be a dict of layer name -> bool mask, got {type(init_masks).__name__}")
        self.init_masks = init_masks
        self.layers: dict[str, QATLinear] = {}
        self.admm: ADMM | None = None
        self._model = None
        self._end_step: int | None = None

    # ------------------------------------------------------------------ setup
    def prepare(self, model: nn.Module) -> dict[str, QATLinear]:
        """Swap in the QAT layers (once) and attach the distiller; ``Trainer`` calls this via ``on_init_end``."""
        if self._model is model:
            return self.layers
        if self._model is not None:
            raise RuntimeError("this NxMCompression is bound to another model already; use one per model")
        existing = qat_layers(model)
        self.layers = existing if existing else prepare_qat(model, self.plan, strict=self.strict)
        self.admm = ADMM(self.layers, self.schedule.admm)
        if self.distiller is not None:
            self.distiller.attach(model)
        self._model = model
        return self.layers

    @property
    def phase(self) -> str:
        """``"init"``, ``"admm"`` or ``"finetune"`` (QAT-only plans go straight to ``"finetune"``)."""
        if self.admm is None:
            return "init"
        if not self.admm.layers:
            return "finetune"
        return self.admm.phase

    def _admm_over(self, state) -> bool:
        s = self.schedule
        if s.admm_epochs is not None:
            return state.epoch is not None and state.epoch >= s.admm_epochs - 1e-9
        return state.global_step >= self._end_step

    # ------------------------------------------------------------------ events
    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.prepare(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.prepare(model)
        if self.admm is None:
            raise RuntimeError("NxMCompression was never given the model; pass it to Trainer(callbacks=[...])")
        s = self.schedule
        if s.admm_steps is not None:
            self._end_step = s.admm_steps
        elif s.admm_epochs is None:
            self._end_step = math.ceil(s.admm_fraction * max(int(state.max_steps or 0), 0))
        phase = self.phase
        reach = self.schedule.admm.interval * float(getattr(args, "learning_rate", 0) or 0)
        if phase in ("init", "admm") and self.admm.layers and 0 < reach < 0.005:
            logger.warning("ADMM interval (%d steps) x learning rate (%g) = %.2g: the weights can barely move "
                           "between Z/U updates, U may outgrow them and the primal residual grow; consider "
                           "interval >= %d (see ADMMConfig)", self.schedule.admm.interval, args.learning_rate, reach,
                           math.ceil(0.01 / args.learning_rate))
        if phase == "init":
            self._warn_without_updates(args, state)
            self.admm.start(masks=self.init_masks)
            if self.schedule.admm_epochs is None and self._end_step == 0:
                logger.info("compression: no ADMM phase (admm_steps=0): pruning %d layers to N:M at once, then "
                            "masked QAT of %d layers", len(self.admm.layers), len(self.layers))
            else:
                logger.info("compression: ADMM phase starts (%d N:M layers, %d QAT layers); prune at %s",
                            len(self.admm.layers), len(self.layers),
                            f"epoch {s.admm_epochs:g}" if s.admm_epochs is not None else f"step {self._end_step}")
        elif not self.admm.layers:
            # A plan without N:M layers is QAT from the first step: there is no ADMM phase to resume.
            logger.info("compression: QAT of %d layers (no N:M layer, so no ADMM phase)%s", len(self.layers),
                        f", resuming at step {state.global_step}" if state.global_step else "")
        else:
            logger.info("compression: resuming in phase %r at step %d", phase, state.global_step)
        if self.phase == "admm" and self._admm_over(state):
            self._prune(state)

    def _warn_without_updates(self, args, state) -> None:
        total = int(state.max_steps or 0)
        epochs = float(getattr(args, "num_train_epochs", 0) or 0)
        per_epoch = total / epochs if epochs > 0 else float(total)
        if args.max_steps and args.max_steps > 0 and getattr(state, "num_train_epochs", 0):
            per_epoch = total / state.num_train_epochs
        phase = self.schedule.admm_phase_steps(total, per_epoch)
        if phase > 0 and self.schedule.admm_updates(total, per_epoch) == 0:
            logger.warning("compression: the ADMM phase (%d optimizer steps) is shorter than the ADMM interval "
                           "(%d steps): it will make no Z/U update and only prune by magnitude at its end; use "
                           "ADMMConfig(interval=...) <= %d, or admm_steps=0 to prune at once", phase,
                           self.schedule.admm.interval, phase)

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.phase != "admm":
            return
        scaler = getattr(optimizer, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            try:
                scaler.unscale_(getattr(optimizer, "optimizer", optimizer))
            except RuntimeError:
                pass  # unscaled already, by gradient clipping
            except AssertionError:
                pass  # nothing was scaled in this iteration
        self.admm.add_penalty_grad()

    def on_step_end(self, args, state, control, **kwargs):
        phase = self.phase
        if phase == "finetune":
            self.admm.apply_masks()
            return
        if phase != "admm":
            return
        if state.global_step % self.schedule.admm.interval == 0:
            rec = self.admm.update()
            state.log_history.append({
                "step": state.global_step, "nxm_admm_update": rec["update"], "nxm_admm_primal": rec["primal"],
                "nxm_admm_rel_primal": rec["rel_primal"], "nxm_admm_dual": rec["dual"], "nxm_admm_rho": rec["rho"],
                "nxm_admm_layers": {n: {k: round(v, 6) for k, v in r.items()} for n, r in rec["layers"].items()},
            })
        if self._admm_over(state):
            self._prune(state)

    def _prune(self, state) -> None:
        # Calibrated masks are used as they are only when no Z/U update has moved Z away from them.
        self.admm.prune(masks=self.init_masks if not self.admm.history else None)
        state.log_history.append({"step": state.global_step, "nxm_phase": "finetune"})
        logger.info("compression: pruned to N:M at step %d; masked QAT fine-tuning from here", state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.phase == "admm":
            logger.warning("compression: training ended during the ADMM phase (step %d); hard-pruning now, "
                           "without fine-tuning after the prune", state.global_step)
            self._prune(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        logs["nxm_phase"] = self.phase
        if self.admm is not None and self.admm.history and self.phase == "admm":
            logs["nxm_admm_rel_primal"] = round(self.admm.history[-1]["rel_primal"], 6)
        if self.distiller is not None:
            for k, v in self.distiller.last.items():
                logs[f"nxm_{k}"] = round(float(v), 6)

    # ------------------------------------------------------------------ results
    def export(self, model: nn.Module | None = None, *, backend: str = "auto"):
        """Replace the trained QAT layers by ``NxMLinear`` (see :func:`nxm_kernels.train.export.export_model`)."""
        from .export import export_model

        model = model if model is not None else self._model
        if model is None:
            raise ValueError("model is required (this NxMCompression was never bound to one)")
        if self.distiller is not None:
            self.distiller.detach()
        return export_model(model, backend=backend)

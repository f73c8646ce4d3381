"""ADMM toward N:M sparsity (NxMTransformer / NxMiFormer), in scaled form.

For every compressed weight ``W`` with N:M pattern, ADMM splits "fit the task" from "be N:M":

* the task loss gets the augmented-Lagrangian term ``(rho/2) * ||W - Z + U||^2`` (its gradient
  ``rho * (W - Z + U)`` is what :meth:`ADMM.add_penalty_grad` adds);
* every ``interval`` optimizer steps :meth:`ADMM.update` sets ``Z <- proj(W + U)`` (magnitude
  projection onto the N:M set, optionally followed by the layer's quantization grid) and
  ``U <- U + W - Z``, and records the primal residual ``||W - Z||`` and the dual residual
  ``rho * ||Z - Z_prev||`` of every layer;
* ``rho`` may grow geometrically at each update (up to ``rho_max``); U is rescaled by
  ``rho_old / rho_new`` so the scaled dual variable stays consistent;
* finally :meth:`ADMM.prune` fixes every layer's mask to Z's N:M support and frees Z and U, after
  which training continues as masked QAT.

State lives in the layers' buffers (see :class:`~nxm_kernels.train.qat.QATLinear`), so it is saved
and resumed with the model. Under ``torch.distributed``, every rank computes the update from its
(synchronized) weights and rank 0's Z, U and masks are then broadcast, so all ranks agree bit for bit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .._checks import check_choice, check_number
from ..quant import fake_quant_weight
from ..sparsity import count_nm_violations, prune_nm
from .qat import QATLinear

__all__ = ["ADMM", "ADMMConfig", "project"]

logger = logging.getLogger(__name__)

PROJECTIONS = ("nm", "nm+quant")


@dataclass
class ADMMConfig:
    """ADMM hyper-parameters, each described by its field's ``metadata["help"]`` (which ``nxm compress
    --help`` shows: its options are generated from these fields, see :mod:`nxm_kernels.train.arguments`).

    **Choosing ``interval``.** ADMM assumes W (nearly) solves its subproblem between two Z/U updates.
    Each update adds ``W - Z`` to U, i.e. the pruned weights themselves; if W cannot move that far in
    ``interval`` steps, U outgrows W, Z keeps switching support and the primal residual *rises*.
    With Adam a weight moves at most about ``lr`` per step, so take ``interval * lr`` at least of the
    order of the pruned weights' magnitude (BERT: ~0.01-0.03): e.g. 100 steps at lr 3e-4 (measured
    on MiniLM: interval 10 made the residual grow from 0.35 to 0.54, interval 50 made it fall).
    """

    rho: float = field(default=1e-2, metadata={"help": "initial ADMM penalty"})
    rho_growth: float = field(default=1.1, metadata={"help": "rho multiplier per Z/U update (1: constant)"})
    rho_max: float = field(default=1.0, metadata={"help": "rho cap"})
    interval: int = field(default=100, metadata={"help": "optimizer steps between Z/U updates"})
    projection: str = field(default="nm", metadata={
        "help": "Z projection: onto N:M, or onto N:M and then the layer's per-channel quantization grid",
        "choices": PROJECTIONS})

    def __post_init__(self):
        for key in ("rho", "rho_growth", "rho_max"):
            check_number(key, getattr(self, key), above=0)
        if self.rho_growth < 1:
            raise ValueError(f"rho_growth must be >= 1 (rho never shrinks), got {self.rho_growth}")
        if self.rho_max < self.rho:
            raise ValueError(f"rho_max must be >= rho ({self.rho}), got {self.rho_max}")
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"interval must be an int >= 1, got {self.interval!r}")
        check_choice("projection", self.projection, PROJECTIONS)


def project(v: torch.Tensor, layer: QATLinear, projection: str = "nm") -> torch.Tensor:
    """Euclidean projection of ``v`` onto the layer's N:M set; with ``"nm+quant"`` also onto its quant grid.

    The grid step is the per-channel scale of the pruned tensor (what :func:`~nxm_kernels.format.pack`
    would use), so the grid projection is the nearest point for that scale, not over all scales.
    """
    check_choice("projection", projection, PROJECTIONS)
    if layer.nm is None:
        raise ValueError(f"layer {layer.name or '?'} is dense ({layer.spec}); ADMM needs an N:M pattern")
    z = prune_nm(v.float(), *layer.nm)
    if projection == "nm+quant" and layer.spec.weight_bits:
        z = fake_quant_weight(z, layer.spec.weight_bits, ste=False)
    return z


def _check_masks(masks, layers: dict) -> dict:
    """Validate user-given masks: a dict of known N:M layer names to bool tensors of the weight's shape, N:M."""
    if masks is None:
        return {}
    if not isinstance(masks, dict):
        raise TypeError(f"masks must be a dict of layer name -> bool tensor, got {type(masks).__name__}")
    for name, mask in masks.items():
        if name not in layers:
            raise ValueError(f"masks names {name!r}, which is not an N:M QAT layer here; layers: "
                             f"{', '.join(list(layers)[:12])}")
        layer = layers[name]
        if (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                or tuple(mask.shape) != tuple(layer.weight.shape)):
            raise ValueError(f"masks[{name!r}] must be a bool tensor of shape {tuple(layer.weight.shape)}")
        if count_nm_violations(mask, *layer.nm):
            raise ValueError(f"masks[{name!r}] is not {layer.nm[0]}:{layer.nm[1]}")
    return masks


class ADMM:
    """Runs ADMM over a model's N:M ``QATLinear`` layers (dense-spec layers are QAT only and skipped).

    Usable from a plain training loop::

        layers = prepare_qat(model, "2:4-w8a8")
        admm = ADMM(layers, ADMMConfig(rho=1e-2, interval=10))
        admm.start()
        for step, batch in enumerate(loader, 1):
            loss = model(**batch).loss
            loss.backward()
            admm.add_penalty_grad()          # == adding (rho/2)||W - Z + U||^2 to the loss
            optimizer.step(); optimizer.zero_grad()
            if step % admm.config.interval == 0:
                admm.update()
        admm.prune()                         # then keep training: masked QAT

    :class:`~nxm_kernels.train.callback.NxMCompression` does the same inside a ``Trainer``.
    """

    def __init__(self, layers: "dict[str, QATLinear]", config: ADMMConfig | None = None):
        if not isinstance(layers, dict) or not all(isinstance(v, QATLinear) for v in layers.values()):
            raise TypeError("layers must be a dict of name -> QATLinear (see prepare_qat / qat_layers)")
        self.config = config if config is not None else ADMMConfig()
        if not isinstance(self.config, ADMMConfig):
            raise TypeError(f"config must be an ADMMConfig, got {type(self.config).__name__}")
        self.layers = {n: layer for n, layer in layers.items() if layer.nm is not None}
        #: One record per update: {"update", "rho", "primal", "dual", "rel_primal", "layers": {name: {...}}}.
        self.history: list[dict] = []

    # ------------------------------------------------------------------ phase
    @property
    def started(self) -> bool:
        return any(layer.admm_active for layer in self.layers.values())

    @property
    def pruned(self) -> bool:
        return bool(self.layers) and all(layer.pruned for layer in self.layers.values())

    @property
    def phase(self) -> str:
        """``"init"`` (not started), ``"admm"``, or ``"finetune"`` (masks fixed)."""
        if self.pruned:
            return "finetune"
        return "admm" if self.started else "init"

    @torch.no_grad()
    def start(self, masks: "dict[str, torch.Tensor] | None" = None) -> None:
        """Z = proj(W), U = 0, rho = config.rho for every layer not started or pruned yet.

        ``masks`` (by layer name, bool ``[out, in]``, N:M): start from ``Z = proj(W * mask)`` instead,
        e.g. the masks calibrated one-shot compression chose (:func:`nxm_kernels.calibrate.calibrate_weights`).
        """
        masks = _check_masks(masks, self.layers)
        for name, layer in self.layers.items():
            if layer.pruned or layer.admm_active:
                continue
            w = layer.weight.detach()
            if name in masks:
                w = w * masks[name].to(device=w.device, dtype=w.dtype)
            layer.admm_z = project(w, layer, self.config.projection).to(w.device)
            layer.admm_u = torch.zeros_like(layer.admm_z)
            layer.admm_rho = torch.tensor(float(self.config.rho), device=w.device)
            layer.admm_updates = torch.zeros((), dtype=torch.int64, device=w.device)
        self._broadcast()

    # ------------------------------------------------------------------ the loss term
    def _active(self):
        return [(n, layer) for n, layer in self.layers.items() if layer.admm_active]

    def penalty(self) -> torch.Tensor:
        """``sum (rho/2)||W - Z + U||^2`` over active layers (differentiable in W)."""
        terms = [0.5 * layer.admm_rho * (layer.weight.float() - layer.admm_z + layer.admm_u).pow(2).sum()
                 for _, layer in self._active()]
        if not terms:
            dev = next(iter(self.layers.values())).weight.device if self.layers else "cpu"
            return torch.zeros((), device=dev)
        return torch.stack(terms).sum()

    @torch.no_grad()
    def add_penalty_grad(self, scale: float = 1.0) -> None:
        """Add ``scale * rho * (W - Z + U)`` to each ``W.grad``: the penalty's gradient, without autograd.

        Call after ``backward()`` (and after gradients are reduced across ranks), before the
        optimizer step. ``scale`` lets a caller whose gradients are still multiplied by a loss scale
        (fp16 ``GradScaler``) match them.
        """
        for _, layer in self._active():
            w = layer.weight
            g = (w.detach().float() - layer.admm_z + layer.admm_u).mul_(layer.admm_rho * scale)
            if w.grad is None:
                w.grad = g.to(w.dtype)
            else:
                w.grad.add_(g.to(w.grad.dtype))

    # ------------------------------------------------------------------ Z and U
    @torch.no_grad()
    def update(self) -> dict:
        """One Z/U update and rho step for every active layer; returns (and records) the residuals."""
        per_layer = {}
        tot_p = tot_d = tot_w = 0.0
        for name, layer in self._active():
            w = layer.weight.detach().float()
            rho = float(layer.admm_rho)
            z_new = project(w + layer.admm_u, layer, self.config.projection)
            dual = rho * float(torch.linalg.vector_norm(z_new - layer.admm_z))
            layer.admm_u.add_(w - z_new)
            layer.admm_z.copy_(z_new)
            primal = float(torch.linalg.vector_norm(w - z_new))
            wnorm = float(torch.linalg.vector_norm(w))
            new_rho = min(rho * self.config.rho_growth, self.config.rho_max)
            if new_rho != rho:
                layer.admm_u.mul_(rho / new_rho)  # scaled dual variable: U = Y / rho
            layer.admm_rho.fill_(new_rho)
            layer.admm_updates.add_(1)
            per_layer[name] = {"primal": primal, "dual": dual, "rel_primal": primal / max(wnorm, 1e-12),
                               "rho": rho}
            tot_p += primal ** 2
            tot_d += dual ** 2
            tot_w += wnorm ** 2
        self._broadcast()
        record = {
            "update": int(max((int(lay.admm_updates) for _, lay in self._active()), default=0)),
            "primal": math.sqrt(tot_p), "dual": math.sqrt(tot_d),
            "rel_primal": math.sqrt(tot_p) / max(math.sqrt(tot_w), 1e-12),
            "rho": max((v["rho"] for v in per_layer.values()), default=0.0),
            "layers": per_layer,
        }
        self.history.append(record)
        logger.info("ADMM update %d: primal %.4g (relative %.4g), dual %.4g, rho %.3g", record["update"],
                    record["primal"], record["rel_primal"], record["dual"], record["rho"])
        for name, r in per_layer.items():
            logger.debug("ADMM %s: primal %.4g (rel %.4g) dual %.4g", name, r["primal"], r["rel_primal"], r["dual"])
        return record

    @torch.no_grad()
    def prune(self, masks: "dict[str, torch.Tensor] | None" = None) -> dict[str, torch.Tensor]:
        """Fix every layer's mask to the N:M support of Z (of W for layers never started); free Z and U.

        ``masks`` (by layer name) fixes those layers' masks instead (e.g. calibrated masks, to prune at once).
        """
        given = _check_masks(masks, self.layers)
        masks = {}
        for name, layer in self.layers.items():
            if not layer.pruned and name in given:
                layer.set_mask(given[name])
                layer.clear_admm_state()
            elif not layer.pruned:
                layer.prune_()
            masks[name] = layer.mask
        self._broadcast()
        logger.info("ADMM: hard-pruned %d layers to their N:M masks; continuing with masked QAT", len(masks))
        return masks

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Re-zero the pruned master weights (after an optimizer step with momentum or weight decay)."""
        for layer in self.layers.values():
            layer.apply_mask_()

    def residuals(self) -> dict[str, float]:
        """Current primal residual ``||W - Z||`` per active layer (no update)."""
        return {n: float(torch.linalg.vector_norm(layer.weight.detach().float() - layer.admm_z))
                for n, layer in self._active()}

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of ADMM state (Z and U) per layer, as currently allocated."""
        return {n: layer.admm_z.numel() * layer.admm_z.element_size() + layer.admm_u.numel() *
                layer.admm_u.element_size() for n, layer in self.layers.items()}

    # ------------------------------------------------------------------ ranks
    def _broadcast(self) -> None:
        """Make every rank hold rank 0's Z, U, rho and masks (a no-op outside torch.distributed)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        for layer in self.layers.values():
            for key in ("admm_z", "admm_u", "admm_rho", "admm_updates", "mask"):
                t = getattr(layer, key)
                if t.numel() == 0:
                    continue
                if t.dtype == torch.bool:  # not every backend broadcasts bool
                    u8 = t.to(torch.uint8)
                    dist.broadcast(u8, src=0)
                    t.copy_(u8.bool())
                else:
                    dist.broadcast(t, src=0)
            layer.apply_mask_()

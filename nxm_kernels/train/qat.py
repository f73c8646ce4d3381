"""``QATLinear``: the training-time twin of ``NxMLinear``.

A ``QATLinear`` keeps the fp32 master weight of an ``nn.Linear`` (the very same ``Parameter`` object,
so an optimizer built before the swap keeps working) and computes, in floating point, exactly what
the kernels compute from the packed weight:

* the weight is masked (once the N:M mask is fixed) and fake-quantized **per output channel from
  the masked weight**, with the scale :func:`nxm_kernels.format.pack` computes for that same masked
  weight; so ``pack(layer.export_weight())`` holds exactly the codes and scales the layer trained with;
* the input is fake-quantized per token to int8 (``scale = amax / 127``), as the kernels do;
* both fake-quantizations pass gradients straight through (STE); pruned weights get no gradient.

It also carries the ADMM state of its weight as buffers (``admm_z``, ``admm_u``, ``admm_rho``,
``admm_updates``) and the fixed ``mask``. The buffers start empty and take their full shape when
ADMM starts (or when a checkpoint holding them is loaded), so they travel in ordinary
``state_dict``/Trainer checkpoints and a resumed run continues exactly where it stopped.
:mod:`nxm_kernels.train.admm` holds the algorithm; this module holds only the layer.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from .._checks import check_tensor
from ..models.encoder import encoder_linears
from ..models.swap import replace_sites
from ..plan import Plan
from ..quant import fake_quant_linear, fake_quant_weight
from ..sparsity import nm_mask
from ..spec import LayerSpec, parse_spec

__all__ = ["QATLinear", "prepare_qat", "qat_layers", "STATE_BUFFERS"]

logger = logging.getLogger(__name__)

#: Buffers that hold training state (not weights); DDP must not broadcast them every step (see
#: :func:`prepare_qat`): every rank computes them itself or receives them at ADMM updates.
STATE_BUFFERS = ("mask", "admm_z", "admm_u", "admm_rho", "admm_updates")


class QATLinear(nn.Module):
    """An ``nn.Linear`` trained toward an N:M-sparse, integer-quantized layer (see the module docstring).

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        spec: a spec such as ``"2:4-w8a8"``, ``"1:4-w4a8"`` or ``"dense-w8a8"`` (any N:M trains;
            only ``2:4`` and ``dense`` export to the kernels). ``"fp"`` is refused: leave such layers alone.
        name: the layer's plan name (``layer.<i>.<component>``), used in logs and reports.

    Attributes ``quantize_weights`` / ``quantize_activations`` switch the fake quantization off
    (for ablations); they are on by default, which is what the kernels compute.
    """

    def __init__(self, in_features: int, out_features: int, spec="2:4-w8a8", bias: bool = True, *,
                 name: str = "", device=None, dtype=None):
        super().__init__()
        self._setup(spec, name, in_features, out_features)
        for key, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{key} must be an int >= 1, got {v!r}")
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self._init_state_buffers(self.weight.device)

    def _setup(self, spec, name, in_features: int, out_features: int) -> None:
        """The attributes both constructors set: the spec (``fp`` refused), name, sizes and fake-quant switches."""
        spec = parse_spec(spec)
        if spec.is_fp:
            raise ValueError("spec 'fp' means 'leave the layer as nn.Linear'; QATLinear needs a compressed spec "
                             "such as '2:4-w8a8'")
        self.in_features, self.out_features = in_features, out_features
        self.spec: LayerSpec = spec
        self.name = str(name)
        self.quantize_weights = self.quantize_activations = True

    def _init_state_buffers(self, device) -> None:
        self.register_buffer("mask", torch.zeros(0, dtype=torch.bool, device=device))
        self.register_buffer("admm_z", torch.zeros(0, dtype=torch.float32, device=device))
        self.register_buffer("admm_u", torch.zeros(0, dtype=torch.float32, device=device))
        self.register_buffer("admm_rho", torch.zeros((), dtype=torch.float32, device=device))
        self.register_buffer("admm_updates", torch.zeros((), dtype=torch.int64, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec, *, name: str = "") -> "QATLinear":
        """Wrap ``linear``, sharing its ``weight`` and ``bias`` Parameters (no copy)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        if not linear.weight.is_floating_point():
            raise TypeError(f"linear.weight must be floating point, got {linear.weight.dtype}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._setup(spec, name, linear.in_features, linear.out_features)
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer._init_state_buffers(linear.weight.device)
        return layer

    # ------------------------------------------------------------------ state
    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` of the spec's pattern, ``None`` for dense."""
        return self.spec.nm if self.spec.sparse else None

    @property
    def pruned(self) -> bool:
        """True once the N:M mask is fixed."""
        return self.mask.numel() > 0

    @property
    def admm_active(self) -> bool:
        return self.admm_z.numel() > 0

    def set_mask(self, mask: torch.Tensor) -> None:
        """Fix the sparsity mask and zero the pruned master weights (they stay zero: no gradient reaches them)."""
        check_tensor("mask", mask, dtypes=(torch.bool,), ndim=2)
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(f"mask must have the weight's shape {tuple(self.weight.shape)}, got {tuple(mask.shape)}")
        self.mask = mask.to(self.weight.device).clone()
        self.apply_mask_()

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the master weight where pruned (optimizers with momentum or decay could move it)."""
        if self.pruned:
            self.weight.mul_(self.mask.to(self.weight.dtype))

    def prune_(self) -> torch.Tensor:
        """Hard-prune to the N:M mask of ``admm_z`` (or of the weight, without ADMM state); return the mask."""
        if self.nm is None:
            raise ValueError(f"layer {self.name or '?'} has spec {self.spec} (dense): there is nothing to prune")
        source = self.admm_z if self.admm_active else self.weight.detach()
        self.set_mask(nm_mask(source, *self.nm))
        self.clear_admm_state()
        return self.mask

    def clear_admm_state(self) -> None:
        """Free Z and U (two fp32 copies of the weight) once they are no longer needed."""
        dev = self.weight.device
        self.admm_z = torch.zeros(0, dtype=torch.float32, device=dev)
        self.admm_u = torch.zeros(0, dtype=torch.float32, device=dev)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # State buffers change shape over training (empty -> full -> empty): take the checkpoint's shape.
        for key in STATE_BUFFERS:
            incoming = state_dict.get(prefix + key)
            current = getattr(self, key)
            if incoming is not None and incoming.shape != current.shape:
                setattr(self, key, torch.empty(incoming.shape, dtype=current.dtype, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ------------------------------------------------------------------ compute
    def masked_weight(self) -> torch.Tensor:
        """The master weight with the mask applied (differentiable)."""
        if self.pruned:
            return self.weight * self.mask  # bool promotes inside the multiply: no float copy of the mask
        return self.weight

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward multiplies by: masked, then fake-quantized per output channel."""
        w = self.masked_weight()
        if self.quantize_weights and self.spec.weight_bits:
            w = fake_quant_weight(w, self.spec.weight_bits, assume_finite=True)  # no finite check: a sync a step
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act_bits = self.spec.act_bits if self.quantize_activations else None
        return fake_quant_linear(x, self.effective_weight(), self.bias, weight_bits=None, act_bits=act_bits)

    @torch.no_grad()
    def export_weight(self) -> torch.Tensor:
        """The float32 masked weight to pack: ``pack(export_weight(), bits, pattern)`` reproduces training exactly."""
        return self.masked_weight().detach().float().clone()

    def extra_repr(self) -> str:
        state = "pruned" if self.pruned else ("admm" if self.admm_active else "dense")
        return (f"name={self.name!r}, in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, spec={self.spec}, state={state}")


def ddp_ignored_keys(qualified_name: str) -> list[str]:
    """The ``_ddp_params_and_buffers_to_ignore`` entries of the QATLinear at ``qualified_name``."""
    return [f"{qualified_name}.{b}" for b in STATE_BUFFERS]


def qat_layers(model: nn.Module) -> dict[str, QATLinear]:
    """The model's ``QATLinear`` layers by plan name, in module order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {module.name or qualified: module for qualified, module in model.named_modules()
            if isinstance(module, QATLinear)}


def prepare_qat(model: nn.Module, plan, *, strict: bool = True) -> dict[str, QATLinear]:
    """Replace the encoder linears the plan compresses by ``QATLinear`` (in place); return them by name.

    ``plan`` is a :class:`~nxm_kernels.plan.Plan`, a ``{pattern: spec}`` mapping, a JSON string/path or
    a single spec string for every layer. Layers that are ``fp`` stay ``nn.Linear``. The layers share
    the original Parameters. Calling it on an already prepared model is an error.

    The state buffers are registered with DDP as "not to broadcast": each rank computes them from the
    synchronized weights (and :class:`~nxm_kernels.train.admm.ADMM` re-broadcasts them from rank 0 at
    every update), so DDP need not send two weight copies per step.
    """
    plan = Plan.coerce(plan)
    sites = encoder_linears(model)
    if any(isinstance(s.module, QATLinear) for s in sites):
        raise ValueError("model already holds QATLinear layers (prepare_qat was called before)")

    def make(site, spec) -> QATLinear:
        if not isinstance(site.module, nn.Linear):
            raise TypeError(f"layer {site.name} ({site.qualified_name}) is a {type(site.module).__name__}, "
                            "not an nn.Linear: it was swapped or compressed already")
        return QATLinear.from_linear(site.module, spec, name=site.name)

    replaced = replace_sites(sites, plan, make, strict=strict)
    layers: dict[str, QATLinear] = {site.name: layer for site, _, layer in replaced}
    if not layers:
        logger.warning("plan %s compresses no layer: every encoder linear stays fp", plan)
    ignore = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    ignore += [key for site, _, _ in replaced for key in ddp_ignored_keys(site.qualified_name)]
    model._ddp_params_and_buffers_to_ignore = ignore
    logger.info("QAT: %d of %d encoder linears compressed (%s)", len(layers), len(sites),
                ", ".join(sorted({str(layer.spec) for layer in layers.values()})))
    return layers

"""``NxMLinear``: a drop-in ``nn.Linear`` replacement backed by the project's op.

An ``NxMLinear`` holds a :class:`~nxm_kernels.format.PackedWeight` as registered buffers (the packed
bytes, never a dense copy), an optional bias, its spec and its backend. Its forward computes
``dequant(quant(x) @ W_q^T) (+bias) (+GELU)`` through :mod:`nxm_kernels.ops`, so it traces under
``torch.compile(fullgraph=True)`` and can be captured in CUDA graphs.

Three ways to build one::

    NxMLinear.from_linear(linear, "2:4-w8a8")      # prune (magnitude, unless already 2:4) + quantize
    NxMLinear.from_packed(packed, bias)            # from an existing PackedWeight (the training path's export)
    NxMLinear(768, 3072, "2:4-w4a8", device="meta")  # a placeholder to load a state dict into

State-dict keys are ``values``, ``metadata`` (2:4 only), ``scales`` and ``bias`` (when present); the
shape, bits and pattern live in the spec and in checkpoint JSON (see :mod:`nxm_kernels.io`).

**Backends and devices.** The backend (``"auto"``, ``"cuda"``, ``"triton"``, ``"reference"``, or a
kernel variant such as ``"triton:<variant>"``) is resolved once for the device the buffers are on,
into one kernel per M bucket (:mod:`nxm_kernels.dispatch`: on a GPU, ``auto`` follows the measured
table), and each chosen backend's typed layout (:mod:`nxm_kernels.backends.layout`) is derived and
checked right then: at construction, and after a ``.to()``/``.cuda()``/``.half()`` or ``load_state_dict``
that replaced or overwrote the packed buffers. ``forward`` checks only what a caller can get wrong (``x``'s dtype, last
dimension and device), picks its bucket's kernel by list index and calls it: no availability
queries, imports or layout checks per call. That is also what lets ``torch.compile`` trace it
without graph breaks. ``model.half()`` casts the bias but never the float32 scales.

The module is for inference: the op has no gradient, so ``forward`` detaches its input (a grad-enabled
call still runs, eagerly or compiled, with a one-time warning; layers before it get no gradient).
Train with the QAT modules of
:mod:`nxm_kernels.train` and export through :meth:`NxMLinear.from_linear` or
:meth:`NxMLinear.from_packed`.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from . import dispatch
from ._checks import FLOAT_DTYPES, check_tensor
from .backends import WeightMeta
from .format import PAD_METADATA_BYTE, PackedWeight, pack, packed_shapes, values_dtype, weight_nbytes
from .ops import check_packed, linear_traced, normalize_activation, prepared_weights
from .sparsity import is_nm
from .spec import LayerSpec, kernel_spec

__all__ = ["NxMLinear", "SwapReport", "SwappedLayer", "set_backend", "compressed_linears",
           "linear_nbytes", "SWAP_HOOKS", "after_swap"]

logger = logging.getLogger(__name__)


class NxMLinear(nn.Module):
    """``y = dequant(quant(x) @ W_q^T) (+bias) (+GELU)`` over a packed 2:4/dense int8/int4 weight.

    Args:
        in_features, out_features: the logical weight shape ``[out_features, in_features]``.
        spec: ``"2:4-w8a8"``, ``"2:4-w4a8"``, ``"dense-w8a8"`` or ``"dense-w4a8"``.
        bias: whether the layer has a bias.
        backend: ``"auto"`` (on a GPU the measured dispatch table per M bucket, see
            :mod:`nxm_kernels.dispatch`; the reference on a CPU; ``NXM_BACKEND`` overrides), a backend
            name, or a kernel variant (``"triton:<variant>"``).
        activation: ``None`` or ``"gelu"`` (exact erf GELU fused into the epilogue).
        device, dtype: where the placeholder tensors live and the bias dtype (default float32).

    The constructor builds a *placeholder* (zero codes) meant to receive a state dict; use
    :meth:`from_linear` or :meth:`from_packed` to build a working layer from weights.
    """

    def __init__(self, in_features: int, out_features: int, spec: "str | LayerSpec" = "2:4-w8a8", bias: bool = True,
                 *, backend: str = "auto", activation: str | None = None, device=None, dtype=None):
        super().__init__()
        for arg, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{arg} must be a positive int, got {v!r}")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
        spec = kernel_spec(spec)
        device = torch.device(device) if device is not None else torch.device("cpu")
        # Well-formed packed tensors of the right shapes (zero codes, unit scales) to load real ones into.
        shapes = packed_shapes(out_features, in_features, spec.weight_bits, spec.sparse)
        tensors = {"values": torch.zeros(shapes["values"], dtype=values_dtype(spec.weight_bits), device=device),
                   "scales": torch.ones(shapes["scales"], dtype=torch.float32, device=device),
                   "metadata": torch.full(shapes["metadata"], PAD_METADATA_BYTE, dtype=torch.uint8, device=device)
                   if spec.sparse else None}
        bias_t = torch.zeros(out_features, dtype=dtype or torch.float32, device=device) if bias else None
        self._init(spec, out_features, in_features, tensors, bias_t, backend, activation)

    def _init(self, spec: LayerSpec, out_features: int, in_features: int, tensors: dict, bias, backend: str,
              activation) -> None:
        """Set every attribute from checked arguments and derive the layouts, once: the one body of
        both constructors (``__init__`` builds placeholder tensors, :meth:`from_packed` takes real ones)."""
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        self.spec = spec
        self.in_features = in_features
        self.out_features = out_features
        self.activation = normalize_activation(activation)
        self.backend = backend
        for key, t in tensors.items():
            if t is not None:
                self.register_buffer(key, t)
        if not self.spec.sparse:
            self.metadata = None  # keeps the attribute without a state-dict entry
        if bias is not None:
            self.bias = nn.Parameter(bias.detach(), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._meta = WeightMeta(out_features, in_features, self.spec.weight_bits, self.spec.sparse)
        self._packed = None
        self._refresh()

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: "str | LayerSpec" = "2:4-w8a8", *, backend: str = "auto",
                    activation: str | None = None, scale: torch.Tensor | None = None) -> "NxMLinear":
        """Compress an ``nn.Linear``: 2:4 specs prune by magnitude unless the weight already is 2:4
        (then its zeros are kept as they are); weights are quantized per output channel, with the
        per-channel ``scale`` given (float32 ``[out_features]``, as :func:`~nxm_kernels.format.pack`
        takes it; what calibrated compression chose) or else the one ``pack`` derives.

        The result lives on the linear's device; the bias keeps its dtype. The linear is not modified.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        s = kernel_spec(spec)
        w = linear.weight.detach()
        if w.device.type == "meta":
            raise ValueError("linear.weight is on the meta device (no data); load real weights first")
        prune = s.sparse and not is_nm(w, 2, 4)
        if scale is not None:
            scale = check_tensor("scale", scale, dtypes=(torch.float32,), ndim=1).to(w.device)
        packed = pack(w, bits=s.weight_bits, pattern=s.pattern, prune=prune, scale=scale)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls.from_packed(packed, bias, backend=backend, activation=activation)

    @classmethod
    def from_packed(cls, packed: PackedWeight, bias: torch.Tensor | None = None, *, backend: str = "auto",
                    activation: str | None = None) -> "NxMLinear":
        """Wrap an existing :class:`PackedWeight` (its tensors are used as the buffers, not copied).

        ``bias``: ``[out_features]`` float tensor on the packed weight's device, or ``None``.
        """
        check_packed(packed, bias).validate()
        if bias is not None and bias.device != packed.device:
            raise ValueError(f"bias must be on the packed weight's device {packed.device}, got {bias.device}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        n, k = packed.shape
        self._init(kernel_spec(packed.spec), n, k, {"values": packed.values, "scales": packed.scales,
                                                     "metadata": packed.metadata}, bias, backend, activation)
        return self

    # ------------------------------------------------------------------ state
    @property
    def packed(self) -> PackedWeight:
        """The canonical packed weight, a view over this module's buffers (no copy; built and checked
        once, again only after a buffer was replaced)."""
        p = self._packed
        if p is None or p.values is not self.values or p.scales is not self.scales or p.metadata is not self.metadata:
            p = self._packed = PackedWeight(self.values, self.metadata, self.scales,
                                            (self.out_features, self.in_features), self.spec.weight_bits,
                                            self.spec.pattern)
        return p

    @property
    def resolved_backend(self) -> str | None:
        """The backend forward runs on for the current device (``None`` when none can); when the
        dispatch table picks different backends per M bucket, the one most buckets use."""
        return self._backend_name

    @property
    def dispatch_plan(self) -> dict[int, str] | None:
        """``{M bucket: kernel variant}`` forward uses on the current device (``None`` when none can)."""
        return None if self._plan is None else dict(zip(dispatch.M_BUCKETS, self._plan))

    def nbytes(self) -> dict:
        """Bytes held: the packed weight's ``values``/``metadata``/``scales`` (:meth:`PackedWeight.nbytes`),
        ``bias`` as stored, and ``total``."""
        b = self.packed.nbytes()
        b["bias"] = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        b["total"] += b["bias"]
        return b

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense ``[out, in]`` weight the kernels compute with (for checks; allocates a dense copy)."""
        return self.packed.unpack(dtype)

    def set_backend(self, backend: str) -> "NxMLinear":
        """Switch the backend (``"auto"`` or a name); raises if it cannot run on the current device."""
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        self.backend = backend
        self._refresh()
        self._require_backend()
        return self

    def _require_backend(self) -> None:
        """Raise ``RuntimeError`` saying why when no backend runs on the buffers' device (meta excepted)."""
        if self._backend_name is None and self.values.device.type != "meta":
            raise RuntimeError(self._why)

    def _refresh(self) -> None:
        """Resolve the kernel of every M bucket for the buffers' device and derive (and check) the
        layouts they read, once."""
        self._kernels, self._plan, self._backend_name, self._weights = None, None, None, None
        # A new view: the old one's cached layouts may have been derived from replaced or overwritten
        # (load_state_dict copies in place) tensors.
        self._packed = None
        device = self.values.device
        if device.type == "meta":
            self._why = "NxMLinear is on the meta device (a placeholder): load a state dict or a checkpoint first"
            return
        packed = self.packed  # validates the buffers, before any backend question
        try:
            plan = dispatch.plan(self.backend, device, self._meta)
        except RuntimeError as exc:
            # Not fatal here: a model is often swapped on the CPU for a GPU backend, then moved.
            self._why = f"NxMLinear cannot run on {device}: {exc}"
            return
        backends = [c.partition(":")[0] for c in plan]
        layouts = {backend: prepared_weights(packed, backend) for backend in dict.fromkeys(backends)}
        # (eager kernel, its layout; for tracing: the layout's tensors and backend)
        kernels = [(dispatch.variant(candidate).linear, layouts[backend], layouts[backend].tensors(), backend)
                   for candidate, backend in zip(plan, backends)]
        self._backend_name = max(dict.fromkeys(backends), key=backends.count)  # ties: the smallest bucket's
        self._weights = layouts[self._backend_name]
        self._plan, self._kernels, self._device = plan, kernels, device

    def _apply(self, fn, recurse: bool = True):
        before = (self.values, self.metadata, self.scales)
        out = super()._apply(fn, recurse)
        if self.scales.dtype != torch.float32:
            # A dtype cast (model.half()) must not round the scales: redo the move without the cast.
            self.scales = before[2].to(self.scales.device)
        # Layouts derive from the packed buffers alone: a call that left them as they were (a bias-only
        # cast, a move to where they already are) keeps the layouts, so a loaded layer is prepared once.
        if any(a is not b for a, b in zip(before, (self.values, self.metadata, self.scales))):
            self._refresh()
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state dict loaded in place (copy_) or by assignment invalidates derived layouts, unless it holds
        # the very tensors this layer already has (a checkpoint's layers are built from them, then the
        # model's whole state dict is assigned): then nothing changes and nothing is derived again.
        same = all(state_dict.get(prefix + key, t) is t for key, t in
                   (("values", self.values), ("metadata", self.metadata), ("scales", self.scales)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if not same:
            self._refresh()

    # ------------------------------------------------------------------ compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernels = self._kernels
        if kernels is None:
            raise RuntimeError(self._why)
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"NxMLinear input must be float16, bfloat16 or float32, got {x.dtype}")
        k = self.in_features
        if x.dim() < 1 or x.shape[-1] != k:
            raise ValueError(f"NxMLinear input must have last dimension {k}, got shape {tuple(x.shape)}")
        if x.device != self._device:
            raise ValueError(f"NxMLinear input is on {x.device} but the layer is on {self._device}")
        if x.requires_grad:
            # The op has no gradient. Detaching lets grad-enabled inference run, eagerly and under
            # torch.compile (whose AOTAutograd would otherwise try to trace a backward through it).
            if not torch.compiler.is_compiling():
                _warn_no_gradient()
            x = x.detach()
        flat = x.dim() != 2
        x2d = x.reshape(-1, k) if flat else x
        m = x2d.shape[0]
        if m == 0:
            return x.new_empty(*x.shape[:-1], self.out_features)
        # _parameters["bias"], not self.bias: nn.Module.__getattr__ costs as much as a check here.
        bias = self._parameters["bias"]
        if bias is not None:
            bias = bias.contiguous()  # kernels index bias with unit stride (a no-op unless it was replaced)
        x2d = x2d.contiguous()
        if torch.compiler.is_compiling():
            # Under dynamic shapes M is symbolic: its bucket is unknown at trace time, so the backend
            # most buckets use runs (the choice stays static, as a compiled graph needs).
            if isinstance(m, int):
                _, _, weights, backend = kernels[dispatch.bucket_index(m)]
            else:
                weights, backend = self._weights.tensors(), self._backend_name
            y = linear_traced(x2d, weights, self._meta, backend, bias, self.activation)
        else:
            run, layout, _, _ = kernels[dispatch.bucket_index(m)]
            y = run(x2d, layout, bias, self.activation)
        return y.reshape(*x.shape[:-1], self.out_features) if flat else y

    def extra_repr(self) -> str:
        act = "" if self.activation == "none" else f", activation={self.activation}"
        backend = self._backend_name or f"{self.backend} (unresolved)"
        if self._plan is not None and len(set(self._plan)) > 1:
            backend = "{" + ", ".join(f"M<={b}: {c}" for b, c in zip(dispatch.M_BUCKETS, self._plan)) + "}"
        if self.backend == "auto" and self._backend_name:
            backend = f"auto->{backend}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, spec={self.spec}, "
                f"bias={self.bias is not None}{act}, backend={backend}, packed_bytes={self.nbytes()['total']}")


_warned_no_gradient = False


def _warn_no_gradient() -> None:
    global _warned_no_gradient
    if not _warned_no_gradient:
        _warned_no_gradient = True
        warnings.warn("NxMLinear is an inference module: it passes no gradient to its input, so layers before "
                      "it get none. Run inference under torch.no_grad() / torch.inference_mode() (which also "
                      "silences this warning); train with nxm_kernels.train.", stacklevel=3)


# ---------------------------------------------------------------------------------- model-level helpers
def linear_nbytes(module: nn.Module) -> int:
    """Bytes of a linear's weight and bias as stored (packed for ``NxMLinear``; dense for ``nn.Linear`` and other
    modules holding a 2-D ``weight``, such as a ``QATLinear``)."""
    if isinstance(module, NxMLinear):
        return module.nbytes()["total"]
    w = getattr(module, "weight", None)
    if isinstance(module, nn.Module) and isinstance(w, torch.Tensor) and w.dim() == 2:
        b = getattr(module, "bias", None)
        bias = 0 if b is None else b.numel() * b.element_size()
        return weight_nbytes(tuple(w.shape), "fp", w.element_size())["total"] + bias
    raise TypeError(f"module must be an nn.Linear or NxMLinear, got {type(module).__name__}")


def compressed_linears(model: nn.Module) -> dict[str, NxMLinear]:
    """Every ``NxMLinear`` inside ``model``, by qualified module name."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if isinstance(m, NxMLinear)}


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every ``NxMLinear`` of ``model`` to ``backend``; returns ``model``."""
    layers = compressed_linears(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no NxMLinear; swap its linears first")
    for layer in layers.values():
        layer.set_backend(backend)
    return model


@dataclass
class SwappedLayer:
    name: str            # the plan name (``layer.3.ffn1``) or the module name for generic swaps
    module_name: str     # qualified module name inside the model
    spec: str
    shape: tuple         # (out_features, in_features)
    bytes_before: int
    bytes_after: int     # this linear's packed bytes (its rows' share when fused: the same bytes)
    activation: str = "none"
    fused_into: str | None = None  # qualified name of the fused NxMLinear computing it, if any


@dataclass
class SwapReport:
    """What a swap did: the swapped layers, the layers left in floating point, and bytes."""

    swapped: list[SwappedLayer] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    backend: str | None = None
    fused_activations: list[str] = field(default_factory=list)  # modules replaced by nn.Identity
    #: fused NxMLinear (qualified name) -> the linears it computes (qualified names, in row order)
    fused: dict[str, list[str]] = field(default_factory=dict)
    #: Set by :func:`nxm_kernels.calibrate`: the method, calibration size and per-layer relative output error.
    calibration: dict | None = None

    @property
    def bytes_before(self) -> int:
        return sum(s.bytes_before for s in self.swapped)

    @property
    def bytes_after(self) -> int:
        return sum(s.bytes_after for s in self.swapped)

    @property
    def size_factor(self) -> float:
        """How many times smaller the swapped layers became: ``bytes_before / bytes_after`` (``8.0`` = 8x;
        not the fraction removed of :mod:`nxm_kernels.accounting`), biases included on both sides."""
        return self.bytes_before / self.bytes_after if self.bytes_after else float("nan")

    def by_spec(self) -> dict[str, int]:
        return dict(Counter(s.spec for s in self.swapped))

    def to_dict(self) -> dict:
        return {"swapped": {s.name: s.spec for s in self.swapped}, "kept": list(self.kept),
                "backend": self.backend, "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "fused_activations": list(self.fused_activations),
                "fused": {name: list(members) for name, members in self.fused.items()},
                "calibration": self.calibration}

    def __str__(self) -> str:
        specs = ", ".join(f"{n} x {s}" for s, n in self.by_spec().items()) or "nothing"
        kept = f"; {len(self.kept)} left in fp" if self.kept else ""
        if self.fused:
            members = sum(len(m) for m in self.fused.values())
            kept += f"; {members} of them computed by {len(self.fused)} fused layers"
        return (f"swapped {len(self.swapped)} linears ({specs}){kept}; "
                f"{self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB "
                f"({self.size_factor:.2f}x), "
                f"backend {self.backend or 'unresolved (move the model to a device it runs on)'}")


#: ``hook(model)`` callables run after every swap (``swap_linears``, ``swap_named_linears``, a load). The
#: layers above this module register what a swapped model needs from them here (``nxm_kernels.models``
#: makes a swapped transformers model save through ``save_pretrained``), so this module imports none of them.
SWAP_HOOKS: list = []


def after_swap(model: nn.Module) -> None:
    """Run :data:`SWAP_HOOKS` on a freshly swapped ``model``."""
    for hook in SWAP_HOOKS:
        hook(model)

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

**Backends and devices.** The backend (``"auto"``, ``"cuda"``, ``"triton"``, ``"reference"``) is
resolved once for the device the buffers are on, and the backend's prepared layout is derived
right then: at construction, after every ``.to()``/``.cuda()``/``.half()``, and after
``load_state_dict``. ``forward`` only reads the cached result, which is what lets ``torch.compile``
trace it without graph breaks. ``model.half()`` casts the bias but never the float32 scales.

The module is for inference: the op has no gradient, so ``forward`` detaches its input (a grad-enabled
call still runs, eagerly or compiled, with a one-time warning; layers before it get no gradient).
Train with the QAT modules of
:mod:`nxm_kernels.train` and export through :meth:`NxMLinear.from_linear` or
:meth:`NxMLinear.from_packed`.
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
import torch.nn as nn

from ._checks import FLOAT_DTYPES, check_tensor, preview
from .backends import WeightMeta, resolve_backend
from .format import PAD_METADATA_BYTE, PackedWeight, pack, packed_shapes, values_dtype
from .ops import linear_prepared, normalize_activation, prepared_weights
from .sparsity import is_nm
from .spec import LayerSpec, kernel_spec, parse_spec

__all__ = ["NxMLinear", "SwapReport", "SwappedLayer", "kernel_spec", "set_backend", "swap_named_linears",
           "compressed_linears", "linear_nbytes"]

logger = logging.getLogger(__name__)


def _placeholder_tensors(out_features: int, in_features: int, spec: LayerSpec, device) -> dict:
    """Well-formed packed tensors of the right shapes (zero codes, unit scales) to load real ones into."""
    shapes = packed_shapes(out_features, in_features, spec.weight_bits, spec.sparse)
    out = {"values": torch.zeros(shapes["values"], dtype=values_dtype(spec.weight_bits), device=device),
           "scales": torch.ones(shapes["scales"], dtype=torch.float32, device=device)}
    if spec.sparse:
        out["metadata"] = torch.full(shapes["metadata"], PAD_METADATA_BYTE, dtype=torch.uint8, device=device)
    return out


class NxMLinear(nn.Module):
    """``y = dequant(quant(x) @ W_q^T) (+bias) (+GELU)`` over a packed 2:4/dense int8/int4 weight.

    Args:
        in_features, out_features: the logical weight shape ``[out_features, in_features]``.
        spec: ``"2:4-w8a8"``, ``"2:4-w4a8"``, ``"dense-w8a8"`` or ``"dense-w4a8"``.
        bias: whether the layer has a bias.
        backend: ``"auto"`` (cuda > triton > reference on a GPU, reference on a CPU; ``NXM_BACKEND``
            overrides), or a backend name.
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
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        if dtype is not None and dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype}")
        self.spec = kernel_spec(spec)
        self.in_features = in_features
        self.out_features = out_features
        self.activation = normalize_activation(activation)
        self.backend = backend
        device = torch.device(device) if device is not None else torch.device("cpu")
        for key, t in _placeholder_tensors(out_features, in_features, self.spec, device).items():
            self.register_buffer(key, t)
        if not self.spec.sparse:
            self.metadata = None  # keeps the attribute without a state-dict entry
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype or torch.float32, device=device),
                                     requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._meta = WeightMeta(out_features, in_features, self.spec.weight_bits, self.spec.sparse)
        # A state dict loaded in place (copy_) or by assignment invalidates derived layouts.
        self.register_load_state_dict_post_hook(_refresh_after_load)
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
            check_tensor("scale", scale, dtypes=(torch.float32,), ndim=1)
            scale = scale.to(w.device)
        packed = pack(w, bits=s.weight_bits, pattern=s.pattern, prune=prune, scale=scale)
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls.from_packed(packed, bias, backend=backend, activation=activation)

    @classmethod
    def from_packed(cls, packed: PackedWeight, bias: torch.Tensor | None = None, *, backend: str = "auto",
                    activation: str | None = None) -> "NxMLinear":
        """Wrap an existing :class:`PackedWeight` (its tensors are used as the buffers, not copied).

        ``bias``: ``[out_features]`` float tensor on the packed weight's device, or ``None``.
        """
        if not isinstance(packed, PackedWeight):
            raise TypeError(f"packed must be a PackedWeight (see nxm_kernels.pack), got {type(packed).__name__}")
        packed.validate()
        if bias is not None:
            check_tensor("bias", bias, dtypes=FLOAT_DTYPES, ndim=1)
            if bias.shape[0] != packed.out_features:
                raise ValueError(f"bias must have shape ({packed.out_features},), got {tuple(bias.shape)}")
            if bias.device != packed.device:
                raise ValueError(f"bias must be on the packed weight's device {packed.device}, got {bias.device}")
        n, k = packed.shape
        # A meta placeholder costs nothing; its tensors are replaced just below.
        self = cls(k, n, packed.spec, bias is not None, backend=backend, activation=activation, device="meta")
        self.values = packed.values
        self.scales = packed.scales
        if packed.sparse:
            self.metadata = packed.metadata
        if bias is not None:
            self.bias = nn.Parameter(bias.detach(), requires_grad=False)
        self._refresh()
        return self

    # ------------------------------------------------------------------ state
    @property
    def packed(self) -> PackedWeight:
        """The canonical packed weight, a view over this module's buffers (no copy)."""
        return PackedWeight(self.values, self.metadata, self.scales, (self.out_features, self.in_features),
                            self.spec.weight_bits, self.spec.pattern)

    @property
    def resolved_backend(self) -> str | None:
        """The backend forward runs on for the current device (``None`` when none can)."""
        return self._backend_name

    def nbytes(self) -> dict:
        """Bytes held: the packed weight's ``values``/``metadata``/``scales``, ``bias`` and ``total``."""
        b = dict(self.packed.nbytes())
        b["bias"] = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        b["total"] = b["values"] + b["metadata"] + b["scales"] + b["bias"]
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
        """Resolve the backend for the buffers' device and derive its prepared layout (once)."""
        self._weights, self._backend_name = None, None
        device = self.values.device
        if device.type == "meta":
            self._why = "NxMLinear is on the meta device (a placeholder): load a state dict or a checkpoint first"
            return
        packed = self.packed  # validates the buffers, before any backend question
        try:
            name = resolve_backend(self.backend, device, self._meta)
        except RuntimeError as exc:
            # Not fatal here: a model is often swapped on the CPU for a GPU backend, then moved.
            self._why = f"NxMLinear cannot run on {device}: {exc}"
            return
        self._weights = prepared_weights(packed, name)
        self._backend_name = name

    def _apply(self, fn, recurse: bool = True):
        scales = self.scales
        out = super()._apply(fn, recurse)
        if self.scales.dtype != torch.float32:
            # A dtype cast (model.half()) must not round the scales: redo the move without the cast.
            self.scales = scales.to(self.scales.device)
        self._refresh()
        return out

    # ------------------------------------------------------------------ compute
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._weights is None:
            raise RuntimeError(self._why)
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"NxMLinear input must be float16, bfloat16 or float32, got {x.dtype}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"NxMLinear input must have last dimension {self.in_features}, got shape {tuple(x.shape)}")
        if x.device != self.values.device:
            raise ValueError(f"NxMLinear input is on {x.device} but the layer is on {self.values.device}")
        if x.requires_grad:
            # The op has no gradient. Detaching lets grad-enabled inference run, eagerly and under
            # torch.compile (whose AOTAutograd would otherwise try to trace a backward through it).
            if not torch.compiler.is_compiling():
                _warn_no_gradient()
            x = x.detach()
        return linear_prepared(x, self._weights, self._meta, self.bias, self.activation, self._backend_name)

    def extra_repr(self) -> str:
        act = "" if self.activation == "none" else f", activation={self.activation}"
        backend = self._backend_name or f"{self.backend} (unresolved)"
        if self.backend == "auto" and self._backend_name:
            backend = f"auto->{self._backend_name}"
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


def _refresh_after_load(module: NxMLinear, incompatible_keys) -> None:
    module._refresh()  # a module-level function, not a lambda, so the module stays picklable


# ---------------------------------------------------------------------------------- model-level helpers
def linear_nbytes(module: nn.Module) -> int:
    """Bytes of a linear's weight and bias as stored (dense for ``nn.Linear``, packed for ``NxMLinear``)."""
    if isinstance(module, NxMLinear):
        return module.nbytes()["total"]
    if isinstance(module, nn.Linear):
        return sum(p.numel() * p.element_size() for p in (module.weight, module.bias) if p is not None)
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
    bytes_after: int
    activation: str = "none"


@dataclass
class SwapReport:
    """What a swap did: the swapped layers, the layers left in floating point, and bytes."""

    swapped: list[SwappedLayer] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    backend: str | None = None
    fused_activations: list[str] = field(default_factory=list)  # modules replaced by nn.Identity
    #: Set by :func:`nxm_kernels.calibrate`: the method, calibration size and per-layer relative output error.
    calibration: dict | None = None

    @property
    def bytes_before(self) -> int:
        return sum(s.bytes_before for s in self.swapped)

    @property
    def bytes_after(self) -> int:
        return sum(s.bytes_after for s in self.swapped)

    @property
    def ratio(self) -> float:
        """Compression ratio of the swapped layers (dense bytes as they were / packed bytes)."""
        return self.bytes_before / self.bytes_after if self.bytes_after else float("nan")

    def by_spec(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.swapped:
            out[s.spec] = out.get(s.spec, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {"swapped": {s.name: s.spec for s in self.swapped}, "kept": list(self.kept),
                "backend": self.backend, "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "fused_activations": list(self.fused_activations), "calibration": self.calibration}

    def __str__(self) -> str:
        specs = ", ".join(f"{n} x {s}" for s, n in self.by_spec().items()) or "nothing"
        kept = f"; {len(self.kept)} left in fp" if self.kept else ""
        return (f"swapped {len(self.swapped)} linears ({specs}){kept}; "
                f"{self.bytes_before / 2**20:.2f} MiB -> {self.bytes_after / 2**20:.2f} MiB "
                f"({self.ratio:.2f}x), backend {self.backend or 'unresolved (move the model to a device it runs on)'}")


def swap_in(report: SwapReport, parent: nn.Module, attr: str, linear: nn.Linear, spec: LayerSpec, *, name: str,
            qualified_name: str, backend: str, activation: str | None = None,
            scale: torch.Tensor | None = None) -> NxMLinear:
    """Replace ``parent.<attr>`` (``linear``) by ``NxMLinear.from_linear(linear, spec, ...)`` and record it in
    ``report``; the one swap step of :func:`swap_named_linears` and :func:`nxm_kernels.swap_linears`."""
    new = NxMLinear.from_linear(linear, spec, backend=backend, activation=activation, scale=scale)
    report.swapped.append(SwappedLayer(name, qualified_name, str(spec), tuple(linear.weight.shape),
                                       linear_nbytes(linear), new.nbytes()["total"], new.activation))
    setattr(parent, attr, new)
    report.backend = new.resolved_backend
    return new


def _named_patterns(patterns) -> list[tuple[str, LayerSpec]]:
    if isinstance(patterns, str):
        patterns = {"*": patterns}
    if isinstance(patterns, Mapping):
        patterns = list(patterns.items())
    if not isinstance(patterns, Iterable):
        raise TypeError(f"patterns must be a mapping of module-name globs to specs, got {type(patterns).__name__}")
    out = []
    for item in patterns:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) and item[0]):
            raise TypeError(f"patterns entries must be (module-name glob, spec) pairs, got {item!r}")
        out.append((item[0], parse_spec(item[1])))
    return out


def swap_named_linears(model: nn.Module, patterns, backend: str = "auto") -> SwapReport:
    """Replace ``nn.Linear`` modules of any model, chosen by qualified-name globs, with ``NxMLinear``.

    ``patterns`` maps ``fnmatch`` globs over module names (as in ``model.named_modules()``) to specs,
    e.g. ``{"encoder.*.fc1": "2:4-w8a8", "*": "dense-w8a8"}``; a plain spec string means ``{"*": spec}``.
    When several globs match a module, the later entry wins; ``fp`` leaves a module alone. Every glob
    must match at least one ``nn.Linear`` (the error lists them). In place; returns a :class:`SwapReport`.
    For BERT-family models, :func:`nxm_kernels.swap_linears` takes component plans instead.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    entries = _named_patterns(patterns)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name}
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear submodules to swap")
    for glob, _ in entries:
        if not any(fnmatch.fnmatchcase(n, glob) for n in linears):
            raise ValueError(f"pattern {glob!r} matches no nn.Linear; the linears are: {preview(linears)}")
    chosen = {}
    for name in linears:
        spec = None
        for glob, s in entries:
            if fnmatch.fnmatchcase(name, glob):
                spec = s
        chosen[name] = spec
    for name, spec in chosen.items():
        if spec is not None and not spec.is_fp:
            kernel_spec(spec, name=f"spec for {name}")
    report = SwapReport(backend=None)
    for name, module in linears.items():
        spec = chosen[name]
        if spec is None or spec.is_fp:
            report.kept.append(name)
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        swap_in(report, parent, attr, module, spec, name=name, qualified_name=name, backend=backend)
    logger.info("%s", report)
    return report

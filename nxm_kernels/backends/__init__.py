"""Compute backends for the project's op: ``cuda``, ``triton`` and ``reference``.

Every backend is a module with the same functions, so :mod:`nxm_kernels.ops` can dispatch to any:

``unavailable_reason(device) -> str | None``
    ``None`` when the backend can run on ``device``, else a sentence saying why not.
``LAYOUT``
    The backend's typed prepared weight, a :class:`~nxm_kernels.backends.layout.Layout` subclass
    (frozen dataclass, ``from_packed`` / ``to_packed``, checked once when built).
``prepare(packed) -> LAYOUT``
    The backend's in-memory layout of a :class:`~nxm_kernels.format.PackedWeight`, derived once
    (a pure function of the canonical tensors; cached by the caller).
``quantize_per_token(x2d) -> (codes int8 [M, K], scale float32 [M, 1])``
``int_mm(xq, weights, meta) -> int32 [M, N]``
    The raw accumulator ``xq @ W_codes^T`` (exact; compared with ``torch.equal`` in tests).
``linear(x2d, weights, meta, bias, activation) -> [M, N]`` in ``x2d.dtype``
    Quantize, accumulate and apply the epilogue (scales, bias, GELU); ``activation`` is one of
    :data:`ACTIVATIONS`. The eager path: one call, the backend's fused kernels.
``linear_q(xq, x_scale, weights, meta, bias, activation, out_dtype) -> [M, N]``
    GEMM + epilogue on activations already quantized by :func:`nxm_kernels.quant.quantize_per_token`
    (the ``torch.compile`` path: the quantization stays plain torch ops that inductor fuses into
    the producer of ``x``).
``VARIANTS``
    The backend's kernel variants, a tuple of :class:`Variant` (see below), in order of preference
    where nothing is measured; the one named like the backend is its default.
``weight_unsupported_reason(meta) -> str | None`` (optional)
    ``None`` when the backend runs this kind of weight (e.g. the cuda backend runs 2:4 only).

``weights`` is the backend's layout object or its list of tensors (checked then); ``meta`` is a
:class:`WeightMeta`. These functions check their inputs (they are callable by users); the hot path
of ``NxMLinear`` instead calls a variant's ``linear`` on a layout it built and checked once.

**Kernel variants.** A backend may offer several kernels for the same op (Triton's two-launch
quantize + GEMM and a fused small-M kernel; CUTLASS kernels beside the hand-written CUDA one).
Each is a :class:`Variant` named ``"<backend>"`` (the default) or ``"<backend>:<variant>"``
(``"triton:fused"``, ``"cuda:cutlass"``): these names are the candidates the dispatch table
(:mod:`nxm_kernels.dispatch`) ranks per (GPU, weight kind, N, K, M bucket), that ``nxm tune``
times, and that ``backend=`` / ``NXM_BACKEND`` accept to force one. To add a variant, append a
``Variant`` to the backend module's ``VARIANTS``: a ``linear(x2d, layout, bias, activation)`` that
runs on the backend's layout without checks (its caller has checked ``x2d``: contiguous 2-D, float,
K columns, same device, M >= 1; ``bias`` contiguous or ``None``), optionally
``unsupported_reason(meta, device)`` and ``max_m`` (the largest M it serves). Nothing else changes:
``nxm tune`` times it from then on, and the table picks it where it wins. Tables timed before the
variant existed do not know it: where they have an entry, the fastest candidate they timed still
wins (measured beats assumed) until the GPU is re-tuned or the default table is re-derived from a
GPU run that timed the variant (``benchmarks/dispatch_table.py`` reads the ``backend`` field of
``gemm.json``'s op records, so a variant timed there appears under its candidate name).

Backends know the format and nothing above it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .layout import Layout, WeightMeta

__all__ = ["ACTIVATIONS", "AUTO_ORDER", "BACKENDS", "ENV_VAR", "Layout", "Variant", "WeightMeta", "get_backend",
           "unavailable_reason", "available_backends", "resolve_backend", "weight_unsupported_reason",
           "split_candidate", "variants", "env_backend"]

#: The backend names (in the order error messages list them).
BACKENDS = ("cuda", "triton", "reference")
#: Preference of ``backend="auto"`` where the dispatch table has no measurement: triton before cuda,
#: because on the one GPU measured (H100, benchmarks/results/h100-80gb-hbm3-20261124-16aadda347)
#: triton was faster than cuda at every M and shape where both ran.
AUTO_ORDER = ("triton", "cuda", "reference")
#: Overrides ``backend="auto"`` (e.g. ``NXM_BACKEND=reference``).
ENV_VAR = "NXM_BACKEND"
#: The ``activation`` values every backend's ``linear`` takes.
ACTIVATIONS = ("none", "gelu")

_MODULES = {"cuda": ".cuda.backend", "triton": ".triton.backend", "reference": ".reference"}


@dataclass(frozen=True)
class Variant:
    """One kernel (pipeline) of a backend for the op; see "Kernel variants" above."""

    #: ``"<backend>"`` for the backend's default kernel, else ``"<backend>:<variant>"``.
    name: str
    #: ``linear(x2d, layout, bias, activation) -> y``, no checks (the caller has made them).
    linear: Callable
    #: ``unsupported_reason(meta, device) -> str | None``; ``None`` means it runs everything its backend runs.
    unsupported_reason: Callable | None = None
    #: The largest M it serves (e.g. a small-M kernel); ``None``: any M.
    max_m: int | None = None

    def reason(self, meta: "WeightMeta", device: torch.device) -> str | None:
        return None if self.unsupported_reason is None else self.unsupported_reason(meta, device)


def get_backend(name: str):
    """The backend module called ``name`` (imported lazily: importing the package needs no Triton)."""
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {name!r}")
    return importlib.import_module(_MODULES[name], __name__)


def unavailable_reason(name: str, device: torch.device | str = "cpu") -> str | None:
    """``None`` when backend ``name`` can run on ``device``, else why not."""
    try:
        backend = get_backend(name)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. triton missing, or an extension that fails to load
        # A backend that cannot even be imported is unavailable, not fatal: "auto" moves on to the next.
        return f"cannot import backend {name!r}: {type(exc).__name__}: {exc}"
    return backend.unavailable_reason(torch.device(device))


def weight_unsupported_reason(name: str, meta: "WeightMeta | None") -> str | None:
    """``None`` when backend ``name`` runs weights like ``meta`` (or ``meta`` is None), else why not."""
    if meta is None:
        return None
    check = getattr(get_backend(name), "weight_unsupported_reason", None)
    return None if check is None else check(meta)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``, in ``auto``'s order of preference (:data:`AUTO_ORDER`)."""
    return [b for b in AUTO_ORDER if unavailable_reason(b, device) is None]


def variants(name: str) -> tuple[Variant, ...]:
    """The kernel variants of backend ``name``, in its order of preference."""
    return tuple(get_backend(name).VARIANTS)


def split_candidate(candidate: str) -> tuple[str, str]:
    """``"triton:fused"`` -> ``("triton", "triton:fused")``; ``"triton"`` -> ``("triton", "triton")``.

    Checks that the backend exists (the usual ``backend must be one of`` error) and, for a variant
    name, that the backend has it.
    """
    if not isinstance(candidate, str):
        raise TypeError(f"backend must be a str, got {type(candidate).__name__}")
    name, sep, _ = candidate.partition(":")
    if name not in BACKENDS or (sep and candidate == name + sep):
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {candidate!r}")
    if sep:
        try:
            known = [v.name for v in variants(name)]
        except ImportError as exc:  # the variant cannot be checked, nor run: report the backend's reason
            raise RuntimeError(f"backend {candidate!r} is unavailable: cannot import backend {name!r}: {exc}") from None
        if candidate not in known:
            raise ValueError(f"backend {name!r} has no kernel variant {candidate!r}; its variants are {known}")
    return name, candidate


def env_backend() -> str | None:
    """The ``NXM_BACKEND`` override, checked (``None`` when unset, empty or ``auto``)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if not env or env == "auto":
        return None
    try:
        split_candidate(env)
    except ValueError:
        raise ValueError(f"environment variable {ENV_VAR} must be one of {BACKENDS + ('auto',)} "
                         f"(or a kernel variant such as 'triton:<variant>'), got {env!r}") from None
    return env


def resolve_backend(backend: str = "auto", device: torch.device | str | None = None,
                    meta: "WeightMeta | None" = None) -> str:
    """Turn ``"auto"`` (or an explicit name) into a backend that can run on ``device``.

    ``device`` defaults to the one a model would use here: ``cuda`` when torch sees a GPU, else ``cpu``
    (so ``resolve_backend()`` answers "which backend does auto pick on this machine?").
    ``"auto"`` honours the ``NXM_BACKEND`` environment variable, then picks the first available
    backend of :data:`AUTO_ORDER` that also runs weights like ``meta`` (when given); on a CPU it is
    the reference. An explicit backend (or ``"<backend>:<variant>"``, whose backend is returned) that
    cannot run raises ``RuntimeError`` saying why. Which *variant* runs, per M, is the dispatch
    table's business (:mod:`nxm_kernels.dispatch`).
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    source = ""
    if backend == "auto":
        env = env_backend()
        if env is not None:
            backend, source = env, f" (chosen by {ENV_VAR}={env})"
        else:
            for name in AUTO_ORDER:
                # On a CPU, "auto" means the reference: the Triton interpreter is for testing only.
                if device.type == "cpu" and name != "reference":
                    continue
                if unavailable_reason(name, device) is None and weight_unsupported_reason(name, meta) is None:
                    return name
            raise RuntimeError(f"no backend can run on {device}")
    name, candidate = split_candidate(backend)
    why = unavailable_reason(name, device) or weight_unsupported_reason(name, meta)
    if why is None and candidate != name and meta is not None:
        why = next(v for v in variants(name) if v.name == candidate).reason(meta, device)
    if why is not None:
        raise RuntimeError(f"backend {backend!r}{source} is unavailable on {device}: {why}")
    return name

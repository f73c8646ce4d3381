"""Compute backends for the project's op: ``cuda``, ``triton`` and ``reference``.

Every backend is a module with the same functions, so :mod:`nxm_kernels.ops` can dispatch to any:

``unavailable_reason(device) -> str | None``
    ``None`` when the backend can run on ``device``, else a sentence saying why not.
``prepare(packed) -> list[Tensor]``
    The backend's in-memory layout of a :class:`~nxm_kernels.format.PackedWeight`, derived once
    (a pure function of the canonical tensors; cached by the caller).
``quantize_per_token(x2d) -> (codes int8 [M, K], scale float32 [M, 1])``
``int_mm(xq, weights, meta) -> int32 [M, N]``
    The raw accumulator ``xq @ W_codes^T`` (exact; compared with ``torch.equal`` in tests).
``linear(x2d, weights, meta, bias, activation) -> [M, N]`` in ``x2d.dtype``
    Quantize, accumulate and apply the epilogue (scales, bias, GELU); ``activation`` is one of
    :data:`ACTIVATIONS`.
``weight_unsupported_reason(meta) -> str | None`` (optional)
    ``None`` when the backend runs this kind of weight (e.g. the cuda backend runs 2:4 only).

``meta`` is a :class:`WeightMeta`. Backends know the format and nothing above it.
"""

from __future__ import annotations

import importlib
import os
from typing import NamedTuple

import torch

__all__ = ["ACTIVATIONS", "BACKENDS", "ENV_VAR", "WeightMeta", "get_backend", "unavailable_reason", "available_backends",
           "resolve_backend", "weight_unsupported_reason"]

#: In order of preference for ``backend="auto"``.
BACKENDS = ("cuda", "triton", "reference")
#: Overrides ``backend="auto"`` (e.g. ``NXM_BACKEND=reference``).
ENV_VAR = "NXM_BACKEND"
#: The ``activation`` values every backend's ``linear`` takes.
ACTIVATIONS = ("none", "gelu")

_MODULES = {"cuda": ".cuda", "triton": ".triton_backend", "reference": ".reference"}


class WeightMeta(NamedTuple):
    """What a kernel needs to know about a prepared weight besides its tensors."""

    n: int
    k: int
    bits: int
    sparse: bool

    @classmethod
    def of(cls, packed) -> "WeightMeta":
        return cls(packed.shape[0], packed.shape[1], packed.bits, packed.sparse)


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
    """Backends that can run on ``device``, fastest first."""
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]


def resolve_backend(backend: str = "auto", device: torch.device | str | None = None,
                    meta: "WeightMeta | None" = None) -> str:
    """Turn ``"auto"`` (or an explicit name) into a backend that can run on ``device``.

    ``device`` defaults to the one a model would use here: ``cuda`` when torch sees a GPU, else ``cpu``
    (so ``resolve_backend()`` answers "which backend does auto pick on this machine?").
    ``"auto"`` honours the ``NXM_BACKEND`` environment variable, then picks the fastest available
    backend that also runs weights like ``meta`` (when given). An explicit backend that cannot run
    raises ``RuntimeError`` saying why.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    source = ""
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"environment variable {ENV_VAR} must be one of {BACKENDS + ('auto',)}, got {env!r}")
            backend, source = env, f" (chosen by {ENV_VAR}={env})"
        else:
            for name in BACKENDS:
                # On a CPU, "auto" means the reference: the Triton interpreter is for testing only.
                if device.type == "cpu" and name != "reference":
                    continue
                if unavailable_reason(name, device) is None and weight_unsupported_reason(name, meta) is None:
                    return name
            raise RuntimeError(f"no backend can run on {device}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    why = unavailable_reason(backend, device) or weight_unsupported_reason(backend, meta)
    if why is not None:
        raise RuntimeError(f"backend {backend!r}{source} is unavailable on {device}: {why}")
    return backend

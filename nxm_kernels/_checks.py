"""Input validation shared by every public function.

Each helper raises a ``TypeError`` or ``ValueError`` whose message names the argument, the rule it
broke and what was received, so a user never has to decode a kernel crash or a silent wrong answer.
"""

from __future__ import annotations

import math

from typing import Iterable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_tensor(name: str, value, *, dtypes: Iterable[torch.dtype] | None = None,
                 ndim: int | None = None, min_ndim: int | None = None) -> torch.Tensor:
    """Check that ``value`` is a tensor with an allowed dtype and rank; return it unchanged."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if value.dtype not in dtypes:
            allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({allowed}), got {str(value.dtype).replace('torch.', '')}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if min_ndim is not None and value.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(value.shape)}")
    return value


def check_rows(name: str, value, dtypes: Iterable[torch.dtype], k: int) -> torch.Tensor:
    """A GEMM input: a ``[M, k]`` tensor of an allowed dtype (``k`` = the weight's in_features)."""
    check_tensor(name, value, dtypes=dtypes)
    if value.dim() != 2 or value.shape[1] != k:
        raise ValueError(f"{name} must have shape [M, {k}] (K = the weight's in_features), got {tuple(value.shape)}")
    return value


def check_finite(name: str, value: torch.Tensor) -> None:
    """Refuse NaN/Inf: a quantization scale computed from them would poison every output."""
    if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} must be finite, found {bad} NaN/Inf value(s)")


def check_same_device(**tensors) -> None:
    """All non-None tensors must live on one device."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"tensors must be on the same device, got {listing}")


def check_choice(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def preview(names: Iterable[str], limit: int = 12) -> str:
    """The first ``limit`` names, comma-separated, for an error that lists what would have matched."""
    names = list(names)
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def check_int(name: str, value, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(name: str, value, *, minimum: float | None = None, above: float | None = None) -> float:
    """A finite int or float (not a bool), ``>= minimum`` and ``> above`` when given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    bound = f" >= {minimum}" if minimum is not None else f" > {above}" if above is not None else ""
    if not math.isfinite(value) or (minimum is not None and value < minimum) or (above is not None and value <= above):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return value


def check_device(name: str, device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine; a ``RuntimeError`` naming ``name``
    and saying what is missing otherwise (not whatever a later tensor copy happens to raise)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} must be a torch device such as 'cpu' or 'cuda', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise RuntimeError(f"{name} {str(dev)!r} is not available: torch sees no CUDA device "
                               f"(torch {torch.__version__}, {build}); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise RuntimeError(f"{name} {str(dev)!r} is not available: torch sees {torch.cuda.device_count()} "
                               "CUDA device(s)")
    elif dev.type not in ("cpu", "meta"):
        try:
            torch.empty(0, device=dev)
        except Exception as exc:  # noqa: BLE001 - each backend (mps, xpu, ...) fails its own way
            raise RuntimeError(f"{name} {str(dev)!r} is not available: {exc}") from None
    return dev

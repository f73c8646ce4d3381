"""N:M semi-structured sparsity along the input dimension.

A weight ``W[out, in]`` is N:M sparse when every group of M consecutive elements of a row (columns
``[g*M, (g+1)*M)``) holds at most N non-zeros. When ``in`` is not a multiple of M, the last group is
shorter; it is treated as if padded with zeros, exactly as the packed format pads K.

The magnitude projection :func:`prune_nm` keeps the N largest magnitudes of every group; ties are
broken toward the lower column index, so the result is the same on every device. It is the
Euclidean projection onto the N:M set, which is also what ADMM's Z-update needs.
"""

from __future__ import annotations

import torch

from ._checks import check_int, check_tensor
from .spec import parse_pattern

__all__ = ["nm_mask", "prune_nm", "is_nm", "check_nm", "count_nm_violations", "apply_mask", "density"]


def _nm_args(n, m, pattern):
    if pattern is not None:
        nm = parse_pattern(pattern)
        if nm is None:
            raise ValueError("pattern must be an N:M pattern here, got 'dense'")
        return nm
    check_int("n", n, minimum=1)
    check_int("m", m, minimum=2)
    if n >= m:
        raise ValueError(f"n must be < m for an N:M pattern, got n={n}, m={m}")
    return n, m


def _grouped(weight: torch.Tensor, m: int) -> tuple[torch.Tensor, int]:
    """View a 2-D weight as ``[rows, groups, m]``, zero-padding the last group; return (view, pad)."""
    rows, k = weight.shape
    pad = (-k) % m
    if pad:
        weight = torch.nn.functional.pad(weight, (0, pad))
    # Explicit sizes (not -1): an empty weight would make -1 ambiguous.
    return weight.reshape(rows, (k + pad) // m, m), pad


def _as_2d(name: str, weight) -> torch.Tensor:
    check_tensor(name, weight, min_ndim=1)
    if weight.dim() == 1:
        return weight.unsqueeze(0)
    # flatten, not reshape(-1, K): reshape cannot infer -1 when K == 0.
    return weight.flatten(0, -2)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4, *, pattern: str | None = None) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest magnitudes of every ``m`` consecutive inputs.

    ``weight`` has shape ``[..., in]``; the mask has the same shape. ``pattern="2:4"`` may replace
    ``n``/``m``.
    """
    n, m = _nm_args(n, m, pattern)
    w2 = _as_2d("weight", weight)
    if w2.is_floating_point():
        mag = w2.detach().abs()
    else:
        mag = w2.detach().to(torch.int32).abs()
    groups, pad = _grouped(mag, m)
    # A stable descending sort breaks ties toward the lower index on every device.
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    keep = keep.reshape(w2.shape[0], w2.shape[1] + pad)
    if pad:
        keep = keep[:, : w2.shape[1]]
    return keep.reshape(weight.shape)


def prune_nm(weight: torch.Tensor, n: int = 2, m: int = 4, *, pattern: str | None = None) -> torch.Tensor:
    """Magnitude-project ``weight`` onto the N:M set (a new tensor; the input is not modified)."""
    mask = nm_mask(weight, n, m, pattern=pattern)
    # masked_fill, not weight * mask: a pruned Inf/NaN must become 0 (Inf * 0 is NaN), and a pruned
    # negative value must become +0, not -0. The gradient is still the mask.
    return weight.masked_fill(~mask, 0)


def count_nm_violations(weight: torch.Tensor, n: int = 2, m: int = 4, *, pattern: str | None = None) -> int:
    """Number of groups with more than ``n`` non-zeros."""
    n, m = _nm_args(n, m, pattern)
    w2 = _as_2d("weight", weight)
    groups, _ = _grouped(w2.detach() != 0, m)
    return int((groups.sum(-1) > n).sum())


def is_nm(weight: torch.Tensor, n: int = 2, m: int = 4, *, pattern: str | None = None) -> bool:
    """True when every group of ``m`` inputs holds at most ``n`` non-zeros."""
    return count_nm_violations(weight, n, m, pattern=pattern) == 0


def check_nm(weight: torch.Tensor, n: int = 2, m: int = 4, *, name: str = "weight") -> None:
    """Raise ``ValueError`` (naming ``name``) when ``weight`` is not N:M sparse."""
    bad = count_nm_violations(weight, n, m)
    if bad:
        total = _grouped(_as_2d(name, weight), m)[0].shape
        raise ValueError(
            f"{name} is not {n}:{m} sparse along its last dimension: {bad} of {total[0] * total[1]} groups "
            f"of {m} hold more than {n} non-zeros (prune it first, e.g. pack(..., prune=True) or prune_nm)")


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight * mask`` with shape and dtype checks."""
    check_tensor("weight", weight)
    check_tensor("mask", mask)
    if mask.shape != weight.shape:
        raise ValueError(f"mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
    return weight * mask.to(device=weight.device, dtype=weight.dtype)


def density(weight: torch.Tensor) -> float:
    """Fraction of non-zero elements."""
    check_tensor("weight", weight)
    if weight.numel() == 0:
        raise ValueError("weight must not be empty")
    return float((weight != 0).sum()) / weight.numel()

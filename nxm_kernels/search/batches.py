"""Held-out samples for the search: tokenized features -> a few padded batches of tensors."""

from __future__ import annotations

import random
from typing import Sequence

import torch

__all__ = ["split_sample", "collate"]


def split_sample(n_total: int, n_eval: int, n_train: int = 0, *, seed: int = 0) -> tuple[list[int], list[int]]:
    """Disjoint random index sets ``(eval, train)`` of sizes ``min(n_eval, n_total)`` and what is left
    up to ``n_train``; deterministic for a seed, so the sample (and the cache key) is stable."""
    for name, v in (("n_total", n_total), ("n_eval", n_eval), ("n_train", n_train)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if n_total < 1 or n_eval < 1:
        raise ValueError(f"need at least one example for the held-out sample, got n_total={n_total}, n_eval={n_eval}")
    order = list(range(n_total))
    random.Random(seed).shuffle(order)
    return sorted(order[:n_eval]), sorted(order[n_eval:n_eval + n_train])


def collate(features: Sequence[dict], tokenizer, batch_size: int = 32, *, regression: bool = False) -> list[dict]:
    """Pad ``features`` (dicts of token id lists and an optional ``labels``) into batches of tensors."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    features = list(features)
    if not features:
        raise ValueError("features must not be empty")
    out = []
    for i in range(0, len(features), batch_size):
        chunk = features[i:i + batch_size]
        labels = [f["labels"] for f in chunk if "labels" in f]
        enc = tokenizer.pad([{k: v for k, v in f.items() if k != "labels"} for f in chunk], return_tensors="pt")
        batch = {k: torch.as_tensor(v) for k, v in enc.items()}
        if labels:
            if len(labels) != len(chunk):
                raise ValueError("either every feature has 'labels' or none has")
            batch["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
        out.append(batch)
    return out

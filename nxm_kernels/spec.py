"""The project's one config vocabulary: per-layer compression specs.

A spec string says how one linear layer is stored and computed:

==============  ==========================================================
``2:4-w8a8``    2:4-sparse int8 weights, int8 per-token activations
``2:4-w4a8``    2:4-sparse int4 weights, int8 per-token activations
``dense-w8a8``  dense int8 weights, int8 per-token activations
``dense-w4a8``  dense int4 weights, int8 per-token activations
``fp``          leave the layer alone (floating point)
==============  ==========================================================

Training may use other N:M patterns (``1:4-w8a8``, ``2:8-w4a8``, ...): they parse here too, but only
``2:4`` and ``dense`` can be packed for the kernels (:data:`KERNEL_PATTERNS`). The same strings are
used in Python, JSON plans, the CLI and the search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Patterns the packed format and every kernel backend accept.
KERNEL_PATTERNS = ("2:4", "dense")
#: The specs every backend runs (plus ``fp``).
KERNEL_SPECS = ("2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8")
WEIGHT_BITS = (4, 8)
ACT_BITS = (8,)

_SPEC_RE = re.compile(r"^(?P<pattern>dense|\d+:\d+)-w(?P<w>\d+)a(?P<a>\d+)$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; ``"dense"`` -> ``None``. Raises ``ValueError`` on anything else."""
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str such as '2:4' or 'dense', got {type(pattern).__name__}")
    if pattern == "dense":
        return None
    m = re.fullmatch(r"(\d+):(\d+)", pattern)
    if not m:
        raise ValueError(f"pattern must be 'dense' or 'N:M' (e.g. '2:4'), got {pattern!r}")
    n, mm = int(m.group(1)), int(m.group(2))
    if not (1 <= n < mm):
        raise ValueError(f"pattern N:M needs 1 <= N < M, got {pattern!r}")
    return n, mm


@dataclass(frozen=True)
class LayerSpec:
    """A parsed spec. ``pattern`` is ``"dense"`` or ``"N:M"``; ``None`` bits mean ``fp``."""

    pattern: str | None
    weight_bits: int | None
    act_bits: int | None

    @property
    def is_fp(self) -> bool:
        return self.pattern is None

    @property
    def sparse(self) -> bool:
        return self.pattern not in (None, "dense")

    @property
    def nm(self) -> tuple[int, int] | None:
        return None if self.pattern is None else parse_pattern(self.pattern)

    @property
    def packable(self) -> bool:
        """True for the specs the packed format stores and the kernels run (:data:`KERNEL_SPECS`; not ``fp``).
        :func:`kernel_spec` is the checking form: it parses and raises for anything else."""
        return str(self) in KERNEL_SPECS

    def __str__(self) -> str:
        if self.is_fp:
            return "fp"
        return f"{self.pattern}-w{self.weight_bits}a{self.act_bits}"


def parse_spec(spec: "str | LayerSpec") -> LayerSpec:
    """Parse and validate a spec string (see the module docstring)."""
    if isinstance(spec, LayerSpec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str such as '2:4-w8a8', got {type(spec).__name__}")
    s = spec.strip()
    if s == "fp":
        return LayerSpec(None, None, None)
    m = _SPEC_RE.match(s)
    if not m:
        raise ValueError(
            f"spec must look like '2:4-w8a8', '2:4-w4a8', 'dense-w8a8', 'dense-w4a8' or 'fp', got {spec!r}")
    pattern = m.group("pattern")
    parse_pattern(pattern)
    w, a = int(m.group("w")), int(m.group("a"))
    if w not in WEIGHT_BITS:
        raise ValueError(f"spec {spec!r}: weight bits must be one of {WEIGHT_BITS}, got {w}")
    if a not in ACT_BITS:
        raise ValueError(f"spec {spec!r}: activation bits must be one of {ACT_BITS}, got {a}")
    return LayerSpec(pattern, w, a)


def kernel_spec(spec: "str | LayerSpec", name: str = "spec") -> LayerSpec:
    """Parse ``spec`` and require one the kernels run (``fp`` and training-only N:M patterns are refused)."""
    s = parse_spec(spec)
    if s.is_fp:
        raise ValueError(f"{name} 'fp' means 'leave the layer as nn.Linear'; an NxMLinear needs one of "
                         f"{KERNEL_SPECS}")
    if not s.packable:
        raise ValueError(f"{name} {str(s)!r} can be trained but not packed for the kernels; kernel specs are "
                         f"{KERNEL_SPECS}")
    return s

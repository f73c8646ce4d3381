"""Compression accounting: how many bytes a plan's encoder weights take, nominally and truly.

Two kinds of figure, per layer and in total, both reported as a *compression ratio*
``1 - compressed / baseline`` (the fraction of bytes removed; ``0.875`` means 8x smaller):

* **nominal** (the papers' figure): each weight costs ``bits x density`` bits against 32 bits
  (fp32); metadata, scales and padding are ignored. Uniform ``2:4-w8a8`` is exactly 87.5%,
  ``2:4-w4a8`` 93.75%, ``dense-w8a8`` 75%, ``dense-w4a8`` 87.5%, ``fp`` 0%.
* **true**: the bytes of the canonical packed format (:mod:`nxm_kernels.format`) as :func:`pack`
  produces them (values + 2:4 metadata + float32 scales, with K zero-padded to a multiple of
  :data:`~nxm_kernels.format.K_ALIGN`), against the same weights stored densely in fp32 *and* in fp16.
  A layer left ``fp`` counts at the baseline's float width (4 bytes against fp32, 2 against fp16):
  the question answered is "how much smaller is the deployed model than the same model in fp32
  (fp16)". :func:`packed_nbytes` equals ``pack(...).nbytes()`` byte for byte (the tests check it).

**What is counted.** The headline figures cover the encoder linears' *weight matrices* only (the
``layer.<i>.<component>`` sites of :mod:`nxm_kernels.plan`), as the papers do. Biases are not
compressed by any spec (``NxMLinear`` keeps them in floating point), so they are reported
separately: ``bias_bytes_fp32`` / ``bias_bytes_fp16``, and the ``*_with_bias`` ratios, which add the
biases at the baseline's float width to *both* the compressed and the baseline side. Embeddings,
LayerNorms, the pooler and task heads are outside the encoder linears and are not counted at all.

This module knows only the format and the plan vocabulary (no transformers), so the search, the
demo and the benchmarks can all use it. Layer shapes come in as ``{name: (out, in)}`` (or
``(out, in, has_bias)``), or as any objects with ``.name`` and ``.module`` whose module has
``out_features`` / ``in_features`` (e.g. the ``LinearSite`` list of
:func:`nxm_kernels.models.bert.bert_linears`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple

from ._json import dump_json
from .format import packed_shapes
from .plan import Plan
from .spec import LayerSpec, parse_spec

__all__ = ["LayerShape", "LayerAccount", "Accounting", "packed_nbytes", "weight_nbytes", "nominal_bits",
           "layer_shapes", "account"]

FP32_BYTES = 4
FP16_BYTES = 2
#: Scales are stored as float32 in the packed format.
SCALE_BYTES = 4


class LayerShape(NamedTuple):
    """The shape of one linear: ``out_features`` (N), ``in_features`` (K), whether it has a bias."""

    out_features: int
    in_features: int
    bias: bool = True


def _check_shape(name: str, shape) -> LayerShape:
    if isinstance(shape, LayerShape):
        pass
    elif isinstance(shape, (tuple, list)) and len(shape) in (2, 3):
        shape = LayerShape(*shape)
    else:
        raise TypeError(f"{name} must be (out_features, in_features[, has_bias]), got {shape!r}")
    for what, v in (("out_features", shape.out_features), ("in_features", shape.in_features)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: {what} must be an int >= 1, got {v!r}")
    if not isinstance(shape.bias, bool):
        raise TypeError(f"{name}: has_bias must be a bool, got {type(shape.bias).__name__}")
    return shape


def nominal_bits(spec: "str | LayerSpec") -> float:
    """Bits per weight the papers count: ``weight_bits x N/M`` (32 for ``fp``, density 1 for dense)."""
    s = parse_spec(spec)
    if s.is_fp:
        return 32.0
    nm = s.nm
    density = 1.0 if nm is None else nm[0] / nm[1]
    return s.weight_bits * density


def packed_nbytes(shape, spec: "str | LayerSpec") -> dict:
    """Bytes of ``pack(weight[N, K], spec)``: ``{"values", "metadata", "scales", "total"}``.

    Same keys and numbers as :meth:`nxm_kernels.format.PackedWeight.nbytes`. Only the packable
    specs (``2:4`` / ``dense`` with ``w8``/``w4``) have a packed size; ``fp`` and training-only N:M
    patterns raise ``ValueError``.
    """
    shape = _check_shape("shape", shape)
    s = parse_spec(spec)
    if not s.packable:
        raise ValueError(f"spec must be a packable spec (2:4-w8a8, 2:4-w4a8, dense-w8a8, dense-w4a8) to have "
                         f"a packed size, got {str(s)!r}")
    shapes = packed_shapes(shape.out_features, shape.in_features, s.weight_bits, s.sparse)
    b = {  # values and metadata hold one byte per element
        "values": math.prod(shapes["values"]),
        "metadata": math.prod(shapes["metadata"]) if s.sparse else 0,
        "scales": math.prod(shapes["scales"]) * SCALE_BYTES,
    }
    b["total"] = sum(b.values())
    return b


def weight_nbytes(shape, spec: "str | LayerSpec", float_bytes: int = FP32_BYTES) -> dict:
    """Bytes of a layer's weight under ``spec``: packed bytes, or ``N x K x float_bytes`` for ``fp``."""
    if float_bytes not in (FP32_BYTES, FP16_BYTES):
        raise ValueError(f"float_bytes must be 4 (fp32) or 2 (fp16), got {float_bytes!r}")
    shape = _check_shape("shape", shape)
    if parse_spec(spec).is_fp:
        v = shape.out_features * shape.in_features * float_bytes
        return {"values": v, "metadata": 0, "scales": 0, "total": v}
    return packed_nbytes(shape, spec)


def layer_shapes(layers) -> dict[str, LayerShape]:
    """Normalise ``layers`` to ``{name: LayerShape}``.

    ``layers`` is a mapping ``name -> (out, in[, has_bias])`` or an iterable of objects with
    ``.name`` and ``.module`` (``LinearSite``); the module needs ``out_features``/``in_features``
    and an optional ``bias`` attribute.
    """
    out: dict[str, LayerShape] = {}
    if isinstance(layers, Mapping):
        for name, shape in layers.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"layer names must be non-empty str, got {name!r}")
            out[name] = _check_shape(f"layers[{name!r}]", shape)
    else:
        try:
            items = list(layers)
        except TypeError:
            raise TypeError("layers must be a mapping name -> (out_features, in_features) or an iterable of "
                            f"sites with .name and .module, got {type(layers).__name__}") from None
        for site in items:
            name, module = getattr(site, "name", None), getattr(site, "module", None)
            if not isinstance(name, str) or module is None:
                raise TypeError(f"each site needs a str .name and a .module, got {site!r}")
            n, k = getattr(module, "out_features", None), getattr(module, "in_features", None)
            if n is None or k is None:
                raise TypeError(f"site {name!r}: module {type(module).__name__} has no out_features/in_features")
            out[name] = _check_shape(f"site {name!r}", (int(n), int(k), getattr(module, "bias", None) is not None))
    if not out:
        raise ValueError("layers must not be empty")
    return out


def _ratio(compressed: float, baseline: float) -> float:
    return 1.0 - compressed / baseline


@dataclass
class LayerAccount:
    """One layer's figures (bytes are exact integers; ratios are ``1 - compressed/baseline``)."""

    name: str
    out_features: int
    in_features: int
    spec: str
    params: int
    nominal_bits: float
    bytes: dict | None            # packed/dense bytes {"values","metadata","scales","total"} for fp32 deploy
    fp32_bytes: int
    fp16_bytes: int
    bias_params: int

    @property
    def nominal_ratio(self) -> float:
        return 1.0 - self.nominal_bits / 32.0

    @property
    def true_bytes_fp32(self) -> int | None:
        """Bytes when deployed next to an fp32 model (an ``fp`` layer stays fp32)."""
        return None if self.bytes is None else self.bytes["total"]

    @property
    def true_bytes_fp16(self) -> int | None:
        """Bytes when deployed next to an fp16 model (an ``fp`` layer is fp16)."""
        if self.bytes is None:
            return None
        return self.fp16_bytes if self.spec == "fp" else self.bytes["total"]

    @property
    def true_ratio_fp32(self) -> float | None:
        return None if self.bytes is None else _ratio(self.true_bytes_fp32, self.fp32_bytes)

    @property
    def true_ratio_fp16(self) -> float | None:
        return None if self.bytes is None else _ratio(self.true_bytes_fp16, self.fp16_bytes)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "shape": [self.out_features, self.in_features], "spec": self.spec,
            "params": self.params, "nominal_bits": self.nominal_bits, "nominal_ratio": self.nominal_ratio,
            "bytes": self.bytes, "fp32_bytes": self.fp32_bytes, "fp16_bytes": self.fp16_bytes,
            "bias_params": self.bias_params,
            "true_ratio_fp32": self.true_ratio_fp32, "true_ratio_fp16": self.true_ratio_fp16,
        }


@dataclass
class Accounting:
    """Per-layer and total figures for a plan over a set of layers (see the module docstring)."""

    layers: list[LayerAccount]
    plan: dict = field(default_factory=dict)

    # --------------------------------------------------------------------- totals
    @property
    def params(self) -> int:
        return sum(a.params for a in self.layers)

    @property
    def fp32_bytes(self) -> int:
        return sum(a.fp32_bytes for a in self.layers)

    @property
    def fp16_bytes(self) -> int:
        return sum(a.fp16_bytes for a in self.layers)

    @property
    def nominal_ratio(self) -> float:
        bits = sum(a.params * a.nominal_bits for a in self.layers)
        return 1.0 - bits / (32.0 * self.params)

    @property
    def exact(self) -> bool:
        """False when a spec has no packed size (training-only N:M patterns): true figures are None."""
        return all(a.bytes is not None for a in self.layers)

    @property
    def true_bytes_fp32(self) -> int | None:
        return sum(a.true_bytes_fp32 for a in self.layers) if self.exact else None

    @property
    def true_bytes_fp16(self) -> int | None:
        return sum(a.true_bytes_fp16 for a in self.layers) if self.exact else None

    @property
    def true_ratio_fp32(self) -> float | None:
        return _ratio(self.true_bytes_fp32, self.fp32_bytes) if self.exact else None

    @property
    def true_ratio_fp16(self) -> float | None:
        return _ratio(self.true_bytes_fp16, self.fp16_bytes) if self.exact else None

    @property
    def bias_params(self) -> int:
        return sum(a.bias_params for a in self.layers)

    def ratio(self, kind: str = "nominal") -> float:
        """The ratio named ``kind``: ``"nominal"``, ``"true"`` / ``"true-fp32"`` or ``"true-fp16"``."""
        if kind == "nominal":
            return self.nominal_ratio
        if kind in ("true", "true-fp32"):
            r = self.true_ratio_fp32
        elif kind == "true-fp16":
            r = self.true_ratio_fp16
        else:
            raise ValueError(f"kind must be 'nominal', 'true', 'true-fp32' or 'true-fp16', got {kind!r}")
        if r is None:
            raise ValueError("the plan uses specs without a packed format, so it has no true ratio")
        return r

    def components(self) -> dict[str, "Accounting"]:
        """The layers grouped by the last part of their name (``query`` ... ``ffn2``)."""
        groups: dict[str, list[LayerAccount]] = {}
        for a in self.layers:
            groups.setdefault(a.name.rsplit(".", 1)[-1], []).append(a)
        return {comp: Accounting(accts) for comp, accts in groups.items()}

    def by_component(self) -> dict[str, dict]:
        """Totals grouped by the last part of the layer name (``query`` ... ``ffn2``)."""
        return {comp: acc.summary() for comp, acc in self.components().items()}

    # --------------------------------------------------------------------- output
    def summary(self) -> dict:
        """Totals as a JSON-ready dict."""
        d = {
            "layers": len(self.layers), "params": self.params, "specs": sorted({a.spec for a in self.layers}),
            "nominal_ratio": self.nominal_ratio,
            "fp32_bytes": self.fp32_bytes, "fp16_bytes": self.fp16_bytes,
            "true_bytes_fp32": self.true_bytes_fp32, "true_bytes_fp16": self.true_bytes_fp16,
            "true_ratio_fp32": self.true_ratio_fp32, "true_ratio_fp16": self.true_ratio_fp16,
            "bias_params": self.bias_params,
            "bias_bytes_fp32": self.bias_params * FP32_BYTES, "bias_bytes_fp16": self.bias_params * FP16_BYTES,
        }
        if self.exact:
            b32, b16 = self.bias_params * FP32_BYTES, self.bias_params * FP16_BYTES
            d["true_ratio_fp32_with_bias"] = _ratio(self.true_bytes_fp32 + b32, self.fp32_bytes + b32)
            d["true_ratio_fp16_with_bias"] = _ratio(self.true_bytes_fp16 + b16, self.fp16_bytes + b16)
        else:
            d["true_ratio_fp32_with_bias"] = d["true_ratio_fp16_with_bias"] = None
        return d

    def to_dict(self) -> dict:
        return {"what": "encoder linear weights (biases reported separately)", "plan": self.plan,
                "total": self.summary(), "by_component": self.by_component(),
                "layers": [a.to_dict() for a in self.layers]}

    def to_json(self, path: "str | Path | None" = None) -> str:
        return dump_json(self.to_dict(), path)

    def table(self, per_layer: bool = True) -> str:
        """A fixed-width text table: one row per layer (or per component) and a total row."""
        head = (f"{'layer':<20} {'shape':>11} {'spec':<11} {'bits/w':>6} {'nominal':>8} "
                f"{'bytes':>11} {'meta B':>9} {'scale B':>8} {'vs fp32':>8} {'vs fp16':>8}")
        rows = [head, "-" * len(head)]

        def pct(r):
            return "-" if r is None else f"{100 * r:7.2f}%"

        def line(name, shape, spec, bits, nominal, b, r32, r16):
            tot = "-" if b is None else f"{b['total']:,}"
            meta = "-" if b is None else f"{b['metadata']:,}"
            sc = "-" if b is None else f"{b['scales']:,}"
            rows.append(f"{name:<20} {shape:>11} {spec:<11} {bits:>6} {pct(nominal):>8} {tot:>11} {meta:>9} "
                        f"{sc:>8} {pct(r32):>8} {pct(r16):>8}")

        def group_line(name, acc: "Accounting", spec):
            # a group's row: summed bytes (none if a spec has no packed size), weight-averaged bits
            b = None if not acc.exact else {
                "total": acc.true_bytes_fp32, "metadata": sum(a.bytes["metadata"] for a in acc.layers),
                "scales": sum(a.bytes["scales"] for a in acc.layers)}
            bits = sum(a.params * a.nominal_bits for a in acc.layers) / acc.params
            line(name, "", spec, f"{bits:.3g}", acc.nominal_ratio, b, acc.true_ratio_fp32, acc.true_ratio_fp16)

        if per_layer:
            for a in self.layers:
                line(a.name, f"{a.out_features}x{a.in_features}", a.spec, f"{a.nominal_bits:g}", a.nominal_ratio,
                     a.bytes, a.true_ratio_fp32, a.true_ratio_fp16)
        else:
            for comp, acc in self.components().items():
                specs = sorted({a.spec for a in acc.layers})
                group_line(f"{comp} (x{len(acc.layers)})", acc, specs[0] if len(specs) == 1 else "mixed")
        rows.append("-" * len(head))
        group_line(f"total ({len(self.layers)})", self, "")
        s = self.summary()
        rows.append(f"baseline: {s['fp32_bytes']:,} B fp32 / {s['fp16_bytes']:,} B fp16 for {s['params']:,} weights; "
                    f"'bytes' is the size deployed next to an fp32 model (fp layers at 4 B/weight). Biases ({s['bias_params']:,}) "
                    f"are not counted above; with them kept float on both sides: "
                    f"{pct(s['true_ratio_fp32_with_bias']).strip()} vs fp32, "
                    f"{pct(s['true_ratio_fp16_with_bias']).strip()} vs fp16.")
        return "\n".join(rows)


def account(layers, plan: "Plan | Mapping[str, str] | str", *, strict: bool = True) -> Accounting:
    """Account ``plan`` over ``layers`` (see :func:`layer_shapes` for what ``layers`` may be).

    ``plan`` is a :class:`~nxm_kernels.plan.Plan`, a ``{pattern: spec}`` mapping, a single spec
    string, or a JSON string / path. With ``strict`` a plan pattern matching no layer is an error
    (the same rule ``swap_linears`` applies).
    """
    shapes = layer_shapes(layers)
    plan = Plan.coerce(plan)
    specs = plan.resolve(shapes, strict=strict)
    out = []
    for name, shape in shapes.items():
        spec = specs[name]
        params = shape.out_features * shape.in_features
        packable = spec.kernel_ready  # fp counts as dense float bytes
        out.append(LayerAccount(
            name=name, out_features=shape.out_features, in_features=shape.in_features, spec=str(spec),
            params=params, nominal_bits=nominal_bits(spec),
            bytes=weight_nbytes(shape, spec, FP32_BYTES) if packable else None,
            fp32_bytes=params * FP32_BYTES, fp16_bytes=params * FP16_BYTES,
            bias_params=shape.out_features if shape.bias else 0))
    return Accounting(out, plan.to_dict())

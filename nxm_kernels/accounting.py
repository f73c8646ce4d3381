"""Compression accounting: how many bytes a plan's encoder weights take, nominally and truly.

**Two figures, two names**, never a bare "ratio": ``fraction_removed = 1 - compressed / baseline``
(``0.875`` removes seven eighths; this module, ``nxm account`` and the search's target speak in it)
and ``size_factor = before / after`` (``8.0`` = 8x smaller; ``SwapReport.size_factor``, ``metrics.json``,
the benchmarks). A fraction removed is of one of three *kinds* (:data:`KINDS`):

* ``"nominal"`` (the papers' figure): each weight costs ``bits x density`` bits against 32 bits
  (fp32); metadata, scales and padding are ignored. Uniform ``2:4-w8a8`` removes exactly 87.5%,
  ``2:4-w4a8`` 93.75%, ``dense-w8a8`` 75%, ``dense-w4a8`` 87.5%, ``fp`` 0%.
* ``"true-fp32"`` (also spelt ``"true"``) and ``"true-fp16"``: the bytes of the canonical packed
  format as :func:`~nxm_kernels.format.weight_nbytes` counts them (values + 2:4 metadata + float32
  scales, with K zero-padded to a multiple of :data:`~nxm_kernels.format.K_ALIGN`; what
  ``pack(...).nbytes()`` reports), against the same weights stored densely in fp32 / fp16. A layer
  left ``fp`` counts at the baseline's float width (4 bytes against fp32, 2 against fp16): the
  question answered is "how much smaller is the deployed model than the same model in fp32 (fp16)".

**What is counted.** The headline figures cover the encoder linears' *weight matrices* only (the
``layer.<i>.<component>`` sites of :mod:`nxm_kernels.plan`), as the papers do. Biases are not
compressed by any spec (``NxMLinear`` keeps them in floating point), so they are reported
separately: ``bias_bytes_fp32`` / ``bias_bytes_fp16``, and ``fraction_removed_with_bias``, which adds
the biases at the baseline's float width to *both* the compressed and the baseline side. Embeddings,
LayerNorms, the pooler and task heads are outside the encoder linears and are not counted at all.

This module knows only the format and the plan vocabulary (no transformers), so the search, the
demo and the benchmarks can all use it. Layer shapes come in as ``{name: (out, in)}`` (or
``(out, in, has_bias)``), or as any objects with ``.name`` and ``.module`` whose module has
``out_features`` / ``in_features`` (e.g. the ``LinearSite`` list of
:func:`nxm_kernels.models.encoder.encoder_linears`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple

from ._checks import check_choice
from ._json import dump_json
from .format import weight_nbytes
from .plan import Plan
from .spec import LayerSpec, parse_spec

__all__ = ["KINDS", "check_kind", "LayerShape", "LayerAccount", "Accounting", "nominal_bits", "layer_shapes", "account"]

FP32_BYTES = 4
FP16_BYTES = 2
#: The kinds of fraction removed (see the module docstring); ``"true"`` is ``"true-fp32"``.
KINDS = ("nominal", "true", "true-fp32", "true-fp16")


def check_kind(kind) -> str:
    """``kind`` checked against :data:`KINDS` and spelt canonically (``"true"`` -> ``"true-fp32"``)."""
    check_choice("kind", kind, KINDS)
    return "true-fp32" if kind == "true" else kind


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


class _Sizes:
    """The fraction removed of a layer or a group alike, from ``size(kind)`` (bits for ``nominal``,
    bytes for the true kinds) and ``baseline(kind)`` (the same weights in fp32 / fp32 / fp16)."""

    def fraction_removed(self, kind: str = "nominal") -> float:
        """``1 - size / baseline`` of ``kind`` (:data:`KINDS`): the fraction of the bytes removed."""
        kind = check_kind(kind)
        size = self.size(kind)
        if size is None:
            raise ValueError("the plan uses specs without a packed format, so it has no true size "
                             "(only a nominal fraction removed)")
        return 1.0 - size / self.baseline(kind)

    def _fraction_removed_by_kind(self) -> dict:
        """Every kind's fraction removed, ``None`` where there is no packed size (the JSON form)."""
        return {k: None if self.size(k) is None else self.fraction_removed(k) for k in KINDS if k != "true"}


@dataclass
class LayerAccount(_Sizes):
    """One layer's figures (bytes are exact integers; see the module docstring for the fractions)."""

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

    def size(self, kind: str) -> float | None:
        """Nominal bits or true bytes of this layer's weight (``None``: no packed size). Deployed next
        to an fp16 model, an ``fp`` layer is fp16."""
        kind = check_kind(kind)
        if kind == "nominal":
            return self.params * self.nominal_bits
        if self.bytes is None:
            return None
        return self.fp16_bytes if kind == "true-fp16" and self.spec == "fp" else self.bytes["total"]

    def baseline(self, kind: str) -> float:
        kind = check_kind(kind)
        return {"nominal": 32.0 * self.params, "true-fp32": self.fp32_bytes, "true-fp16": self.fp16_bytes}[kind]

    def to_dict(self) -> dict:
        return {
            "name": self.name, "shape": [self.out_features, self.in_features], "spec": self.spec,
            "params": self.params, "nominal_bits": self.nominal_bits,
            "bytes": self.bytes, "fp32_bytes": self.fp32_bytes, "fp16_bytes": self.fp16_bytes,
            "bias_params": self.bias_params, "fraction_removed": self._fraction_removed_by_kind(),
        }


def _summed(field_name: str) -> property:
    """A total of :class:`Accounting`: its layers' ``field_name`` summed."""
    return property(lambda self: sum(getattr(a, field_name) for a in self.layers),
                    doc=f"The layers' {field_name}, summed.")


@dataclass
class Accounting(_Sizes):
    """Per-layer and total figures for a plan over a set of layers (see the module docstring)."""

    layers: list[LayerAccount]
    plan: dict = field(default_factory=dict)

    # --------------------------------------------------------------------- totals
    params = _summed("params")
    fp32_bytes = _summed("fp32_bytes")
    fp16_bytes = _summed("fp16_bytes")
    bias_params = _summed("bias_params")
    true_bytes_fp32 = property(lambda self: self.size("true-fp32"), doc="``size('true-fp32')``, bytes or None")
    true_bytes_fp16 = property(lambda self: self.size("true-fp16"), doc="``size('true-fp16')``, bytes or None")

    @property
    def exact(self) -> bool:
        """False when a spec has no packed size (training-only N:M patterns): true figures are None."""
        return all(a.bytes is not None for a in self.layers)

    def size(self, kind: str) -> float | None:
        """The layers' summed :meth:`LayerAccount.size` (``None`` when one has no packed size)."""
        sizes = [a.size(kind) for a in self.layers]
        return None if None in sizes else sum(sizes)

    def baseline(self, kind: str) -> float:
        return sum(a.baseline(kind) for a in self.layers)

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
        b32, b16 = self.bias_params * FP32_BYTES, self.bias_params * FP16_BYTES
        with_bias = {"true-fp32": None, "true-fp16": None}
        if self.exact:
            with_bias = {"true-fp32": 1.0 - (self.true_bytes_fp32 + b32) / (self.fp32_bytes + b32),
                         "true-fp16": 1.0 - (self.true_bytes_fp16 + b16) / (self.fp16_bytes + b16)}
        return {
            "layers": len(self.layers), "params": self.params, "specs": sorted({a.spec for a in self.layers}),
            "fp32_bytes": self.fp32_bytes, "fp16_bytes": self.fp16_bytes,
            "true_bytes_fp32": self.true_bytes_fp32, "true_bytes_fp16": self.true_bytes_fp16,
            "fraction_removed": self._fraction_removed_by_kind(),
            "bias_params": self.bias_params, "bias_bytes_fp32": b32, "bias_bytes_fp16": b16,
            "fraction_removed_with_bias": with_bias,
        }

    def to_dict(self) -> dict:
        return {"what": "encoder linear weights (biases reported separately)", "plan": self.plan,
                "total": self.summary(), "by_component": self.by_component(),
                "layers": [a.to_dict() for a in self.layers]}

    def to_json(self, path: "str | Path | None" = None) -> str:
        return dump_json(self.to_dict(), path)

    def table(self, per_layer: bool = True) -> str:
        """A fixed-width text table: one row per layer (or per component) and a total row; the
        percentages are fractions of the bytes removed."""
        head = (f"{'layer':<20} {'shape':>11} {'spec':<11} {'bits/w':>6} {'nominal':>8} "
                f"{'bytes':>11} {'meta B':>9} {'scale B':>8} {'vs fp32':>8} {'vs fp16':>8}")
        rows = [head, "-" * len(head)]

        def pct(r):
            return "-" if r is None else f"{100 * r:7.2f}%"

        def line(name, shape, spec, bits, fractions, b):
            tot, meta, sc = ("-" if b is None else f"{b[key]:,}" for key in ("total", "metadata", "scales"))
            rows.append(f"{name:<20} {shape:>11} {spec:<11} {bits:>6} {pct(fractions['nominal']):>8} {tot:>11} "
                        f"{meta:>9} {sc:>8} {pct(fractions['true-fp32']):>8} {pct(fractions['true-fp16']):>8}")

        def group_line(name, acc: "Accounting", spec):
            # a group's row: summed bytes (none if a spec has no packed size), weight-averaged bits
            b = None if not acc.exact else {
                "total": acc.true_bytes_fp32, "metadata": sum(a.bytes["metadata"] for a in acc.layers),
                "scales": sum(a.bytes["scales"] for a in acc.layers)}
            bits = acc.size("nominal") / acc.params
            line(name, "", spec, f"{bits:.3g}", acc._fraction_removed_by_kind(), b)

        if per_layer:
            for a in self.layers:
                line(a.name, f"{a.out_features}x{a.in_features}", a.spec, f"{a.nominal_bits:g}",
                     a._fraction_removed_by_kind(), a.bytes)
        else:
            for comp, acc in self.components().items():
                specs = sorted({a.spec for a in acc.layers})
                group_line(f"{comp} (x{len(acc.layers)})", acc, specs[0] if len(specs) == 1 else "mixed")
        rows.append("-" * len(head))
        group_line(f"total ({len(self.layers)})", self, "")
        s = self.summary()
        rows.append(f"fraction of the bytes removed; baseline: {s['fp32_bytes']:,} B fp32 / {s['fp16_bytes']:,} B "
                    f"fp16 for {s['params']:,} weights; "
                    f"'bytes' is the size deployed next to an fp32 model (fp layers at 4 B/weight). Biases ({s['bias_params']:,}) "
                    f"are not counted above; with them kept float on both sides: "
                    f"{pct(s['fraction_removed_with_bias']['true-fp32']).strip()} vs fp32, "
                    f"{pct(s['fraction_removed_with_bias']['true-fp16']).strip()} vs fp16.")
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
        out.append(LayerAccount(
            name=name, out_features=shape.out_features, in_features=shape.in_features, spec=str(spec),
            params=params, nominal_bits=nominal_bits(spec),  # fp counts as dense float bytes:
            bytes=weight_nbytes(shape[:2], spec, FP32_BYTES) if spec.is_fp or spec.packable else None,
            fp32_bytes=params * FP32_BYTES, fp16_bytes=params * FP16_BYTES,
            bias_params=shape.out_features if shape.bias else 0))
    return Accounting(out, plan.to_dict())

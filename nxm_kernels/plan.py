"""Compression plans: which spec each encoder linear gets.

Encoder linears are named ``layer.<i>.<component>`` with components ``query``, ``key``, ``value``,
``attn_out``, ``ffn1``, ``ffn2`` (:data:`COMPONENTS`). A plan is an ordered mapping from patterns to
spec strings (:mod:`nxm_kernels.spec`). A pattern is one of

* ``*``: every encoder linear;
* a component name, e.g. ``ffn2``: that component in every layer (same as ``layer.*.ffn2``);
* ``layer.<i>``: every component of layer ``i`` (same as ``layer.<i>.*``);
* a full glob over names (``fnmatch`` rules), e.g. ``layer.3.ffn1``, ``layer.[0-5].query``.

Any other name (a module name of any model, :func:`nxm_kernels.swap_named_linears`) is matched by the
pattern as a plain ``fnmatch`` glob, without the shorthands.

**One layer computing query, key and value.** Where a model's checkpoint already holds query, key and
value as one linear (ModernBERT's ``Wqkv``), that linear is one site, named ``layer.<i>.qkv``
(:data:`FUSED_QKV`; the plan vocabulary stays the same). Its spec is the one the plan gives
``layer.<i>.query``, ``layer.<i>.key`` and ``layer.<i>.value``; a plan giving them different specs cannot
be applied to such a layer and is a ``ValueError`` naming it. (Query, key and value that are separate
linears in the checkpoint stay three sites, even once :func:`nxm_kernels.fuse_qkv` computes them as one.)

**Which entry wins** (for every way a plan is applied, :mod:`nxm_kernels.models.swap`). Among the
entries matching a name, the *most specific* wins; among equally specific entries, the *later* one
wins. Specificity counts what a pattern pins down literally in an encoder-linear name: a layer index
(2 points) and a component (1 point). So ``*`` (0) < ``ffn2`` (1) < ``layer.3`` (2) < ``layer.3.ffn2``
(3), whatever their order. For other names every pattern counts 0, so the later entry wins. Unmatched
names stay ``fp``.

Plans are JSON objects (``{"*": "2:4-w8a8", "ffn2": "dense-w8a8"}``), the same in Python, on disk,
in checkpoints and on the CLI.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Iterable, Mapping

from ._checks import preview
from ._json import dump_json
from .spec import LayerSpec, parse_spec

__all__ = ["COMPONENTS", "QKV", "FUSED_QKV", "SITE_COMPONENTS", "Plan", "layer_name", "qkv_members"]

_FP = parse_spec("fp")
#: The plan vocabulary: the linears of one encoder layer.
COMPONENTS = ("query", "key", "value", "attn_out", "ffn1", "ffn2")
#: The projections of the attention input, in the row order of a layer computing them as one.
QKV = ("query", "key", "value")
#: The site name's last part for one linear computing query, key and value (see the module docstring).
FUSED_QKV = "qkv"
#: The last parts encoder-linear site names have, in forward order.
SITE_COMPONENTS = QKV + (FUSED_QKV,) + COMPONENTS[3:]


def layer_name(index: int, component: str) -> str:
    return f"layer.{index}.{component}"


def _expand(pattern: str) -> str:
    if pattern in COMPONENTS:
        return f"layer.*.{pattern}"
    if re.fullmatch(r"layer\.[^.]+", pattern):
        return pattern + ".*"
    return pattern


def _specificity(pattern: str) -> int:
    parts = _expand(pattern).split(".")
    if len(parts) != 3 or parts[0] != "layer":
        return 0
    literal = lambda s: not any(c in s for c in "*?[")  # noqa: E731
    return 2 * literal(parts[1]) + literal(parts[2])


_ENCODER_NAME = re.compile(r"layer\.\d+\.(?:" + "|".join(SITE_COMPONENTS) + ")")


def qkv_members(name: str) -> tuple[str, ...]:
    """The plan names a site stands for: ``layer.<i>.query/key/value`` for ``layer.<i>.qkv``, else ``(name,)``."""
    head, _, last = name.rpartition(".")
    if last == FUSED_QKV and _ENCODER_NAME.fullmatch(name):
        return tuple(f"{head}.{c}" for c in QKV)
    return (name,)


def _rank(pattern: str, name: str) -> int | None:
    """How specifically ``pattern`` names ``name`` (``None``: not at all); see the module docstring."""
    if _ENCODER_NAME.fullmatch(name):
        return _specificity(pattern) if fnmatch.fnmatchcase(name, _expand(pattern)) else None
    return 0 if fnmatch.fnmatchcase(name, pattern) else None


def _site_rank(pattern: str, site: str, member: str) -> int | None:
    """:func:`_rank` of ``pattern`` for ``member``, one of the plan names of ``site`` (a pattern naming the
    site itself counts for each of them)."""
    ranks = [r for r in (_rank(pattern, member), _rank(pattern, site) if site != member else None) if r is not None]
    return max(ranks) if ranks else None


class Plan:
    """An ordered ``pattern -> spec`` mapping (see the module docstring for the matching rule)."""

    def __init__(self, entries: "Mapping[str, str | LayerSpec] | Iterable[tuple[str, str | LayerSpec]]" = ()):
        # Specs are parsed here, once; matching hands out these LayerSpec objects. Other forms (a spec
        # string, plan JSON, a file) go through :meth:`coerce`, the one place that tells them apart.
        if isinstance(entries, Plan):
            entries = entries._specs
        elif isinstance(entries, Mapping):
            entries = list(entries.items())
        elif isinstance(entries, (str, bytes)) or not hasattr(entries, "__iter__"):
            raise TypeError(f"plan must be a mapping of pattern -> spec or a list of (pattern, spec) pairs, got "
                            f"{type(entries).__name__} (Plan.coerce also reads a spec string or plan JSON)")
        self._specs: list[tuple[str, LayerSpec]] = []
        for item in entries:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise TypeError(f"plan entries must be (pattern, spec) pairs, got {item!r}")
            pattern, spec = item
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"plan pattern must be a non-empty str, got {pattern!r}")
            self._specs.append((pattern, parse_spec(spec)))

    @property
    def entries(self) -> list[tuple[str, str]]:
        """The ``(pattern, spec string)`` pairs, in order."""
        return [(pattern, str(spec)) for pattern, spec in self._specs]

    # ------------------------------------------------------------------ matching
    def spec_for(self, name: str) -> LayerSpec:
        """The spec of one layer name (``fp`` when nothing matches). For ``layer.<i>.qkv`` (one linear
        computing query, key and value) the spec of all three, a ``ValueError`` where they differ."""
        members = qkv_members(name)
        specs = {member: self._winner(name, member) for member in members}
        if len({str(s) for s in specs.values()}) > 1:
            given = ", ".join(f"{m.rpartition('.')[2]}={s}" for m, s in specs.items())
            raise ValueError(f"{name}: this model computes query, key and value of layer {name.split('.')[1]} as one "
                             f"linear, so they take one spec, but the plan gives {given}; give them the same spec "
                             "(e.g. one 'layer.<i>' or '*' entry)")
        return specs[members[0]]

    def _winner(self, site: str, member: str) -> LayerSpec:
        best, best_key = _FP, None
        for order, (pattern, spec) in enumerate(self._specs):
            rank = _site_rank(pattern, site, member)
            if rank is not None:
                key = (rank, order)
                if best_key is None or key > best_key:
                    best, best_key = spec, key
        return best

    def resolve(self, names: Iterable[str], *, strict: bool = True) -> dict[str, LayerSpec]:
        """Specs for ``names``. With ``strict``, a pattern matching none of them is an error."""
        names = list(names)
        if strict:
            for pattern in self.unmatched(names):
                raise ValueError(f"plan pattern {pattern!r} matches no layer; layers are: {preview(names)} "
                                 f"(components: {', '.join(COMPONENTS)})")
        return {n: self.spec_for(n) for n in names}

    def unmatched(self, names: Iterable[str]) -> list[str]:
        """The patterns that match none of ``names``, in entry order."""
        names = list(names)
        return [pattern for pattern, _ in self._specs
                if all(_site_rank(pattern, n, m) is None for n in names for m in qkv_members(n))]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for pattern, spec in self._specs:
            out.pop(pattern, None)  # a repeated pattern keeps its last position, as it wins
            out[pattern] = str(spec)
        return out

    def to_json(self, path: "str | Path | None" = None) -> str:
        return dump_json(self.to_dict(), path)

    @classmethod
    def from_json(cls, text_or_path: "str | Path") -> "Plan":
        """From a JSON string or a path to a JSON file holding a ``{pattern: spec}`` object."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"plan must be a JSON object or a path to one, got {text!r}")
            text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"plan is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"plan JSON must be an object mapping patterns to specs, got {type(data).__name__}")
        return cls(data)

    @classmethod
    def coerce(cls, plan: "Plan | Mapping[str, str] | Iterable[tuple[str, str]] | str") -> "Plan":
        """The one way a user-supplied plan becomes a :class:`Plan`.

        A :class:`Plan` is returned as is; text starting with ``{`` or ending in ``.json`` is plan JSON
        or a path to a JSON file (:meth:`from_json`); any other string is one spec for every layer; a
        ``{pattern: spec}`` mapping or a list/tuple of ``(pattern, spec)`` pairs is read as entries.
        Anything else is a ``TypeError``.
        """
        if isinstance(plan, Plan):
            return plan
        if isinstance(plan, str) and (plan.lstrip().startswith("{") or plan.endswith(".json")):
            return cls.from_json(plan)
        if isinstance(plan, str):  # one spec for every layer
            return cls({"*": plan})
        if isinstance(plan, (Mapping, list, tuple)):
            return cls(plan)
        raise TypeError(f"plan must be a Plan, a {{pattern: spec}} mapping, a list of (pattern, spec) pairs, "
                        f"a spec string, plan JSON or a path to a .json file, got {type(plan).__name__}")

    def __eq__(self, other) -> bool:
        return isinstance(other, Plan) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Plan({self.to_dict()!r})"

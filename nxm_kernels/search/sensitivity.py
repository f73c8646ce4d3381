"""Sensitivity profiling: the cost of compressing one part of the encoder at a time.

For every *group* of encoder linears and every candidate spec, compress only that group, measure
the :class:`~nxm_kernels.search.objective.Evaluator` cost on a small held-out sample, and restore
the model. Groups are the six component types (``granularity="component"``: ``query`` is
``layer.*.query``, ...) or every single linear (``granularity="layer"``: ``layer.3.ffn2``, ...).

Two modes:

* ``"oneshot"`` (default, cheap): magnitude N:M pruning plus the kernels' quantization math applied
  in place (:func:`fake_compressed`): per-output-channel weight codes and per-token int8
  activations, exactly what ``NxMLinear`` computes up to float rounding. One forward pass over the
  sample per (group, spec): 6 groups x 4 specs = 24 passes for the default profile.
* ``"qat"`` (better estimates, slower): the group is compressed as the training path's ``QATLinear`` on
  a copy of the model, fine-tuned for a few steps and then evaluated (:mod:`nxm_kernels.search.qat`).

**Cache.** Results are stored as JSON under ``cache_dir``, keyed by a fingerprint of the model's
weights, of the sample, and of the objective, mode and granularity (and the QAT settings). Entries
are per (group, spec) and saved as they are measured, so a rerun with another budget, a rerun
after an interruption, or a rerun with one more candidate spec measures only what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .._checks import check_choice, preview
from .._json import dump_json
from ..models.encoder import encoder_linears
from ..models.swap import replace_sites
from ..plan import SITE_COMPONENTS, Plan
from ..quant import fake_quant_per_token, fake_quant_weight
from ..sparsity import prune_nm
from ..spec import LayerSpec, parse_spec
from .objective import Evaluator, check_batches, fingerprint_batches, fingerprint_model

__all__ = ["DEFAULT_CANDIDATES", "GRANULARITIES", "MODES", "CACHE_VERSION", "Sensitivity", "fake_compressed",
           "group_sites", "profile_sensitivity", "default_cache_dir", "candidate_specs", "DEFAULT_CACHE_DESCRIPTION"]

logger = logging.getLogger(__name__)

#: The packable specs, from the gentlest to the most aggressive.
DEFAULT_CANDIDATES = ("dense-w8a8", "2:4-w8a8", "dense-w4a8", "2:4-w4a8")
GRANULARITIES = ("component", "layer")
MODES = ("oneshot", "qat")
#: Bump when the meaning of a cached number changes (the compression math, an objective).
CACHE_VERSION = 1


def candidate_specs(candidates, name: str = "candidates") -> list[str]:
    """The distinct specs of ``candidates`` (a spec string or an iterable of them) without ``fp``, which is
    always an option and costs nothing; an error naming ``name`` when none is left or one does not parse."""
    if isinstance(candidates, str):
        candidates = [candidates]
    specs = []
    for c in candidates:
        try:
            s = parse_spec(c)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name}: {exc}") from None
        if not s.is_fp and str(s) not in specs:
            specs.append(str(s))
    if not specs:
        raise ValueError(f"{name} must name at least one spec other than 'fp', got {list(candidates)!r}")
    return specs


#: How the help texts of ``nxm search`` and the examples name the default sensitivity cache.
DEFAULT_CACHE_DESCRIPTION = "$NXM_CACHE_DIR/sensitivity, else ~/.cache/nxm_kernels/sensitivity"


def default_cache_dir() -> Path:
    """``$NXM_CACHE_DIR/sensitivity``, else ``$XDG_CACHE_HOME/nxm_kernels/sensitivity`` (~/.cache)."""
    root = os.environ.get("NXM_CACHE_DIR")
    if root:
        return Path(root) / "sensitivity"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nxm_kernels" / "sensitivity"


# ------------------------------------------------------------------------------- compression
def _compressed_weight(weight: torch.Tensor, spec: LayerSpec) -> torch.Tensor:
    w = weight.detach().float()
    if spec.sparse:
        w = prune_nm(w, pattern=spec.pattern)
    return fake_quant_weight(w, spec.weight_bits, ste=False).to(weight.dtype)


def _quantize_input(module, args):
    # Per-token int8 on the layer's input, as the kernels quantize it.
    return (fake_quant_per_token(args[0], ste=False),) + tuple(args[1:])


@contextlib.contextmanager
def fake_compressed(model: nn.Module, assignment: "Mapping[str, str | LayerSpec] | Plan"):
    """Temporarily compress encoder linears in place with the kernels' math; restore them on exit.

    ``assignment`` maps layer names (``layer.<i>.<component>``) to specs, or is anything
    :meth:`Plan.coerce <nxm_kernels.plan.Plan.coerce>` takes. ``fp`` layers are left alone. Weights are
    magnitude-pruned to the spec's N:M pattern and fake-quantized per output channel; inputs are
    fake-quantized per token (int8). Works under ``torch.no_grad`` for evaluation; the original weights
    come back bit for bit, also when the body raises. Yields ``{layer name: spec}`` of the layers it
    compressed (``fp`` layers are not listed).
    """
    sites = encoder_linears(model)
    names = [s.name for s in sites]
    if isinstance(assignment, Mapping) and (unknown := sorted(set(assignment) - set(names))):
        raise ValueError(f"assignment names {unknown[:5]} are not encoder linears; layers are: {preview(names)}")
    saved, hooks = [], []

    def compress_in_place(site, spec: LayerSpec) -> nn.Module:
        # The site keeps its module: it is changed in place (and restored below), so code holding the
        # module (an Evaluator, a test) sees the compressed layer too.
        module = site.module
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{site.name} is a {type(module).__name__}, not an nn.Linear (already swapped?)")
        saved.append((module, module.weight.detach().clone()))
        module.weight.copy_(_compressed_weight(module.weight, spec))
        hooks.append(module.register_forward_pre_hook(_quantize_input))
        return module

    try:
        with torch.no_grad():
            replaced = replace_sites(sites, assignment, compress_in_place)
        yield {site.name: spec for site, spec, _ in replaced}
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for module, w in saved:
                module.weight.copy_(w)


# ------------------------------------------------------------------------------- groups
def group_sites(names: Iterable[str], granularity: str = "component") -> dict[str, list[str]]:
    """``{group: [layer names]}``: per component type (``query`` ..., ``qkv`` for one linear computing query,
    key and value) or one group per layer."""
    check_choice("granularity", granularity, GRANULARITIES)
    names = list(names)
    if granularity == "layer":
        return {n: [n] for n in names}
    groups = {c: [n for n in names if n.rsplit(".", 1)[-1] == c] for c in SITE_COMPONENTS}
    return {c: members for c, members in groups.items() if members}


# ------------------------------------------------------------------------------- results
@dataclass
class Sensitivity:
    """Measured costs ``costs[group][spec]`` (lower is better; see :mod:`.objective`)."""

    costs: dict[str, dict[str, float]]
    groups: dict[str, list[str]]
    candidates: list[str]
    granularity: str = "component"
    objective: str = "divergence"
    mode: str = "oneshot"
    base_value: float = 0.0
    key: str = ""
    samples: int = 0
    computed: int = 0   # evaluations run to build this profile
    reused: int = 0     # entries taken from the cache
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for g, row in self.costs.items():
            if g not in self.groups:
                raise ValueError(f"costs has group {g!r} that groups does not define")
            for spec, c in row.items():
                parse_spec(spec)
                if not isinstance(c, (int, float)) or c != c:
                    raise ValueError(f"cost of {g}/{spec} must be a number, got {c!r}")

    def cost(self, group: str, spec: str) -> float:
        if str(parse_spec(spec)) == "fp":
            return 0.0
        try:
            return self.costs[group][str(parse_spec(spec))]
        except KeyError:
            raise KeyError(f"no sensitivity measured for group {group!r} with spec {spec!r}") from None

    def to_dict(self) -> dict:
        return {"granularity": self.granularity, "objective": self.objective, "mode": self.mode,
                "base_value": self.base_value, "key": self.key, "samples": self.samples,
                "candidates": list(self.candidates), "groups": self.groups, "costs": self.costs,
                "computed": self.computed, "reused": self.reused, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Sensitivity":
        if not isinstance(d, Mapping) or "costs" not in d or "groups" not in d:
            raise ValueError("a sensitivity profile needs 'costs' and 'groups'")
        return cls(costs={g: dict(r) for g, r in d["costs"].items()}, groups={g: list(m) for g, m in d["groups"].items()},
                   candidates=list(d.get("candidates", [])), granularity=d.get("granularity", "component"),
                   objective=d.get("objective", "divergence"), mode=d.get("mode", "oneshot"),
                   base_value=float(d.get("base_value", 0.0)), key=d.get("key", ""),
                   samples=int(d.get("samples", 0)), computed=int(d.get("computed", 0)),
                   reused=int(d.get("reused", 0)), extra=dict(d.get("extra", {})))

    def to_json(self, path: "str | Path | None" = None) -> str:
        return dump_json(self.to_dict(), path)

    def table(self) -> str:
        """Groups as rows, candidate specs as columns."""
        head = f"{'group':<18}" + "".join(f"{c:>13}" for c in self.candidates)
        rows = [f"sensitivity ({self.objective}, {self.mode}, {self.samples} samples; lower is better)",
                head, "-" * len(head)]
        for g in self.costs:
            rows.append(f"{g:<18}" + "".join(f"{self.costs[g].get(c, float('nan')):>13.4g}" for c in self.candidates))
        return "\n".join(rows)


# ------------------------------------------------------------------------------- cache
class _Cache:
    """One JSON file per profile key; entries ``costs[group][spec]`` written as they come."""

    def __init__(self, cache_dir: "str | Path | None", key: str, meta: dict):
        self.path = None if cache_dir is None else Path(cache_dir).expanduser() / f"sensitivity-{key[:32]}.json"
        self.data = {"meta": meta, "base_value": None, "costs": {}}
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("meta") == meta:
                    self.data = data
                else:
                    logger.warning("sensitivity cache %s was written for other settings; ignoring it", self.path)
            except (OSError, json.JSONDecodeError) as exc:
                logger.warning("sensitivity cache %s is unreadable (%s); measuring again", self.path, exc)

    def get(self, group: str, spec: str):
        return self.data["costs"].get(group, {}).get(spec)

    def put(self, group: str, spec: str, cost: float) -> None:
        self.data["costs"].setdefault(group, {})[spec] = cost
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic replace: an interrupted run never leaves a half-written file behind.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def _metric_key(metric_fn) -> str | None:
    # A metric object may name itself (``cache_key``, e.g. "glue:cola"); else its qualified name.
    if metric_fn is None:
        return None
    return str(getattr(metric_fn, "cache_key", None) or getattr(metric_fn, "__qualname__", type(metric_fn).__name__))


# ------------------------------------------------------------------------------- profiling
def profile_sensitivity(model: nn.Module, batches, candidates: Iterable[str] = DEFAULT_CANDIDATES, *,
                        granularity: str = "component", objective: str = "divergence",
                        metric_fn: Callable | None = None, mode: str = "oneshot",
                        train_batches=None, qat_steps: int = 20, qat_lr: float = 2e-5,
                        cache_dir: "str | Path | None" = None, progress: bool = True) -> Sensitivity:
    """Measure the cost of compressing each group with each candidate spec (see the module docstring).

    Args:
        model: a Hugging Face BERT-family model (task model or bare encoder) with ``nn.Linear`` encoder
            linears; it is modified only temporarily and restored exactly.
        batches: the held-out sample: a list of dicts ``model(**batch)`` accepts (``labels`` for the
            ``loss``/``metric`` objectives).
        candidates: spec strings to try (``fp`` is implicit: cost 0).
        granularity: ``"component"`` (six groups) or ``"layer"`` (one group per linear).
        objective, metric_fn: see :class:`~nxm_kernels.search.objective.Evaluator`.
        mode: ``"oneshot"`` or ``"qat"`` (needs ``train_batches``; ``qat_steps`` optimizer steps at
            ``qat_lr`` per (group, spec)).
        cache_dir: where to keep results (``None``: no cache). See :func:`default_cache_dir`.
    """
    sites = encoder_linears(model)  # first: it checks that model is a module holding a known encoder
    specs = candidate_specs(candidates)
    check_choice("mode", mode, MODES)
    batches = check_batches(batches)
    groups = group_sites([s.name for s in sites], granularity)

    meta = {"cache_version": CACHE_VERSION, "model": fingerprint_model(model), "data": fingerprint_batches(batches),
            "objective": objective, "metric": _metric_key(metric_fn),
            "mode": mode, "granularity": granularity}
    if mode == "qat":
        if train_batches is None:
            raise ValueError("mode 'qat' needs train_batches (the short fine-tuning data)")
        train_batches = check_batches(train_batches)
        if not all("labels" in b for b in train_batches):
            raise ValueError("mode 'qat' needs a 'labels' tensor in every training batch")
        meta.update(train=fingerprint_batches(train_batches), qat_steps=qat_steps, qat_lr=qat_lr)
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    cache = _Cache(cache_dir, key, meta)

    todo = [(g, s) for g in groups for s in specs if cache.get(g, s) is None]
    reused = len(groups) * len(specs) - len(todo)
    evaluator = None
    if todo or cache.data.get("base_value") is None:
        evaluator = Evaluator(model, batches, objective, metric_fn)
        cache.data["base_value"] = evaluator.base_value
        cache.save()
    logger.info("sensitivity: %d groups x %d specs, %d cached, %d to measure (%s, %s)", len(groups), len(specs),
                reused, len(todo), mode, objective)
    for g, s in tqdm(todo, desc=f"sensitivity ({mode})", disable=not progress or not todo):
        if mode == "oneshot":
            with fake_compressed(model, {n: s for n in groups[g]}):
                cost = evaluator.cost(model)
        else:
            from .qat import short_qat_cost  # the training path: only needed in this mode
            cost = short_qat_cost(model, {n: s for n in groups[g]}, evaluator, train_batches,
                                  steps=qat_steps, lr=qat_lr)
        logger.debug("sensitivity %s %s: %.6g", g, s, cost)
        cache.put(g, s, float(cost))
    costs = {g: {s: cache.get(g, s) for s in specs} for g in groups}
    return Sensitivity(costs=costs, groups=groups, candidates=specs, granularity=granularity, objective=objective,
                       mode=mode, base_value=float(cache.data["base_value"]), key=key,
                       samples=sum(next(iter(b.values())).shape[0] for b in batches),
                       computed=len(todo), reused=reused,
                       extra={"cache_file": None if cache.path is None else str(cache.path)})

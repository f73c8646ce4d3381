"""Measured dispatch: which backend and kernel variant runs the op, per (GPU, weight kind, N, K, M bucket).

``backend="auto"`` on a GPU does not assume an order of backends: it looks the choice up in timing
tables, fastest measured first.

**Candidates** are the kernel variants the backends declare (``"triton"``, ``"cuda"``, later
``"triton:fused"``, ``"cuda:cutlass"``; see :mod:`nxm_kernels.backends`), filtered by what runs on
the device and the weight.

**M buckets** are :data:`M_BUCKETS` (powers of two, 16 ... 8192); an M belongs to the smallest
bucket >= M (M > 8192 to the last). The choice depends only on the weight (kind, N, K) and the
bucket, never on data, so a captured CUDA graph or a compiled graph stays valid: ``NxMLinear``
resolves its choice for every bucket once (construction, ``.to()``, load) and its ``forward`` picks
by list index.

**Tables** (JSON, format ``nxm-dispatch`` version 1)::

    {"format": "nxm-dispatch", "version": 1,
     "tables": [{"gpu": "NVIDIA H100 80GB HBM3",          # torch.cuda.get_device_name()
                 "source": "where the numbers come from",
                 "entries": [{"kind": "2:4-w8a8", "n": 768, "k": 768, "m": 16,   # m: the bucket
                              "time_us": {"triton": 6.25, "cuda": 7.75}}, ...]}]}

Two sources, in this order: the user's cache ``<cache>/dispatch/<gpu>.json`` written by
``nxm tune`` (``<cache>`` is ``$NXM_CACHE_DIR``, else ``$XDG_CACHE_HOME/nxm_kernels``, else
``~/.cache/nxm_kernels``), then the committed default ``dispatch_default.json`` of this package,
derived from the GPU runs in ``benchmarks/results/`` (it says which). A corrupt cache is ignored
with a warning. For a weight, the first table with entries of its kind answers: the entry at the
same (N, K, bucket) if measured, else the nearest measured one (distance: the sum of
``|log2|`` ratios of N, K and bucket); among that entry's timed candidates the fastest one
available here wins. Without any entry (another GPU, an untuned kind), the first available
candidate in :data:`nxm_kernels.backends.AUTO_ORDER` runs.

``NXM_BACKEND`` and an explicit ``backend=`` win over the table: a backend name restricts the choice
to its own variants, a variant name (``"triton:fused"``) forces it wherever it serves the bucket.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .backends import (AUTO_ORDER, Variant, WeightMeta, env_backend, get_backend, resolve_backend,
                       split_candidate, unavailable_reason, variants, weight_unsupported_reason)

__all__ = ["M_BUCKETS", "TABLE_FORMAT", "TABLE_VERSION", "DispatchTable", "m_bucket", "bucket_index",
           "cache_dir", "cache_path", "gpu_name", "load_tables", "candidates", "choose", "plan", "variant",
           "reload", "tune"]

logger = logging.getLogger(__name__)

#: The M buckets the choice is made for: an M runs with its bucket's choice.
M_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
TABLE_FORMAT = "nxm-dispatch"
TABLE_VERSION = 1
_DEFAULT_FILE = "dispatch_default.json"

# bucket_index by (M - 1).bit_length(): a list lookup instead of a loop (M >= 1; 1 << 62 tokens is plenty).
_INDEX_BY_BITS = [min(max(bits - 4, 0), len(M_BUCKETS) - 1) for bits in range(64)]


def bucket_index(m: int) -> int:
    """Index in :data:`M_BUCKETS` of the bucket of ``m >= 1`` rows."""
    return _INDEX_BY_BITS[(m - 1).bit_length()]


def m_bucket(m: int) -> int:
    """The bucket of ``m >= 1`` rows: the smallest of :data:`M_BUCKETS` >= m (the last for larger m)."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be an int >= 1, got {m!r}")
    return M_BUCKETS[bucket_index(m)]


# ---------------------------------------------------------------------------------------- tables
@dataclass
class DispatchTable:
    """Timings of candidates on one GPU: ``entries[(kind, n, k, bucket)] = {candidate: microseconds}``."""

    gpu: str
    entries: dict = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict:
        rows = [{"kind": kind, "n": n, "k": k, "m": b, "time_us": dict(sorted(t.items(), key=lambda kv: kv[1]))}
                for (kind, n, k, b), t in sorted(self.entries.items())]
        return {"gpu": self.gpu, "source": self.source, "entries": rows}

    @classmethod
    def from_dict(cls, d) -> "DispatchTable":
        """Parse one table (see the module docstring); raises ValueError naming the bad field."""
        if not isinstance(d, dict) or not isinstance(d.get("gpu"), str) or not isinstance(d.get("entries"), list):
            raise ValueError("a table must be an object with 'gpu' (str) and 'entries' (list)")
        out = cls(d["gpu"], {}, str(d.get("source", "")))
        for i, e in enumerate(d["entries"]):
            try:
                kind, n, k, m, times = e["kind"], e["n"], e["k"], e["m"], e["time_us"]
                ok = (isinstance(kind, str) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                    for v in (n, k, m))
                      and isinstance(times, dict) and times
                      and all(isinstance(c, str) and isinstance(t, (int, float)) and not isinstance(t, bool)
                              and math.isfinite(t) and t > 0 for c, t in times.items()))
            except (KeyError, TypeError):
                ok = False
            if not ok:
                raise ValueError(f"entry {i} of the {d['gpu']!r} table is malformed: {e!r}")
            # Several timed M in one bucket (e.g. M=1 and M=16): the larger one, the bucket's worst case.
            key = (kind, n, k, m_bucket(m))
            prev = out.entries.get(key)
            if prev is None or m >= prev[0]:
                out.entries[key] = (m, {c: float(t) for c, t in times.items()})
        out.entries = {key: times for key, (_, times) in out.entries.items()}
        return out

    def ranking(self, meta: WeightMeta, bucket: int, available) -> list[str]:
        """The available candidates timed at the nearest measured point of ``meta``'s kind, fastest first
        (empty when this table has no entry of that kind timing any of them)."""
        best, best_d = None, math.inf
        for (kind, n, k, b), times in self.entries.items():
            if kind != meta.kind or not any(c in times for c in available):
                continue
            d = abs(math.log2(n / meta.n)) + abs(math.log2(k / meta.k)) + abs(math.log2(b / bucket))
            if d < best_d:
                best, best_d = times, d
        if best is None:
            return []
        return sorted((c for c in best if c in available), key=lambda c: best[c])


def _read_file(path: Path) -> list[DispatchTable]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        raise ValueError(f"not an {TABLE_FORMAT!r} file (format={data.get('format') if isinstance(data, dict) else None!r})")
    if data.get("version") != TABLE_VERSION:
        raise ValueError(f"version {data.get('version')!r} is not {TABLE_VERSION}")
    if not isinstance(data.get("tables"), list):
        raise ValueError("'tables' must be a list")
    return [DispatchTable.from_dict(t) for t in data["tables"]]


def write_tables(path: Path, tables: list[DispatchTable]) -> Path:
    """Write ``tables`` as one dispatch file (atomically: a crash never leaves a half-written cache)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"format": TABLE_FORMAT, "version": TABLE_VERSION,
                               "tables": [t.to_dict() for t in tables]}, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def cache_dir() -> Path:
    """``$NXM_CACHE_DIR/dispatch``, else ``$XDG_CACHE_HOME/nxm_kernels/dispatch`` (``~/.cache`` by default)."""
    root = os.environ.get("NXM_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "dispatch"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nxm_kernels" / "dispatch"


def cache_path(gpu: str) -> Path:
    """The ``nxm tune`` cache file of the GPU called ``gpu`` (its name made file-safe)."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "gpu"
    return cache_dir() / f"{slug}.json"


_TABLES: dict[str, list[DispatchTable]] = {}
_PLANS: dict[tuple, tuple[str, ...]] = {}
_GPU_NAMES: dict[int, str] = {}


def load_tables(gpu: str) -> list[DispatchTable]:
    """The tables for ``gpu``, in the order they are consulted: the user's cache, then the default.
    Read once per process (see :func:`reload`)."""
    if gpu in _TABLES:
        return _TABLES[gpu]
    tables = []
    path = cache_path(gpu)
    if path.is_file():
        try:
            tables += [t for t in _read_file(path) if t.gpu == gpu]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
            warnings.warn(f"ignoring the corrupt dispatch cache {path} ({exc}); rerun `nxm tune` to rewrite it",
                          RuntimeWarning, stacklevel=2)
    default = resources.files(__package__).joinpath(_DEFAULT_FILE)
    tables += [t for t in _read_file(Path(str(default))) if t.gpu == gpu]
    _TABLES[gpu] = tables
    return tables


def reload() -> None:
    """Forget the tables and choices read so far (after ``nxm tune`` or a change of ``NXM_CACHE_DIR``)."""
    _TABLES.clear()
    _PLANS.clear()


def gpu_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name`` of a CUDA device (asked once per device index)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _GPU_NAMES:
        _GPU_NAMES[index] = torch.cuda.get_device_name(index)
    return _GPU_NAMES[index]


# ---------------------------------------------------------------------------------------- choice
def variant(candidate: str) -> Variant:
    """The :class:`~nxm_kernels.backends.Variant` called ``candidate`` (``"triton"``, ``"triton:fused"``)."""
    name, candidate = split_candidate(candidate)
    for v in variants(name):
        if v.name == candidate:
            return v
    raise ValueError(f"backend {name!r} has no kernel variant {candidate!r}")  # pragma: no cover - split checks


def candidates(device: torch.device, meta: WeightMeta, only: str | None = None) -> list[Variant]:
    """The variants that run ``meta`` on ``device`` (of backend ``only``, if given), in the order of
    :data:`~nxm_kernels.backends.AUTO_ORDER` then the backends' declaration order."""
    out = []
    for name in (only,) if only else AUTO_ORDER:
        if unavailable_reason(name, device) is None and weight_unsupported_reason(name, meta) is None:
            out += [v for v in variants(name) if v.reason(meta, device) is None]
    return out


def choose(tables: list[DispatchTable], meta: WeightMeta, bucket: int, available: list[Variant]) -> str:
    """The candidate for ``meta`` at M bucket ``bucket`` among ``available`` (see the module docstring)."""
    serving = [v.name for v in available if v.max_m is None or bucket <= v.max_m]
    if not serving:
        raise RuntimeError(f"no kernel variant serves M bucket {bucket} for {meta}")
    for table in tables:
        ranked = table.ranking(meta, bucket, serving)
        if ranked:
            return ranked[0]
    return serving[0]


def plan(backend: str, device, meta: WeightMeta) -> tuple[str, ...]:
    """The candidate for every bucket of :data:`M_BUCKETS`, for ``backend`` (``"auto"``, a backend or a
    variant) on ``device``; raises like :func:`~nxm_kernels.backends.resolve_backend` when none can run.

    Availability is asked every call (it is what the caller must hear about); the table search is
    memoized per (GPU, weight, candidates) until :func:`reload`.
    """
    device = torch.device(device)
    name = resolve_backend(backend, device, meta)  # every error (unknown, unavailable, env) is raised here
    chosen = backend if backend != "auto" else (env_backend() or "auto")
    if chosen != "auto" and chosen != name:  # a variant was named: it runs wherever it serves the bucket
        forced = variant(chosen)
        return tuple(chosen if forced.max_m is None or b <= forced.max_m else name for b in M_BUCKETS)
    if device.type != "cuda":
        # Off a GPU there is nothing measured: the backend's default kernel (on a CPU, "auto" is the
        # reference; the Triton interpreter is for tests).
        return (name,) * len(M_BUCKETS)
    available = candidates(device, meta, only=None if chosen == "auto" else name)
    gpu = gpu_name(device)
    key = (gpu, meta, tuple(v.name for v in available))
    if key not in _PLANS:
        tables = load_tables(gpu)
        _PLANS[key] = tuple(choose(tables, meta, b, available) for b in M_BUCKETS)
    return _PLANS[key]


# ---------------------------------------------------------------------------------------- tuning
BERT_SHAPES = ((768, 768), (2304, 768), (3072, 768), (768, 3072), (1024, 1024), (4096, 1024), (1024, 4096))
KINDS = ("2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8")


def tune(device=None, shapes=BERT_SHAPES, kinds=KINDS, ms=M_BUCKETS, *, reps: int = 50, dtype=torch.float16,
         progress: bool = True, write: bool = True) -> tuple[DispatchTable, Path | None]:
    """Time every candidate (backends and variants that run here) on ``shapes`` x ``kinds`` x ``ms``
    on the current (or given) CUDA device; write the cache :func:`cache_path` (``write=True``) and
    use it from then on. Returns ``(table, path)``.

    Each point runs the eager op (``Variant.linear``) on ``dtype`` activations: quantization, GEMM and
    epilogue, as ``NxMLinear`` runs it.
    """
    from tqdm.auto import tqdm

    from .format import pack
    from .spec import parse_spec
    from .timing import measure

    if not torch.cuda.is_available():
        raise RuntimeError("nxm tune times kernels on a CUDA GPU, and torch sees none on this machine")
    device = torch.device(device if device is not None else "cuda")
    if device.type != "cuda":
        raise ValueError(f"device must be a CUDA device, got {device}")
    gpu = gpu_name(device)
    jobs = [(kind, n, k, m) for kind in kinds for (n, k) in shapes for m in ms]
    table = DispatchTable(gpu, {}, f"nxm tune on {gpu} (torch {torch.__version__}, {dtype}, median of {reps})")
    bar = tqdm(total=len(jobs), desc=f"nxm tune {gpu}", unit="point", disable=not progress)
    for kind in kinds:
        spec = parse_spec(kind)
        for n, k in shapes:
            packed = pack(torch.randn(n, k, device=device), bits=spec.weight_bits, pattern=spec.pattern,
                          prune=spec.sparse)
            meta = WeightMeta.of(packed)
            layouts = {}
            bias = torch.randn(n, device=device, dtype=dtype)
            # The reference backend is a correctness oracle (float64 matmuls), never a contender.
            runnable = [v for v in candidates(device, meta) if not v.name.startswith("reference")]
            for m in ms:
                x = torch.randn(m, k, device=device, dtype=dtype)
                times = {}
                for v in runnable:
                    if v.max_m is not None and m > v.max_m:
                        continue
                    backend = v.name.partition(":")[0]
                    if backend not in layouts:
                        layouts[backend] = get_backend(backend).prepare(packed)
                    # CUDA events after one warm-up (autotuning) call: the median of reps, in microseconds
                    times[v.name] = 1e3 * measure(lambda: v.linear(x, layouts[backend], bias, "none"), device,
                                                  min_iters=reps).median_ms
                if times:
                    table.entries[(kind, n, k, m_bucket(m))] = times
                bar.update(1)
    bar.close()
    path = None
    if write:
        path = write_tables(cache_path(gpu), [table])
        reload()
    return table, path

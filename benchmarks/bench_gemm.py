"""GEMM microbenchmark: our sparse-int kernels against the vendor libraries, BERT shapes, M = 1..16384.

For every (N, K) projection shape of BERT-base/-large and every M (tokens), each *provider* is built,
checked for correctness, then timed. The providers (fp16 cuBLAS, int8 cuBLASLt, int8 2:4 cuSPARSELt
and CUTLASS, fp16 2:4 cuSPARSELt; our backends' whole op, fp16 in and out, and their GEMM alone, int8
in and int32 out; the Triton op forced onto one or two launches), the correctness checks (``OP_RTOL``,
``OP_ATOL``, ``FLOAT_RTOL``, ``FLOAT_ATOL``; a provider that fails is reported ``incorrect`` and not
timed), the timing (``do_bench`` over input sets that rotate through >= 3x the L2) and every metric
reported per point are described once, in benchmarks/README.md ("What the GEMM benchmark compares",
"Reading the GEMM results"). Writes ``gemm.json``, PNG plots and prints a table.

    python benchmarks/bench_gemm.py --quick            # a few M values (what gpu_validate.sh runs)
    python benchmarks/bench_gemm.py                    # the full sweep
    python benchmarks/bench_gemm.py --smoke            # CPU: tiny shape, reference + interpreted Triton
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from tqdm import tqdm

from benchmarks import common, plots
from nxm_kernels.cli.tune import int_list, shape_list  # noqa: E402 - after common sets TRITON_INTERPRET
from nxm_kernels.timing import measure, text_table  # noqa: E402

logger = logging.getLogger("benchmarks.gemm")

#: (N, K) = (out_features, in_features) -> where the shape occurs; most telling first, so a run cut
#: short by its time box still has the shapes that matter most.
SHAPES: dict[tuple[int, int], str] = {
    (3072, 768): "BERT-base FFN1",
    (768, 3072): "BERT-base FFN2",
    (768, 768): "BERT-base Q/K/V/attn-out",
    (4096, 1024): "BERT-large FFN1",
    (1024, 4096): "BERT-large FFN2",
    (1024, 1024): "BERT-large Q/K/V/attn-out",
    (2304, 768): "BERT-base fused QKV",
}
M_FULL = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
# --quick fits gpu_validate.sh's time box: every Triton autotuning key (shape x M bucket x spec x
# mode) costs compiles and timed trials, so fewer shapes and the 2:4 specs only.
M_QUICK = [1, 16, 64, 256, 2048, 8192]
QUICK_SHAPES = [(3072, 768), (768, 3072), (768, 768), (4096, 1024)]
QUICK_SPECS = ("2:4-w8a8", "2:4-w4a8")
SMOKE_SHAPES = {(40, 72): "smoke (K not a multiple of 16: exercises padding)"}
SMOKE_M = [1, 5]
SPECS = ("2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8")

#: Our op (fp16 out) against the reference op: both compute the same int32 accumulator, so only the
#: float32 epilogue and the final fp16 rounding may differ (plus a code off by one where a token's
#: value sits on a rounding tie, if a quantizer divides differently): |y - ref| <= ATOL*max|ref| + RTOL*|ref|.
OP_RTOL, OP_ATOL = 1e-2, 5e-3
#: Float baselines (fp16 in, fp32 accumulation, fp16 out) against a float64 product.
FLOAT_RTOL, FLOAT_ATOL = 1e-2, 5e-3



class Unsupported(Exception):
    """The provider cannot run this problem (shape/dtype rules); recorded as ``unavailable``."""


class Incorrect(Exception):
    """The provider ran and gave a wrong answer; recorded as ``incorrect`` and not timed."""


@dataclass
class Case:
    """One provider on one problem, built and checked, ready to time."""

    run: Callable[[], object]
    bytes: int
    padded_m: int
    n_sets: int
    check: dict
    note: str = ""


# ------------------------------------------------------------------------------------------ problem
class Problem:
    """The data of one (N, K) shape, shared by every provider and M (made lazily, once)."""

    def __init__(self, n: int, k: int, device: torch.device, l2_sets: Callable[[int], int]):
        import nxm_kernels as nxm

        self.n, self.k, self.device, self.l2_sets = n, k, device, l2_sets
        self.w = torch.randn(n, k, device=device)  # float32 master weight
        self._cache: dict[str, object] = {}
        self._acts: tuple | None = None
        self.nxm = nxm

    def packed(self, spec: str):
        return self.cached(f"pack {spec}", lambda: self.nxm.pack(self.w, pattern=spec, prune=True))

    def cached(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def codes_dense(self) -> torch.Tensor:
        """Dense int8 weight codes ``[N, K]`` (for ``torch._int_mm``)."""
        return self.cached("codes_dense", lambda: self.packed("dense-w8a8").int_weight()[:, : self.k].contiguous())

    @property
    def codes_24(self) -> torch.Tensor:
        """2:4-sparse int8 weight codes ``[N, K]`` (for cuSPARSELt / CUTLASS)."""
        return self.cached("codes_24", lambda: self.packed("2:4-w8a8").int_weight()[:, : self.k].contiguous())

    @property
    def w16(self) -> torch.Tensor:
        return self.cached("w16", lambda: self.w.half())

    @property
    def w16_24(self) -> torch.Tensor:
        return self.cached("w16_24", lambda: self.nxm.prune_nm(self.w, 2, 4).half())

    def activations(self, m: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Rotating fp16 activation sets ``[m, K]`` and their per-token int8 codes (public quantizer),
        as many as an fp16 input and output of ``m`` rows need to rotate through the L2."""
        if self._acts is None or self._acts[0] != m:
            self._acts = None  # free the previous M's sets first
            n_sets = self.l2_sets(2 * m * self.k + 2 * m * self.n)
            xs = [torch.randn(m, self.k, device=self.device, dtype=torch.float16) for _ in range(n_sets)]
            xqs = [self.nxm.quantize_per_token(x)[0] for x in xs]
            self._acts = (m, xs, xqs)
        return self._acts[1], self._acts[2]


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    extra = torch.randint_like(t[:1], -100, 100) if not t.is_floating_point() else torch.randn_like(t[:1])
    return torch.cat([t, extra.expand(rows - t.shape[0], -1)]).contiguous()


def _round_up(v: int, mult: int) -> int:
    return -(-v // mult) * mult


def _m_candidates(m: int, min_m: int = 1) -> list[int]:
    """Row counts to try, smallest first: M itself, then M padded to the usual alignments."""
    return sorted({max(c, min_m) for c in (m, _round_up(m, 8), _round_up(m, 16), _round_up(m, 32), _round_up(m, 64))})


def exact_ref(xq: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``xq @ codes^T`` exactly (float64 holds these integer sums without rounding)."""
    return torch.round(xq.double() @ codes.double().t()).to(torch.int32)


def check_exact(out: torch.Tensor, ref: torch.Tensor) -> dict:
    if tuple(out.shape) != tuple(ref.shape):
        raise Incorrect(f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    if out.dtype != torch.int32:
        raise Incorrect(f"output dtype {out.dtype}, expected int32")
    if not torch.equal(out, ref):
        bad = int((out != ref).sum())
        raise Incorrect(f"int32 result differs from the exact product in {bad}/{ref.numel()} entries "
                        f"(max |diff| {int((out.long() - ref.long()).abs().max())})")
    return {"kind": "exact int32", "ok": True}


def check_close(out: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float, what: str) -> dict:
    if tuple(out.shape) != tuple(ref.shape):
        raise Incorrect(f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    o, r = out.double(), ref.double()
    if not bool(torch.isfinite(o).all()):
        raise Incorrect(f"output has {int((~torch.isfinite(o)).sum())} NaN/Inf entries")
    scale = float(r.abs().max()) or 1.0
    err = (o - r).abs()
    ok = bool((err <= atol * scale + rtol * r.abs()).all())
    info = {"kind": what, "ok": ok, "max_abs_err": float(err.max()), "max_abs_ref": scale,
            "rtol": rtol, "atol_frac_of_max": atol}
    if not ok:
        raise Incorrect(f"{what}: max |err| {float(err.max()):.4g} exceeds {atol}*max|ref| ({scale:.4g}) + {rtol}*|ref|")
    return info


# ------------------------------------------------------------------------------------------ providers
@dataclass
class Provider:
    name: str
    label: str
    kind: str                      # "baseline" | "ours"
    mode: str                      # "gemm" (int8 in) | "op" (fp16 in, fp16 out)
    backend: str | None = None
    spec: str | None = None
    build: Callable = field(default=None, repr=False)

    def record_base(self) -> dict:
        return {"provider": self.name, "label": self.label, "kind": self.kind, "mode": self.mode,
                "backend": self.backend, "spec": self.spec}


def _cuda_reason(device: torch.device, what: str) -> str | None:
    """Why ``what`` (a library's 2:4 kernels) cannot run on ``device``: it needs a GPU of sm_80 or later."""
    if device.type != "cuda":
        return f"{what} needs a CUDA GPU"
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 0):
        return f"{what} needs compute capability >= 8.0, this GPU has {cap[0]}.{cap[1]}"
    return None


def _torch_lacks(attr: str) -> str | None:
    """Why a private torch entry point cannot be used (it is missing from this build), or None."""
    return None if hasattr(torch, attr) else f"torch {torch.__version__} has no torch.{attr}"


def _cslt_reason(device: torch.device) -> str | None:
    why = _cuda_reason(device, what="cuSPARSELt 2:4") or _torch_lacks("_cslt_sparse_mm")
    if why:
        return why
    try:
        available = torch.backends.cusparselt.is_available()
    except AttributeError:
        available = True  # old torch without the probe: find out by trying
    if not available:
        return "torch.backends.cusparselt.is_available() is False (this torch was built without cuSPARSELt)"
    return None


def _case(op: Callable, xs: list, ws: list, nbytes: int, padded_m: int, check: dict, note: str = "") -> Case:
    """The Case of ``op(x, w)`` rotating through the input sets ``xs`` and the weight copies ``ws``."""
    n = max(len(xs), len(ws))
    return Case(common.Rotation(op, [(xs[i % len(xs)], ws[i % len(ws)]) for i in range(n)]), nbytes, padded_m, n,
                check, note)


def _first_accepted(m: int, xs: list, call: Callable[[list, object], object], refused: str, *, min_m: int = 1,
                    options: tuple = (None,)):
    """``(option, padded sets, padded M, call(padded sets, option))`` for the first option, then the first
    row count of :func:`_m_candidates`, that the library accepts (raises no RuntimeError for);
    :class:`Unsupported` if it refuses them all."""
    last = None
    for opt in options:
        for mp in _m_candidates(m, min_m):
            xp = [_pad_rows(x, mp) for x in xs]
            try:
                return opt, xp, mp, call(xp, opt)
            except RuntimeError as exc:
                last = exc
    raise Unsupported(f"{refused} of M={m}: {last}")


def _weight_copies(problem: Problem, key: str, make: Callable[[], object], nbytes: int) -> list:
    n = problem.l2_sets(nbytes)
    return problem.cached(f"{key}x{n}", lambda: [make() for _ in range(n)])


# --- baselines -------------------------------------------------------------------------------------
def build_fp16_mm(p: Problem, m: int) -> Case:
    xs, _ = p.activations(m)
    ws = _weight_copies(p, "w16", lambda: p.w16.clone(), 2 * p.n * p.k)
    op = lambda x, w: torch.mm(x, w.t())  # noqa: E731  (cuBLAS handles the transposed weight)
    ref = xs[0].double() @ p.w16.double().t()
    chk = check_close(op(xs[0], ws[0]), ref, FLOAT_RTOL, FLOAT_ATOL, "fp16 vs float64 product")
    return _case(op, xs, ws, 2 * (m * p.k + p.n * p.k + m * p.n), m, chk)


def build_int8_mm(p: Problem, m: int) -> Case:
    _, xqs = p.activations(m)
    ws = _weight_copies(p, "codes_dense", lambda: p.codes_dense.clone(), p.n * p.k)
    ref = exact_ref(xqs[0], p.codes_dense)
    min_m = 17 if p.device.type == "cuda" else 1  # cuBLASLt's _int_mm refuses M <= 16
    op = lambda x, w: torch._int_mm(x, w.t())  # noqa: E731  (weight column-major: the "TN" int8 layout)
    _, xp, mp, out = _first_accepted(m, xqs, lambda xp, _: op(xp[0], ws[0]), "torch._int_mm refused every padding",
                                     min_m=min_m)
    chk = check_exact(out[:m], ref)
    note = f"M padded to {mp} (torch._int_mm needs M > 16)" if mp != m else ""
    return _case(op, xp, ws, m * p.k + p.n * p.k + 4 * m * p.n, mp, chk, note)


def _cslt_alg(compressed: torch.Tensor, dense_t: torch.Tensor, out_dtype) -> tuple[int, str]:
    """cuSPARSELt's own best algorithm for this problem (the baseline gets its best shot)."""
    search = getattr(torch, "_cslt_sparse_mm_search", None)
    if search is None:
        return 0, "alg_id 0 (no torch._cslt_sparse_mm_search)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alg = int(search(compressed, dense_t, out_dtype=out_dtype, transpose_result=True))
        return alg, f"alg_id {alg} (searched)"
    except Exception as exc:  # noqa: BLE001 - a missing/deprecated search falls back to the default
        return 0, f"alg_id 0 (search failed: {type(exc).__name__})"


def _cslt(p: Problem, m: int, xs: list, key: str, weight: torch.Tensor, out_dtypes: tuple, refused: str):
    """cuSPARSELt on the 2:4 ``weight`` (compressed once per weight copy), with its searched algorithm,
    at the first output dtype and row count it accepts: ``(Case parts, output dtype, output)``, where the
    parts are ``op, padded sets, weight copies, compressed bytes, padded M, note``."""
    comp0 = p.cached(key, lambda: torch._cslt_compress(weight))
    cbytes = comp0.numel() * comp0.element_size()
    ws = _weight_copies(p, key, lambda: torch._cslt_compress(weight), cbytes)

    def call(xp, out_dtype):
        alg, alg_note = _cslt_alg(ws[0], xp[0].t(), out_dtype)

        def op(x, c):
            return torch._cslt_sparse_mm(c, x.t(), out_dtype=out_dtype, transpose_result=True, alg_id=alg)
        return op, op(xp[0], ws[0]), alg_note

    out_dtype, xp, mp, (op, out, note) = _first_accepted(m, xs, call, refused, options=out_dtypes)
    if tuple(out.shape) != (mp, p.n):
        raise Incorrect(f"transpose_result=True gave shape {tuple(out.shape)}, expected {(mp, p.n)}")
    note += f"; M padded to {mp}" if mp != m else ""
    return (op, xp, ws, cbytes, mp, note), out_dtype, out


def build_cslt_int8(p: Problem, m: int) -> Case:
    _, xqs = p.activations(m)
    (op, xp, ws, cbytes, mp, note), out_dtype, out = _cslt(
        p, m, xqs, "cslt_int8", p.codes_24, (torch.int32, torch.bfloat16),
        "torch._cslt_sparse_mm refused int8 with int32 and bf16 output at every padding")
    ref = exact_ref(xqs[0], p.codes_24)
    if out_dtype == torch.int32:
        chk = check_exact(out[:m], ref)
    else:  # bf16 holds these integers only to 8 bits of mantissa
        chk = check_close(out[:m], ref.double(), 1e-2, 1e-2, "bf16 output vs exact product")
    obytes = 4 if out_dtype == torch.int32 else 2
    return _case(op, xp, ws, m * p.k + cbytes + obytes * m * p.n, mp, chk,
                 f"{str(out_dtype).replace('torch.', '')} out; {note}")


def build_cutlass_int8(p: Problem, m: int) -> Case:
    from torch.sparse import SparseSemiStructuredTensorCUTLASS

    _, xqs = p.activations(m)

    def make():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = SparseSemiStructuredTensorCUTLASS.from_dense(p.codes_24)
        return s.packed, s.meta

    packed0, meta0 = p.cached("cutlass", make)
    wbytes = packed0.numel() * packed0.element_size() + meta0.numel() * meta0.element_size()
    ws = _weight_copies(p, "cutlass", make, wbytes)

    def op(x, w):
        return torch._sparse_semi_structured_linear(x, w[0], w[1], out_dtype=torch.int32)

    def call(xp, _):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return op(xp[0], ws[0])

    _, xp, mp, out = _first_accepted(m, xqs, call,
                                     "torch._sparse_semi_structured_linear refused int8 -> int32 at every padding")
    chk = check_exact(out[:m], exact_ref(xqs[0], p.codes_24))
    return _case(op, xp, ws, m * p.k + wbytes + 4 * m * p.n, mp, chk, f"M padded to {mp}" if mp != m else "")


def build_cslt_fp16(p: Problem, m: int) -> Case:
    xs, _ = p.activations(m)
    (op, xp, ws, cbytes, mp, note), _, out = _cslt(p, m, xs, "cslt_fp16", p.w16_24, (None,),
                                                   "torch._cslt_sparse_mm refused fp16 at every padding")
    chk = check_close(out[:m], xs[0].double() @ p.w16_24.double().t(), FLOAT_RTOL, FLOAT_ATOL, "fp16 vs float64 product")
    return _case(op, xp, ws, 2 * (m * p.k + m * p.n) + cbytes, mp, chk, note)


# --- ours ------------------------------------------------------------------------------------------
def _clone_packed(pw):
    from nxm_kernels.format import PackedWeight

    return PackedWeight(pw.values.clone(), None if pw.metadata is None else pw.metadata.clone(), pw.scales.clone(),
                        pw.shape, pw.bits, pw.pattern)


def _packed_copies(p: Problem, spec: str):
    """``(packed weight, copies of it to rotate through, its bytes)``."""
    packed = p.packed(spec)
    wbytes = packed.nbytes()["total"]
    return packed, _weight_copies(p, f"packed-{spec}", lambda: _clone_packed(packed), wbytes), wbytes


def _ours_case(p: Problem, m: int, mode: str, op: Callable, packed, ws: list, wbytes: int) -> Case:
    """``op(x, w)`` checked against the reference backend on ``packed``, as a Case: mode ``"gemm"`` (int8
    in, int32 out) exactly, mode ``"op"`` (fp16 in and out) within ``OP_RTOL``/``OP_ATOL``."""
    xs, xqs = p.activations(m)
    if mode == "gemm":
        chk = check_exact(op(xqs[0], ws[0]), p.nxm.sparse_int_mm(xqs[0], packed, backend="reference"))
        return _case(op, xqs, ws, m * p.k + wbytes + 4 * m * p.n, m, chk)
    out = op(xs[0], ws[0])
    if out.dtype != xs[0].dtype:
        raise Incorrect(f"output dtype {out.dtype}, expected {xs[0].dtype}")
    chk = check_close(out, p.nxm.sparse_int_linear(xs[0], packed, backend="reference"), OP_RTOL, OP_ATOL,
                      "op vs reference op")
    return _case(op, xs, ws, 2 * m * p.k + wbytes + 2 * m * p.n, m, chk)


def build_ours(backend: str, spec: str, mode: str) -> Callable[[Problem, int], Case]:
    def build(p: Problem, m: int) -> Case:
        fn = p.nxm.sparse_int_mm if mode == "gemm" else p.nxm.sparse_int_linear
        return _ours_case(p, m, mode, lambda x, pw: fn(x, pw, backend=backend), *_packed_copies(p, spec))

    return build


#: Largest M the forced Triton variants (``-fused``, ``-2launch``) are measured at: the fused kernel
#: is for small M; a few buckets past its range show the crossover.
VARIANT_M_MAX = 256


def build_triton_variant(spec: str, variant: str) -> Callable[[Problem, int], Case]:
    """The Triton op (fp16 in, quantization included, fp16 out) on one fixed path, whatever
    ``fused.use_fused`` would choose: ``"fused"`` (one launch) or ``"2launch"`` (quantizer + GEMM).
    Calls the kernel modules' launchers on the canonical packed tensors."""

    def build(p: Problem, m: int) -> Case:
        from nxm_kernels.backends.triton import fused, gemm, quant

        if m > VARIANT_M_MAX:
            raise Unsupported(f"the forced Triton variants are measured for M <= {VARIANT_M_MAX}")
        packed, ws, wbytes = _packed_copies(p, spec)
        dims = dict(n=p.n, k=p.k, bits=packed.bits, sparse=packed.sparse)
        if variant == "fused":
            def op(x, pw):
                return fused.fused_linear(x, pw.values, pw.metadata, pw.scales, **dims)
        else:
            def op(x, pw):
                xq, x_scale = quant.quantize_per_token(x)
                return gemm.int_gemm(xq, pw.values, pw.metadata, **dims, x_scale=x_scale, w_scale=pw.scales,
                                     out_dtype=x.dtype)
        return _ours_case(p, m, "op", op, packed, ws, wbytes)

    return build


def build_cuda_kernel(kernel: str, spec: str, mode: str) -> Callable[[Problem, int], Case]:
    """One of the cuda backend's candidate kernels at every M, past its dispatch rule: ``"cutlass"``
    (csrc/cutlass_*.cuh) or ``"cslt"`` (cuSPARSELt through torch, nxm_kernels/backends/cuda/cusparselt.py)."""
    def build(p: Problem, m: int) -> Case:
        from nxm_kernels.backends import WeightMeta
        from nxm_kernels.backends.cuda import backend as cb
        from nxm_kernels.backends.cuda import cusparselt

        packed = p.packed(spec)
        why = cb.cutlass_unavailable_reason(p.device) if kernel == "cutlass" else cusparselt.unavailable_reason(p.device)
        if why:
            raise Unsupported(why)
        meta = WeightMeta.of(packed)
        if kernel == "cutlass":
            from nxm_kernels.ops import prepared_weights

            w0 = prepared_weights(packed, "cuda")
            if len(w0) != 5:
                raise Unsupported("no CUTLASS layout for this weight (N % 8 != 0)")
            gemm, lin = cb.cutlass_int_mm, cb.cutlass_linear
            make = lambda: cb.prepare(_clone_packed(packed))  # noqa: E731
        else:
            w0 = cusparselt.prepare(packed)
            gemm, lin = cusparselt.int_mm, cusparselt.linear
            make = lambda: cusparselt.prepare(packed)  # noqa: E731
        wbytes = sum(t.numel() * t.element_size() for t in w0)
        ws = _weight_copies(p, f"{kernel}-{spec}", make, wbytes)
        if mode == "gemm":
            op = lambda xq, w: gemm(xq, w, meta)  # noqa: E731
        else:
            op = lambda x, w: lin(x, w, meta, None, "none")  # noqa: E731
        return _ours_case(p, m, mode, op, packed, ws, wbytes)

    return build


#: Providers left out unless ``--providers`` names them (see ``run``).
OPT_IN_PROVIDERS = ("cslt-fp16-2:4",)


def all_providers(backends: list[str], specs: list[str], modes: list[str],
                  variant_specs: list[str] | None = None) -> list[Provider]:
    """Every provider; the forced Triton variants for ``variant_specs`` only (default: all ``specs``)."""
    out = [
        Provider("fp16-mm", "fp16 torch.mm (cuBLAS)", "baseline", "op", build=build_fp16_mm),
        Provider("int8-mm", "int8 torch._int_mm (cuBLASLt)", "baseline", "gemm", build=build_int8_mm),
        Provider("cslt-int8-2:4", "int8 2:4 torch._cslt_sparse_mm (cuSPARSELt)", "baseline", "gemm",
                 build=build_cslt_int8),
        Provider("cutlass-int8-2:4", "int8 2:4 torch._sparse_semi_structured_linear (CUTLASS)", "baseline", "gemm",
                 build=build_cutlass_int8),
        Provider("cslt-fp16-2:4", "fp16 2:4 torch._cslt_sparse_mm (cuSPARSELt)", "baseline", "op",
                 build=build_cslt_fp16),
    ]
    if "cuda" in backends:  # the cuda backend's candidate kernels, each at every M (issue 14)
        for spec in (sp for sp in specs if sp.startswith("2:4")):
            for mode in modes:
                out.append(Provider(f"nxm-cuda:cutlass-{spec}-{mode}", f"nxm CUTLASS kernel {spec} {mode}", "ours", mode,
                                    "cuda", spec, build=build_cuda_kernel("cutlass", spec, mode)))
            out.append(Provider(f"nxm-cuda:cslt-{spec}-op", f"nxm quant + cuSPARSELt (alpha=w_scale) + epilogue {spec}",
                                "ours", "op", "cuda", spec, build=build_cuda_kernel("cslt", spec, "op")))
    for backend in backends:
        for spec in specs:
            for mode in modes:
                what = "sparse_int_linear (quant + GEMM + epilogue, fp16 out)" if mode == "op" else \
                    "sparse_int_mm (int8 in, int32 out)"
                out.append(Provider(f"nxm-{backend}-{spec}-{mode}", f"nxm {backend} {spec} {what}", "ours", mode,
                                    backend, spec, build=build_ours(backend, spec, mode)))
            if backend == "triton" and "op" in modes and (variant_specs is None or spec in variant_specs):
                for variant, what in (("fused", "one launch: quantize in the GEMM prologue, split-K"),
                                      ("2launch", "two launches: quantizer, then GEMM")):
                    out.append(Provider(f"nxm-triton-{spec}-{variant}", f"nxm triton {spec} op forced to {what}",
                                        "ours", "op", backend, spec, build=build_triton_variant(spec, variant)))
    return out


def unavailable(provider: Provider, device: torch.device, backend_reasons: dict) -> str | None:
    """Why ``provider`` cannot run on ``device`` at all (None when it can)."""
    name = provider.name
    if provider.kind == "ours":
        why = backend_reasons.get(provider.backend, f"unknown backend {provider.backend!r}")
        return why or weight_reason(provider.backend, provider.spec)
    if name == "fp16-mm":
        return None
    if name == "int8-mm":
        return _torch_lacks("_int_mm")
    if name in ("cslt-int8-2:4", "cslt-fp16-2:4"):
        return _cslt_reason(device)
    if name == "cutlass-int8-2:4":
        why = (_cuda_reason(device, what="CUTLASS semi-structured sparsity")
               or _torch_lacks("_sparse_semi_structured_linear"))
        if why:
            return why
        try:
            from torch.sparse import SparseSemiStructuredTensorCUTLASS  # noqa: F401
        except ImportError as exc:
            return f"torch.sparse.SparseSemiStructuredTensorCUTLASS is missing: {exc}"
        return None
    return f"unknown provider {name!r}"


def weight_reason(backend: str, spec: str) -> str | None:
    """Why ``backend`` does not run ``spec`` weights at all (e.g. the cuda backend runs 2:4 only)."""
    from nxm_kernels import parse_spec
    from nxm_kernels.backends import WeightMeta, weight_unsupported_reason

    s = parse_spec(spec)
    return weight_unsupported_reason(backend, WeightMeta(64, 64, s.weight_bits, s.sparse))


# ------------------------------------------------------------------------------------------ metrics
def metrics(rec: dict, n: int, k: int, m: int, peak) -> None:
    t = rec["time_us"] * 1e-6
    rec["tops"] = 2 * m * n * k / t / 1e12
    rec["gbps"] = rec["bytes"] / t / 1e9
    if peak is not None:
        rec["pct_int8_peak"] = 100 * rec["tops"] / peak.int8_dense_tops
        rec["pct_hbm"] = 100 * rec["gbps"] / peak.hbm_gbps


def add_ratios(records: list[dict]) -> None:
    """``speedup[baseline] = t_baseline / t_ours`` for every baseline timed at the same (shape, M)."""
    base = {}
    for r in records:
        if r["kind"] == "baseline" and r["status"] == "ok":
            base[(r["n"], r["k"], r["m"], r["provider"])] = r["time_us"]
    for r in records:
        if r["kind"] == "ours" and r["status"] == "ok":
            r["speedup"] = {b: base[(r["n"], r["k"], r["m"], b)] / r["time_us"]
                            for (n, k, m, b) in base if (n, k, m) == (r["n"], r["k"], r["m"])}


#: The performance goals, evaluated on every point measured; each statement says what it measures.
#: (backend, spec, mode, baseline or "hbm", M range, threshold, statement)
GOALS = [
    ("triton", "2:4-w8a8", "op", "fp16-mm", (1, 64), 2.0, "Triton 2:4-w8a8 >= 2x fp16 for M <= 64"),
    ("triton", "2:4-w4a8", "op", "fp16-mm", (1, 64), 3.0, "Triton 2:4-w4a8 >= 3x fp16 for M <= 64"),
    ("triton", "2:4-w8a8", "gemm", "int8-mm", (2048, None), 0.9, "Triton 2:4-w8a8 >= 0.9x int8 for M >= 2048"),
    ("cuda", "2:4-w8a8", "gemm", "cslt-int8-2:4", (1, None), 1.0, "CUDA 2:4-w8a8 >= cuSPARSELt at every M"),
    ("cuda", "2:4-w8a8", "gemm", "int8-mm", (2048, None), 1.6, "CUDA 2:4-w8a8 >= 1.6x int8 for M >= 2048"),
    ("cuda", "2:4-w8a8", "gemm", "hbm", (1, 64), 70.0, "CUDA 2:4-w8a8 >= 70% of HBM bandwidth for M <= 64"),
    ("cuda", "2:4-w4a8", "gemm", "cslt-int8-2:4", (1, None), 1.0, "CUDA 2:4-w4a8 >= cuSPARSELt at every M"),
    ("cuda", "2:4-w4a8", "gemm", "hbm", (1, 64), 70.0, "CUDA 2:4-w4a8 >= 70% of HBM bandwidth for M <= 64"),
]


def evaluate_goals(records: list[dict]) -> list[dict]:
    out = []
    for backend, spec, mode, base, (lo, hi), threshold, text in GOALS:
        pts = []
        for r in records:
            if (r["provider"] == f"nxm-{backend}-{spec}-{mode}" and r["status"] == "ok" and r["m"] >= lo
                    and (hi is None or r["m"] <= hi)):
                v = r.get("pct_hbm") if base == "hbm" else r.get("speedup", {}).get(base)
                if v is not None:
                    pts.append((v, f"{r['n']}x{r['k']}", r["m"]))
        goal = {"goal": text, "threshold": threshold, "points": len(pts)}
        if pts:
            worst = min(pts)
            goal.update(worst=worst[0], worst_at={"shape": worst[1], "m": worst[2]},
                        median=sorted(p[0] for p in pts)[len(pts) // 2], met=worst[0] >= threshold)
        else:
            goal.update(worst=None, met=None)
        out.append(goal)
    return out


# ------------------------------------------------------------------------------------------ driver
def run(args) -> dict:
    device, smoke, env, reasons = common.start(args, "tiny shapes")
    peak = common.card_peak(env["gpu"], args.peak_tops, args.peak_gbps) if env.get("gpu") else None
    outdir = common.results_dir(args.out, env, smoke=smoke)
    backends = common.our_backends(args.backends, device)
    specs = args.specs.split(",") if args.specs else list(QUICK_SPECS if args.quick and not smoke else SPECS)
    shapes = dict(SMOKE_SHAPES) if smoke else {s: SHAPES[s] for s in QUICK_SHAPES} if args.quick else dict(SHAPES)
    try:
        ms = int_list(args.m, "m") if args.m else SMOKE_M if smoke else M_QUICK if args.quick else M_FULL
        if args.shapes:
            shapes = {s: shapes.get(s, SHAPES.get(s, "custom")) for s in shape_list(args.shapes)}
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    # cuSPARSELt fp16 2:4 raised "illegal instruction" on an H100 (torch 2.11+cu130, 2026-11-24), which
    # poisons the CUDA context for every later provider: it runs only when asked for by name.
    # --quick keeps the forced Triton variants to one spec: gpu_validate.sh gives this step 140 s.
    providers = [p for p in all_providers(backends, specs, ["op", "gemm"], specs[:1] if args.quick else None)
                 if (any(fnmatch.fnmatchcase(p.name, g) for g in args.providers.split(",")) if args.providers
                     else p.name not in OPT_IN_PROVIDERS)]
    warmup, rep = (10, 30) if args.quick or smoke else (25, 100)
    warmup, rep = args.warmup_ms or warmup, args.rep_ms or rep
    why_not = {p.name: unavailable(p, device, reasons) for p in providers}
    result = {
        "benchmark": "gemm", "environment": env, "smoke": smoke,
        "peak": None if peak is None else vars(peak),
        "peak_note": None if peak else "card not in the peak table: give --peak-tops/--peak-gbps for percentages",
        "measured_copy_gbps": common.measure_copy_gbps(device),
        "backends": reasons, "shapes": [{"n": n, "k": k, "where": w} for (n, k), w in shapes.items()], "m": ms,
        "timer": {"name": args.timer if device.type == "cuda" else "wall-clock", "warmup_ms": warmup, "rep_ms": rep,
                  "rotation": "activation and weight copies together >= 3x L2 (max 16 sets); do_bench also "
                              "clears L2 before every call"},
        "tolerances": {"op": {"rtol": OP_RTOL, "atol_frac_of_max": OP_ATOL},
                       "float": {"rtol": FLOAT_RTOL, "atol_frac_of_max": FLOAT_ATOL}},
        "providers": [{"name": p.name, "label": p.label, "kind": p.kind, "mode": p.mode,
                       "unavailable": why_not[p.name]} for p in providers],
        "records": [], "complete": False,
    }
    path = outdir / "gemm.json"
    logger.info("GEMM benchmark on %s: %d shapes x %d M x %d providers -> %s", env.get("gpu") or "CPU (smoke)",
                len(shapes), len(ms), len(providers), path)
    l2_sets = lambda nbytes: common.rotation_count(nbytes, device)  # noqa: E731
    bar = tqdm(total=len(shapes) * len(ms) * len(providers), desc="gemm", disable=None, file=sys.stderr)
    aborted = None
    try:
        for (n, k), where in shapes.items():
            problem = Problem(n, k, device, l2_sets)
            for m in ms:
                for prov in providers:
                    bar.set_postfix_str(f"{n}x{k} M={m} {prov.name}", refresh=False)
                    bar.update()
                    # "stopped" until measured: what a time box that expires right here leaves behind
                    rec = {"n": n, "k": k, "shape": f"{n}x{k}", "where": where, "m": m, **prov.record_base(),
                           "status": "stopped", "reason": "the run's time box expired before this point"}
                    result["records"].append(rec)
                    if aborted:
                        rec.update(status="skipped", reason=aborted)
                        continue
                    if why_not[prov.name]:
                        rec.update(status="unavailable", reason=why_not[prov.name])
                        continue
                    aborted = measure_point(prov, problem, m, rec, device, peak, warmup, rep, args.timer)
                add_ratios(result["records"])
                common.write_json(path, result)
            del problem
            if device.type == "cuda":
                torch.cuda.empty_cache()
    except common.TimeBoxExpired as exc:
        logger.error("stopped by %s: writing the results measured so far", exc)
        result["stopped"] = f"time box expired ({exc})"
    finally:
        bar.close()
    if aborted:
        result["aborted"] = aborted
    add_ratios(result["records"])
    # Smoke numbers (CPU, interpreter) say nothing about the goals: leave them unevaluated.
    result["goals"] = [] if smoke else evaluate_goals(result["records"])
    result["complete"] = "stopped" not in result and not aborted
    common.finish_results(path, outdir, result, plot=None if args.no_plots else plots.plot_gemm,
                          table=format_table)
    return result


def measure_point(prov: Provider, problem: Problem, m: int, rec: dict, device, peak, warmup, rep, timer) -> str | None:
    """Build, check and time one point, filling ``rec``; returns a reason when the GPU is unusable."""
    t0 = time.perf_counter()
    try:
        case = prov.build(problem, m)
        for _ in range(case.n_sets):  # every weight copy prepared, every autotuner bucket tuned
            case.run()
        timing = measure(case.run, device, timer=timer, warmup_ms=warmup, rep_ms=rep)
    except Unsupported as exc:
        rec.update(status="unavailable", reason=str(exc))
        return None
    except Incorrect as exc:
        rec.update(status="incorrect", reason=str(exc))
        logger.error("%s %dx%d M=%d is INCORRECT: %s", prov.name, problem.n, problem.k, m, exc)
        return None
    except common.TimeBoxExpired:
        raise
    except Exception as exc:  # noqa: BLE001 - one provider's failure must not end the run
        rec.update(status="failed", reason=common.error_line(exc))
        logger.error("%s %dx%d M=%d failed: %s", prov.name, problem.n, problem.k, m, rec["reason"])
        if device.type == "cuda":
            try:  # a sticky CUDA error (illegal address, ...) poisons every later call: stop measuring
                torch.cuda.synchronize()
            except Exception as sync_exc:  # noqa: BLE001
                return f"CUDA context unusable after {prov.name} failed: {sync_exc}"
        return None
    rec.update(status="ok", check=case.check, time_us=timing.median_ms * 1e3, p20_us=timing.p20_ms * 1e3,
               p80_us=timing.p80_ms * 1e3, bytes=case.bytes, padded_m=case.padded_m, n_sets=case.n_sets,
               note=case.note, setup_s=round(time.perf_counter() - t0, 3))
    metrics(rec, problem.n, problem.k, m, peak)
    return None


# ------------------------------------------------------------------------------------------ tables
def format_table(result: dict) -> str:
    """Per shape: median us per call (providers x M), then our speedups over the like-for-like
    baselines (op vs fp16 torch.mm; GEMM vs int8 torch._int_mm and cuSPARSELt), then the goals."""
    recs = result["records"]
    lines = []
    by = {(r["shape"], r["m"], r["provider"]): r for r in recs}
    names = [p["name"] for p in result["providers"] if not p["unavailable"]]
    base_names = [n for n in ("fp16-mm", "int8-mm", "cslt-int8-2:4") if n in names]
    for shape in dict.fromkeys(r["shape"] for r in recs):
        ms = list(dict.fromkeys(r["m"] for r in recs if r["shape"] == shape))
        where = next(r["where"] for r in recs if r["shape"] == shape)
        rows = [[n] + [f"{r['time_us']:.1f}" if r and r["status"] == "ok" else (r or {}).get("status", "-")[:9]
                       for r in (by.get((shape, m, n)) for m in ms)] for n in names]
        lines += [f"\n== {shape} ({where}): median us per call", text_table([""] + [f"M={m}" for m in ms], rows)]
        mode_of = {r["provider"]: r["mode"] for r in recs}   # e.g. "-fused" providers are "op" mode
        ours = [n for n in names if n.startswith("nxm-")]
        pairs = [(n, b) for n in ours for b in base_names if ("op" if b == "fp16-mm" else "gemm") == mode_of.get(n)]
        if pairs:
            rows = [[f"{n[4:]} / {b}"] + [f"{v:.2f}x" if v else "-" for v in
                                           ((by.get((shape, m, n)) or {}).get("speedup", {}).get(b) for m in ms)]
                    for n, b in pairs]
            lines += ["-- speedup (baseline time / ours)",
                      text_table(["ours / baseline"] + [f"M={m}" for m in ms], rows)]
    goals = result.get("goals") or []
    if goals:
        lines.append("\n== performance goals (worst point over shapes and M; '-' = not measured)")
        for g in goals:
            v = "-" if g["worst"] is None else f"{g['worst']:.2f}"
            where = "" if g["worst"] is None else f" at {g['worst_at']['shape']} M={g['worst_at']['m']}"
            met = {True: "MET", False: "NOT MET", None: "-"}[g["met"]]
            lines.append(f"  {g['goal']:<52} worst {v:>7}{where:<24} {met}")
    bad = [r for r in recs if r["status"] in ("incorrect", "failed")]
    if bad:
        lines.append(f"\n== {len(bad)} incorrect/failed points")
        for r in bad[:20]:
            lines.append(f"  {r['provider']} {r['shape']} M={r['m']}: {r['status']}: {r['reason'][:150]}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"M in {M_QUICK}, shapes {QUICK_SHAPES}, specs {QUICK_SPECS}, shorter timing")
    p.add_argument("--smoke", action="store_true", help="tiny shape and M (the CPU mode; forced without a GPU)")
    p.add_argument("--m", help="comma-separated M values (overrides --quick)")
    p.add_argument("--shapes", help="comma-separated NxK shapes, e.g. 3072x768,768x3072")
    p.add_argument("--providers", help="comma-separated globs over provider names, e.g. 'int8-mm,nxm-cuda-*'")
    p.add_argument("--specs", help=f"our specs (default: {','.join(SPECS)}; --quick: {','.join(QUICK_SPECS)})")
    p.add_argument("--timer", default="do_bench", choices=["do_bench", "cudagraph"])
    p.add_argument("--warmup-ms", type=float)
    p.add_argument("--rep-ms", type=float)
    p.add_argument("--peak-tops", type=float, help="dense int8 peak TOPS of this card (overrides the table)")
    p.add_argument("--peak-gbps", type=float, help="memory bandwidth GB/s of this card (overrides the table)")
    common.add_common_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    result = common.run_main(build_parser(), run, argv)
    bad = [r for r in result["records"] if r["status"] in ("incorrect", "failed")]
    if result.get("aborted") or result.get("stopped"):
        return 3
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Calibrated one-shot compression: SparseGPT / OBS 2:4 masks with GPTQ quantization, Wanda, magnitude.

Users who cannot retrain still have a few hundred unlabeled inputs. From them this module compresses
a BERT-family encoder's linears **layer by layer in forward order**, each from the inputs it sees in
the model whose earlier linears are already compressed (SparseGPT's sequential scheme), so every
layer corrects for the errors made before it::

    report = nxm.calibrate(model, "2:4-w8a8", batches, method="sparsegpt")   # -> SwapReport, in place

Methods (per linear ``W[out, in]``, inputs ``X[tokens, in]`` over non-padding tokens):

* ``"sparsegpt"``: accumulate ``H = 2 XᵀX / n``; damp it (``damp * mean(diag H)`` on the diagonal);
  walk the columns in blocks of ``blocksize``, choosing each group's N:M mask by the OBS saliency
  ``w² / [H⁻¹]_jj`` (from the Cholesky factor of ``H⁻¹``, as SparseGPT does), and for every column
  quantize the kept weights onto the per-output-channel grid ``pack()`` uses, spreading the rounding
  and pruning error over the columns not yet processed (GPTQ's error feedback, on the same Hessian).
  Dense specs get the GPTQ step alone. The per-row scale is fixed before the sweep (with a small
  clip search that minimises the ``diag(H)``-weighted rounding error) and kept: ``pack(weight,
  scale=scale)`` stores exactly the codes chosen (many rows end with ``max|code| < qmax``, so the
  scale ``pack()`` would derive from the final row would *not* give them back).
* ``"wanda"``: mask by ``|w| * ||x_j||`` (no weight update), then plain rounding as ``pack()`` does.
* ``"magnitude"``: magnitude N:M pruning and plain rounding: exactly what ``swap_linears`` does.

Two refinements (measured on MiniLM, see the README):

* ``dense_targets``: fit each linear to the *dense* model's output on the same token,
  ``min ||X_dense Wᵀ − X_comp Ŵᵀ||``, instead of its own output on the compressed model's input. With
  ``C = 2 X_denseᵀ X_comp / n`` that is SparseGPT/GPTQ on ``H`` applied to the target
  ``W* = W C H⁻¹`` (the unconstrained least-squares solution): the error already made upstream is
  corrected here rather than carried on. On by default for ``sparsegpt``/``gptq`` when there are
  enough calibration tokens (MiniLM 2:4-w8a8: cosine 0.882 -> 0.899).
* ``fit_bias`` (off by default): the bias absorbs the mean output error over the calibration tokens.

Both ``H`` and the cross term are taken over the per-token int8 *quantized* inputs: what the deployed
layer multiplies.

Edge cases: an input column that is zero for every token (``H_jj = 0``, e.g. a channel every token
quantizes to zero) gets ``H_jj = 1`` and its weights are pruned/zeroed, as they do not matter; if the
damped ``H`` is still not positive definite the damping is multiplied by 10 (up to 4 times, with a
warning), so NaN weights never come out. NaN/Inf in the calibration inputs is an error.

The algorithm runs in float64 on the model's device (CPU or GPU); one group of linears sharing an
input (``query``/``key``/``value``, or one other linear) holds its Hessian in memory at a time. It is
deterministic for a given model, plan and calibration input order. :func:`calibrate_weights` does the
same but leaves ``nn.Linear`` layers holding the calibrated float weights, for the training path.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ._checks import check_choice, check_finite, check_int, check_tensor
from .quant import fake_quant_linear, fake_quant_per_token, fake_quant_weight, qmax, quantize_weight, weight_scales
from .sparsity import nm_mask
from .spec import LayerSpec, kernel_spec, parse_spec

__all__ = ["METHODS", "CalibratedLayer", "compress_weight", "hessian", "calibrate", "calibrate_weights",
           "DEFAULT_BLOCKSIZE", "DEFAULT_DAMP", "DEFAULT_SAMPLES"]

logger = logging.getLogger(__name__)

METHODS = ("sparsegpt", "gptq", "wanda", "magnitude")
DEFAULT_BLOCKSIZE = 128
DEFAULT_DAMP = 0.01
DEFAULT_SAMPLES = 512
#: With ``dense_targets=None`` (auto), a linear fits the dense model's outputs only with at least this many
#: calibration tokens per input feature.
MIN_TOKENS_PER_INPUT = 2
#: Clip factors tried for each row's scale (1.0 = the row's max magnitude, as pack() does).
CLIP_GRID = tuple(1.0 - 0.02 * i for i in range(21))


# ---------------------------------------------------------------------------------- per-linear algorithms
def hessian(x: torch.Tensor) -> torch.Tensor:
    """``2 XᵀX / n`` in float64 for inputs ``x[..., in]`` (all leading dims are tokens)."""
    check_tensor("x", x, min_ndim=1)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {x.dtype}")
    x = x.reshape(-1, x.shape[-1]).double()
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one token")
    check_finite("x", x)
    return 2.0 * x.T @ x / x.shape[0]


@dataclass
class CalibratedLayer:
    """One calibrated linear: the dequantized weight (``codes * scale``, float32), its mask (``None``
    for dense specs), the per-row scale ``pack()`` must use, and the layer's calibration error."""

    name: str
    spec: str
    weight: torch.Tensor
    mask: torch.Tensor | None
    scale: torch.Tensor
    bias: torch.Tensor | None = None
    #: Relative output error ``||X Wᵀ − X Ŵᵀ||² / ||X Wᵀ||²`` on the calibration tokens (through H).
    rel_error: float = float("nan")
    extras: dict = field(default_factory=dict)


def _check_method(method: str) -> None:
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, one of {METHODS}, got {type(method).__name__}")
    check_choice("method", method, METHODS)


def _check_spec_for(method: str, spec: LayerSpec, name: str) -> None:
    if spec.is_fp:
        raise ValueError(f"spec for {name} is 'fp': there is nothing to calibrate")
    if method == "gptq" and spec.sparse:
        raise ValueError(f"method 'gptq' only quantizes; spec {spec} for {name} is N:M sparse and needs a pruning "
                         "method ('sparsegpt', 'wanda' or 'magnitude')")


def _prepare_hessian(h: torch.Tensor, w: torch.Tensor, damp: float):
    """Dead columns -> H_jj = 1 and zero weights; damped upper Cholesky factor of H⁻¹ (damping raised on failure)."""
    h = h.clone()
    dead = torch.diagonal(h) <= 0
    if bool(dead.any()):
        h[dead, dead] = 1.0
        w[:, dead] = 0.0
    mean_diag = float(torch.diagonal(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    d = damp
    for attempt in range(5):
        hd = h + (d * mean_diag) * eye
        lower, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                if attempt:
                    logger.warning("Hessian not positive definite at damp %g; used damp %g", damp, d)
                return hd, upper, dead
        d = d * 10 if d > 0 else 1e-6
    raise RuntimeError(f"the calibration Hessian stays singular even with damp {d / 10:g}; give more (or more "
                       "varied) calibration data")


def _row_scale(w: torch.Tensor, hdiag: torch.Tensor, bits: int, clip_search: bool) -> torch.Tensor:
    """Per-row float32 scale: ``clip * amax / q`` with the clip minimising the diag(H)-weighted rounding error."""
    wf = w.float()  # its float32 amax is the float64 amax rounded (rounding is monotone): the same scales
    if not clip_search:
        return weight_scales(wf, bits)
    amax, q = wf.abs().amax(dim=1), qmax(bits)
    best, best_err = amax / torch.full_like(amax, q), torch.full_like(amax, float("inf"))
    hd = hdiag.float().unsqueeze(0)
    for c in CLIP_GRID:
        s = (amax * c) / torch.full_like(amax, q)
        s = torch.where(s > 0, s, torch.ones_like(s))
        # assume_finite: w was checked once; this runs len(CLIP_GRID) times a layer.
        err = ((wf - fake_quant_weight(wf, bits, ste=False, scale=s, assume_finite=True)) ** 2 * hd).sum(dim=1)
        better = err < best_err
        best = torch.where(better, s, best)
        best_err = torch.where(better, err, best_err)
    return best


def _quant_col(v: torch.Tensor, scale32: torch.Tensor, q: int) -> torch.Tensor:
    """Codes of one column, computed exactly as :func:`nxm_kernels.quant.quantize_weight` does (float32)."""
    return torch.clamp(torch.round(v.float() / scale32), -q, q)


def _sweep(w: torch.Tensor, upper: torch.Tensor, nm, q: int, scale32: torch.Tensor, blocksize: int):
    """SparseGPT's block-wise OBS sweep (mask + update) with GPTQ quantization onto ``scale32``'s grid.

    ``w`` (float64, modified) is the target; ``upper`` the upper Cholesky factor of H⁻¹. Returns
    (codes float32, mask bool or None).
    """
    rows, cols = w.shape
    mask = torch.zeros_like(w, dtype=torch.bool) if nm is not None else None
    codes = torch.zeros(rows, cols, dtype=torch.float32, device=w.device)
    s64 = scale32.double()
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = upper[i1:i2, i1:i2]
        d1 = torch.diagonal(hinv1)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                n_keep, m = nm
                width = min(m, i2 - i1 - i)
                n_prune = width - n_keep
                if n_prune > 0:
                    sal = w1[:, i:i + width] ** 2 / d1[i:i + width].unsqueeze(0) ** 2
                    # Stable ascending sort: ties prune the lower index first on every device.
                    idx = torch.sort(sal, dim=1, stable=True).indices[:, :n_prune]
                    mask[:, i1 + i:i1 + i + width].scatter_(1, idx, True)  # True = pruned, for now
            col = w1[:, i]
            qcol = col.clone()
            if mask is not None:
                qcol[mask[:, i1 + i]] = 0.0
            c = _quant_col(qcol, scale32, q)
            if mask is not None:
                c[mask[:, i1 + i]] = 0.0
            codes[:, i1 + i] = c
            qcol = c.double() * s64
            e = (col - qcol) / d1[i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ upper[i1:i2, i2:]
    if mask is not None:
        mask = ~mask  # True = kept
    return codes, mask


@torch.no_grad()
def compress_weight(weight: torch.Tensor, spec, *, method: str = "sparsegpt", hessian: torch.Tensor | None = None,
                    cross: torch.Tensor | None = None, blocksize: int = DEFAULT_BLOCKSIZE, damp: float = DEFAULT_DAMP,
                    clip_search: bool = True, name: str = "weight") -> CalibratedLayer:
    """Compress one weight ``[out, in]`` to ``spec`` with ``method`` (see the module docstring).

    ``hessian``: ``2 XᵀX / n`` (``[in, in]``, see :func:`hessian`), required by ``sparsegpt``/``gptq``,
    and by ``wanda`` (only its diagonal is used). ``cross``: optional ``2 X_targetᵀ X / n`` to fit
    ``X_target Wᵀ`` rather than ``X Wᵀ``. Returns a :class:`CalibratedLayer` whose ``weight`` equals
    ``pack(weight, spec, scale=scale).unpack()`` exactly.
    """
    _check_method(method)
    spec = parse_spec(spec)  # any N:M pattern: training may use others than the kernels' 2:4
    _check_spec_for(method, spec, name)
    check_tensor("weight", weight, ndim=2)
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    check_finite("weight", weight)
    rows, cols = weight.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"weight must not be empty, got shape {tuple(weight.shape)}")
    check_int("blocksize", blocksize, minimum=1)
    nm = spec.nm if spec.sparse else None
    if nm is not None and blocksize % nm[1]:
        raise ValueError(f"blocksize must be a multiple of {nm[1]} for pattern {spec.pattern} (groups must not "
                         f"straddle blocks), got {blocksize}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not math.isfinite(damp) or damp < 0:
        raise ValueError(f"damp must be a finite number >= 0, got {damp!r}")
    if method != "magnitude" and hessian is None:
        raise ValueError(f"method {method!r} needs hessian (2 XᵀX / n of the layer's inputs)")
    for key, t in (("hessian", hessian if method != "magnitude" else None), ("cross", cross)):
        if t is not None:
            check_tensor(key, t, ndim=2)
            if tuple(t.shape) != (cols, cols):
                raise ValueError(f"{key} must have shape ({cols}, {cols}), got {tuple(t.shape)}")
            check_finite(key, t)
    bits = spec.weight_bits
    q = qmax(bits)
    w0 = weight.detach().double()
    extras: dict = {}

    if method in ("magnitude", "wanda"):
        w, mask = w0.float(), None
        if nm is not None:
            if method == "magnitude":
                mask = nm_mask(w, *nm)
            else:
                norms = torch.sqrt(torch.diagonal(hessian).clamp_min(0)).float()
                mask = nm_mask(w.abs() * norms.unsqueeze(0), *nm)
            w = w.masked_fill(~mask, 0.0)
        codes, scale = quantize_weight(w, bits)
    else:
        h = hessian.to(device=weight.device, dtype=torch.float64)
        w = w0.clone()
        hd, upper, dead = _prepare_hessian(h, w, float(damp))
        if cross is not None:
            # The least-squares target W* = W C H⁻¹ (damped H): fit the dense model's outputs.
            c = cross.to(device=weight.device, dtype=torch.float64).clone()
            c[:, dead] = 0.0
            w = torch.linalg.solve(hd, (w @ c).T).T
            extras["target_shift"] = float(torch.linalg.vector_norm(w - w0) / max(float(torch.linalg.vector_norm(w0)),
                                                                                     1e-30))
        scale = _row_scale(w if nm is None else w.masked_fill(~nm_mask(w, *nm), 0.0), torch.diagonal(hd), bits,
                           clip_search)
        codes, mask = _sweep(w, upper, nm, q, scale, blocksize)
    deq = codes.float() * scale.unsqueeze(-1)
    if not bool(torch.isfinite(deq).all()):  # cannot happen (finite W, positive definite H); never return NaN
        raise RuntimeError(f"calibration of {name} produced non-finite weights")
    rel = float("nan")
    if hessian is not None:
        h = hessian.to(device=weight.device, dtype=torch.float64)
        # Against w0: the layer's own output error on these inputs, comparable across methods.
        diff = deq.double() - w0
        num = float(torch.einsum("ij,jk,ik->", diff, h, diff))
        den = float(torch.einsum("ij,jk,ik->", w0, h, w0))
        rel = num / den if den > 0 else float("nan")
    return CalibratedLayer(name, str(spec), deq.float().contiguous(), mask, scale.float().contiguous(),
                           rel_error=rel, extras=extras)


# ---------------------------------------------------------------------------------- calibration data
def _as_batches(calibration, n_samples: int | None, device) -> list[dict]:
    """Validate and normalise ``calibration`` into a list of batch dicts on ``device``."""
    if isinstance(calibration, torch.Tensor):
        if calibration.dtype.is_floating_point or calibration.dim() != 2:
            raise ValueError(f"calibration as a tensor must be 2-D integer input_ids [batch, tokens], got "
                             f"{calibration.dtype} of shape {tuple(calibration.shape)}")
        calibration = [{"input_ids": calibration}]
    elif isinstance(calibration, dict):
        calibration = [calibration]
    if not isinstance(calibration, (list, tuple)):
        try:
            calibration = list(calibration)
        except TypeError:
            raise TypeError("calibration must be a batch dict (input_ids, attention_mask, ...), a list of them or "
                            f"a 2-D input_ids tensor, got {type(calibration).__name__}") from None
    if len(calibration) == 0:
        raise ValueError("calibration must hold at least one batch (got an empty sequence)")
    out, taken = [], 0
    for i, b in enumerate(calibration):
        if not isinstance(b, dict):
            raise TypeError(f"calibration[{i}] must be a dict of model inputs, got {type(b).__name__}")
        key = "input_ids" if "input_ids" in b else "inputs_embeds" if "inputs_embeds" in b else None
        if key is None:
            raise ValueError(f"calibration[{i}] needs 'input_ids' (or 'inputs_embeds'), got keys {sorted(b)}")
        x = b[key]
        check_tensor(f"calibration[{i}][{key!r}]", x)
        want = 2 if key == "input_ids" else 3
        if x.dim() != want or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"calibration[{i}][{key!r}] must be a non-empty {want}-D tensor, got shape "
                             f"{tuple(x.shape)}")
        if key == "inputs_embeds":
            check_finite(f"calibration[{i}]['inputs_embeds']", x)
        am = b.get("attention_mask")
        if am is not None:
            check_tensor(f"calibration[{i}]['attention_mask']", am)
            if tuple(am.shape) != tuple(x.shape[:2]):
                raise ValueError(f"calibration[{i}]['attention_mask'] must have shape {tuple(x.shape[:2])}, got "
                                 f"{tuple(am.shape)}")
        b = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
        if n_samples is not None:
            keep = min(x.shape[0], n_samples - taken)
            if keep <= 0:
                break
            b = {k: (v[:keep] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == x.shape[0] else v)
                 for k, v in b.items()}
            taken += keep
        out.append(b)
    if sum(int(_token_mask(b).sum()) for b in out) == 0:
        raise ValueError("calibration holds no real token (every attention_mask entry is 0)")
    return out


def _token_mask(batch: dict) -> torch.Tensor:
    x = batch["input_ids"] if "input_ids" in batch else batch["inputs_embeds"]
    am = batch.get("attention_mask")
    return (am != 0) if am is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


# ---------------------------------------------------------------------------------- the model-level pass
class _Compressed(nn.Module):
    """What a compressed linear computes, in float (per-token int8 fake quant, then the calibrated weight),
    used for the layers after it during the pass."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight, self.bias = weight, bias

    def forward(self, x):
        return fake_quant_linear(x, self.weight, self.bias, weight_bits=None, ste=False)


class _Stop(Exception):
    pass


def _keep_input(slot: dict, key: str, module, args) -> None:
    # The first call of the layer's forward: an attention may call a projection again on other inputs
    # (DeBERTa's shared query/key projections of its relative position embeddings); the tokens come first.
    slot.setdefault(key, args[0])


def _groups(names_specs: dict) -> list[list[str]]:
    """Components that share an input, in forward order (``qkv``: query, key and value as one linear)."""
    order = [("query", "key", "value", "qkv"), ("attn_out",), ("ffn1",), ("ffn2",)]
    return [[c for c in comps if c in names_specs] for comps in order if any(c in names_specs for c in comps)]


@torch.no_grad()
def calibrate_weights(model: nn.Module, plan, calibration, method: str = "sparsegpt", *,
                      n_samples: int | None = DEFAULT_SAMPLES, blocksize: int = DEFAULT_BLOCKSIZE,
                      damp: float = DEFAULT_DAMP, dense_targets: bool | None = None, fit_bias: bool | None = None,
                      clip_search: bool = True, strict: bool = True,
                      progress: bool | None = None) -> dict[str, CalibratedLayer]:
    """Calibrate the plan's encoder linears in place and leave them ``nn.Linear`` holding the calibrated
    float weights (``codes * scale``; pruned weights exactly 0) and biases; return them by plan name.

    This is the training path's starting point (``NxMCompression(init_masks=...)``); :func:`calibrate`
    calls it and then swaps in ``NxMLinear``. Arguments as :func:`calibrate`; any N:M pattern works here.
    """
    from .models.encoder import encoder_linears
    from .models.families import find_encoder
    from .plan import Plan

    _check_method(method)
    if n_samples is not None:
        check_int("n_samples", n_samples, minimum=1)
    check_int("blocksize", blocksize, minimum=1)
    auto_targets = dense_targets is None
    dense_targets = method in ("sparsegpt", "gptq") if dense_targets is None else bool(dense_targets)
    fit_bias = bool(fit_bias)  # None: off
    if dense_targets and not auto_targets and method not in ("sparsegpt", "gptq"):
        raise ValueError(f"dense_targets needs a method that updates weights ('sparsegpt' or 'gptq'), got {method!r}")
    plan = Plan.coerce(plan)
    sites = encoder_linears(model)
    specs = plan.resolve([s.name for s in sites], strict=strict)
    todo = {s.name: s for s in sites if not specs[s.name].is_fp}
    if not todo:
        raise ValueError(f"plan {plan.to_dict()} compresses no encoder linear: nothing to calibrate")
    for name, site in todo.items():
        _check_spec_for(method, specs[name], name)
        if not isinstance(site.module, nn.Linear):
            raise TypeError(f"{name} ({site.qualified_name}) must be an nn.Linear to be calibrated, got "
                            f"{type(site.module).__name__}")
    if nm_blocks := [str(specs[n]) for n in todo if specs[n].sparse and blocksize % specs[n].nm[1]]:
        raise ValueError(f"blocksize must be a multiple of the N:M group size of {sorted(set(nm_blocks))}, "
                         f"got {blocksize}")
    device = next(model.parameters()).device
    batches = _as_batches(calibration, n_samples, device)
    masks = [_token_mask(b) for b in batches]
    counts = {"n_samples": sum(int(m.shape[0]) for m in masks), "n_tokens": sum(int(m.sum()) for m in masks)}
    n_tokens = counts["n_tokens"]
    if method == "magnitude" and not fit_bias:
        # Magnitude pruning and rounding read no data: no forward pass needed.
        results = {}
        for name, site in todo.items():
            res = compress_weight(site.module.weight, specs[name], method="magnitude", name=name)
            res.bias = None if site.module.bias is None else site.module.bias.detach().clone()
            res.extras.update(counts)
            site.module.weight.data.copy_(res.weight.to(site.module.weight.dtype))
            results[name] = res
        return results
    encoder = find_encoder(model)
    layers = encoder.layers
    was_training = model.training
    model.eval()

    # 1. The inputs of every encoder layer, per batch, from one dense forward (SparseGPT's trick: the embeddings
    # run once): the hidden states entering layer 0, and each layer's other arguments (masks, position
    # embeddings; they can differ between layers, as ModernBERT's global and sliding-window ones do).
    captured: list = []   # per batch: [(args, kwargs) of each layer]; args[0] kept for layer 0 only
    last_out: list = [None]

    def grab(index, module, args, kwargs):
        if not args:
            raise RuntimeError(f"{encoder.prefix}.{index} was called without positional hidden states; "
                               "calibration cannot follow this encoder")
        if index > 0 and args[0] is not last_out[0]:
            # The pass below feeds each layer's output to the next layer: that must be what the model does.
            raise ValueError(f"calibration runs the encoder layer by layer, but {type(model).__name__} changes the "
                             f"output of {encoder.prefix}.{index - 1} before {encoder.prefix}.{index} (e.g. a "
                             "convolution between layers); compress it with method='magnitude' or swap_linears")
        captured[-1].append(((args[0] if index == 0 else None,) + tuple(args[1:]), kwargs))
        if index == len(layers) - 1:
            raise _Stop

    def keep_output(module, args, out):
        last_out[0] = out[0] if isinstance(out, tuple) else out

    handles = [m for i, layer in enumerate(layers)
               for m in (layer.register_forward_pre_hook(functools.partial(grab, i), with_kwargs=True),
                         layer.register_forward_hook(keep_output))]
    try:
        for b in batches:
            captured.append([])
            try:
                model(**b)
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
        last_out.clear()
    if any(len(c) != len(layers) for c in captured):
        raise RuntimeError(f"could not capture the encoder's inputs (the model did not run all of {encoder.prefix})")
    for i, c in enumerate(captured):
        check_finite(f"calibration[{i}] (its embeddings)", c[0][0][0])
    comp_h = [c[0][0][0] for c in captured]
    dense_h = list(comp_h)
    by_layer: dict[int, dict[str, str]] = {}
    for name in todo:
        _, idx, comp = name.split(".")
        by_layer.setdefault(int(idx), {})[comp] = name
    results: dict[str, CalibratedLayer] = {}
    originals = {name: (site.parent, site.attr, site.module) for name, site in todo.items()}
    track_dense = dense_targets or fit_bias
    bar = tqdm(total=len(todo), desc=f"calibrating ({method})", unit="linear",
               disable=None if progress is None else not progress,
               leave=False)
    try:
        for li, layer in enumerate(layers):
            comps = by_layer.get(li, {})
            dense_layer = copy.deepcopy(layer) if track_dense and comps else None
            for group in _groups(comps):
                names = [comps[c] for c in group]
                lin = todo[names[0]].module
                k = lin.in_features
                need_h = method != "magnitude"
                h = torch.zeros(k, k, dtype=torch.float64, device=device) if need_h else None
                # The least-squares target W C H⁻¹ overfits when the tokens hardly outnumber the inputs:
                # by default it needs MIN_TOKENS_PER_INPUT tokens per input feature.
                use_cross = dense_targets and (not auto_targets or n_tokens >= MIN_TOKENS_PER_INPUT * k)
                if dense_targets and not use_cross:
                    logger.info("%s: %d calibration tokens < %d x %d inputs: fitting its own outputs, not the "
                                "dense model's", names[0], n_tokens, MIN_TOKENS_PER_INPUT, k)
                cross = torch.zeros(k, k, dtype=torch.float64, device=device) if use_cross else None
                sums = {"c": torch.zeros(k, dtype=torch.float64, device=device),
                        "d": torch.zeros(k, dtype=torch.float64, device=device)}
                # The group's input on the compressed model ("c") and on the dense copy of the layer ("d").
                slot: dict = {}
                watched = {"c": todo[names[0]].module}
                if dense_layer is not None:
                    watched["d"] = dense_layer.get_submodule(encoder.family.components[group[0]])
                handles = [m.register_forward_pre_hook(functools.partial(_keep_input, slot, key))
                           for key, m in watched.items()]
                try:
                    for bi, per_layer in enumerate(captured):
                        args, kwargs = per_layer[li]
                        m = masks[bi]
                        slot.clear()
                        if dense_layer is not None:
                            dense_layer(dense_h[bi], *args[1:], **kwargs)
                        layer(comp_h[bi], *args[1:], **kwargs)
                        xc = slot["c"][m]
                        check_finite(f"the inputs of {names[0]} on calibration[{bi}]", xc)
                        # The deployed layer multiplies the int8 per-token quantized input: fit that one.
                        xc = fake_quant_per_token(xc, ste=False).double()
                        if need_h:
                            h.addmm_(xc.T, xc, alpha=2.0 / n_tokens)
                        sums["c"] += xc.sum(0)
                        if dense_layer is not None:
                            xd = slot["d"][m].double()
                            sums["d"] += xd.sum(0)
                            if cross is not None:
                                cross.addmm_(xd.T, xc, alpha=2.0 / n_tokens)
                finally:
                    for handle in handles:
                        handle.remove()
                for name in names:
                    parent, attr, orig = originals[name]
                    res = compress_weight(orig.weight, specs[name], method=method, hessian=h, cross=cross,
                                          blocksize=blocksize, damp=damp, clip_search=clip_search, name=name)
                    res.name = name
                    res.extras.update(counts)
                    bias = None if orig.bias is None else orig.bias.detach().clone()
                    if fit_bias and bias is not None:
                        # Mean output error over the calibration tokens, absorbed by the bias.
                        target = orig.weight.double() @ (sums["d"] / n_tokens)
                        got = res.weight.double() @ (sums["c"] / n_tokens)
                        bias = (bias.double() + target - got).to(bias.dtype)
                    res.bias = bias
                    results[name] = res
                    setattr(parent, attr, _Compressed(res.weight.to(orig.weight.dtype), bias))
                    logger.info("%s: %s %s, relative output error %.4g", name, method, res.spec, res.rel_error)
                    bar.update()
                del h, cross
            # 3. This layer's outputs are the next layer's inputs (dense ones too for the targets).
            for bi, per_layer in enumerate(captured):
                args, kwargs = per_layer[li]
                out = layer(comp_h[bi], *args[1:], **kwargs)
                comp_h[bi] = out[0] if isinstance(out, tuple) else out
                if track_dense:
                    src = dense_layer if dense_layer is not None else layer  # untouched layers are dense
                    dout = src(dense_h[bi], *args[1:], **kwargs)
                    dense_h[bi] = dout[0] if isinstance(dout, tuple) else dout
            del dense_layer
    except BaseException:
        for name, (parent, attr, orig) in originals.items():  # leave the model as it was
            setattr(parent, attr, orig)
        raise
    finally:
        bar.close()
        model.train(was_training)
    # 4. Write the calibrated weights back into the original nn.Linear objects.
    for name, (parent, attr, orig) in originals.items():
        res = results[name]
        orig.weight.data.copy_(res.weight.to(orig.weight.dtype))
        if orig.bias is not None:
            orig.bias.data.copy_(res.bias.to(orig.bias.dtype))
        setattr(parent, attr, orig)
    return results


@torch.no_grad()
def calibrate(model: nn.Module, plan, calibration, method: str = "sparsegpt", *, backend: str = "auto",
              fuse_gelu: bool = True, fuse_qkv: bool = True, strict: bool = True,
              n_samples: int | None = DEFAULT_SAMPLES,
              blocksize: int = DEFAULT_BLOCKSIZE, damp: float = DEFAULT_DAMP, dense_targets: bool | None = None,
              fit_bias: bool | None = None, clip_search: bool = True, progress: bool | None = None):
    """Calibrated one-shot compression of a BERT-family model, in place; returns the swap's ``SwapReport``.

    Args:
        model: a Hugging Face BERT-family model (as :func:`nxm_kernels.swap_linears` takes).
        plan: a spec for every encoder linear, a ``{pattern: spec}`` plan, plan JSON or a :class:`Plan`.
        calibration: unlabeled model inputs: a batch dict (``input_ids``, ``attention_mask``, ...), a list
            of them, or a 2-D ``input_ids`` tensor. Padding tokens (``attention_mask == 0``) are ignored.
        method: ``"sparsegpt"`` (default; GPTQ alone for dense specs), ``"gptq"`` (dense specs only),
            ``"wanda"`` or ``"magnitude"`` (see the module docstring).
        n_samples: at most this many sequences are used, the first ones (``None``: all) [512; on MiniLM
            2:4-w8a8, 256 sentences gave cosine 0.898 and 512 gave 0.916].
        blocksize: columns per SparseGPT/GPTQ block (a multiple of 4) [128].
        damp: Hessian damping, as a fraction of ``mean(diag H)`` [0.01].
        dense_targets: fit the dense model's outputs (module docstring); ``None`` (default): on for
            ``sparsegpt``/``gptq`` where the calibration has at least 2 tokens per input feature of the linear
            (fewer overfit the least-squares target), off otherwise.
        fit_bias: refit biases to the mean output error (default: off; measured +0.0003 cosine on MiniLM).
        clip_search: search each row's scale clip (GPTQ methods) [True].
        backend, fuse_gelu, fuse_qkv, strict: as :func:`nxm_kernels.swap_linears` (fusing query, key and
            value keeps each one's calibrated codes and scales: the fused weight is their rows stacked).

    The report's ``calibration`` attribute holds the method and, per layer, the relative output error.
    Every packed weight holds exactly the codes the algorithm chose (its scales are passed to ``pack``).
    """
    from .backends import split_candidate
    from .models.encoder import encoder_linears, swap_linears
    from .plan import Plan

    plan = Plan.coerce(plan)
    # Checked before calibrating: the run takes minutes and writes the calibrated weights into the model.
    if not isinstance(fuse_qkv, bool):
        raise TypeError(f"fuse_qkv must be a bool, got {type(fuse_qkv).__name__}")
    if backend != "auto":
        split_candidate(backend)  # the usual 'backend must be one of ...' error

    specs = plan.resolve([s.name for s in encoder_linears(model)], strict=strict)
    for name, spec in specs.items():
        if not spec.is_fp:
            kernel_spec(spec, name=f"spec for {name}")
    results = calibrate_weights(model, plan, calibration, method, n_samples=n_samples, blocksize=blocksize, damp=damp,
                                dense_targets=dense_targets, fit_bias=fit_bias, clip_search=clip_search,
                                strict=strict, progress=progress)
    report = swap_linears(model, plan, backend, fuse_gelu=fuse_gelu, fuse_qkv=fuse_qkv, strict=strict,
                          scales={n: r.scale for n, r in results.items()})
    first = next(iter(results.values()))
    report.calibration = {"method": method, "n_samples": first.extras["n_samples"],
                          "n_tokens": first.extras["n_tokens"],
                          "rel_error": {n: r.rel_error for n, r in results.items()}}
    return report

"""Calibrated one-shot compression (nxm_kernels.calibrate): SparseGPT/GPTQ, Wanda, magnitude.

Layer-level tests use correlated inputs (a random mixing matrix), where second-order methods must beat
magnitude pruning; model-level tests use a tiny BertConfig model.
"""

import copy

import pytest
import torch

import nxm_kernels as nxm
from nxm_kernels.calibrate import calibrate_weights, compress_weight, hessian
from nxm_kernels.format import pack
from nxm_kernels.models.encoder import encoder_linears
from nxm_kernels.modules import NxMLinear
from nxm_kernels.sparsity import is_nm
from tiny_models import tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = ["2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8"]


def _correlated(n=384, k=96, out=48):
    mix = torch.randn(k, k) / k ** 0.5 + torch.eye(k)
    x = (torch.randn(n, k) @ mix) * torch.rand(k) * 2 + 0.3 * torch.randn(k)
    return x, torch.randn(out, k) * 0.05


def _err(x, w, w_hat):
    return float(torch.linalg.vector_norm(x.double() @ (w.double() - w_hat.double()).T))


@pytest.mark.parametrize("spec", SPECS)
def test_sparsegpt_beats_magnitude_and_packs_exactly(spec):
    x, w = _correlated()
    h = hessian(x)
    mag = compress_weight(w, spec, method="magnitude", hessian=h)
    cal = compress_weight(w, spec, method="sparsegpt", hessian=h)
    assert _err(x, w, cal.weight) < _err(x, w, mag.weight)
    assert torch.isfinite(cal.weight).all() and cal.scale.dtype == torch.float32
    packed = pack(cal.weight, pattern=spec, scale=cal.scale)
    assert torch.equal(packed.unpack(), cal.weight)
    # The stored integer codes are the algorithm's: weight == codes * scale for integer codes in range.
    codes = (cal.weight / cal.scale[:, None]).round()
    assert torch.equal(codes * cal.scale[:, None], cal.weight) and codes.abs().max() <= (127 if "w8" in spec else 7)
    assert torch.equal(packed.int_weight()[:, :w.shape[1]].float(), codes)
    if spec.startswith("2:4"):
        assert is_nm(cal.weight, 2, 4)
        assert cal.mask.dtype == torch.bool and torch.equal(cal.mask.view(w.shape[0], -1, 4).sum(-1),
                                                            torch.full((w.shape[0], w.shape[1] // 4), 2))
        assert not cal.weight[~cal.mask].any()
        wanda = compress_weight(w, spec, method="wanda", hessian=h)
        assert is_nm(wanda.weight, 2, 4) and torch.equal(pack(wanda.weight, pattern=spec).unpack(), wanda.weight)
        assert _err(x, w, cal.weight) < _err(x, w, wanda.weight)
    else:
        assert cal.mask is None


def test_magnitude_is_what_pack_does():
    x, w = _correlated()
    r = compress_weight(w, "2:4-w4a8", method="magnitude")
    assert torch.equal(r.weight, pack(w, pattern="2:4-w4a8", prune=True).unpack())


def test_deterministic_and_odd_k():
    x, w = _correlated(k=90)  # K not a multiple of 4 (short last group) nor of the block size
    h = hessian(x)
    a = compress_weight(w, "2:4-w8a8", hessian=h, blocksize=8)
    b = compress_weight(w.clone(), "2:4-w8a8", hessian=h.clone(), blocksize=8)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.scale, b.scale) and torch.equal(a.mask, b.mask)
    assert is_nm(a.weight, 2, 4)
    assert torch.equal(pack(a.weight, pattern="2:4-w8a8", scale=a.scale).unpack(), a.weight)


def test_dead_columns_and_singular_hessian_give_finite_weights():
    x, w = _correlated(n=40, k=96)          # fewer tokens than inputs: H is singular
    x[:, 5] = 0                             # an input that is zero for every token
    x[:, 50:60] = 0
    h = hessian(x)
    for damp in (0.01, 0.0):                # without damping the fallback raises it
        r = compress_weight(w, "2:4-w4a8", hessian=h, damp=damp)
        assert torch.isfinite(r.weight).all()
        assert not r.weight[:, 5].any() and not r.weight[:, 50:60].any()
        assert is_nm(r.weight, 2, 4)
    r = compress_weight(w, "dense-w8a8", hessian=torch.zeros(96, 96))  # no signal at all
    assert torch.isfinite(r.weight).all()


@pytest.mark.parametrize("kwargs,exc,message", [
    ({"method": "gptq", "spec": "2:4-w8a8"}, ValueError, "method 'gptq' only quantizes"),
    ({"method": "obs"}, ValueError, "method must be one of"),
    ({"spec": "fp"}, ValueError, "nothing to calibrate"),
    ({"blocksize": 6}, ValueError, "blocksize must be a multiple of 4"),
    ({"hessian": torch.eye(5)}, ValueError, "hessian must have shape"),
    ({"hessian": None}, ValueError, "needs hessian"),
    ({"damp": -1.0}, ValueError, "damp must be"),
])
def test_compress_weight_bad_input(kwargs, exc, message):
    x, w = _correlated(k=32)
    args = {"spec": "2:4-w8a8", "method": "sparsegpt", "hessian": hessian(x)} | kwargs
    spec = args.pop("spec")
    with pytest.raises(exc, match=message):
        compress_weight(w, spec, **args)


def test_hessian_rejects_nan():
    x = torch.randn(10, 8)
    x[3, 2] = float("nan")
    with pytest.raises(ValueError, match="x must be finite"):
        hessian(x)


# ---------------------------------------------------------------------------------- model level
def _tiny():
    model = tiny_bert(vocab_size=1000, max_position_embeddings=128, add_pooling_layer=False)
    ids = torch.randint(1, 1000, (12, 16))
    mask = (torch.arange(16)[None, :] < torch.randint(4, 17, (12,))[:, None]).long()
    return model, [{"input_ids": ids[:6] * mask[:6], "attention_mask": mask[:6]},
                   {"input_ids": ids[6:] * mask[6:], "attention_mask": mask[6:]}]


@pytest.mark.parametrize("refine", [{}, {"dense_targets": True, "fit_bias": True}])
def test_calibrate_model_packs_the_calibrated_weights_exactly(refine):
    model, calib = _tiny()
    plan = {"*": "2:4-w4a8", "ffn2": "dense-w4a8", "layer.1.query": "fp"}
    a = copy.deepcopy(model)
    results = calibrate_weights(a, plan, calib, "sparsegpt", progress=False, **refine)
    b = copy.deepcopy(model)
    # fuse_qkv=False: each linear stays its own NxMLinear, so its codes and scales can be read one by one
    # (the fused swap of the same calibration is checked bit-identical below).
    report = nxm.calibrate(b, plan, calib, "sparsegpt", backend="reference", progress=False, fuse_qkv=False,
                           **refine)
    assert isinstance(report, nxm.SwapReport) and len(report.swapped) == 11 and report.kept == ["layer.1.query"]
    assert report.calibration["method"] == "sparsegpt" and report.calibration["n_samples"] == 12
    sites_a = {s.name: s.module for s in encoder_linears(a)}
    for site in encoder_linears(b):
        if site.name == "layer.1.query":
            assert isinstance(site.module, torch.nn.Linear)
            continue
        assert isinstance(site.module, NxMLinear)
        w = site.module.dequantized_weight()
        # same weights twice (deterministic), and the packed codes are exactly the algorithm's
        assert torch.equal(w, results[site.name].weight) and torch.equal(w, sites_a[site.name].weight)
        assert torch.equal(site.module.scales, results[site.name].scale)
        if site.name.endswith("ffn2"):
            assert site.module.spec.pattern == "dense"
        else:
            assert is_nm(w, 2, 4) and torch.equal(w != 0, (w != 0) & results[site.name].mask)
    c = copy.deepcopy(model)
    fused = nxm.calibrate(c, plan, calib, "sparsegpt", backend="reference", progress=False, **refine)
    assert list(fused.fused) == ["encoder.layer.0.attention.self.qkv"]  # layer 1 keeps its float query
    with torch.no_grad():
        ref = model(**calib[0]).last_hidden_state
        out = b(**calib[0]).last_hidden_state
        assert torch.equal(c(**calib[0]).last_hidden_state, out)
    assert torch.isfinite(out).all() and float(torch.nn.functional.cosine_similarity(
        out.flatten(), ref.flatten(), dim=0)) > 0.9


@pytest.mark.parametrize("calibration,exc,message", [
    ([], ValueError, "at least one batch"),
    (torch.randn(4, 8), ValueError, "2-D integer input_ids"),
    ([{"attention_mask": torch.ones(2, 4)}], ValueError, "needs 'input_ids'"),
    ([{"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.ones(2, 5)}], ValueError,
     "attention_mask'\\] must have shape"),
    ([{"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": torch.zeros(2, 4)}], ValueError,
     "no real token"),
    ([{"inputs_embeds": torch.full((2, 4, 64), float("nan"))}], ValueError, "must be finite"),
    ("not data", TypeError, "calibration\\[0\\] must be a dict"),
])
def test_calibrate_bad_calibration(calibration, exc, message):
    model, _ = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(exc, match=message):
        nxm.calibrate(model, "2:4-w8a8", calibration, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_calibrate_bad_plan_and_method():
    model, calib = _tiny()
    with pytest.raises(ValueError, match="can be trained but not packed"):
        nxm.calibrate(model, "2:8-w8a8", calib, progress=False)
    with pytest.raises(ValueError, match="method 'gptq' only quantizes"):
        nxm.calibrate(model, "2:4-w8a8", calib, "gptq", progress=False)
    with pytest.raises(ValueError, match="compresses no encoder linear"):
        nxm.calibrate(model, "fp", calib, progress=False)
    with pytest.raises(ValueError, match="dense_targets needs"):
        nxm.calibrate(model, "2:4-w8a8", calib, "wanda", dense_targets=True, progress=False)
    # Refused before the (long) calibration writes anything into the model:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="backend must be one of"):
        nxm.calibrate(model, "2:4-w8a8", calib, backend="trition", progress=False)
    with pytest.raises(TypeError, match="fuse_qkv must be a bool"):
        nxm.calibrate(model, "2:4-w8a8", calib, fuse_qkv="yes", progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(isinstance(m, NxMLinear) for m in model.modules())


def test_calibrated_masks_start_training():
    from nxm_kernels.train import ADMM, prepare_qat

    model, calib = _tiny()
    results = calibrate_weights(model, "2:4-w8a8", calib, "wanda", progress=False)
    masks = {n: r.mask for n, r in results.items()}
    layers = prepare_qat(model, "2:4-w8a8")
    admm = ADMM(layers)
    admm.start(masks=masks)
    for name, layer in layers.items():
        assert torch.equal(layer.admm_z, layer.weight.detach() * masks[name])
    admm.prune(masks=masks)
    for name, layer in layers.items():
        assert torch.equal(layer.mask, masks[name]) and not layer.admm_active
    with pytest.raises(ValueError, match="is not an N:M QAT layer"):
        ADMM(layers).start(masks={"layer.9.query": masks["layer.0.query"]})

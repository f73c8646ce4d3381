"""QATLinear: computes what the kernels compute, passes gradients straight through, exports exactly."""

import pytest
import torch
import torch.nn as nn

from nxm_kernels import pack, sparse_int_linear
from nxm_kernels.quant import fake_quant_per_token, fake_quant_weight
from nxm_kernels.sparsity import is_nm, nm_mask
from nxm_kernels.train import QATLinear, prepare_qat, qat_layers

from tiny_models import tiny_bert
from train_helpers import COUNT_BERT

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

SPECS = ["2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8"]


def _layer(spec, n=24, k=40, pruned=True):
    lin = nn.Linear(k, n)
    with torch.no_grad():
        lin.bias.normal_()
    layer = QATLinear.from_linear(lin, spec, name="layer.0.ffn1")
    if pruned and layer.nm:
        layer.set_mask(nm_mask(layer.weight.detach(), *layer.nm))
    return lin, layer


def test_fast_fake_quant_matches_foundation():
    w = torch.randn(33, 70)
    w[3] = 0  # an all-zero row gets scale 1
    for bits in (4, 8):
        assert torch.equal(fake_quant_weight(w, bits, assume_finite=True), fake_quant_weight(w, bits))


@pytest.mark.parametrize("spec", SPECS)
def test_effective_weight_is_exactly_the_packed_weight(spec):
    _, layer = _layer(spec)
    packed = pack(layer.export_weight(), pattern=spec)
    assert torch.equal(packed.unpack(), layer.effective_weight().detach())


def test_effective_weight_has_the_packed_bits_and_nan_tokens_give_nan_rows():
    _, layer = _layer("2:4-w4a8")
    want = pack(layer.export_weight(), pattern="2:4-w4a8").unpack()
    assert torch.equal(layer.effective_weight().detach().view(torch.int32), want.view(torch.int32))  # +0.0, not -0.0
    x = torch.randn(3, layer.in_features)
    x[1, 2] = float("nan")
    y = layer(x)
    assert y[1].isnan().all() and torch.isfinite(y[[0, 2]]).all()


@pytest.mark.parametrize("spec", SPECS)
def test_forward_is_the_kernel_math(spec):
    _, layer = _layer(spec)
    x = torch.randn(3, 5, layer.in_features)
    y = layer(x)
    w = layer.masked_weight().detach()
    expect = nn.functional.linear(fake_quant_per_token(x), fake_quant_weight(w, layer.spec.weight_bits), layer.bias)
    torch.testing.assert_close(y, expect, rtol=0, atol=0)
    # The reference kernel accumulates the same codes exactly, then scales: float rounding only.
    packed = pack(layer.export_weight(), pattern=spec)
    ref = sparse_int_linear(x, packed, layer.bias.detach(), backend="reference")
    torch.testing.assert_close(y.detach(), ref, rtol=1e-5, atol=1e-5)


def test_ste_gradients_and_mask():
    lin, layer = _layer("2:4-w8a8")
    x = torch.randn(7, layer.in_features, requires_grad=True)
    g = torch.randn(7, layer.out_features)
    (layer(x) * g).sum().backward()
    xq = fake_quant_per_token(x.detach())
    wq = layer.effective_weight().detach()
    # Straight through both quantizers: dL/dW = (g^T xq) masked, dL/dx = g wq, dL/db = sum g.
    torch.testing.assert_close(layer.weight.grad, (g.t() @ xq) * layer.mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, g @ wq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, g.sum(0), rtol=1e-5, atol=1e-5)
    assert bool((layer.weight.grad[~layer.mask] == 0).all())
    assert lin.weight is layer.weight  # shared Parameter: optimizers built before the swap keep working


def test_prune_uses_admm_z_mask_and_zeroes_master_weight():
    _, layer = _layer("2:4-w8a8", pruned=False)
    z = torch.randn_like(layer.weight)
    layer.admm_z = z * nm_mask(z, 2, 4)
    layer.admm_u = torch.zeros_like(z)
    mask = layer.prune_()
    assert torch.equal(mask, nm_mask(layer.admm_z if layer.admm_active else z * nm_mask(z, 2, 4), 2, 4))
    assert is_nm(layer.weight.detach(), 2, 4) and layer.pruned and not layer.admm_active
    assert bool((layer.weight.detach()[~mask] == 0).all())


def test_state_buffers_round_trip_with_changing_shapes():
    _, a = _layer("1:4-w4a8", pruned=False)
    a.admm_z = torch.randn_like(a.weight)
    a.admm_u = torch.randn_like(a.weight)
    a.admm_rho.fill_(0.37)
    _, b = _layer("1:4-w4a8", pruned=False)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.admm_z, a.admm_z) and torch.equal(b.admm_u, a.admm_u) and float(b.admm_rho) == pytest.approx(0.37)
    a.prune_()
    b.load_state_dict(a.state_dict())
    assert b.pruned and not b.admm_active and torch.equal(b.mask, a.mask)


def test_prepare_qat_follows_the_plan():
    model = tiny_bert(**COUNT_BERT)
    before = {n: p for n, p in model.named_parameters()}
    layers = prepare_qat(model, {"*": "2:4-w8a8", "ffn2": "dense-w4a8", "layer.1.query": "fp"})
    assert len(layers) == 11 and "layer.1.query" not in layers
    assert str(layers["layer.0.ffn2"].spec) == "dense-w4a8" and str(layers["layer.1.key"].spec) == "2:4-w8a8"
    assert isinstance(model.bert.encoder.layer[1].attention.self.query, nn.Linear)
    assert set(qat_layers(model)) == set(layers)
    after = {n: p for n, p in model.named_parameters()}
    assert all(after[n] is p for n, p in before.items())  # same Parameter objects, same names
    ignored = model._ddp_params_and_buffers_to_ignore
    assert "bert.encoder.layer.0.attention.self.query.admm_z" in ignored
    with pytest.raises(ValueError, match="already"):
        prepare_qat(model, "2:4-w8a8")
    with pytest.raises(ValueError, match="matches no layer"):
        prepare_qat(tiny_bert(**COUNT_BERT), {"layer.9.ffn1": "2:4-w8a8"})


def test_prepare_qat_reads_a_plan_json_path(tmp_path):
    # The docstring promises a JSON path works; it used to be read as a spec string (ValueError).
    path = tmp_path / "plan.json"
    path.write_text('{"*": "2:4-w8a8", "ffn2": "dense-w4a8"}')
    layers = prepare_qat(tiny_bert(**COUNT_BERT), str(path))
    assert len(layers) == 12 and str(layers["layer.1.ffn2"].spec) == "dense-w4a8"
    assert str(layers["layer.0.query"].spec) == "2:4-w8a8"


def test_export_keeps_the_users_ddp_ignore_entries():
    from nxm_kernels.train import export_model

    model = tiny_bert(**COUNT_BERT)
    model._ddp_params_and_buffers_to_ignore = ["bert.pooler.dense.bias"]  # the user's own entry
    prepare_qat(model, {"*": "dense-w8a8", "layer.1": "fp"})
    assert len(model._ddp_params_and_buffers_to_ignore) == 1 + 6 * 5  # 6 layers x 5 state buffers
    export_model(model, backend="reference")
    assert model._ddp_params_and_buffers_to_ignore == ["bert.pooler.dense.bias"]
    fresh = tiny_bert(**COUNT_BERT)
    prepare_qat(fresh, "dense-w4a8")
    export_model(fresh, backend="reference")
    assert fresh._ddp_params_and_buffers_to_ignore == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="fp"):
        QATLinear(8, 8, "fp")
    with pytest.raises(ValueError, match="N < M"):
        QATLinear(8, 8, "3:3-w8a8")
    with pytest.raises(TypeError, match="nn.Linear"):
        QATLinear.from_linear(nn.Conv1d(2, 2, 1), "2:4-w8a8")
    _, layer = _layer("2:4-w8a8", pruned=False)
    with pytest.raises(ValueError, match="shape"):
        layer.set_mask(torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="dtype"):
        layer.set_mask(torch.ones_like(layer.weight))
    _, dense = _layer("dense-w8a8")
    with pytest.raises(ValueError, match="nothing to prune"):
        dense.prune_()

"""ADMM: the projection, the residual bookkeeping, the rho schedule, the penalty gradient, pruning."""

import itertools
import math

import pytest
import torch
import torch.nn as nn

from nxm_kernels.sparsity import is_nm, prune_nm
from nxm_kernels.train import ADMM, ADMMConfig, QATLinear, project

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def _layers(spec="2:4-w8a8", n=3):
    return {f"layer.{i}.ffn1": QATLinear.from_linear(nn.Linear(32, 16), spec, name=f"layer.{i}.ffn1")
            for i in range(n)}


def test_projection_is_the_nearest_nm_point():
    layer = QATLinear(8, 4, "2:4-w8a8")
    v = torch.randn(4, 8)
    z = project(v, layer)
    assert torch.equal(z, prune_nm(v, 2, 4)) and is_nm(z, 2, 4)
    # Brute force: no other 2-of-4 support per group is closer.
    for row in range(4):
        for g in range(2):
            grp = v[row, 4 * g:4 * g + 4]
            best = min(float((grp * (1 - torch.zeros(4).index_fill(0, torch.tensor(keep), 1))).pow(2).sum())
                       for keep in itertools.combinations(range(4), 2))
            got = float((grp - z[row, 4 * g:4 * g + 4]).pow(2).sum())
            assert got == pytest.approx(best, rel=1e-6, abs=1e-7)


def test_projection_onto_nm_and_grid():
    layer = QATLinear(16, 6, "1:4-w4a8")
    v = torch.randn(6, 16)
    z = project(v, layer, "nm+quant")
    assert is_nm(z, 1, 4)
    scale = z.abs().amax(1, keepdim=True) / 7
    codes = z / scale
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="projection"):
        project(v, layer, "grid")
    with pytest.raises(ValueError, match="dense"):
        project(v, QATLinear(16, 6, "dense-w8a8"))


def test_update_bookkeeping_and_rho_schedule():
    layers = _layers()
    admm = ADMM(layers, ADMMConfig(rho=0.1, rho_growth=2.0, rho_max=0.3, interval=1))
    assert admm.phase == "init"
    admm.start()
    assert admm.phase == "admm"
    for layer in layers.values():
        assert torch.equal(layer.admm_z, prune_nm(layer.weight.detach(), 2, 4))
        assert bool((layer.admm_u == 0).all()) and float(layer.admm_rho) == pytest.approx(0.1)
    expected_rho = [0.1, 0.2, 0.3, 0.3]
    for step, rho in enumerate(expected_rho):
        with torch.no_grad():
            for layer in layers.values():
                layer.weight.add_(0.05 * torch.randn_like(layer.weight))
        old = {n: (lay.weight.detach().clone(), lay.admm_z.clone(), lay.admm_u.clone()) for n, lay in layers.items()}
        rec = admm.update()
        new_rho = min(rho * 2.0, 0.3)
        tot = 0.0
        for name, layer in layers.items():
            w, z_old, u_old = old[name]
            z = prune_nm(w + u_old, 2, 4)
            assert torch.equal(layer.admm_z, z)
            torch.testing.assert_close(layer.admm_u, (u_old + w - z) * (rho / new_rho), rtol=1e-6, atol=1e-7)
            r = rec["layers"][name]
            assert r["primal"] == pytest.approx(float((w - z).norm()), rel=1e-5)
            assert r["dual"] == pytest.approx(rho * float((z - z_old).norm()), rel=1e-5, abs=1e-9)
            assert r["rho"] == pytest.approx(rho)
            assert float(layer.admm_rho) == pytest.approx(new_rho) and int(layer.admm_updates) == step + 1
            tot += r["primal"] ** 2
        assert rec["primal"] == pytest.approx(math.sqrt(tot), rel=1e-6)
    assert len(admm.history) == 4
    assert admm.memory_bytes()["layer.0.ffn1"] == 2 * 4 * 32 * 16


def test_penalty_gradient_matches_autograd():
    layers = _layers("2:4-w4a8", 2)
    admm = ADMM(layers, ADMMConfig(rho=0.7))
    admm.start()
    for layer in layers.values():
        layer.admm_u.normal_()
    admm.penalty().backward()
    auto = {n: lay.weight.grad.clone() for n, lay in layers.items()}
    for layer in layers.values():
        layer.weight.grad = None
    admm.add_penalty_grad()
    for n, lay in layers.items():
        torch.testing.assert_close(lay.weight.grad, auto[n], rtol=1e-5, atol=1e-6)


def test_admm_drives_the_primal_residual_down_and_prunes():
    # Least squares toward a random dense target: ADMM must still end near the N:M set.
    layers = _layers("2:4-w8a8", 2)
    targets = {n: torch.randn_like(lay.weight) for n, lay in layers.items()}
    admm = ADMM(layers, ADMMConfig(rho=0.5, rho_growth=1.2, rho_max=5.0, interval=5))
    admm.start()
    # Plain SGD converges in the W-step between updates, which is the textbook setting.
    opt = torch.optim.SGD([lay.weight for lay in layers.values()], lr=0.1)
    first = None
    for step in range(1, 201):
        loss = sum(((lay.weight - targets[n]) ** 2).sum() for n, lay in layers.items())
        opt.zero_grad()
        loss.backward()
        admm.add_penalty_grad()
        opt.step()
        if step % 5 == 0:
            rec = admm.update()
            first = first if first is not None else rec["rel_primal"]
    assert rec["rel_primal"] < 0.01 < 0.1 < first
    masks = admm.prune()
    assert admm.phase == "finetune"
    for n, lay in layers.items():
        assert is_nm(lay.weight.detach(), 2, 4) and torch.equal(masks[n], lay.mask)
        assert lay.admm_z.numel() == 0 and lay.admm_u.numel() == 0


def test_dense_layers_are_not_admm_layers_and_config_is_checked():
    layers = _layers("dense-w8a8", 2)
    admm = ADMM(layers)
    assert admm.layers == {}
    admm.start()
    assert float(admm.penalty()) == 0.0
    for bad in (dict(rho=0), dict(rho=float("nan")), dict(rho_growth=0.5), dict(rho=1.0, rho_max=0.5),
                dict(interval=0), dict(projection="x")):
        with pytest.raises(ValueError):
            ADMMConfig(**bad)
    with pytest.raises(ValueError, match=r"rho_max must be a finite number > 0, got inf"):
        ADMMConfig(rho_max=float("inf"))
    with pytest.raises(TypeError, match="rho must be a number, got str"):
        ADMMConfig(rho="0.1")
    with pytest.raises(TypeError, match="QATLinear"):
        ADMM({"a": nn.Linear(2, 2)})

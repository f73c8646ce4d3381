"""Heterogeneous compression search: sensitivities, cache, Pareto/greedy search, validation, plot, CLI."""

import itertools
import json
import math
import random
from pathlib import Path

import pytest
import torch

from nxm_kernels.accounting import account, nominal_bits
from nxm_kernels.format import pack
from nxm_kernels.models.encoder import encoder_linears
from nxm_kernels.ops import sparse_int_linear
from nxm_kernels.plan import COMPONENTS, Plan
from nxm_kernels.search import (PlanCandidate, Sensitivity, compact_plan, fake_compressed, plot_pareto,
                                profile_sensitivity, search_plans, validate_plans)
from nxm_kernels.search.objective import Evaluator
from tiny_models import save_tiny_bert, tiny_bert

GLUE = Path(__file__).parent / "fixtures" / "glue"
SPECS = ["dense-w8a8", "2:4-w8a8", "dense-w4a8", "2:4-w4a8"]


# Tiny models: one intra-op thread (see conftest.one_thread; measured 180 ms vs 2 ms per forward).
pytestmark = pytest.mark.usefixtures("one_thread")


#: The search tests' model: a 3-label classifier, hidden 32, no dropout, a head whose logits matter.
SEARCH_BERT = dict(cls_name="BertForSequenceClassification", vocab_size=100, hidden_size=32, num_labels=3,
                   dropout=0.0, head_std=1.0)


def sample(n=3, bs=8, t=16, num_labels=3):
    out = []
    for _ in range(n):
        ids = torch.randint(5, 100, (bs, t))
        lengths = torch.randint(t // 2, t + 1, (bs,))
        mask = (torch.arange(t)[None] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, num_labels, (bs,))})
    return out


def make_fragile(model, layer=1):
    """Scale up one layer's ffn2 and give every row an outlier: int4 and 2:4 then hurt it badly."""
    with torch.no_grad():
        w = model.bert.encoder.layer[layer].output.dense.weight
        w.mul_(30.0)
        cols = torch.randint(0, w.shape[1], (w.shape[0],))
        w[torch.arange(w.shape[0]), cols] *= 20.0


def bert_shapes(layers=12, h=768, i=3072):
    return {f"layer.{n}.{c}": s for n in range(layers)
            for c, s in zip(COMPONENTS, [(h, h)] * 4 + [(i, h), (h, i)])}


def random_sensitivity(names, granularity="component", specs=SPECS):
    if granularity == "component":
        groups = {c: [n for n in names if n.endswith("." + c)] for c in COMPONENTS}
    else:
        groups = {n: [n] for n in names}
    # Random, roughly "more compression costs more", with ties and negative (noisy) values mixed in.
    costs = {g: {s: random.choice([0.0, -1e-3, random.random() * (k + 1)]) for k, s in enumerate(specs)}
             for g in groups}
    return Sensitivity(costs=costs, groups=groups, candidates=list(specs), granularity=granularity)


# ------------------------------------------------------------------------------- compression math
def test_fake_compressed_is_the_kernels_math_and_restores_exactly():
    model = tiny_bert(**SEARCH_BERT)
    sites = {s.name: s for s in encoder_linears(model)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lin = sites["layer.0.ffn1"].module
    x = torch.randn(5, 32) * 3
    for spec in SPECS:
        with fake_compressed(model, {"layer.0.ffn1": spec, "layer.1.query": "fp"}):
            y = lin(x)
            packed = pack(before["bert.encoder.layer.0.intermediate.dense.weight"], pattern=spec, prune=True)
            ref = sparse_int_linear(x, packed, lin.bias.detach(), backend="reference")
            assert torch.equal(lin.weight.detach(), packed.unpack())
        scale = ref.abs().max().item()
        assert torch.allclose(y, ref, rtol=0, atol=1e-5 * scale), spec  # fp32 GEMM vs exact integer product
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(s.module._forward_pre_hooks for s in sites.values())
    with pytest.raises(ValueError, match="not encoder linears"):
        with fake_compressed(model, {"layer.9.ffn1": "2:4-w8a8"}):
            pass
    with pytest.raises(RuntimeError, match="boom"):  # restored also when the body raises
        with fake_compressed(model, Plan.coerce("2:4-w4a8")):
            raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_evaluator_objectives():
    model = tiny_bert(**SEARCH_BERT)
    batches = sample()
    ev = Evaluator(model, batches)
    assert ev.cost(model) == 0.0  # the uncompressed model against itself
    with fake_compressed(model, Plan.coerce("2:4-w4a8")):
        kl = ev.cost(model)
    assert kl > 0
    ev_loss = Evaluator(model, batches, "loss")
    assert ev_loss.cost(model) == 0.0 and ev_loss.base_value > 0
    acc = lambda logits, labels: float((logits.argmax(-1) == labels).float().mean())  # noqa: E731
    ev_m = Evaluator(model, batches, "metric", metric_fn=acc)
    assert 0.0 <= ev_m.base_value <= 1.0 and ev_m.cost(model) == 0.0
    with pytest.raises(ValueError, match="needs metric_fn"):
        Evaluator(model, batches, "metric")
    with pytest.raises(ValueError, match="needs a 'labels'"):
        Evaluator(model, [{k: v for k, v in b.items() if k != "labels"} for b in batches], "loss")
    with pytest.raises(ValueError, match="objective must be one of"):
        Evaluator(model, batches, "accuracy")
    with pytest.raises(ValueError, match="at least one batch"):
        Evaluator(model, [])


# ------------------------------------------------------------------------------- the fragile component
def test_search_keeps_a_fragile_component_at_higher_precision():
    model = tiny_bert(**SEARCH_BERT)
    make_fragile(model, layer=1)
    batches = sample()
    sites = encoder_linears(model)

    sens = profile_sensitivity(model, batches, progress=False)
    assert sens.computed == 24 and sens.reused == 0
    result = search_plans(sens, sites, 0.80)
    bits = {c: nominal_bits(s) for c, s in result.best.choices.items()}
    assert bits["ffn2"] == max(bits.values()), result.best.choices
    assert bits["ffn2"] > min(bits.values()), result.best.choices

    sens_l = profile_sensitivity(model, batches, granularity="layer", progress=False)
    result_l = search_plans(sens_l, sites, 0.80)
    specs = {n: str(s) for n, s in result_l.best.plan.resolve([s.name for s in sites]).items()}
    fragile = specs["layer.1.ffn2"]
    assert fragile in ("fp", "dense-w8a8"), specs
    # It has the most bits of any linear, and more than the rest on average (weighted by size).
    acct = account(sites, result_l.best.plan)
    others = [a for a in acct.layers if a.name != "layer.1.ffn2"]
    avg = sum(a.params * a.nominal_bits for a in others) / sum(a.params for a in others)
    assert nominal_bits(fragile) == max(a.nominal_bits for a in acct.layers), specs
    assert avg < nominal_bits(fragile), specs
    # Heterogeneous beats uniform: at a fraction removed the uniform 2:4-w8a8 plan reaches, the search is cheaper.
    uni = next(c for c in result.uniform if c.choices["query"] == "2:4-w8a8")
    assert search_plans(sens, sites, uni.fraction_removed["nominal"]).best.predicted_cost <= uni.predicted_cost


# ------------------------------------------------------------------------------- search properties
@pytest.mark.parametrize("kind", ["nominal", "true", "true-fp16"])
@pytest.mark.parametrize("granularity", ["component", "layer"])
def test_every_returned_plan_meets_its_target(kind, granularity):
    shapes = bert_shapes(layers=4, h=48, i=192)
    sens = random_sensitivity(list(shapes), granularity)
    max_fraction = account(shapes, "2:4-w4a8").fraction_removed(kind)
    for target in [0.0] + [f * max_fraction for f in (0.3, 0.6, 0.8, 0.9, 0.95, 0.99, 1.0)]:
        result = search_plans(sens, shapes, target, kind=kind, top_k=4)
        assert 1 <= len(result.ranked) <= 4
        for c in result.ranked + [result.greedy]:
            acct = account(shapes, Plan.from_json(c.plan.to_json()))  # the plan as a reader sees it
            assert acct.fraction_removed(kind) >= target, (target, c.plan)
            assert acct.fraction_removed(kind) == c.fraction_removed[result.kind]
            pred = sum(max(0.0, sens.costs[g][s]) for g, s in c.choices.items() if s != "fp")
            assert c.predicted_cost == pytest.approx(pred, rel=1e-12, abs=1e-15)
        costs = [c.predicted_cost for c in result.ranked]
        assert costs == sorted(costs)
        assert result.greedy.predicted_cost >= result.best.predicted_cost - 1e-12
        # The front is a front: fraction removed up, cost never down.
        front = [(c.fraction_removed, c.predicted_cost) for c in result.front]
        assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(front, front[1:]))


def test_pareto_search_is_exact_against_brute_force():
    shapes = bert_shapes(layers=1, h=32, i=64)
    names = list(shapes)
    sens = random_sensitivity(names)
    options = ["fp"] + SPECS
    # Nominal bits of each component under each option, from the accounting (integers: exact sums).
    bits = {(c, o): sum(a.params * a.nominal_bits for a in account(shapes, {c: o}, strict=False).layers
                        if a.name.endswith("." + c)) for c in COMPONENTS for o in options}
    total = 32 * account(shapes, "fp").params
    points = []
    for choice in itertools.product(options, repeat=len(COMPONENTS)):
        plan = dict(zip(COMPONENTS, choice))
        r = 1.0 - sum(bits[c, o] for c, o in plan.items()) / total
        cost = sum(max(0.0, sens.costs[g][s]) for g, s in plan.items() if s != "fp")
        points.append((r, cost))
    assert points[-1][0] == account(shapes, "2:4-w4a8").fraction_removed("nominal")
    for target in (0.5, 0.7, 0.8, 0.85, 0.9):
        result = search_plans(sens, shapes, target)
        best = min(c for r, c in points if r >= target)
        assert result.best.predicted_cost == pytest.approx(best, abs=1e-12)
        assert result.exact
    # Every plan is matched or beaten by a front plan (no better plan was missed).
    front = [(c.fraction_removed, c.predicted_cost) for c in search_plans(sens, shapes, 0.0).front]
    for r, c in points:
        assert any(fr >= r and fc <= c + 1e-12 for fr, fc in front)


def test_bucketed_search_still_meets_the_target():
    shapes = bert_shapes(layers=12, h=64, i=256)
    sens = random_sensitivity(list(shapes), "layer")
    for row in sens.costs.values():  # distinct positive costs: a front of hundreds of plans
        for s in row:
            row[s] = (1 + random.random()) * 10 ** random.uniform(-4, 0)
    exact = search_plans(sens, shapes, 0.85)
    assert len(exact.front) > 50
    approx = search_plans(sens, shapes, 0.85, max_states=50)
    assert not approx.exact and exact.exact
    assert all(account(shapes, c.plan).fraction_removed("nominal") >= 0.85 for c in approx.ranked)
    assert approx.best.predicted_cost >= exact.best.predicted_cost - 1e-12


def test_search_bad_input():
    shapes = bert_shapes(layers=2, h=32, i=64)
    sens = random_sensitivity(list(shapes))
    with pytest.raises(ValueError, match="most compressed plan reaches 0.93"):
        search_plans(sens, shapes, 0.95)
    with pytest.raises(ValueError, match="target must be a fraction removed"):
        search_plans(sens, shapes, 1.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        search_plans(sens, shapes, 0.5, kind="bytes")
    with pytest.raises(ValueError, match="top_k"):
        search_plans(sens, shapes, 0.5, top_k=0)
    with pytest.raises(TypeError, match="Sensitivity"):
        search_plans({}, shapes, 0.5)
    with pytest.raises(ValueError, match="another model"):
        search_plans(sens, bert_shapes(layers=1, h=32, i=64), 0.5)
    model = tiny_bert(**SEARCH_BERT)
    with pytest.raises(ValueError, match="other than 'fp'"):
        profile_sensitivity(model, sample(1), ["fp"], progress=False)
    with pytest.raises(ValueError, match="granularity"):
        profile_sensitivity(model, sample(1), granularity="head", progress=False)
    with pytest.raises(ValueError, match="mode"):
        profile_sensitivity(model, sample(1), mode="admm", progress=False)
    with pytest.raises(ValueError, match="train_batches"):
        profile_sensitivity(model, sample(1), mode="qat", progress=False)


def test_compact_plan_round_trips():
    names = list(bert_shapes(layers=3, h=8, i=8))
    for _ in range(20):
        assignment = {n: random.choice(["fp"] + SPECS) for n in names}
        plan = compact_plan(assignment, names)
        again = Plan.from_json(plan.to_json())
        assert {n: str(s) for n, s in again.resolve(names).items()} == assignment
    uniform = compact_plan({n: "2:4-w8a8" for n in names}, names)
    assert uniform.to_dict() == {c: "2:4-w8a8" for c in COMPONENTS}


def test_compact_plan_writes_a_fused_qkv_site_as_its_components():
    """``layer.<i>.qkv`` (query, key and value as one linear in the checkpoint) is not plan vocabulary: the plan
    gives its three components its spec."""
    names = [f"layer.{i}.{c}" for i in range(3) for c in ("qkv", "attn_out", "ffn1", "ffn2")]
    for _ in range(20):
        assignment = {n: random.choice(["fp"] + SPECS) for n in names}
        plan = compact_plan(assignment, names)
        assert not any("qkv" in pattern for pattern in plan.to_dict())
        assert {n: str(s) for n, s in Plan.from_json(plan.to_json()).resolve(names).items()} == assignment
    plan = compact_plan({n: "2:4-w8a8" for n in names} | {"layer.2.qkv": "dense-w8a8"}, names)
    assert plan.to_dict() == {"query": "2:4-w8a8", "layer.2.query": "dense-w8a8", "key": "2:4-w8a8",
                              "layer.2.key": "dense-w8a8", "value": "2:4-w8a8", "layer.2.value": "dense-w8a8",
                              "attn_out": "2:4-w8a8", "ffn1": "2:4-w8a8", "ffn2": "2:4-w8a8"}


# ------------------------------------------------------------------------------- cache
def test_cached_sensitivities_are_reused(tmp_path):
    model = tiny_bert(**SEARCH_BERT)
    batches = sample()
    forwards = []
    model.register_forward_hook(lambda *a: forwards.append(1))

    first = profile_sensitivity(model, batches, SPECS[:2], cache_dir=tmp_path, progress=False)
    assert first.computed == 12 and first.reused == 0
    n_first = len(forwards)
    assert n_first == 13 * len(batches)  # the baseline + 12 compressed passes
    files = list(tmp_path.glob("sensitivity-*.json"))
    assert len(files) == 1

    again = profile_sensitivity(model, batches, SPECS[:2], cache_dir=tmp_path, progress=False)
    assert again.computed == 0 and again.reused == 12 and len(forwards) == n_first  # not one forward pass
    assert again.costs == first.costs
    # Another budget: searching again needs no model at all.
    r1, r2 = search_plans(again, encoder_linears(model), 0.80), search_plans(again, encoder_linears(model), 0.85)
    assert r1.best.fraction_removed["nominal"] >= 0.80 and r2.best.fraction_removed["nominal"] >= 0.85

    # One more candidate: only its six entries are measured.
    more = profile_sensitivity(model, batches, SPECS[:3], cache_dir=tmp_path, progress=False)
    assert more.computed == 6 and more.reused == 12
    assert all(more.costs[g][s] == first.costs[g][s] for g in first.costs for s in SPECS[:2])

    # Other data or other weights: another key, measured afresh.
    other = profile_sensitivity(model, sample(), SPECS[:1], cache_dir=tmp_path, progress=False)
    assert other.computed == 6 and other.key != first.key
    with torch.no_grad():
        w = model.bert.encoder.layer[0].output.dense.weight
        saved = w.clone()
        w.mul_(1.5)
    changed = profile_sensitivity(model, batches, SPECS[:1], cache_dir=tmp_path, progress=False)
    assert changed.computed == 6 and changed.key != first.key
    assert len(list(tmp_path.glob("sensitivity-*.json"))) == 3

    # A corrupt cache file is measured again, not trusted.
    with torch.no_grad():
        w.copy_(saved)
    files[0].write_text("{not json")
    redo = profile_sensitivity(model, batches, SPECS[:1], cache_dir=tmp_path, progress=False)
    assert redo.computed == 6 and redo.key == first.key
    assert redo.costs["ffn2"][SPECS[0]] == first.costs["ffn2"][SPECS[0]]  # the same measurement again


# ------------------------------------------------------------------------------- validation, outputs
def test_validation_measures_whole_plans(tmp_path):
    model = tiny_bert(**SEARCH_BERT)
    make_fragile(model)
    batches = sample()
    sens = profile_sensitivity(model, batches, progress=False)
    sites = encoder_linears(model)
    names = [s.name for s in sites]
    # A plan compressing one group only: measured whole == its profiled cost (the same computation).
    single = {n: ("2:4-w4a8" if n.endswith(".ffn1") else "fp") for n in names}
    c = PlanCandidate(plan=compact_plan(single, names), choices={"ffn1": "2:4-w4a8"},
                      predicted_cost=sens.costs["ffn1"]["2:4-w4a8"],
                      fraction_removed={"nominal": 0.0, "true-fp32": None, "true-fp16": None})
    validate_plans(model, batches, [c], progress=False)
    assert c.measured["oneshot"] == pytest.approx(c.predicted_cost, rel=1e-9)

    result = search_plans(sens, sites, 0.85, top_k=3)
    validate_plans(model, batches, result, modes=("oneshot", "deploy"), top_k=2, progress=False)
    for c in result.ranked[:2]:
        m1, m2 = c.measured["oneshot"], c.measured["deploy"]
        assert math.isfinite(m1) and m1 > 0
        # The deployed NxMLinear model (reference backend) computes what the fake-quantized one does.
        assert m2 == pytest.approx(m1, rel=1e-3, abs=1e-9)
    assert not result.ranked[2].measured
    d = json.loads(result.to_json(tmp_path / "r.json"))
    assert d["ranked"][0]["measured"]["deploy"] == result.ranked[0].measured["deploy"]
    assert d["best"] == result.best.plan.to_dict()
    png = plot_pareto(result, tmp_path / "front.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(ValueError, match=".png"):
        plot_pareto(result, tmp_path / "front.jpg")
    with pytest.raises(ValueError, match="modes"):
        validate_plans(model, batches, result, modes=("bogus",), progress=False)


def test_best_plan_is_taken_unchanged_by_swap_linears(tmp_path):
    from nxm_kernels.models.encoder import swap_linears

    model = tiny_bert(**SEARCH_BERT)
    batches = sample()
    sens = profile_sensitivity(model, batches, progress=False)
    result = search_plans(sens, encoder_linears(model), 0.85, kind="true")
    path = tmp_path / "plan.json"
    result.best.plan.to_json(path)
    acct = account(encoder_linears(model), Plan.from_json(path))
    swap_linears(model, Plan.from_json(path), backend="reference")
    # The swapped modules hold exactly the bytes the accounting predicted (bias kept apart).
    for a, site in zip(acct.layers, encoder_linears(model)):
        if a.spec == "fp":
            assert isinstance(site.module, torch.nn.Linear)
            continue
        b = site.module.nbytes()
        assert {k: b[k] for k in ("values", "metadata", "scales")} == {k: a.bytes[k] for k in ("values", "metadata",
                                                                                                "scales")}
        assert b["bias"] == a.bias_params * 4


def test_plans_with_fp_entries_swap_save_and_load(tmp_path):
    import nxm_kernels as nxm

    model = tiny_bert(**SEARCH_BERT)
    names = [s.name for s in encoder_linears(model)]
    plan = compact_plan({n: ("fp" if n.endswith("ffn2") or n == "layer.0.query" else "2:4-w4a8") for n in names},
                        names)
    assert "fp" in plan.to_dict().values()
    x = sample(1)[0]
    with fake_compressed(model, plan), torch.no_grad():
        expected = model(**{k: v for k, v in x.items() if k != "labels"}).logits
    report = nxm.swap_linears(model, Plan.from_json(plan.to_json()), backend="reference")
    assert len(report.swapped) == 9
    nxm.save_compressed(model, tmp_path / "ckpt", plan=plan)
    loaded = nxm.load_compressed(tmp_path / "ckpt", backend="reference")
    with torch.no_grad():
        got = loaded(**{k: v for k, v in x.items() if k != "labels"}).logits
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_short_qat_mode_uses_the_training_path(tmp_path):
    pytest.importorskip("nxm_kernels.train.qat")
    model = tiny_bert(**SEARCH_BERT)
    batches, train = sample(2), sample(2)
    sens = profile_sensitivity(model, batches, ["2:4-w4a8"], mode="qat", train_batches=train, qat_steps=2,
                               qat_lr=1e-3, cache_dir=tmp_path, progress=False)
    one = profile_sensitivity(model, batches, ["2:4-w4a8"], cache_dir=tmp_path, progress=False)
    assert sens.computed == 6 and one.computed == 6 and sens.key != one.key
    assert all(math.isfinite(v) and v >= 0 for row in sens.costs.values() for v in row.values())
    assert sens.costs != one.costs  # two steps of training moved something
    again = profile_sensitivity(model, batches, ["2:4-w4a8"], mode="qat", train_batches=train, qat_steps=2,
                                qat_lr=1e-3, cache_dir=tmp_path, progress=False)
    assert again.computed == 0


# ------------------------------------------------------------------------------- CLI
@pytest.fixture
def tiny_task_model(tmp_path):
    from transformers import BertTokenizer

    return save_tiny_bert(tmp_path / "tiny-sst2", BertTokenizer(str(GLUE / "vocab.txt")),
                          cls_name="BertForSequenceClassification", hidden_size=32, intermediate_size=64, head_std=1.0)


def test_cli_search_end_to_end_on_glue_fixture(tiny_task_model, tmp_path, capsys):
    from nxm_kernels.cli import main

    out = tmp_path / "out" / "plan.json"
    args = ["search", "--model", str(tiny_task_model), "--task", "sst2", "--data-dir", str(GLUE),
            "--target", "0.85", "--out", str(out), "--samples", "24", "--batch-size", "12",
            "--cache-dir", str(tmp_path / "cache"), "--validate", "1", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "24 measured, 0 from the cache" in text and "best plan, by component" in text
    plan = Plan.from_json(out)
    from nxm_kernels.cli.account import model_sites
    sites = model_sites(str(tiny_task_model))
    assert account(sites, plan).fraction_removed("nominal") >= 0.85
    report = json.loads(out.with_name("plan.search.json").read_text())
    assert report["best"] == plan.to_dict() and report["ranked"][0]["measured"]["oneshot"] >= 0
    assert report["best_accounting"]["total"]["fraction_removed"]["nominal"] >= 0.85
    assert out.with_name("plan.pareto.png").read_bytes()[:4] == b"\x89PNG"

    # Another budget, true bytes against fp32: every sensitivity comes from the cache.
    args2 = [a if a != "0.85" else "0.80" for a in args if a not in ("--validate", "1")] + ["--kind", "true-fp32",
                                                                                          "--plot", "none"]
    assert main(args2) == 0
    text = capsys.readouterr().out
    assert "0 measured, 24 from the cache" in text
    assert account(sites, Plan.from_json(out)).fraction_removed("true-fp32") >= 0.80

    assert main(["account", "--model", str(tiny_task_model), "--plan", str(out), "--json",
                 str(tmp_path / "acct.json")]) == 0
    assert "total (12)" in capsys.readouterr().out
    assert json.loads((tmp_path / "acct.json").read_text())["plan"] == Plan.from_json(out).to_dict()

    assert main(args[:-1] + ["--target", "0.99"]) == 2  # unreachable: a one-line error, not a traceback
    assert "cannot be reached" in capsys.readouterr().err

    # The other commands take the plan file unchanged: a (very) short compression run, then evaluate.
    ckpt = tmp_path / "compressed"
    assert main(["compress", "--model", str(tiny_task_model), "--task", "sst2", "--data-dir", str(GLUE),
                 "--plan", str(out), "--output-dir", str(ckpt), "--max-steps", "2", "--admm-steps", "1",
                 "--admm-interval", "1", "--batch-size", "8", "--max-train-samples", "16",
                 "--max-eval-samples", "16", "--cpu", "--backend", "reference"]) == 0
    metrics = json.loads((ckpt / "metrics.json").read_text())
    assert metrics["plan"] == Plan.from_json(out).to_dict()
    compressed_bytes = metrics["bytes_after"]
    acct = account(sites, Plan.from_json(out))
    packed = sum(a.bytes["total"] for a in acct.layers if a.spec != "fp")
    biases = sum(a.bias_params * 4 for a in acct.layers if a.spec != "fp")
    assert compressed_bytes == packed + biases  # NxMLinear bytes (with bias) = the accounting, exactly
    assert main(["evaluate", "--model", str(ckpt / "compressed"), "--task", "sst2", "--data-dir", str(GLUE),
                 "--max-samples", "16", "--backend", "reference"]) == 0


@pytest.mark.slow
def test_example_search_plan_runs(run_program, tmp_path):
    out = run_program("python/search_plan.py", "--model", "tiny", "--out-dir", tmp_path / "out",
                      "--cache-dir", tmp_path / "cache")
    assert "reloaded checkpoint: mean embedding cosine" in out
    plan = Plan.from_json(tmp_path / "out" / "plan.json")
    assert account(bert_shapes(layers=2, h=128, i=512), plan).fraction_removed("nominal") >= 0.875
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 10_000

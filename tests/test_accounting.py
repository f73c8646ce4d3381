"""Compression accounting: exact bytes against hand-computed figures and against what pack() produces."""

import json

import pytest
import torch

from nxm_kernels.accounting import LayerShape, account, layer_shapes, nominal_bits
from nxm_kernels.format import pack, weight_nbytes
from nxm_kernels.plan import COMPONENTS, Plan
from nxm_kernels.spec import KERNEL_SPECS

# A small "model": 2 layers, hidden 40 (K pads to 48), intermediate 72 (K pads to 80).
H, I = 40, 72
SHAPES = {}
for _i in range(2):
    for _c, _s in zip(COMPONENTS, [(H, H)] * 4 + [(I, H), (H, I)]):
        SHAPES[f"layer.{_i}.{_c}"] = _s


def test_hand_computed_bytes_per_layer():
    # [N=40, K=40]: K_pad = 48.
    # 2:4-w8a8: values 40*24 = 960, metadata 40*48/8 = 240, scales 40*4 = 160
    assert weight_nbytes((40, 40), "2:4-w8a8") == {"values": 960, "metadata": 240, "scales": 160, "total": 1360}
    # 2:4-w4a8: values 40*24/2 = 480
    assert weight_nbytes((40, 40), "2:4-w4a8") == {"values": 480, "metadata": 240, "scales": 160, "total": 880}
    # dense-w8a8: values 40*48 = 1920; dense-w4a8: 960
    assert weight_nbytes((40, 40), "dense-w8a8") == {"values": 1920, "metadata": 0, "scales": 160, "total": 2080}
    assert weight_nbytes((40, 40), "dense-w4a8") == {"values": 960, "metadata": 0, "scales": 160, "total": 1120}
    # [N=40, K=72] (ffn2): K_pad = 80: 2:4-w8a8 values 40*40 = 1600, metadata 40*10 = 400, scales 160
    assert weight_nbytes((40, 72), "2:4-w8a8")["total"] == 2160
    # fp: dense floats, no padding
    assert weight_nbytes((40, 72), "fp") == {"values": 11520, "metadata": 0, "scales": 0, "total": 11520}
    assert weight_nbytes((40, 72), "fp", 2)["total"] == 5760


def test_hand_computed_plan_totals():
    plan = {"*": "2:4-w8a8", "ffn2": "dense-w4a8", "layer.1.query": "fp"}
    acct = account(SHAPES, plan)
    # Per layer, hand computed:
    #   [40,40] 2:4-w8a8 = 1360; [72,40] 2:4-w8a8 = 72*24 + 72*6 + 72*4 = 2448;
    #   [40,72] dense-w4a8 = 40*80/2 + 160 = 1760; [40,40] fp = 6400 (fp32) / 3200 (fp16).
    # Layer 0: 4*1360 + 2448 + 1760 = 9648. Layer 1: 3*1360 + 6400 + 2448 + 1760 = 14688 (fp32).
    assert acct.true_bytes_fp32 == 9648 + 14688
    assert acct.true_bytes_fp16 == 9648 + 14688 - 3200
    params = 2 * (4 * 1600 + 2 * 2880)  # 24320 weights
    assert acct.params == params
    assert acct.fp32_bytes == 4 * params and acct.fp16_bytes == 2 * params
    assert acct.fraction_removed("true-fp32") == pytest.approx(1 - 24336 / 97280, abs=1e-15)
    assert acct.fraction_removed("true-fp16") == pytest.approx(1 - 21136 / 48640, abs=1e-15)
    # nominal bits: 2:4-w8a8 -> 4, dense-w4a8 -> 4, fp -> 32; only layer.1.query (1600 weights) is fp.
    assert acct.fraction_removed("nominal") == pytest.approx(1 - (4 * (params - 1600) + 32 * 1600) / (32 * params),
                                                             abs=1e-15)
    # Biases: every site has one, out_features each: 2 * (4*40 + 72 + 40) = 544.
    s = acct.summary()
    assert s["bias_params"] == 544 and s["bias_bytes_fp32"] == 2176 and s["bias_bytes_fp16"] == 1088
    assert s["fraction_removed_with_bias"]["true-fp32"] == pytest.approx(1 - (24336 + 2176) / (97280 + 2176), abs=1e-15)
    comp = acct.by_component()
    assert comp["query"]["true_bytes_fp32"] == 1360 + 6400
    assert comp["ffn2"]["true_bytes_fp32"] == 2 * 1760


@pytest.mark.parametrize("spec,nominal", [("2:4-w8a8", 0.875), ("2:4-w4a8", 0.9375), ("dense-w8a8", 0.75),
                                          ("dense-w4a8", 0.875), ("fp", 0.0)])
def test_uniform_nominal_fractions_removed_match_the_papers(spec, nominal):
    acct = account(SHAPES, spec)
    assert acct.fraction_removed("nominal") == nominal  # exact: powers of two
    if spec != "fp":
        # The true figures are lower: metadata, scales and padding cost bytes.
        assert acct.fraction_removed("true-fp32") < nominal
        assert acct.fraction_removed("true-fp16") < acct.fraction_removed("true-fp32")
    else:
        assert acct.fraction_removed("true-fp32") == 0.0 and acct.fraction_removed("true-fp16") == 0.0


def test_bert_base_worked_figures():
    # BERT-base, uniform 2:4-w8a8: per weight row of K=768: 384 values + 96 metadata + 4 scale bytes = 484
    # bytes against 3072 (fp32) and 1536 (fp16); K=3072 rows: 1536 + 384 + 4 = 1924 against 12288 / 6144.
    shapes = {f"layer.{i}.{c}": s for i in range(12)
              for c, s in zip(COMPONENTS, [(768, 768)] * 4 + [(3072, 768), (768, 3072)])}
    acct = account(shapes, "2:4-w8a8")
    rows768 = 12 * (4 * 768 + 3072)
    rows3072 = 12 * 768
    assert acct.true_bytes_fp32 == rows768 * 484 + rows3072 * 1924
    assert acct.fp32_bytes == rows768 * 3072 + rows3072 * 12288
    assert acct.fraction_removed("nominal") == 0.875
    assert acct.fraction_removed("true-fp32") == pytest.approx(0.8427734375, abs=1e-12)  # 1 - 4451328/28311552


@pytest.mark.parametrize("spec", KERNEL_SPECS)
def test_account_equals_packed_bytes_exactly(spec):
    # Odd shapes on purpose: K not a multiple of 16 (padding), N odd.
    shapes = {"layer.0.query": (24, 40), "layer.0.key": (7, 33), "layer.0.value": (13, 16),
              "layer.0.attn_out": (40, 1), "layer.0.ffn1": (72, 40), "layer.0.ffn2": (40, 72)}
    plan = Plan({"*": spec})
    acct = account(shapes, plan)
    total = 0
    for a in acct.layers:
        w = torch.randn(a.out_features, a.in_features)
        packed = pack(w, pattern=spec, prune=True)
        assert packed.nbytes() == a.bytes, a.name
        total += packed.nbytes()["total"]
    assert acct.true_bytes_fp32 == total


def test_mixed_plan_equals_packed_bytes_exactly():
    plan = Plan({"*": "2:4-w4a8", "ffn1": "dense-w8a8", "layer.1.*": "2:4-w8a8", "layer.0.key": "dense-w4a8",
                 "layer.1.value": "fp"})
    acct = account(SHAPES, plan)
    total = 0
    for a in acct.layers:
        spec = plan.spec_for(a.name)
        assert a.spec == str(spec)
        w = torch.randn(a.out_features, a.in_features)
        total += w.numel() * 4 if spec.is_fp else pack(w, pattern=str(spec), prune=True).nbytes()["total"]
    assert acct.true_bytes_fp32 == total


def test_sites_and_json_forms():
    lin = torch.nn.Linear(40, 72, bias=False)

    class Site:
        name, module = "layer.0.ffn1", lin

    shapes = layer_shapes([Site()])
    assert shapes == {"layer.0.ffn1": LayerShape(72, 40, False)}
    acct = account([Site()], "2:4-w8a8")
    assert acct.bias_params == 0
    d = json.loads(acct.to_json())
    assert d["total"]["true_bytes_fp32"] == 2448
    assert d["layers"][0]["bytes"]["metadata"] == 72 * 6
    assert d["plan"] == {"*": "2:4-w8a8"}
    table = acct.table()
    assert "layer.0.ffn1" in table and "87.50%" in table and "2,448" in table
    assert "ffn1 (x1)" in acct.table(per_layer=False)


def test_training_only_patterns_have_nominal_but_no_true_size():
    assert nominal_bits("1:4-w8a8") == 2.0
    acct = account(SHAPES, "1:4-w8a8")
    assert acct.fraction_removed("nominal") == 1 - 2 / 32
    assert acct.summary()["fraction_removed"]["true-fp32"] is None and not acct.exact
    with pytest.raises(ValueError, match="no true size"):
        acct.fraction_removed("true")
    with pytest.raises(ValueError, match="packable spec"):
        weight_nbytes((4, 4), "1:4-w8a8")
    assert "-" in acct.table()


def test_bad_input():
    with pytest.raises(ValueError, match="matches no layer"):
        account(SHAPES, {"layer.7.query": "2:4-w8a8"})
    with pytest.raises(ValueError, match="weight bits must be one of"):
        account(SHAPES, "3:4-w2a8")
    with pytest.raises(ValueError, match="in_features must be an int >= 1"):
        account({"layer.0.query": (4, 0)}, "fp")
    with pytest.raises(TypeError, match="out_features, in_features"):
        account({"layer.0.query": 4}, "fp")
    with pytest.raises(ValueError, match="must not be empty"):
        account({}, "fp")
    with pytest.raises(TypeError, match="plan must be"):
        account(SHAPES, 3)
    with pytest.raises(ValueError, match="float_bytes"):
        weight_nbytes((4, 4), "fp", 3)
    with pytest.raises(ValueError, match="kind must be"):
        account(SHAPES, "fp").fraction_removed("bogus")


@pytest.mark.slow
def test_accounting_imports_without_transformers():
    # Foundation-level knowledge: the demo, benchmarks and tools may use it without the HF stack.
    import subprocess
    import sys

    code = ("import sys, nxm_kernels.accounting as a; "
            "assert 'transformers' not in sys.modules, 'transformers was imported'; "
            "print(a.account({'layer.0.query': (8, 8)}, '2:4-w8a8').true_bytes_fp32)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(8 * 8 + 8 * 2 + 8 * 4)  # K_pad 16: values 8*8, metadata 8*2, scales 8*4

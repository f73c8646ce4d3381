"""Every encoder family of nxm_kernels.models.families, end to end on its tiny random built-in.

One module-scoped model per family (``tiny`` is BERT's layout; ``tiny-<family>`` the others, built from
transformers' own config classes, offline): the swap covers every encoder linear and nothing else, the
plan reaches the right layers, fused QKV is bit-identical, checkpoints round-trip both ways, calibration
beats magnitude pruning, the QAT export matches the QAT forward, the search and the accounting name the
same linears, and ``nxm compress`` runs. A new family's record adds its built-in here by itself.
"""

import copy
import os
import random

import pytest
import torch
import torch.nn as nn

import nxm_kernels as nxm
from nxm_kernels.accounting import account
from nxm_kernels.fusion import FusedProjection, fused_groups
from nxm_kernels.models import zoo
from nxm_kernels.models.encoder import encoder_linears
from nxm_kernels.models.families import FAMILIES, find_encoder
from nxm_kernels.modules import NxMLinear, compressed_linears
from nxm_kernels.sparsity import prune_nm

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

#: The built-in of each family: BERT's layout is the ``tiny`` built-in.
BUILTINS = {"bert": "tiny", **{name[len("tiny-"):]: name for name in zoo.TINY_FAMILIES}}


def test_every_family_has_a_builtin():
    assert set(BUILTINS) == {f.name for f in FAMILIES}
    assert set(BUILTINS) >= {"bert", "distilbert", "mpnet", "deberta-v2", "modernbert"}


def _module_seed() -> int:
    """A module fixture runs before the per-test seed fixture: it draws (and prints) its own seed."""
    seed = int(os.environ.get("NXM_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"[seed] models: NXM_TEST_SEED={seed}")
    return seed


@pytest.fixture(scope="module", params=list(BUILTINS), ids=list(BUILTINS))
def family(request):
    """``(family name, built-in base model with a batch of inputs, a sequence-classification model of it, inputs
    for that one)`` (the task model's vocabulary is its character-level tokenizer's)."""
    name = BUILTINS[request.param]
    seed = _module_seed()
    builtin = zoo.load_builtin(name, seed=seed)
    builtin.inputs = {k: v[:6] for k, v in builtin.inputs.items()}  # 6 x 24 tokens, padded
    task, _, _ = zoo.load_task_model(name, 3, seed=seed)
    head = [m for m in task.modules() if isinstance(m, nn.Linear)][-1]  # the output layer (MPNet's is nested)
    with torch.no_grad():
        head.weight.normal_(0.0, 1.0)  # a random head with HF's 0.02 init barely moves the logits
    task_inputs = dict(builtin.inputs, input_ids=builtin.inputs["input_ids"] % task.config.vocab_size)
    return request.param, builtin, task.eval(), task_inputs


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def _swapped(model):
    """Names of the model's linears an NxMLinear now computes: NxMLinear and fused projections, less the
    fused layers registered beside the projections (they are not linears of the original model)."""
    fused = set(fused_groups(model))
    return {n for n, m in model.named_modules() if isinstance(m, (NxMLinear, FusedProjection)) and n not in fused}


def _encoder_linears_by_module(model):
    prefix = find_encoder(model).prefix + "."
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(prefix)}


def test_swap_compresses_every_encoder_linear_and_nothing_else(family):
    name, builtin, task, _ = family
    assert find_encoder(builtin.model).family.name == name
    for model in (builtin.model, task):
        swapped = copy.deepcopy(model)
        expected = _encoder_linears_by_module(model)
        sites = encoder_linears(model)
        assert {s.qualified_name for s in sites} == expected  # the record names every encoder linear
        report = nxm.swap_linears(swapped, "2:4-w8a8")
        assert _swapped(swapped) == expected and report.kept == []
        assert [s.name for s in report.swapped] == [s.name for s in sites]
        # Outside the encoder layers (pooler, classification heads, ...) every linear stays float.
        others = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)} - expected
        assert all(isinstance(swapped.get_submodule(n), nn.Linear) for n in others)
    assert others  # the task model's head at least
    family_ = find_encoder(builtin.model).family
    ffn1 = [s for s in encoder_linears(swapped) if s.name.endswith(".ffn1")]
    if family_.glu:  # the activation applies to half of ffn1's rows: no epilogue, the model's module stays
        assert all(s.module.activation == "none" for s in ffn1) and report.fused_activations == []
    else:
        assert all(s.module.activation == "gelu" for s in ffn1)
        assert report.fused_activations == [find_encoder(swapped).path(i, "activation") for i in range(2)]
    if family_.native_qkv:  # nothing to fuse: the checkpoint's own qkv linear is one NxMLinear
        assert report.fused == {} and [s.name for s in sites][:1] == ["layer.0.qkv"]
    else:
        assert len(report.fused) == 2


def test_electra_embedding_projection_stays_float():
    """ELECTRA has BERT's layout plus a projection from its smaller embeddings: not an encoder linear."""
    from transformers import ElectraConfig, ElectraForSequenceClassification

    model = ElectraForSequenceClassification(ElectraConfig(
        vocab_size=120, embedding_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=64)).eval()
    assert find_encoder(model).family.name == "bert"
    expected = _encoder_linears_by_module(model)
    nxm.swap_linears(model, "2:4-w8a8")
    assert _swapped(model) == expected and len(expected) == 12
    assert isinstance(model.electra.embeddings_project, nn.Linear)


def test_plan_names_reach_the_right_layers_and_fusion_is_bit_identical(family):
    """``2:4-w8a8`` is exactly ``dense-w8a8`` of the magnitude-pruned float model, layer by layer; a mixed plan
    resolves per component; fused and unfused query/key/value give the same bits."""
    name, builtin, _, _ = family
    model, inputs = builtin.model, builtin.inputs
    sparse = copy.deepcopy(model)
    nxm.swap_linears(sparse, "2:4-w8a8")
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for site in encoder_linears(pruned):
            site.module.weight.copy_(prune_nm(site.module.weight, pattern="2:4"))
    nxm.swap_linears(pruned, "dense-w8a8")
    assert torch.equal(_out(sparse, inputs), _out(pruned, inputs))

    plan = {"*": "2:4-w8a8", "ffn2": "dense-w8a8", "layer.1": "2:4-w4a8", "layer.0.attn_out": "fp"}
    fused, unfused = copy.deepcopy(model), copy.deepcopy(model)
    report = nxm.swap_linears(fused, plan)
    nxm.swap_linears(unfused, plan, fuse_qkv=False)
    specs = {s.name: str(s.module.spec) if hasattr(s.module, "spec") else "fp" for s in encoder_linears(fused)}
    first = "layer.0.qkv" if find_encoder(model).family.native_qkv else "layer.0.key"
    assert specs[first] == "2:4-w8a8" and specs["layer.0.ffn2"] == "dense-w8a8"
    assert specs["layer.0.attn_out"] == "fp" and report.kept == ["layer.0.attn_out"]
    assert set(v for k, v in specs.items() if k.startswith("layer.1.")) == {"2:4-w4a8"}
    assert torch.equal(_out(fused, inputs), _out(unfused, inputs))
    # Fusing afterwards (fuse_qkv) gives the same bits too.
    nxm.fuse_qkv(unfused)
    assert fused_groups(unfused).keys() == fused_groups(fused).keys()
    assert torch.equal(_out(fused, inputs), _out(unfused, inputs))


def test_checkpoints_round_trip_bit_identical(family, tmp_path):
    from transformers import AutoModel

    name, builtin, _, _ = family
    model = copy.deepcopy(builtin.model)
    nxm.swap_linears(model, {"*": "2:4-w8a8", "ffn1": "dense-w4a8"})
    before = _out(model, builtin.inputs)
    nxm.save_compressed(model, tmp_path / "nxm")
    loaded = nxm.load_compressed(tmp_path / "nxm")
    model.save_pretrained(tmp_path / "hf")
    hf = AutoModel.from_pretrained(tmp_path / "hf").eval()
    for again in (loaded, hf):
        assert fused_groups(again) == fused_groups(model)
        assert compressed_linears(again).keys() == compressed_linears(model).keys()
        assert torch.equal(_out(again, builtin.inputs), before)


@pytest.mark.parametrize("name", ["mpnet", "distilbert"])
def test_sentence_transformers_save_and_load(name, tmp_path):
    """sentence-transformers wraps the family's AutoModel: its save / load keeps the compressed layers."""
    st = pytest.importorskip("sentence_transformers")
    model, tokenizer, _ = zoo.load_task_model(BUILTINS[name], 2)
    base = getattr(model, model.base_model_prefix)
    base.save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    encoder = st.SentenceTransformer(str(tmp_path / "dense"), device="cpu")
    nxm.swap_linears(encoder[0].auto_model, "2:4-w8a8")
    sentences = ["a man plays the guitar.", "sparse matrices store few numbers!", "how do i reset it?"]
    before = encoder.encode(sentences, convert_to_tensor=True)
    encoder.save(str(tmp_path / "st"))
    again = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert len(compressed_linears(again[0].auto_model)) == len(compressed_linears(encoder[0].auto_model)) == 8
    assert torch.equal(again.encode(sentences, convert_to_tensor=True), before)


def _tokens(n: int, length: int = 24) -> dict:
    """Padded random sequences over 64 token ids: real text reuses its tokens, so its layer inputs are correlated
    (what second-order calibration exploits); uniformly random ids over the whole vocabulary are not."""
    ids = 5 + torch.randint(0, 64, (n, length))
    mask = (torch.arange(length)[None, :] < torch.randint(length // 3, length + 1, (n,))[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_calibration_beats_magnitude(family):
    """Every method runs on every family; SparseGPT's output error against the float model, on held-out
    sequences, is below magnitude pruning's (measured over 20 model/data seeds: 0.37-0.55 of it)."""
    _, builtin, _, _ = family
    model = builtin.model
    calibration, held_out = [_tokens(24), _tokens(24)], _tokens(6)
    mask = held_out["attention_mask"].bool()
    ref = _out(model, held_out)[mask]
    errors = {}
    for method, spec in (("magnitude", "2:4-w8a8"), ("wanda", "2:4-w8a8"), ("sparsegpt", "2:4-w8a8"),
                         ("gptq", "dense-w4a8")):
        compressed = copy.deepcopy(model)
        report = nxm.calibrate(compressed, spec, calibration, method, progress=False)
        assert len(report.swapped) == len(encoder_linears(model)) and report.calibration["method"] == method
        errors[method] = float((_out(compressed, held_out)[mask] - ref).norm() / ref.norm())
    assert errors["sparsegpt"] < 0.8 * errors["magnitude"], errors


def test_qat_export_matches_the_qat_forward(family):
    from nxm_kernels.train import ADMM, export_model, prepare_qat

    _, _, task, inputs = family
    model = copy.deepcopy(task)
    layers = prepare_qat(model, {"*": "2:4-w8a8", "ffn2": "dense-w4a8"})
    assert list(layers) == [s.name for s in encoder_linears(task)]  # the same linears, by the same names
    ADMM(layers).prune()
    model.eval()
    with torch.no_grad():
        qat = model(**inputs).logits
    report = export_model(model, backend="reference")  # checks every packed weight against the QAT weight exactly
    assert len(report.swapped) == len(layers)
    with torch.no_grad():
        exported = model(**inputs).logits
    # Float rounding only (integer accumulation then scaling vs float products of dequantized values; fused vs
    # separate GELU): the training tests' bound, 1e-3 of the largest logit.
    assert float((exported - qat).abs().max()) <= 1e-3 * max(float(qat.abs().max()), 1.0)


def test_search_and_accounting_name_the_same_linears(family):
    from nxm_kernels.search import profile_sensitivity, search_plans

    _, _, task, inputs = family
    sites = encoder_linears(task)
    names = [s.name for s in sites]
    batches = [inputs]
    sens = profile_sensitivity(task, batches, ["2:4-w8a8", "dense-w4a8"], cache_dir=None, progress=False)
    assert sorted(n for members in sens.groups.values() for n in members) == sorted(names)
    result = search_plans(sens, sites, 0.8)
    plan = result.best.plan
    acct = account(sites, plan)
    assert [a.name for a in acct.layers] == names
    swapped = copy.deepcopy(task)
    report = nxm.swap_linears(swapped, plan)  # the searched plan applies to the model as it is
    assert {e.name: e.spec for e in report.swapped} == {a.name: a.spec for a in acct.layers if a.spec != "fp"}


def test_native_qkv_layer_takes_one_spec_for_query_key_and_value():
    model = zoo.load_builtin("tiny-modernbert", seed=0).model
    with pytest.raises(ValueError, match=r"layer.1.qkv: this model computes query, key and value of layer 1 as one "
                                         r"linear, so they take one spec, but the plan gives query=2:4-w8a8, "
                                         r"key=dense-w8a8, value=2:4-w8a8"):
        nxm.swap_linears(model, {"*": "2:4-w8a8", "layer.1.key": "dense-w8a8"})
    with pytest.raises(ValueError, match=r"layer.0.qkv: .*query=2:4-w8a8, key=fp, value=fp"):
        nxm.swap_linears(model, {"query": "2:4-w8a8"})
    assert compressed_linears(model) == {}  # refused before anything changed
    report = nxm.swap_linears(model, {"query": "dense-w8a8", "key": "dense-w8a8", "value": "dense-w8a8",
                                      "layer.1": "2:4-w8a8"})
    assert {e.name: e.spec for e in report.swapped} == {"layer.0.qkv": "dense-w8a8", "layer.1.qkv": "2:4-w8a8",
                                                         "layer.1.attn_out": "2:4-w8a8", "layer.1.ffn1": "2:4-w8a8",
                                                         "layer.1.ffn2": "2:4-w8a8"}
    assert report.swapped[0].module_name == "layers.0.attn.Wqkv"


def test_calibration_refuses_an_encoder_that_changes_hidden_states_between_layers():
    """DeBERTa-v2's optional convolution after layer 0 (``conv_kernel_size``): the layer-by-layer pass would
    calibrate on the wrong inputs, so it is refused with the reason."""
    config = zoo.tiny_family_config("tiny-deberta-v2", conv_kernel_size=3)
    from transformers import AutoModel

    model = AutoModel.from_config(config).eval()
    batch = {"input_ids": torch.randint(5, 1000, (2, 12)), "attention_mask": torch.ones(2, 12, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"changes the output of encoder.layer.0 before encoder.layer.1"):
        nxm.calibrate(model, "2:4-w8a8", batch, "sparsegpt", progress=False)
    assert compressed_linears(model) == {}
    nxm.calibrate(model, "2:4-w8a8", batch, "magnitude", progress=False)  # reads no activations: works


@pytest.mark.parametrize("name", zoo.TINY_FAMILIES)
def test_nxm_compress_two_steps(name, tmp_path):
    from nxm_kernels.cli import main as nxm_cli
    from train_helpers import FIXTURES

    out = tmp_path / "out"
    assert nxm_cli(["compress", "--model", name, "--task", "mrpc", "--data-dir", str(FIXTURES), "--output-dir",
                    str(out), "--max-steps", "2", "--batch-size", "8", "--admm-interval", "1", "--cpu"]) == 0
    loaded = nxm.load_compressed(out / "compressed")
    assert find_encoder(loaded).family.name == name[len("tiny-"):]
    assert len(compressed_linears(loaded)) == 8  # per layer: query/key/value as one layer, attn_out, ffn1, ffn2


def test_demo_and_search_take_the_family_builtins(tmp_path, capsys):
    import json

    from nxm_kernels.cli import build_parser
    from nxm_kernels.cli import main as nxm_cli
    from nxm_kernels.cli._args import plan_arg
    from nxm_kernels.cli.demo import DEFAULT_PLANS, _applicable
    from train_helpers import FIXTURES

    report = tmp_path / "demo.json"
    assert nxm_cli(["demo", "--model", "tiny-modernbert", "--repeats", "1", "--plan", "2:4-w8a8",
                    "--json", str(report)]) == 0
    assert "tiny random modernbert model" in capsys.readouterr().out
    (result,) = json.loads(report.read_text())["results"]
    assert result["swapped"] == 8 and result["reload_exact"] is True
    # Of the default plans, the one giving query and key another spec than value cannot apply to a model whose
    # checkpoint computes them as one linear: left out (with the reason logged), the others run.
    sites = zoo.model_sites("tiny-modernbert")
    plans = [plan_arg(text) for text in DEFAULT_PLANS]
    assert _applicable(plans, sites) == plans[:3] and _applicable(plans, zoo.model_sites("tiny")) == plans

    out = tmp_path / "plan.json"
    assert nxm_cli(["search", "--model", "tiny-distilbert", "--task", "sst2", "--data-dir", str(FIXTURES),
                    "--target", "0.8", "--out", str(out), "--samples", "16", "--batch-size", "16",
                    "--candidates", "2:4-w8a8", "dense-w4a8", "--cache-dir", str(tmp_path / "cache"),
                    "--plot", "none", "--no-progress"]) == 0
    assert set(json.loads(out.read_text()).values()) <= {"2:4-w8a8", "dense-w4a8", "fp"}
    # Every command taking a built-in names each family's.
    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("demo", "compress", "search", "account"):
        (model,) = [a for a in commands[command]._actions if a.dest == "model"]
        assert all(name in model.help for name in zoo.TINY_FAMILIES), command

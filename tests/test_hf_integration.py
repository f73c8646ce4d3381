"""The Hugging Face way: ``save_pretrained`` of a swapped model writes a folder that ``AutoModel*.from_pretrained``
(and sentence-transformers) load back compressed, bit for bit, through nxm's registered quantizer; where
transformers cannot, ``save_pretrained`` refuses instead of writing weights that would reload random."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from transformers import AutoModel, AutoModelForSequenceClassification

import nxm_kernels as nxm
from nxm_kernels.fusion import FusedProjection
from nxm_kernels.models import hf_quantizer
from nxm_kernels import swap_named_linears
from nxm_kernels.modules import NxMLinear, compressed_linears
from _dropin_helpers import random_batch
from tiny_models import tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")

#: Round trips need a transformers whose loader the quantizer plugs into; older ones get the refusal (tested below).
needs_registry = pytest.mark.skipif(not hf_quantizer.supported(), reason="transformers too old for nxm's quantizer")

PLAN = {"*": "2:4-w8a8", "ffn2": "dense-w4a8", "layer.1.query": "2:4-w4a8", "layer.0.value": "fp"}
#: Layer 0's query/key/value share a spec and fuse (the default swap); layer 1's query differs and stays separate.
MIXED = {"*": "2:4-w8a8", "ffn2": "dense-w4a8", "layer.1.query": "2:4-w4a8"}


def _out(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _same_layers(a, b):
    la, lb = compressed_linears(a), compressed_linears(b)
    assert list(la) == list(lb) and la
    for name, layer in la.items():
        other = lb[name]
        assert str(layer.spec) == str(other.spec) and layer.activation == other.activation
        assert torch.equal(layer.values, other.values) and torch.equal(layer.scales, other.scales)
        assert other.scales.dtype == torch.float32


def _fused_as_saved(model, prefix=""):
    """Each attention of ``model`` whose query/key/value are fused, checked to be computed by its ``qkv``
    layer as a swap leaves it (projections of that very module, rows in query, key, value order)."""
    fused = []
    for i, layer in enumerate(model.encoder.layer):
        attn = layer.attention.self
        if not hasattr(attn, "qkv"):
            continue
        assert isinstance(attn.qkv, NxMLinear)
        for index, proj in enumerate((attn.query, attn.key, attn.value)):
            assert isinstance(proj, FusedProjection) and proj.fused is attn.qkv
            assert proj.fused_name == f"{prefix}encoder.layer.{i}.attention.self.qkv"
            assert proj.rows == (index * proj.out_features, (index + 1) * proj.out_features)
        fused.append(i)
    return fused


@needs_registry
def test_save_pretrained_reloads_compressed_and_exact(tmp_path):
    model = tiny_bert()
    nxm.swap_linears(model, PLAN)
    # PLAN leaves no attention fusable (layer 0's value stays float, layer 1's query has its own spec):
    # this test reads per-linear records; the fused ones are test_save_pretrained_of_fused_layers_reloads_exact's.
    assert _fused_as_saved(model) == []
    batch = random_batch(model)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "nxm" and qc["plan"] == PLAN
    assert qc["layers"]["encoder.layer.1.attention.self.query"] == {
        "activation": "none", "bias": True, "shape": [64, 64], "spec": "2:4-w4a8"}
    assert "encoder.layer.0.attention.self.value" not in qc["layers"]

    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    assert isinstance(loaded.encoder.layer[0].attention.self.value, nn.Linear)      # "fp" stays float
    assert isinstance(loaded.encoder.layer[0].intermediate.intermediate_act_fn, nn.Identity)  # fused GELU
    _same_layers(model, loaded)
    assert torch.equal(_out(loaded, batch), _out(model, batch))
    # The reloaded model saves the same way again, and as an nxm checkpoint.
    loaded.save_pretrained(tmp_path / "again")
    assert torch.equal(_out(AutoModel.from_pretrained(tmp_path / "again"), batch), _out(model, batch))
    assert torch.equal(_out(nxm.load_compressed(nxm.save_compressed(loaded, tmp_path / "nxm")), batch),
                       _out(model, batch))


@needs_registry
def test_from_pretrained_in_half_precision_keeps_float32_scales(tmp_path):
    model = tiny_bert()
    nxm.swap_linears(model, "2:4-w8a8")
    model.save_pretrained(tmp_path)
    half = AutoModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert _fused_as_saved(half) == [0, 1]
    layers = compressed_linears(half)
    assert len(layers) == 8  # per layer: fused qkv, attention output, ffn1, ffn2
    for layer in layers.values():
        assert layer.scales.dtype == torch.float32 and layer.bias.dtype == torch.bfloat16
    assert half.encoder.layer[0].attention.self.query.bias.dtype == torch.bfloat16  # its rows of the fused bias
    assert half.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    batch = random_batch(model)
    out, ref = _out(half, batch).float(), _out(model, batch)
    cos = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), 0)
    assert cos > 0.99  # bf16 activations (8-bit mantissa) against float32


@needs_registry
def test_task_model_and_head_prefixes(tmp_path):
    model = tiny_bert("BertForSequenceClassification", num_labels=3)
    nxm.swap_linears(model, MIXED)  # layer 0 fused, layer 1 not: both kinds of record cross the prefix
    batch = random_batch(model)
    model.save_pretrained(tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert [m["name"] for m in qc["layers"]["bert.encoder.layer.0.attention.self.qkv"]["fused"]] == [
        f"bert.encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert _fused_as_saved(loaded.bert, "bert.") == [0]
    _same_layers(model, loaded)
    assert torch.equal(_out(loaded, batch), _out(model, batch))
    # The task model's encoder, loaded as a base model (transformers drops the "bert." prefix, from the
    # fused layers' member names too).
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base.encoder.layer[1].output.dense, NxMLinear)
    assert _fused_as_saved(base) == [0] and isinstance(base.encoder.layer[1].attention.self.query, NxMLinear)
    with torch.no_grad():
        assert torch.equal(base(**batch).last_hidden_state, model.bert(**batch).last_hidden_state)
    # And the other way round: a base model's save loads into a task model (the "bert." prefix is added).
    base.save_pretrained(tmp_path / "base")
    task = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3)
    assert _fused_as_saved(task.bert, "bert.") == [0]
    _same_layers(model, task)
    with torch.no_grad():
        assert torch.equal(task.bert(**batch).last_hidden_state, model.bert(**batch).last_hidden_state)


@needs_registry
def test_save_pretrained_of_fused_layers_reloads_exact(tmp_path):
    unfused = tiny_bert()
    nxm.swap_linears(unfused, MIXED, fuse_qkv=False)
    model = copy.deepcopy(unfused)
    assert nxm.fuse_qkv(model) == {"encoder.layer.0.attention.self.qkv": [
        f"encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]}
    batch = random_batch(model)
    assert _fused_as_saved(model) == [0]
    model.save_pretrained(tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["layers"]["encoder.layer.0.attention.self.qkv"] == {
        "activation": "none", "bias": True, "shape": [192, 64], "spec": "2:4-w8a8",
        "fused": [{"name": f"encoder.layer.0.attention.self.{p}", "rows": 64} for p in ("query", "key", "value")]}
    assert not any(n.startswith("encoder.layer.0.attention.self.") and not n.endswith(".qkv") for n in qc["layers"])

    loaded = AutoModel.from_pretrained(tmp_path)
    assert _fused_as_saved(loaded) == [0]
    assert isinstance(loaded.encoder.layer[1].attention.self.query, NxMLinear)  # unfused layer stays so
    _same_layers(model, loaded)
    ref = _out(model, batch)
    assert torch.equal(ref, _out(unfused, batch))  # fusion itself changes no bit
    assert torch.equal(_out(loaded, batch), ref)
    # Saved again from the loaded model, and as an nxm checkpoint: still fused, still exact.
    loaded.save_pretrained(tmp_path / "again")
    again = AutoModel.from_pretrained(tmp_path / "again")
    assert _fused_as_saved(again) == [0] and torch.equal(_out(again, batch), ref)
    from_nxm = nxm.load_compressed(nxm.save_compressed(loaded, tmp_path / "nxm"))
    assert _fused_as_saved(from_nxm) == [0] and torch.equal(_out(from_nxm, batch), ref)


@needs_registry
def test_load_compressed_and_named_swaps_save_pretrained(tmp_path):
    model = tiny_bert()
    swap_named_linears(model, {"encoder.layer.*.intermediate.dense": "dense-w8a8"})
    batch = random_batch(model)
    model.save_pretrained(tmp_path / "named")
    assert torch.equal(_out(AutoModel.from_pretrained(tmp_path / "named"), batch), _out(model, batch))

    nxm.swap_linears(model, {"query": "2:4-w8a8"})      # swapped again after the first save: recorded anew
    ckpt = nxm.save_compressed(model, tmp_path / "nxm")
    from_nxm = nxm.load_compressed(ckpt)
    from_nxm.save_pretrained(tmp_path / "hf")
    loaded = AutoModel.from_pretrained(tmp_path / "hf")
    assert isinstance(loaded.encoder.layer[0].attention.self.query, NxMLinear)
    assert torch.equal(_out(loaded, batch), _out(model, batch))
    # nxm_config.json stays free of the Hugging Face record: the format is unchanged.
    assert "quantization_config" not in json.loads((ckpt / "nxm_config.json").read_text())["model"]["config"]


def test_swapped_model_still_casts_with_half():
    model = tiny_bert()
    nxm.swap_linears(model, "dense-w8a8")
    model.half()   # a swapped (not from_pretrained-loaded) model is not flagged is_quantized
    assert _fused_as_saved(model) == [0, 1]
    layers = compressed_linears(model)
    assert len(layers) == 8
    for layer in layers.values():
        assert layer.scales.dtype == torch.float32 and layer.bias.dtype == torch.float16


@needs_registry
def test_incomplete_or_newer_checkpoint_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_bert()
    nxm.swap_linears(model, "2:4-w8a8")
    model.save_pretrained(tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["quantization_config"]["config_version"] == hf_quantizer.CONFIG_VERSION == 2
    cfg["quantization_config"]["config_version"] = 99
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="newer nxm_kernels"):
        AutoModel.from_pretrained(tmp_path)
    cfg["quantization_config"]["config_version"] = 1   # version 1 predates fused layers
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="corrupt: version 1 has no fused layers"):
        AutoModel.from_pretrained(tmp_path)
    qkv = cfg["quantization_config"]["layers"]["encoder.layer.0.attention.self.qkv"]
    qkv["fused"][1]["name"] = "encoder.layer.0.attention.self.nope"
    cfg["quantization_config"]["config_version"] = 2
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has no module 'encoder.layer.0.attention.self.nope' "
                                         r"\(computed by the fused layer encoder.layer.0.attention.self.qkv\)"):
        AutoModel.from_pretrained(tmp_path)
    qkv["fused"][1]["name"] = "encoder.layer.0.attention.self.key"
    cfg_path.write_text(json.dumps(cfg))
    weights = load_file(tmp_path / "model.safetensors")
    del weights["encoder.layer.0.attention.self.qkv.metadata"]  # the fused query/key/value layer's
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="incomplete.*encoder.layer.0.attention.self.qkv.metadata"):
        AutoModel.from_pretrained(tmp_path)


@needs_registry
def test_version_1_checkpoint_without_fused_layers_still_loads(tmp_path):
    model = tiny_bert()
    nxm.swap_linears(model, "2:4-w8a8", fuse_qkv=False)  # what nxm_kernels wrote before fused layers
    model.save_pretrained(tmp_path)
    cfg_path = tmp_path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert not any("fused" in r for r in cfg["quantization_config"]["layers"].values())
    cfg["quantization_config"]["config_version"] = 1
    cfg_path.write_text(json.dumps(cfg))
    loaded = AutoModel.from_pretrained(tmp_path)
    assert _fused_as_saved(loaded) == [] and isinstance(loaded.encoder.layer[0].attention.self.key, NxMLinear)
    batch = random_batch(model)
    assert torch.equal(_out(loaded, batch), _out(model, batch))


def test_unsupported_transformers_refuses_to_save(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_quantizer, "supported", lambda: False)
    model = tiny_bert()
    nxm.swap_linears(model, "2:4-w8a8")
    with pytest.raises(RuntimeError, match=r"save_compressed\(model, dir\)"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


@needs_registry
def test_sentence_transformers_saves_and_reloads_compressed(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(100)]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(tmp_path / "vocab.txt"))
    assert tokenizer.unk_token_id not in tokenizer("w1 w7 w99")["input_ids"]
    tiny_bert().save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    encoder = st.SentenceTransformer(str(tmp_path / "dense"), device="cpu")  # mean pooling by default
    nxm.swap_linears(encoder[0].auto_model, "2:4-w8a8")
    sentences = [" ".join(f"w{int(i)}" for i in torch.randint(0, 100, (n,))) for n in (3, 9, 5)]
    before = encoder.encode(sentences, convert_to_tensor=True)
    encoder.save(str(tmp_path / "st"))
    again = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert _fused_as_saved(again[0].auto_model) == [0, 1]
    _same_layers(encoder[0].auto_model, again[0].auto_model)
    assert torch.equal(again.encode(sentences, convert_to_tensor=True), before)


@pytest.mark.slow
@needs_registry
def test_fresh_process_needs_only_import_nxm_kernels(tmp_path):
    """The registration waits for transformers' quantizer registry to be imported (import nxm_kernels
    stays free of transformers) and must then happen before from_pretrained needs it."""
    model = tiny_bert()
    nxm.swap_linears(model, "2:4-w8a8")
    model.save_pretrained(tmp_path)
    code = ("import sys, nxm_kernels; assert 'transformers.quantizers.auto' not in sys.modules\n"
            "from transformers import AutoModel\n"
            f"m = AutoModel.from_pretrained({str(tmp_path)!r})\n"
            "attn = m.encoder.layer[0].attention.self\n"
            "print(type(attn.qkv).__name__, type(attn.query).__name__, attn.query.fused is attn.qkv)")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "NxMLinear FusedProjection True"

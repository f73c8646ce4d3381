"""Compressed checkpoints: safetensors + JSON round trips, no pickle, no dense encoder weights on load,
and clear errors for newer versions, corrupt files and mismatched configs."""

import json

import pytest
import torch
import torch.nn as nn

import nxm_kernels as nxm
from nxm_kernels.io import CHECKPOINT_VERSION, CONFIG_NAME, WEIGHTS_NAME, read_checkpoint_config
from nxm_kernels.models.encoder import encoder_linears
from nxm_kernels import swap_named_linears
from nxm_kernels.modules import NxMLinear, compressed_linears
from _dropin_helpers import random_batch
from tiny_models import tiny_bert

PLAN = {"*": "2:4-w8a8", "ffn2": "dense-w4a8", "layer.1.query": "2:4-w4a8", "layer.0.value": "fp"}


def _out(model, batch):
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.fixture
def saved(tmp_path):
    model = tiny_bert()
    nxm.swap_linears(model, PLAN)
    batch = random_batch(model)
    path = nxm.save_compressed(model, tmp_path / "ckpt")
    return model, batch, path


def test_round_trip_is_exact_without_pickle_or_dense_weights(saved, monkeypatch):
    """The checkpoint reloads bit for bit, and loading neither unpickles anything nor gives any encoder
    linear a dense weight with data."""
    model, batch, path = saved
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle-based loading was used")

    monkeypatch.setattr(torch, "load", forbidden)
    import pickle

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    init_devices = []
    original = nn.Linear.reset_parameters

    def record(self):
        init_devices.append((tuple(self.weight.shape), self.weight.device.type))
        original(self)

    monkeypatch.setattr(nn.Linear, "reset_parameters", record)
    loaded = nxm.load_compressed(path)
    assert init_devices and all(dev == "meta" for _, dev in init_devices), init_devices
    assert type(loaded) is type(model) and not loaded.training
    assert torch.equal(_out(loaded, batch), _out(model, batch))
    specs = {s.name: str(s.module.spec) for s in encoder_linears(loaded) if hasattr(s.module, "spec")}
    assert specs == {s.name: str(s.module.spec) for s in encoder_linears(model) if hasattr(s.module, "spec")}
    assert isinstance(loaded.encoder.layer[0].attention.self.value, nn.Linear)   # "fp" stays float
    assert isinstance(loaded.encoder.layer[0].intermediate.intermediate_act_fn, nn.Identity)  # fused GELU
    for name, layer in compressed_linears(loaded).items():
        ref = compressed_linears(model)[name]
        assert torch.equal(layer.values, ref.values) and torch.equal(layer.scales, ref.scales)
        assert layer.resolved_backend == "reference"


def test_config_json_contents(saved):
    model, _, path = saved
    cfg = json.loads((path / CONFIG_NAME).read_text())
    assert cfg["format"] == "nxm-checkpoint" and cfg["format_version"] == CHECKPOINT_VERSION
    assert cfg["plan"] == PLAN
    assert cfg["model"]["class"] == "BertModel" and cfg["model"]["config"]["hidden_size"] == 64
    assert cfg["layers"]["encoder.layer.1.attention.self.query"] == {
        "spec": "2:4-w4a8", "shape": [64, 64], "bias": True, "activation": "none"}
    assert cfg["layers"]["encoder.layer.0.intermediate.dense"]["activation"] == "gelu"
    assert "encoder.layer.0.attention.self.value" not in cfg["layers"]
    assert len(cfg["weights"]["sha256"]) == 64


def test_sequence_classification_fp16_and_tokenizer(tmp_path):
    from transformers import AutoTokenizer, BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab))
    model = tiny_bert("BertForSequenceClassification", num_labels=3)
    nxm.swap_linears(model, "dense-w8a8")
    batch = random_batch(model)
    path = nxm.save_compressed(model, tmp_path / "cls", tokenizer=tok)
    again = AutoTokenizer.from_pretrained(str(path))     # the tokenizer is saved alongside
    assert again("hello world")["input_ids"] == tok("hello world")["input_ids"]
    loaded = nxm.load_compressed(path)
    assert torch.equal(_out(loaded, batch), _out(model, batch))
    assert isinstance(loaded.classifier, nn.Linear)
    half = nxm.load_compressed(path, dtype=torch.float16)
    layer = half.bert.encoder.layer[0].output.dense
    assert layer.bias.dtype == torch.float16 and layer.scales.dtype == torch.float32
    assert half.classifier.weight.dtype == torch.float16
    assert torch.isfinite(_out(half, batch)).all()


def test_tied_weights_and_no_pooler(tmp_path):
    model = tiny_bert("BertForMaskedLM")
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    nxm.swap_linears(model, "2:4-w8a8")
    batch = random_batch(model)
    loaded = nxm.load_compressed(nxm.save_compressed(model, tmp_path / "mlm"))
    assert torch.equal(_out(loaded, batch), _out(model, batch))
    assert loaded.cls.predictions.decoder.weight.data_ptr() == loaded.bert.embeddings.word_embeddings.weight.data_ptr()
    bare = tiny_bert(add_pooling_layer=False)
    nxm.swap_linears(bare, "dense-w8a8")
    loaded = nxm.load_compressed(nxm.save_compressed(bare, tmp_path / "bare"))
    assert loaded.pooler is None


def test_generic_model_needs_model_argument(tmp_path):
    def make():
        return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()

    model = make()
    swap_named_linears(model, {"0": "2:4-w8a8", "2": "dense-w4a8"})
    path = nxm.save_compressed(model, tmp_path / "mlp")
    with pytest.raises(ValueError, match="not a transformers model; pass the model"):
        nxm.load_compressed(path)
    target = make()
    loaded = nxm.load_compressed(path, model=target)
    assert loaded is target and isinstance(loaded[0], NxMLinear)
    x = torch.randn(5, 32)
    assert torch.equal(loaded(x), model(x))


def test_same_model_same_bytes_and_usual_permissions(saved, tmp_path):
    """safetensors orders the header's metadata by a hash map: without care, every save of the same
    model gave other bytes and another recorded SHA-256 (and the file was created 0600)."""
    import os

    model, _, path = saved
    first = (path / WEIGHTS_NAME).read_bytes()
    for i in range(5):
        again = nxm.save_compressed(model, tmp_path / f"again{i}")
        assert (again / WEIGHTS_NAME).read_bytes() == first
        assert (again / CONFIG_NAME).read_text() == (path / CONFIG_NAME).read_text()
    umask = os.umask(0)
    os.umask(umask)
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        assert (path / name).stat().st_mode & 0o777 == 0o666 & ~umask
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS_NAME), framework="pt") as f:   # still a standard safetensors file
        assert f.metadata() == {"format": "pt", "nxm_format": "nxm-checkpoint",
                                "nxm_format_version": str(CHECKPOINT_VERSION)}


# ---------------------------------------------------------------------------------- errors
def _edit_config(path, fn):
    cfg = json.loads((path / CONFIG_NAME).read_text())
    fn(cfg)
    (path / CONFIG_NAME).write_text(json.dumps(cfg))


def test_newer_format_version_is_refused(saved):
    _, _, path = saved
    _edit_config(path, lambda c: c.update(format_version=CHECKPOINT_VERSION + 1, nxm_kernels_version="9.0"))
    with pytest.raises(ValueError, match=rf"format version {CHECKPOINT_VERSION + 1} was written by a newer "
                                         r"nxm_kernels \(9.0\).*upgrade"):
        nxm.load_compressed(path)


def test_newer_packed_format_is_refused(saved):
    _, _, path = saved
    _edit_config(path, lambda c: c.update(packed_format_version=2))
    with pytest.raises(ValueError, match="packs weights in format version 2"):
        nxm.load_compressed(path)


def test_corrupt_weights_file(saved):
    _, _, path = saved
    data = bytearray((path / WEIGHTS_NAME).read_bytes())
    data[len(data) // 2] ^= 0x5A
    (path / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 does not match"):
        nxm.load_compressed(path)
    (path / WEIGHTS_NAME).write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        nxm.load_compressed(path)
    # without the checksum, safetensors' own parsing rejects the truncated file
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        nxm.load_compressed(path, verify=False)


def test_corrupt_packed_contents_caught_without_checksum(saved):
    """Even when the checksum is skipped, packed data that breaks the format is refused."""
    from safetensors.torch import load_file, save_file

    _, _, path = saved
    tensors = load_file(str(path / WEIGHTS_NAME))
    key = "encoder.layer.0.attention.self.query.metadata"
    tensors[key] = torch.zeros_like(tensors[key])  # offsets i0 == i1 == 0: invalid
    save_file(tensors, str(path / WEIGHTS_NAME))
    with pytest.raises(ValueError, match="layer encoder.layer.0.attention.self.query: metadata is corrupt"):
        nxm.load_compressed(path, verify=False)


def test_corrupt_or_missing_json(saved, tmp_path):
    _, _, path = saved
    (path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        nxm.load_compressed(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nxm.load_compressed(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="nxm_config.json is missing"):
        nxm.load_compressed(tmp_path / "empty")
    (path / CONFIG_NAME).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="is not an 'nxm-checkpoint' config"):
        read_checkpoint_config(path)


def test_mismatched_model_config(saved):
    model, _, path = saved
    _edit_config(path, lambda c: c["model"]["config"].update(intermediate_size=96))
    with pytest.raises(ValueError, match="does not match the model config.*intermediate.dense is 128x64 in the "
                                         r"checkpoint but \(96, 64\)"):
        nxm.load_compressed(path)
    _edit_config(path, lambda c: c["model"]["config"].update(intermediate_size=128, num_hidden_layers=3))
    with pytest.raises(ValueError, match="does not match the model config.*missing from the checkpoint"):
        nxm.load_compressed(path)
    _edit_config(path, lambda c: c["model"]["config"].update(num_hidden_layers=2, vocab_size=99))
    with pytest.raises(ValueError, match="does not match the model config.*shape mismatch"):
        nxm.load_compressed(path)


def test_loading_into_a_model_with_another_config(saved):
    _, _, path = saved
    other = tiny_bert(num_hidden_layers=3)
    with pytest.raises(ValueError, match="num_hidden_layers: model 3 vs checkpoint 2"):
        nxm.load_compressed(path, model=other)


def test_saving_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no NxMLinear"):
        nxm.save_compressed(tiny_bert(), tmp_path / "x")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        nxm.save_compressed({}, tmp_path / "x")
    model = tiny_bert()
    nxm.swap_linears(model, "dense-w8a8")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="must be a directory"):
        nxm.save_compressed(model, tmp_path / "file")
    with pytest.raises(TypeError, match="dtype must be None"):
        nxm.load_compressed(nxm.save_compressed(model, tmp_path / "ok"), dtype=torch.int8)


@pytest.mark.parametrize("kwargs", [{}, {"backend": "reference", "dtype": torch.bfloat16}])
def test_load_derives_each_backend_layout_at_most_twice(saved, monkeypatch, kwargs):
    """Once when the state dict is assigned and once after the move/cast: never for a backend that an
    explicit ``backend`` then replaces, nor once per ``.to()`` step (it used to be up to 4 times)."""
    from nxm_kernels.backends import reference

    model, batch, path = saved
    calls = []
    original = reference.prepare
    monkeypatch.setattr(reference, "prepare", lambda packed: calls.append(packed.shape) or original(packed))
    loaded = nxm.load_compressed(path, **kwargs)
    layers = compressed_linears(loaded)
    assert 0 < len(calls) <= 2 * len(layers)
    assert all(layer.resolved_backend == "reference" for layer in layers.values())
    out = _out(loaded, batch)
    ref = _out(model, batch)
    if "dtype" in kwargs:
        assert out.dtype == torch.bfloat16
    else:
        assert torch.equal(out, ref)


def test_unavailable_device_is_not_a_corrupt_file(saved):
    """The weights used to be read straight onto the device, and the failure (pin_memory without CUDA)
    was reported as a corrupt checkpoint."""
    _, _, path = saved
    for device in ["cuda:99"] + ([] if torch.cuda.is_available() else ["cuda", torch.device("cuda")]):
        with pytest.raises(RuntimeError, match=r"device 'cuda(:99)?' is not available") as info:
            nxm.load_compressed(path, device=device)
        assert "corrupt" not in str(info.value)
    with pytest.raises(ValueError, match="device must be a torch device"):
        nxm.load_compressed(path, device="gpu0")


def test_load_with_a_backend_that_cannot_run(saved):
    _, _, path = saved
    with pytest.raises(RuntimeError, match="NxMLinear cannot run on cpu: backend 'cuda' is unavailable on cpu"):
        nxm.load_compressed(path, device="cpu", backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        nxm.load_compressed(path, backend="magic")
    with pytest.raises(TypeError, match="backend must be a str"):
        nxm.load_compressed(path, backend=None)


@pytest.mark.gpu
def test_load_on_gpu(saved):
    model, batch, path = saved
    loaded = nxm.load_compressed(path, device="cuda", dtype=torch.float16)
    assert all(m.resolved_backend in ("cuda", "triton") for m in compressed_linears(loaded).values())
    out = _out(loaded, {k: v.cuda() for k, v in batch.items()})
    ref = _out(model, batch)
    cos = torch.nn.functional.cosine_similarity(out.float().cpu().flatten(), ref.flatten(), 0)
    assert cos > 0.99

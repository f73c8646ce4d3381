"""NxMLinear: construction, numerics against fake quantization, bytes held, devices/dtypes, state dicts,
torch.compile, and bad input."""

import copy
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nxm_kernels as nxm
from nxm_kernels.backends import WeightMeta, unavailable_reason, weight_unsupported_reason
from nxm_kernels import swap_named_linears
from nxm_kernels.modules import NxMLinear, compressed_linears, set_backend
from nxm_kernels.quant import fake_quant_weight
from nxm_kernels.sparsity import is_nm, prune_nm

from _dropin_helpers import FakeQuantLinear

SPECS = ["2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8"]


def fake_quant_linear(x, linear, spec, activation=None):
    """What NxMLinear must compute, in plain float ops (float rounding apart)."""
    y = FakeQuantLinear(linear, nxm.parse_spec(spec))(x.float())
    return F.gelu(y) if activation == "gelu" else y


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", [(24, 40), (17, 33)])  # (N, K); K=33 needs padding, N odd
def test_from_linear_matches_fake_quant(spec, shape):
    n, k = shape
    lin = nn.Linear(k, n)
    layer = NxMLinear.from_linear(lin, spec)
    x = torch.randn(2, 5, k)
    y = layer(x)
    assert y.shape == (2, 5, n) and y.dtype == torch.float32
    ref = fake_quant_linear(x, lin, spec)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", ["2:4-w8a8", "dense-w4a8"])
def test_from_linear_equals_op_on_packed_weight(spec):
    """The module adds nothing to the op: same packed weight, same result, bit for bit."""
    lin = nn.Linear(48, 32)
    layer = NxMLinear.from_linear(lin, spec, activation="gelu")
    s = nxm.parse_spec(spec)
    packed = nxm.pack(lin.weight.detach(), bits=s.weight_bits, pattern=s.pattern, prune=s.sparse)
    x = torch.randn(7, 48)
    y = layer(x)
    assert torch.equal(y, nxm.sparse_int_linear(x, packed, lin.bias.detach(), activation="gelu", backend="reference"))
    torch.testing.assert_close(y, fake_quant_linear(x, lin, spec, "gelu"), rtol=1e-5, atol=1e-5)


def test_already_2to4_weight_is_not_repruned():
    """A weight that already is 2:4 (here: offsets 1 and 3 of every group) is quantized as it is."""
    lin = nn.Linear(32, 8)
    with torch.no_grad():
        w = torch.randn(8, 32)
        groups = w.reshape(8, 8, 4)
        groups[..., 0] = 0.0  # keep offsets 1 and 3: zero the small-index ones, some large values dropped
        groups[..., 2] = 0.0
        lin.weight.copy_(groups.reshape(8, 32))
    layer = NxMLinear.from_linear(lin, "2:4-w8a8")
    assert not bool(((layer.dequantized_weight() != 0) & (lin.weight.detach() == 0)).any())
    torch.testing.assert_close(layer.dequantized_weight(), fake_quant_weight(lin.weight.detach(), 8, ste=False))


def test_dense_weight_is_pruned_by_magnitude():
    lin = nn.Linear(64, 16)
    layer = NxMLinear.from_linear(lin, "2:4-w4a8")
    w = layer.dequantized_weight()
    assert is_nm(w, 2, 4)
    expect = fake_quant_weight(prune_nm(lin.weight.detach(), 2, 4), 4, ste=False)
    torch.testing.assert_close(w, expect)


@pytest.mark.parametrize("spec,value_bytes", [("2:4-w8a8", 1 / 2), ("2:4-w4a8", 1 / 4), ("dense-w8a8", 1),
                                              ("dense-w4a8", 1 / 2)])
def test_bytes_held_are_the_packed_bytes(spec, value_bytes):
    n, k = 96, 256
    layer = NxMLinear.from_linear(nn.Linear(k, n), spec)
    held = {name: t.numel() * t.element_size() for name, t in layer.state_dict().items()}
    meta = n * k // 8 if spec.startswith("2:4") else 0
    assert held["values"] == n * k * value_bytes
    assert held.get("metadata", 0) == meta
    assert held["scales"] == 4 * n and held["bias"] == 4 * n
    assert layer.nbytes()["total"] == sum(held.values())
    # no dense copy anywhere: every tensor the module holds (prepared layout included) is one of those bytes
    tensors = list(layer.buffers()) + list(layer.parameters()) + list(layer._weights)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    assert sum(storages.values()) == layer.nbytes()["total"]
    assert not any(t.is_floating_point() and t.numel() >= n * k for t in tensors)


def test_from_packed_uses_the_given_tensors():
    w = prune_nm(torch.randn(20, 48), 2, 4)
    packed = nxm.pack(w, bits=4, pattern="2:4")
    bias = torch.randn(20)
    layer = NxMLinear.from_packed(packed, bias)
    assert layer.values is packed.values and layer.metadata is packed.metadata and layer.scales is packed.scales
    assert str(layer.spec) == "2:4-w4a8" and (layer.in_features, layer.out_features) == (48, 20)
    x = torch.randn(6, 48)
    assert torch.equal(layer(x), nxm.sparse_int_linear(x, packed, bias))
    no_bias = NxMLinear.from_packed(packed)
    assert no_bias.bias is None and "bias" not in no_bias.state_dict()
    assert torch.equal(no_bias(x), nxm.sparse_int_linear(x, packed))


def test_placeholder_then_load_state_dict():
    src = NxMLinear.from_linear(nn.Linear(40, 24), "2:4-w4a8")
    x = torch.randn(3, 40)
    y = src(x)
    # in-place copy into a CPU placeholder
    dst = NxMLinear(40, 24, "2:4-w4a8")
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst(x), y)
    # assignment into a meta placeholder (how checkpoints load)
    meta = NxMLinear(40, 24, "2:4-w4a8", device="meta")
    with pytest.raises(RuntimeError, match="meta device"):
        meta(x)
    meta.load_state_dict(src.state_dict(), assign=True)
    assert torch.equal(meta(x), y)
    # a state dict of another spec does not fit
    with pytest.raises(RuntimeError):
        NxMLinear(40, 24, "dense-w8a8").load_state_dict(src.state_dict())


def test_half_keeps_float32_scales_exact():
    layer = NxMLinear.from_linear(nn.Linear(64, 32), "2:4-w8a8")
    scales = layer.scales.clone()
    half = copy.deepcopy(layer).half()
    assert half.scales.dtype == torch.float32 and torch.equal(half.scales, scales)
    assert half.bias.dtype == torch.float16 and half.values.dtype == torch.int8
    x = torch.randn(5, 64)
    y16 = half(x.half())
    assert y16.dtype == torch.float16
    torch.testing.assert_close(y16.float(), layer(x.half().float()), rtol=2e-3, atol=2e-3)
    bf = copy.deepcopy(layer).to(torch.bfloat16)
    assert bf.scales.dtype == torch.float32 and bf(x.bfloat16()).dtype == torch.bfloat16


def test_to_meta_and_back_refreshes_prepared_layout():
    layer = NxMLinear.from_linear(nn.Linear(32, 16), "dense-w8a8")
    x = torch.randn(4, 32)
    y = layer(x)
    layer.to("meta")
    assert layer.resolved_backend is None
    with pytest.raises(RuntimeError, match="meta"):
        layer(x)
    layer.to_empty(device="cpu")  # storage again (garbage), prepared layout follows the new tensors
    assert layer.resolved_backend == "reference"
    assert all(t.device.type == "cpu" for t in layer._weights)
    assert layer._weights[0] is layer.values
    assert y.shape == (4, 16)


def test_extra_repr_is_readable():
    layer = NxMLinear.from_linear(nn.Linear(384, 1536), "2:4-w4a8", activation="gelu")
    text = repr(layer)
    for part in ("in_features=384", "out_features=1536", "spec=2:4-w4a8", "bias=True", "activation=gelu",
                 "backend=auto->reference", "packed_bytes="):
        assert part in text, text


def test_backends_and_set_backend(monkeypatch):
    lin = nn.Linear(32, 16)
    if unavailable_reason("cuda", "cpu") is not None:
        # a backend that cannot run here is not an error until the layer is used (it may be moved first)
        cuda_layer = NxMLinear.from_linear(lin, "dense-w8a8", backend="cuda")
        assert cuda_layer.resolved_backend is None and "unresolved" in repr(cuda_layer)
        with pytest.raises(RuntimeError, match="cannot run on cpu"):
            cuda_layer(torch.randn(2, 32))
        with pytest.raises(RuntimeError, match="cannot run on cpu"):
            cuda_layer.set_backend("cuda")
    layer = NxMLinear.from_linear(lin, "2:4-w8a8", backend="reference")
    assert layer.resolved_backend == "reference"
    with pytest.raises(ValueError, match="backend must be one of"):
        layer.set_backend("tpu")
    monkeypatch.setenv("NXM_BACKEND", "reference")
    assert NxMLinear.from_linear(lin, "2:4-w8a8").resolved_backend == "reference"


@pytest.mark.skipif(unavailable_reason("triton", "cpu") is not None,
                    reason="the triton backend is not available on this machine's CPU")
@pytest.mark.parametrize("spec", ["2:4-w8a8", "dense-w4a8"])
def test_triton_backend_matches_reference(spec):
    """Through Triton's interpreter on a CPU: the same module on both backends agrees (float epilogue)."""
    lin = nn.Linear(64, 32)
    ref = NxMLinear.from_linear(lin, spec, backend="reference")
    tri = NxMLinear.from_linear(lin, spec, backend="triton")
    assert tri.resolved_backend == "triton"
    x = torch.randn(9, 64)
    torch.testing.assert_close(tri(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(unavailable_reason("triton", "cpu") is not None,
                    reason="the triton backend is not available on this machine's CPU")
def test_triton_prepared_layout_follows_state_dict_and_swap():
    """A backend whose prepared layout is a derived copy (Triton's) must re-derive it when the weights change."""
    lin = nn.Linear(64, 32)
    ref = NxMLinear.from_linear(lin, "2:4-w4a8", backend="reference")
    placeholder = NxMLinear(64, 32, "2:4-w4a8", backend="triton")
    placeholder.load_state_dict(ref.state_dict())            # in-place copy_ into the buffers
    x = torch.randn(5, 64)
    torch.testing.assert_close(placeholder(x), ref(x), rtol=1e-5, atol=1e-5)
    from _dropin_helpers import random_batch
    from tiny_models import tiny_bert

    model = tiny_bert(num_hidden_layers=1)
    batch = random_batch(model, batch=2, length=8)
    twin = copy.deepcopy(model)
    nxm.swap_linears(model, {"*": "2:4-w8a8", "ffn2": "dense-w4a8"}, backend="triton")
    nxm.swap_linears(twin, {"*": "2:4-w8a8", "ffn2": "dense-w4a8"}, backend="reference")
    assert all(m.resolved_backend == "triton" for m in compressed_linears(model).values())
    with torch.no_grad():
        a, b = model(**batch).last_hidden_state, twin(**batch).last_hidden_state
    assert F.cosine_similarity(a.flatten(), b.flatten(), 0) > 0.9999


def test_torch_compile_fullgraph_single_layer():
    layer = NxMLinear.from_linear(nn.Linear(48, 40), "2:4-w4a8", activation="gelu")
    x = torch.randn(3, 7, 48)
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


def test_deepcopy_and_pickle_keep_working():
    layer = NxMLinear.from_linear(nn.Linear(32, 8), "2:4-w8a8")
    x = torch.randn(2, 32)
    y = layer(x)
    assert torch.equal(copy.deepcopy(layer)(x), y)
    assert torch.equal(pickle.loads(pickle.dumps(layer))(x), y)


def test_grad_enabled_call_runs_and_warns_once(monkeypatch):
    """The op has no gradient: a grad-enabled call still runs (input detached) and says so once."""
    import nxm_kernels.modules as modules

    monkeypatch.setattr(modules, "_warned_no_gradient", False)
    layer = NxMLinear.from_linear(nn.Linear(16, 8), "dense-w8a8")
    assert not layer.bias.requires_grad
    x = torch.randn(3, 16, requires_grad=True)
    with pytest.warns(UserWarning, match="inference module"):
        y = layer(x)
    assert not y.requires_grad
    with torch.no_grad():
        assert torch.equal(layer(x), y)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)  # only once per process


# ---------------------------------------------------------------------------------- bad input
def test_bad_specs():
    lin = nn.Linear(16, 8)
    with pytest.raises(ValueError, match="'fp' means"):
        NxMLinear.from_linear(lin, "fp")
    with pytest.raises(ValueError, match="can be trained but not packed"):
        NxMLinear.from_linear(lin, "1:4-w8a8")
    with pytest.raises(ValueError, match="spec must look like"):
        NxMLinear.from_linear(lin, "2:4-int8")
    with pytest.raises(TypeError, match="spec must be a str"):
        NxMLinear.from_linear(lin, 8)


def test_bad_modules_and_tensors():
    with pytest.raises(TypeError, match="linear must be a torch.nn.Linear"):
        NxMLinear.from_linear(nn.Conv1d(4, 4, 1), "2:4-w8a8")
    with pytest.raises(TypeError, match="packed must be a PackedWeight"):
        NxMLinear.from_packed(torch.zeros(4, 4))
    packed = nxm.pack(torch.randn(8, 16), bits=8, pattern="dense")
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        NxMLinear.from_packed(packed, torch.randn(9))
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        NxMLinear(0, 8)
    with torch.device("meta"):
        meta_lin = nn.Linear(16, 8)
    with pytest.raises(ValueError, match="meta device"):
        NxMLinear.from_linear(meta_lin, "dense-w8a8")
    with pytest.raises(ValueError, match="in_features must be <= 131072"):
        NxMLinear.from_linear(nn.Linear(131072 + 16, 1), "dense-w8a8")
    nan_lin = nn.Linear(16, 8)
    with torch.no_grad():
        nan_lin.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        NxMLinear.from_linear(nan_lin, "2:4-w8a8")


def test_bad_forward_inputs():
    layer = NxMLinear.from_linear(nn.Linear(16, 8), "2:4-w8a8")
    with pytest.raises(ValueError, match="last dimension 16"):
        layer(torch.randn(3, 15))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        layer(torch.randint(0, 3, (3, 16)))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        layer(torch.randn(3, 16, dtype=torch.float64))
    assert layer(torch.randn(0, 16)).shape == (0, 8)


# ---------------------------------------------------------------------------------- generic swap
class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32)) for _ in range(2))
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def test_swap_named_linears_generic_model():
    model = Mlp().eval()
    x = torch.randn(4, 32)
    report = swap_named_linears(model, {"blocks.*": "2:4-w8a8", "blocks.1.2": "dense-w4a8"})
    assert [s.name for s in report.swapped] == ["blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2"]
    assert report.swapped[-1].spec == "dense-w4a8" and report.kept == ["head"]
    assert isinstance(model.head, nn.Linear) and set(compressed_linears(model)) == {s.name for s in report.swapped}
    assert report.bytes_after < report.bytes_before
    assert model(x).shape == (4, 3)
    assert set_backend(model, "reference") is model


def test_swap_named_linears_later_glob_wins_even_on_layer_like_names():
    # Module names are not encoder-linear names: no component shorthand, no specificity, the later entry wins.
    model = nn.Module()
    model.layer = nn.ModuleList(nn.ModuleDict({"fc": nn.Linear(16, 8), "query": nn.Linear(16, 8)}) for _ in range(2))
    report = swap_named_linears(model, {"layer.0.fc": "2:4-w8a8", "*": "dense-w8a8", "layer.1.*": "2:4-w4a8"},
                                backend="reference")
    assert {s.name: s.spec for s in report.swapped} == {
        "layer.0.fc": "dense-w8a8", "layer.0.query": "dense-w8a8", "layer.1.fc": "2:4-w4a8",
        "layer.1.query": "2:4-w4a8"}


def test_swap_named_linears_bad_input():
    with pytest.raises(ValueError, match="matches no nn.Linear; the linears are: blocks.0.0"):
        swap_named_linears(Mlp(), {"encoder.*": "2:4-w8a8"})
    with pytest.raises(ValueError, match="can be trained but not packed"):
        swap_named_linears(Mlp(), {"head": "2:8-w8a8"})
    with pytest.raises(ValueError, match="has no nn.Linear"):
        swap_named_linears(nn.Sequential(nn.ReLU()), "2:4-w8a8")
    with pytest.raises(ValueError, match="holds no NxMLinear"):
        set_backend(Mlp(), "reference")


@pytest.mark.gpu
@pytest.mark.parametrize("spec", SPECS)
def test_cuda_move_and_kernels(spec):
    lin = nn.Linear(256, 128)
    layer = NxMLinear.from_linear(lin, spec)          # built on the CPU: reference
    assert layer.resolved_backend == "reference"
    layer = layer.cuda().half()
    assert layer.resolved_backend in ("cuda", "triton")
    assert all(t.is_cuda for t in layer._weights) and layer.scales.dtype == torch.float32
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    ref = fake_quant_linear(x.float().cpu(), lin, spec).cuda()
    meta = WeightMeta.of(layer.packed)
    for backend in ("cuda", "triton", "reference"):
        # the cuda backend runs 2:4 weights only: dense specs are checked on the others
        if unavailable_reason(backend, "cuda") is None and weight_unsupported_reason(backend, meta) is None:
            layer.set_backend(backend)
            torch.testing.assert_close(layer(x).float(), ref, rtol=2e-2, atol=2e-2)

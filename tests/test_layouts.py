"""The backends' typed prepared weights: round trips, checks made once at construction, the tensor
sequence the custom ops take, and NxMLinear's check-free hot path built on them."""

import dataclasses

import pytest
import torch
import torch.nn as nn

import nxm_kernels as nxm
from nxm_kernels import dispatch
from nxm_kernels.backends import WeightMeta, get_backend
from nxm_kernels.backends.cuda.layout import CudaLayout
from nxm_kernels.backends.layout import CanonicalLayout
from nxm_kernels.backends.reference import ReferenceLayout
from nxm_kernels.modules import NxMLinear

SPECS = ("2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8")


def _packed(spec, n=40, k=72):
    return nxm.pack(torch.randn(n, k), pattern=spec, prune=spec.startswith("2:4"))


def _layout_classes():
    out = [ReferenceLayout, CudaLayout]
    try:
        from nxm_kernels.backends.triton.backend import TritonLayout
    except ImportError:  # pragma: no cover - triton is a dependency on Linux
        return out
    return out + [TritonLayout]


@pytest.mark.parametrize("cls", _layout_classes(), ids=lambda c: c.__name__)
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", [(40, 72), (1, 5), (130, 200)])
def test_round_trip(cls, spec, shape):
    p = _packed(spec, *shape)
    if cls is CudaLayout and not p.sparse:
        with pytest.raises(ValueError, match="2:4"):
            cls.from_packed(p)
        return
    layout = cls.from_packed(p)
    assert layout.to_packed() == p                      # to_packed(from_packed(p)) == p, bit for bit
    assert layout.meta == WeightMeta.of(p) and layout.device == p.device
    assert cls.from_tensors(layout.tensors(), layout.meta) == layout      # the custom ops' tensor list
    assert cls.trusted(layout.tensors(), layout.meta) == layout
    assert list(layout) == layout.tensors() and len(layout) == len(layout.tensors())
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.values = layout.values.clone()


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("spec", ["2:4-w8a8", "2:4-w4a8"])
def test_cuda_layout_with_cutlass_tensors_round_trips(spec, arch):
    """On a GPU with the CUTLASS kernels the layout carries their tensors too (5 in op order); it still
    inverts to the packed weight and rebuilds from its tensor list (the CUTLASS layout is a pure
    function, so it is built here on the CPU)."""
    from nxm_kernels.backends.cuda.cutlass_layout import cutlass_layout

    p = _packed(spec, 256, 256)
    c_values, c_meta, _ = cutlass_layout(p, arch)
    layout = CudaLayout.from_packed(p).with_cutlass(c_values, c_meta)
    assert len(layout) == 5 and layout.cutlass_values is c_values
    assert layout.to_packed() == p
    assert CudaLayout.from_tensors(layout.tensors(), layout.meta) == layout
    with pytest.raises(ValueError, match="both"):
        CudaLayout(layout.meta, layout.values, layout.metadata, layout.scales, c_values, None)


def test_cuda_layout_is_the_kernel_layout():
    p = _packed("2:4-w4a8", 33, 72)
    layout = CudaLayout.from_packed(p)
    values, meta, scales = layout
    assert (values.dtype, meta.dtype, scales.dtype) == (torch.uint8, torch.int32, torch.float32)
    assert layout.padded_k == 128 and scales.shape == (128,)
    assert torch.equal(scales[:33], p.scales) and bool((scales[33:] == 1).all())


def test_checked_once_with_clear_errors():
    p = _packed("2:4-w8a8")
    meta = WeightMeta.of(p)
    with pytest.raises(ValueError, match=r"values must be torch.int8 \(40, 40\)"):
        ReferenceLayout(meta, p.values[:, :-2], p.metadata, p.scales)
    with pytest.raises(ValueError, match="scales must be float32"):
        ReferenceLayout(meta, p.values, p.metadata, p.scales.double())
    with pytest.raises(ValueError, match="weights must hold 3 tensors"):
        ReferenceLayout.from_tensors([p.values, p.scales], meta)
    with pytest.raises(TypeError, match="prepared layout or its list of tensors"):
        ReferenceLayout.from_tensors("weights", meta)
    with pytest.raises(ValueError, match="one device.*scales on meta"):
        ReferenceLayout(meta, p.values, p.metadata, p.scales.to("meta"))
    with pytest.raises(TypeError, match="meta must be a WeightMeta"):
        ReferenceLayout((40, 72, 8, True), p.values, p.metadata, p.scales)
    with pytest.raises(ValueError, match="cuda backend's prepared layout"):
        CudaLayout.from_tensors(ReferenceLayout.from_packed(p), meta)
    # another backend's canonical layout is accepted when its tensors fit (and re-checked)
    assert isinstance(CanonicalLayout.from_tensors(ReferenceLayout.from_packed(p), meta), CanonicalLayout)


def test_prepare_returns_the_typed_layout():
    p = _packed("dense-w8a8")
    layout = get_backend("reference").prepare(p)
    assert isinstance(layout, ReferenceLayout) and layout.metadata is None and len(layout) == 2
    assert nxm.ops.prepared_weights(p, "reference") is nxm.ops.prepared_weights(p, "reference")


# ------------------------------------------------------------------------------ the hot path
def test_forward_makes_no_backend_queries(monkeypatch):
    """Resolved at construction: forward asks no availability, imports no backend, re-checks no layout."""
    import nxm_kernels.backends as backends
    import nxm_kernels.backends.layout as layout_mod

    layer = NxMLinear.from_linear(nn.Linear(48, 24), "2:4-w4a8", activation="gelu")
    x = torch.randn(2, 5, 48)
    want = nxm.sparse_int_linear(x, layer.packed, layer.bias, "gelu", backend="reference")

    def forbidden(*args, **kwargs):
        raise AssertionError("called on the hot path")

    for mod, name in ((backends, "get_backend"), (backends, "unavailable_reason"), (backends, "resolve_backend"),
                      (dispatch, "plan"), (dispatch, "variant"), (layout_mod.CanonicalLayout, "_check")):
        monkeypatch.setattr(mod, name, forbidden)
    assert torch.equal(layer(x), want)


def test_packed_view_is_built_once():
    layer = NxMLinear.from_linear(nn.Linear(32, 16), "2:4-w8a8")
    p = layer.packed
    assert layer.packed is p and p.values is layer.values
    layer.load_state_dict(layer.state_dict())       # a load refreshes: a new view, fresh layouts
    assert layer.packed is not p and layer.packed is layer.packed
    layer.scales = layer.scales.clone()             # a replaced buffer: the view follows
    assert layer.packed.scales is layer.scales


def test_forward_uses_the_bucket_kernel(monkeypatch):
    """forward runs the kernel variant its M bucket resolved to (a list index, no query)."""
    from nxm_kernels.backends import Variant, reference

    calls = []

    def probe(x2d, layout, bias, activation):
        calls.append(x2d.shape[0])
        return reference._linear(x2d, layout, bias, activation)

    monkeypatch.setattr(reference, "VARIANTS", reference.VARIANTS + (Variant("reference:probe", probe, max_m=64),))
    layer = NxMLinear.from_linear(nn.Linear(32, 16), "dense-w8a8", backend="reference:probe")
    assert layer.dispatch_plan == {b: ("reference:probe" if b <= 64 else "reference") for b in dispatch.M_BUCKETS}
    assert layer.resolved_backend == "reference" and "M<=64: reference:probe" in repr(layer)
    x = torch.randn(70, 32)
    ref = nxm.sparse_int_linear(x, layer.packed, layer.bias, backend="reference")
    assert torch.equal(layer(x[:64]), ref[:64]) and calls == [64]
    assert torch.equal(layer(x), ref) and calls == [64]    # M = 70: bucket 128, the default kernel
    with pytest.raises(ValueError, match="has no kernel variant 'reference:nope'"):
        NxMLinear.from_linear(nn.Linear(32, 16), "dense-w8a8", backend="reference:nope")

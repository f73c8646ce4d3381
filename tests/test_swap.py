"""swap_linears on Hugging Face BERT models: plans, reports, numerics, task heads, compile, bad input."""

import pytest
import torch
import torch.nn as nn

import nxm_kernels as nxm
from nxm_kernels.fusion import FusedProjection
from nxm_kernels.models.encoder import encoder_linears
from nxm_kernels.modules import NxMLinear, compressed_linears
from _dropin_helpers import fake_quant_twin, random_batch
from tiny_models import tiny_bert


def _out(model, batch):
    with torch.no_grad():
        return model(**batch).last_hidden_state


def test_swap_all_encoder_linears_and_report():
    model = tiny_bert()
    dense_bytes = sum(p.numel() * 4 for s in encoder_linears(model) for p in s.module.parameters())
    report = nxm.swap_linears(model, "2:4-w8a8")
    sites = encoder_linears(model)
    assert len(report.swapped) == len(sites) == 12 and report.kept == []
    # query/key/value share a spec: each layer computes them as one fused NxMLinear (attention.self.qkv)
    qkv = ("query", "key", "value")
    assert all(isinstance(s.module, FusedProjection if s.name.rsplit(".", 1)[1] in qkv else NxMLinear)
               and str(s.module.spec) == "2:4-w8a8" for s in sites)
    assert report.fused == {f"encoder.layer.{i}.attention.self.qkv": [
        f"encoder.layer.{i}.attention.self.{c}" for c in qkv] for i in range(2)}
    assert {s.name: s.fused_into for s in report.swapped}["layer.1.key"] == "encoder.layer.1.attention.self.qkv"
    assert {s.name: s.fused_into for s in report.swapped}["layer.1.ffn1"] is None
    assert report.bytes_before == dense_bytes
    assert report.bytes_after == sum(s.module.nbytes()["total"] for s in sites)
    assert report.bytes_after == sum(m.nbytes()["total"] for m in compressed_linears(model).values())
    assert report.size_factor > 5  # int8 2:4: ~1/8 of fp32 values + metadata/scales/bias
    assert report.backend == "reference"
    assert report.by_spec() == {"2:4-w8a8": 12}
    text = str(report)
    assert "swapped 12 linears" in text and "2:4-w8a8" in text
    assert report.to_dict()["swapped"]["layer.1.ffn2"] == "2:4-w8a8"
    # the pooler is not an encoder linear and stays float
    assert isinstance(model.pooler.dense, nn.Linear)


def test_plan_rules_most_specific_then_later_wins():
    model = tiny_bert()
    plan = {"*": "2:4-w8a8", "ffn2": "dense-w8a8", "layer.1": "2:4-w4a8", "layer.1.ffn2": "fp", "query": "dense-w4a8"}
    report = nxm.swap_linears(model, plan)
    specs = {s.name: (str(s.module.spec) if isinstance(s.module, (NxMLinear, FusedProjection)) else "fp")
             for s in encoder_linears(model)}
    assert specs["layer.0.key"] == "2:4-w8a8"
    assert specs["layer.0.ffn2"] == "dense-w8a8"
    assert specs["layer.0.query"] == "dense-w4a8"
    assert specs["layer.1.query"] == "2:4-w4a8"      # layer.1 (2 points) beats query (1 point)
    assert specs["layer.1.ffn2"] == "fp"
    assert report.kept == ["layer.1.ffn2"] and len(report.swapped) == 11
    assert isinstance(model.encoder.layer[1].output.dense, nn.Linear)


def test_plan_forms_accepted():
    for plan in ("dense-w8a8", {"*": "dense-w8a8"}, [("*", "dense-w8a8")], nxm.Plan({"*": "dense-w8a8"}),
                 '{"*": "dense-w8a8"}'):
        assert nxm.Plan.coerce(plan) == nxm.Plan({"*": "dense-w8a8"})
    with pytest.raises(TypeError, match="plan must be a Plan"):
        nxm.Plan.coerce(3)


@pytest.mark.parametrize("plan", ["2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8",
                                  {"*": "2:4-w4a8", "attn_out": "dense-w8a8", "layer.0.value": "fp"}])
def test_each_swapped_linear_equals_fake_quant(plan):
    """Every swapped linear, fed the activations it sees inside the model, equals fake quantization
    (fake-quantized per-token activations x fake-quantized weights, + bias, GELU where fused) up to
    float rounding."""
    model = tiny_bert(intermediate_size=256)
    twin = fake_quant_twin(model, plan)
    nxm.swap_linears(model, plan)
    seen = {}
    hooks = [s.module.register_forward_hook(lambda m, i, o, n=s.name: seen.__setitem__(n, (i[0], o)))
             for s in encoder_linears(model) if isinstance(s.module, (NxMLinear, FusedProjection))]
    _out(model, random_batch(model))
    for h in hooks:
        h.remove()
    assert len(seen) == sum(isinstance(s.module, (NxMLinear, FusedProjection)) for s in encoder_linears(model))
    assert any(n.endswith(".key") for n in seen)  # fused projections (rows of attention.self.qkv) included
    twins = {s.name: s.module for s in encoder_linears(twin)}
    for name, (x, y) in seen.items():
        ref = twins[name](x)
        if name.endswith("ffn1"):
            ref = torch.nn.functional.gelu(ref)  # fused into the NxMLinear epilogue
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()), msg=name)


def test_gelu_fusion():
    model = tiny_bert()
    batch = random_batch(model)
    unfused = tiny_bert()
    unfused.load_state_dict(model.state_dict())
    report = nxm.swap_linears(model, "dense-w8a8")
    nxm.swap_linears(unfused, "dense-w8a8", fuse_gelu=False)
    inter = model.encoder.layer[0].intermediate
    assert inter.dense.activation == "gelu" and isinstance(inter.intermediate_act_fn, nn.Identity)
    assert report.fused_activations == [f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(2)]
    assert unfused.encoder.layer[0].intermediate.dense.activation == "none"
    # Same math up to float rounding in the GELU; a rounding difference can move an activation code by
    # one step in the next layer (then it spreads), so the whole-model check is a loose cosine; the exact
    # per-layer check is test_each_swapped_linear_equals_fake_quant.
    a, b = _out(model, batch), _out(unfused, batch)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0) > 0.999


def test_gelu_not_fused_for_other_activations():
    model = tiny_bert(hidden_act="gelu_new")
    nxm.swap_linears(model, "dense-w8a8")
    inter = model.encoder.layer[0].intermediate
    assert inter.dense.activation == "none" and not isinstance(inter.intermediate_act_fn, nn.Identity)
    model2 = tiny_bert()
    nxm.swap_linears(model2, {"*": "dense-w8a8", "ffn1": "fp"})
    assert not isinstance(model2.encoder.layer[0].intermediate.intermediate_act_fn, nn.Identity)


def test_sequence_classification_model():
    model = tiny_bert("BertForSequenceClassification", num_labels=3)
    batch = random_batch(model)
    with torch.no_grad():
        before = model(**batch).logits
    report = nxm.swap_linears(model, "dense-w8a8")
    assert len(report.swapped) == 12
    assert isinstance(model.classifier, nn.Linear) and isinstance(model.bert.pooler.dense, nn.Linear)
    covered = set(compressed_linears(model)) - set(report.fused) | {m for ms in report.fused.values() for m in ms}
    assert covered == {s.qualified_name for s in encoder_linears(model)}
    assert all(n.startswith("bert.encoder.layer.") for n in compressed_linears(model))
    with torch.no_grad():
        after = model(**batch).logits
    assert after.shape == before.shape == (3, 3)
    assert torch.isfinite(after).all()


def test_fp16_model():
    model = tiny_bert().half()
    batch = random_batch(model)
    nxm.swap_linears(model, "2:4-w8a8")
    for layer in (model.encoder.layer[0].attention.self.qkv, model.encoder.layer[0].output.dense):
        assert layer.bias.dtype == torch.float16 and layer.scales.dtype == torch.float32
    out = _out(model, batch)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def _one_quantization_step(y: torch.Tensor) -> torch.Tensor:
    """Per token (row), the step of ``y``'s own int8 per-token grid: ``amax / 127``, broadcastable to ``y``."""
    return nxm.quantize_per_token(y.float())[1]


def test_torch_compile_fullgraph_swapped_bert():
    """The swapped model traces into one graph (no breaks) and the compiled model matches eager.

    Tolerance under inductor: compiled, the quantization is plain torch ops fused into the kernel that
    produces x (LayerNorm, residual add, GELU). Inductor rounds those float ops differently from eager
    (e.g. FMA, reassociated reductions), so an x/scale near a .5 boundary can get the neighbouring
    int8 code; one such flip moves a linear's output by x_scale * |w| and, after the residual and
    LayerNorm, far less than one step of the output's own per-token int8 grid (amax / 127), which is
    the bound asserted (computed per token from the eager output). Without inductor (aot_eager) the
    same ops run unfused and the outputs are bit-identical.
    """
    torch._dynamo.reset()
    model = tiny_bert(num_hidden_layers=1)
    nxm.swap_linears(model, {"*": "2:4-w8a8", "ffn1": "2:4-w4a8", "value": "dense-w8a8"})
    batch = random_batch(model)
    eager = _out(model, batch)
    # aot_eager: full Dynamo + AOTAutograd tracing through the fake implementations, exact results
    traced = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert torch.equal(_out(traced, batch), eager)
    # also with grad enabled (embeddings require grad): AOTAutograd must not need a backward of the op
    assert torch.equal(traced(**batch).last_hidden_state, eager)
    torch._dynamo.reset()
    # inductor (the default): generated code around the custom op; float rounding may differ
    compiled = torch.compile(model, fullgraph=True)
    out = _out(compiled, batch)
    assert out.shape == eager.shape and torch.isfinite(out).all()
    assert bool(((out - eager).abs() <= _one_quantization_step(eager)).all())


def test_compiled_graph_runs_only_our_gemm_op():
    """Compiled, the swapped model is one graph whose only ops of ours are the GEMM + epilogue
    (``nxm::linear_q``, one per ``NxMLinear``: the fused query/key/value layer of an attention block is
    one op for three linears): the activation quantization is plain torch ops (no ``nxm::linear`` /
    ``nxm::int_mm``, nothing a fusing compiler cannot see into)."""
    torch._dynamo.reset()
    model = tiny_bert(num_hidden_layers=2)
    report = nxm.swap_linears(model, {"*": "2:4-w8a8", "ffn2": "dense-w4a8"})
    batch = random_batch(model)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, fullgraph=True, backend=capture)
    out = _out(compiled, batch)
    assert len(graphs) == 1  # no graph break (fullgraph=True would raise on one; a count says it plainly)
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op in ("call_function", "call_method")]
    ours = [t for t in targets if t.startswith("nxm.")]
    layers = compressed_linears(model)
    # 12 linears swapped; each layer's query/key/value are fused: 2 x (qkv, attn_out, ffn1, ffn2) modules.
    assert len(report.swapped) == 12 and len(layers) == 8
    assert sorted(n for n in layers if n.endswith(".qkv")) == [f"encoder.layer.{i}.attention.self.qkv" for i in (0, 1)]
    assert ours == ["nxm.linear_q.default"] * len(layers), ours
    assert any("round" in t for t in targets) and any("amax" in t for t in targets)  # the quantization, traced
    assert torch.equal(out, _out(model, batch))
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------- bad input
def test_glob_matching_nothing_lists_the_layers():
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"'layer\.7\.ffn1' matches no layer; layers are: layer\.0\.query"):
        nxm.swap_linears(model, {"layer.7.ffn1": "2:4-w8a8"})
    with pytest.raises(ValueError, match="matches no layer"):
        nxm.swap_linears(model, {"*": "2:4-w8a8", "ffn3": "dense-w8a8"})
    assert compressed_linears(model) == {}  # nothing was swapped by the failed calls
    report = nxm.swap_linears(model, {"*": "dense-w8a8", "layer.7": "2:4-w8a8"}, strict=False)
    assert len(report.swapped) == 12


def test_unknown_and_untrainable_specs():
    model = tiny_bert()
    with pytest.raises(ValueError, match="spec must look like"):
        nxm.swap_linears(model, {"*": "2:4-int4"})
    with pytest.raises(ValueError, match="can be trained but not packed"):
        nxm.swap_linears(model, {"*": "dense-w8a8", "ffn2": "1:4-w8a8"})
    assert compressed_linears(model) == {}  # checked before anything changes


def test_unknown_model_lists_the_families():
    with pytest.raises(ValueError, match=r"Sequential \(model_type None\) has no encoder of a family nxm_kernels "
                                         r"knows: bert \(BERT, .*distilbert .*mpnet .*deberta-v2 .*modernbert "
                                         r"\(ModernBERT\).*nxm_kernels.swap_named_linears with module-name globs"):
        nxm.swap_linears(nn.Sequential(nn.Linear(4, 4)), "2:4-w8a8")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        nxm.swap_linears("bert", "2:4-w8a8")


def test_swapping_twice_is_refused():
    model = tiny_bert()
    nxm.swap_linears(model, {"ffn1": "2:4-w8a8"})
    with pytest.raises(ValueError, match="already is an NxMLinear"):
        nxm.swap_linears(model, "dense-w8a8")
    # a second swap of the remaining layers is fine and the recorded plan grows
    nxm.swap_linears(model, {"*": "dense-w8a8", "ffn1": "fp"})
    assert len(compressed_linears(model)) == 8  # per layer: fused qkv, attn_out, ffn1, ffn2
    with pytest.raises(ValueError, match=r"layer\.0\.query .* is already swapped: rows of the fused NxMLinear "
                                         r"encoder\.layer\.0\.attention\.self\.qkv"):
        nxm.swap_linears(model, {"query": "dense-w8a8"})
    assert model._nxm_plan == {"ffn1": "fp", "*": "dense-w8a8"}


@pytest.mark.gpu
def test_cuda_graph_capture_of_swapped_bert():
    """On a GPU: the swapped fp16 model is captured in a CUDA graph and replays the eager result."""
    model = tiny_bert(num_hidden_layers=2)
    nxm.swap_linears(model, {"*": "2:4-w8a8", "ffn2": "2:4-w4a8"})
    model = model.cuda().half()
    assert all(m.resolved_backend in ("cuda", "triton") for m in compressed_linears(model).values())
    batch = {k: v.cuda() for k, v in random_batch(model, batch=8, length=32).items()}
    with torch.no_grad():
        eager = model(**batch).last_hidden_state.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                model(**batch)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(**batch).last_hidden_state
        static_out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
    assert torch.equal(static_out, eager)
    compiled = torch.compile(model, fullgraph=True, mode="reduce-overhead")
    with torch.no_grad():
        for _ in range(3):
            out = compiled(**batch).last_hidden_state
    torch.testing.assert_close(out.float(), eager.float(), rtol=1e-2, atol=1e-2)

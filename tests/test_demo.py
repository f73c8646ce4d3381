"""`nxm demo`: the README's main job, in its quick variant (--model tiny), plus its option errors."""

import json

import pytest

from nxm_kernels.cli import main
from nxm_kernels.cli.demo import DEFAULT_PLANS


def test_demo_tiny(tmp_path, capsys):
    report = tmp_path / "demo.json"
    code = main(["demo", "--model", "tiny", "--repeats", "1", "--out", str(tmp_path / "ckpts"),
                 "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tiny random BERT" in out and "12 encoder linears" in out
    assert "Timings are CPU timings" in out
    for header in ("plan", "linears", "vs fp32", "checkpoint", "cosine mean", "reload", "reference ms"):
        assert header in out
    assert "dense float32 (baseline)" in out
    data = json.loads(report.read_text())
    assert len(data["results"]) == len(DEFAULT_PLANS) and data["backends"] == ["reference"]
    by_label = {r["label"]: r for r in data["results"]}
    assert set(by_label) >= {"2:4-w8a8", "2:4-w4a8", "dense-w8a8"}
    for r in data["results"]:
        assert r["reload_exact"] is True and r["swapped"] == 12
        assert r["latency_ms"]["reference"] > 0
        assert 0 < r["linear_bytes"] < data["dense_linear_bytes_fp32"]
        assert (tmp_path / "ckpts").is_dir() and r["checkpoint"]
    # a random tiny BERT is easy to reproduce; int8 everywhere stays very close to float32
    assert by_label["dense-w8a8"]["cosine_mean"] > 0.99
    assert by_label["2:4-w4a8"]["linear_bytes"] < by_label["2:4-w8a8"]["linear_bytes"] < \
        by_label["dense-w8a8"]["linear_bytes"]


def test_demo_custom_plan(tmp_path, capsys):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text('{"*": "dense-w4a8", "layer.0": "2:4-w8a8"}')
    code = main(["demo", "--model", "tiny", "--repeats", "1", "--plan", "dense-w8a8", "--plan", str(plan_file)])
    out = capsys.readouterr().out
    assert code == 0
    assert "dense-w4a8, layer.0=2:4-w8a8" in out


@pytest.mark.parametrize("argv,message", [
    (["--plan", "2:4-int8"], "spec must look like"),
    (["--plan", '{"layer.9": "2:4-w8a8"}'], "matches no layer"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--backends", "fast"], "--backends entries must be among"),
    (["--repeats", "0"], "--repeats must be >= 1"),
])
def test_demo_bad_options(argv, message, capsys):
    code = main(["demo", "--model", "tiny", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")  # a tiny model: see conftest
def test_demo_calibrate_tiny(tmp_path, capsys):
    report = tmp_path / "demo.json"
    code = main(["demo", "--model", "tiny", "--repeats", "1", "--plan", "2:4-w4a8", "--calibrate",
                 "--calibration-samples", "24", "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "calibrated one-shot (sparsegpt) on 24 built-in calibration sequences" in out
    data = json.loads(report.read_text())
    assert data["compression"] == "sparsegpt"
    r = data["results"][0]
    assert r["reload_exact"] is True and r["swapped"] == 12
    assert r["calibration"]["method"] == "sparsegpt" and r["calibration"]["n_samples"] == 24
    assert 0.9 < r["cosine_mean"] <= 1.0


def test_calibration_text_is_disjoint_from_evaluation():
    from nxm_kernels.models.text import calibration_sentences, heldout_sentences
    from nxm_kernels.models.zoo import SENTENCES

    calib = calibration_sentences(256)
    assert len(calib) == 256 and len(set(calib)) == 256
    assert not set(calib) & set(SENTENCES) and not set(calib) & set(heldout_sentences())

"""`nxm demo`: the README's main job, in its quick variant (--model tiny), plus its option errors."""

import inspect
import json

import pytest

from nxm_kernels.cli import main
from nxm_kernels.cli.demo import CALIBRATION, DEFAULT_PLANS

#: The tiny model's demo: one thread, see conftest.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_tiny(tmp_path, capsys):
    """The default demo (calibrated, SparseGPT + GPTQ, with the demo's calibration settings) on the tiny model."""
    report = tmp_path / "demo.json"
    code = main(["demo", "--model", "tiny", "--repeats", "1", "--out", str(tmp_path / "ckpts"),
                 "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "tiny random BERT" in out and "12 encoder linears" in out
    assert "Timings are CPU timings" in out
    for header in ("plan", "method", "linears", "vs fp32", "checkpoint", "cosine mean", "reload", "reference ms"):
        assert header in out
    assert "dense float32 (baseline)" in out
    assert f"calibrated one-shot compression (SparseGPT 2:4 masks + GPTQ) from {CALIBRATION['n_samples']} built-in" \
        in out
    data = json.loads(report.read_text())
    assert len(data["results"]) == len(DEFAULT_PLANS) and data["backends"] == ["reference"]
    assert data["compression"] == "sparsegpt"
    by_label = {r["label"]: r for r in data["results"]}
    assert set(by_label) >= {"2:4-w8a8", "2:4-w4a8", "dense-w8a8"}
    for r in data["results"]:
        assert r["reload_exact"] is True and r["swapped"] == 12
        assert r["calibration"]["method"] == "sparsegpt"
        assert r["calibration"]["n_samples"] == CALIBRATION["n_samples"]
        assert r["latency_ms"]["reference"] > 0
        assert 0 < r["linear_bytes"] < data["dense_linear_bytes_fp32"]
        assert (tmp_path / "ckpts").is_dir() and r["checkpoint"]
    # Checkpoint folders are named after their plans (they were plan0, plan1, ...).
    assert by_label["2:4-w8a8"]["checkpoint"] == str(tmp_path / "ckpts" / "2of4-w8a8")
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == sorted(
        ["2of4-w8a8", "2of4-w4a8", "dense-w8a8", "dense-w8a8_query=2of4-w8a8_key=2of4-w8a8_ffn1=dense-w4a8"])
    # a random tiny BERT is easy to reproduce; int8 everywhere stays very close to float32
    assert by_label["dense-w8a8"]["cosine_mean"] > 0.99
    assert by_label["2:4-w4a8"]["linear_bytes"] < by_label["2:4-w8a8"]["linear_bytes"] < \
        by_label["dense-w8a8"]["linear_bytes"]


def test_demo_custom_plan_by_magnitude(tmp_path, capsys):
    """--method magnitude: no calibration, and the table and its footer say how the rows were made."""
    plan_file = tmp_path / "plan.json"
    plan_file.write_text('{"*": "dense-w4a8", "layer.0": "2:4-w8a8"}')
    report = tmp_path / "demo.json"
    code = main(["demo", "--model", "tiny", "--repeats", "1", "--plan", "dense-w8a8", "--plan", str(plan_file),
                 "--method", "magnitude", "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith(("dense-w8a8 ", "dense-w4a8, layer.0=2:4-w8a8 "))]
    assert len(rows) == 2 and all(row.split()[1 if row.startswith("dense-w8a8 ") else 2] == "magnitude"
                                  for row in rows)
    assert "method: magnitude: 2:4 plans here prune by magnitude and round in one shot, without data" in out
    data = json.loads(report.read_text())
    assert data["compression"] == "magnitude" and all(r["calibration"] is None for r in data["results"])


def test_demo_calibrates_with_explicit_settings(monkeypatch, capsys):
    """The demo passes every algorithm setting of nxm.calibrate explicitly (CALIBRATION), so a change of
    calibrate's defaults cannot change the demo's time or numbers unnoticed: a new setting fails here
    until CALIBRATION gives it a value."""
    import sys

    calibrate_module = sys.modules["nxm_kernels.calibrate"]  # the attribute nxm_kernels.calibrate is the function
    calibrate = calibrate_module.calibrate
    plumbing = {"model", "plan", "calibration", "method", "backend", "fuse_gelu", "fuse_qkv", "strict", "progress"}
    settings = set(inspect.signature(calibrate).parameters) - plumbing
    assert settings == set(CALIBRATION) - {"max_length"}, "CALIBRATION must name every setting of nxm.calibrate"
    seen = []

    def spy(model, plan, calib, method, **kwargs):
        seen.append((method, kwargs, calib))
        return calibrate(model, plan, calib, method, **kwargs)

    monkeypatch.setattr(calibrate_module, "calibrate", spy)
    assert main(["demo", "--model", "tiny", "--repeats", "1", "--plan", "2:4-w8a8"]) == 0
    capsys.readouterr()
    (method, kwargs, calib), = seen
    assert method == "sparsegpt" and kwargs == {k: v for k, v in CALIBRATION.items() if k != "max_length"}
    assert sum(b["input_ids"].shape[0] for b in calib) == CALIBRATION["n_samples"]


@pytest.mark.parametrize("argv,message", [
    (["--plan", "2:4-int8"], "spec must look like"),
    (["--plan", '{"layer.9": "2:4-w8a8"}'], "matches no layer"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--backends", "fast"], "--backends entries must be among"),
    (["--repeats", "0"], "--repeats must be >= 1"),
    (["--method", "obs"], "invalid choice: 'obs'"),
    (["--calibration-samples", "0"], "--calibration-samples must be >= 1"),
])
def test_demo_bad_options(argv, message, capsys):
    code = main(["demo", "--model", "tiny", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_plan_dirnames_are_unique_and_safe():
    from nxm_kernels.cli.demo import plan_dirname

    taken = set()
    assert [plan_dirname(label, taken) for label in ("2:4-w8a8", "2:4-w8a8", "dense-w4a8, layer.0=2:4-w8a8")] == \
        ["2of4-w8a8", "2of4-w8a8-2", "dense-w4a8_layer.0=2of4-w8a8"]


def test_triton_on_a_cpu_is_announced_and_labelled(caplog, capsys):
    """The interpreted Triton backend takes minutes on a CPU: said before it starts, and the footer says
    what was timed (it used to call every CPU timing the reference backend's)."""
    import argparse

    import torch

    from nxm_kernels.cli.demo import _print_report, _warn_slow
    from nxm_kernels.models.zoo import load_builtin

    cpu = torch.device("cpu")
    caplog.set_level("WARNING", logger="nxm_kernels")
    _warn_slow(["reference"], cpu, "tiny", 16)
    assert caplog.text == ""
    _warn_slow(["reference", "triton"], cpu, "minilm", 16)
    assert "Triton's interpreter: each forward pass takes far longer" in caplog.text
    assert "this run makes 16 of them" in caplog.text
    result = {"plan": {"*": "dense-w8a8"}, "label": "dense-w8a8", "linear_bytes": 1000, "checkpoint_bytes": 2000,
              "cosine_mean": 0.99, "cosine_min": 0.98, "reload_exact": True,
              "latency_ms": {"reference": 1.0, "triton": 90.0}}
    _print_report(load_builtin("tiny"), cpu, ["reference", "triton"], 12, 4000, 0.5, torch.float32, [result],
                  argparse.Namespace(repeats=1, method="magnitude"))
    out = capsys.readouterr().out
    assert "CPU timings of the reference backend (plain PyTorch, not a kernel) and the Triton kernels run by " \
           "Triton's CPU interpreter" in out


@pytest.mark.parametrize("flags", [["--method", "sparsegpt"], ["--calibrate"]])  # --calibrate: the older flag
def test_demo_calibrate_tiny(tmp_path, capsys, flags):
    report = tmp_path / "demo.json"
    code = main(["demo", "--model", "tiny", "--repeats", "1", "--plan", "2:4-w4a8", *flags,
                 "--calibration-samples", "24", "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "calibrated one-shot compression (SparseGPT 2:4 masks + GPTQ) from 24 built-in calibration sequences " \
           "(random token sequences)" in out
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

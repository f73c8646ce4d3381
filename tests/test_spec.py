"""The config vocabulary (nxm_kernels.spec)."""

import pytest

import nxm_kernels as nxm
from nxm_kernels.spec import KERNEL_PATTERNS, KERNEL_SPECS, LayerSpec, kernel_spec, parse_pattern, parse_spec


@pytest.mark.parametrize("text,pattern,wbits,sparse", [
    ("2:4-w8a8", "2:4", 8, True),
    ("2:4-w4a8", "2:4", 4, True),
    ("dense-w8a8", "dense", 8, False),
    ("dense-w4a8", "dense", 4, False),
])
def test_kernel_specs(text, pattern, wbits, sparse):
    s = parse_spec(text)
    assert (s.pattern, s.weight_bits, s.act_bits) == (pattern, wbits, 8)
    assert str(s) == text
    assert s.sparse is sparse and not s.is_fp and s.packable
    assert kernel_spec(text) == s and kernel_spec(s) is s
    assert s.nm == ((2, 4) if sparse else None)
    assert parse_spec(s) is s
    assert text in KERNEL_SPECS


def test_fp():
    s = parse_spec("fp")
    assert s == LayerSpec(None, None, None) and s.is_fp and not s.sparse and not s.packable
    with pytest.raises(ValueError, match="'fp' means 'leave the layer as nn.Linear'"):
        kernel_spec(s)
    assert str(s) == "fp" and s.nm is None
    assert parse_spec("  fp\n") == s


@pytest.mark.parametrize("text,nm", [("1:4-w8a8", (1, 4)), ("2:8-w4a8", (2, 8)), ("4:8-w8a8", (4, 8))])
def test_training_only_nm_patterns(text, nm):
    s = parse_spec(text)
    assert s.nm == nm and s.sparse and str(s) == text
    assert not s.packable
    with pytest.raises(ValueError, match=f"spec for x '{text}' can be trained but not packed"):
        kernel_spec(text, name="spec for x")


def test_vocabulary_is_closed_and_consistent():
    assert KERNEL_PATTERNS == ("2:4", "dense")
    assert {str(parse_spec(t)) for t in KERNEL_SPECS} == set(KERNEL_SPECS)
    assert nxm.parse_spec is parse_spec and nxm.LayerSpec is LayerSpec
    # Specs are hashable values (dict keys in plans and searches).
    assert len({parse_spec("2:4-w8a8"), parse_spec("2:4-w8a8"), parse_spec("fp")}) == 2


@pytest.mark.parametrize("text,match", [
    ("2:4-w2a8", "weight bits must be one of"),
    ("2:4-w16a8", "weight bits must be one of"),
    ("2:4-w8a4", "activation bits must be one of"),
    ("2:4-w8a16", "activation bits must be one of"),
    ("4:4-w8a8", "1 <= N < M"),
    ("0:4-w8a8", "1 <= N < M"),
    ("5:4-w8a8", "1 <= N < M"),
    ("2:4", "spec must look like"),
    ("sparse-w8a8", "spec must look like"),
    ("2:4-w8", "spec must look like"),
    ("2:4_w8a8", "spec must look like"),
    ("FP", "spec must look like"),
    ("", "spec must look like"),
    ("2:4-W8A8", "spec must look like"),
])
def test_bad_specs(text, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(text)


@pytest.mark.parametrize("value", [None, 8, 2.4, ["2:4-w8a8"]])
def test_bad_spec_types(value):
    with pytest.raises(TypeError, match="spec must be a str"):
        parse_spec(value)


def test_parse_pattern():
    assert parse_pattern("2:4") == (2, 4) and parse_pattern("1:4") == (1, 4) and parse_pattern("dense") is None
    for bad in ("2:2", "0:4", "2-4", "2:", ":4", "Dense", "2:4:8"):
        with pytest.raises(ValueError, match="pattern"):
            parse_pattern(bad)
    with pytest.raises(TypeError, match="pattern must be a str"):
        parse_pattern(None)

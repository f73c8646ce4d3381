"""The packed format v1: docs/FORMAT.md's worked example and decoder, round trips, storage, loading."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import nxm_kernels as nxm
from nxm_kernels.format import (FORMAT_NAME, FORMAT_VERSION, K_ALIGN, MAX_K, PAD_METADATA_BYTE, PackedWeight, pack,
                                packed_shapes, padded_k, values_dtype)
from nxm_kernels.quant import fake_quant_weight, quantize_weight
from nxm_kernels.sparsity import is_nm, prune_nm

DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
SHAPES = [(33, 72), (1, 1), (1, 5), (33, 1), (1, 72), (5, 5), (7, 16), (4, 31), (16, 40)]
CASES = [(bits, pattern) for bits in (8, 4) for pattern in ("2:4", "dense")]


# ----------------------------------------------------------------------------- the document
def _doc_blocks() -> dict[str, str]:
    """``<!-- example:NAME -->`` followed by a fenced block -> {NAME: block text}."""
    text = DOC.read_text()
    blocks = dict(re.findall(r"<!-- example:(\S+) -->\s*```[a-z]*\n(.*?)```", text, flags=re.S))
    assert blocks, "docs/FORMAT.md has no example blocks"
    return blocks


def _rows(block: str, parse) -> list[list]:
    """Lines ``row r: a b c`` (the ``row r:`` prefix optional) -> [[parse(a), ...], ...]."""
    rows = []
    for line in block.strip().splitlines():
        line = re.sub(r"^row \d+:", "", line.strip())
        rows.append([parse(tok) for tok in line.split()])
    return rows


def _hex_rows(t: torch.Tensor) -> list[list[int]]:
    """The bytes of each row (a 1-D tensor: each element is a row), little-endian."""
    t = t.contiguous()
    if t.dim() == 1:
        t = t.unsqueeze(-1)
    return t.view(torch.uint8).tolist()


def _decoder():
    namespace: dict = {}
    exec(_doc_blocks()["decoder"], namespace)  # noqa: S102 - our own document's reference decoder
    return namespace["decode"]


def test_doc_worked_example_bytes():
    """Every byte of the worked example in docs/FORMAT.md comes out of pack() exactly."""
    blocks = _doc_blocks()
    weight = torch.tensor(_rows(blocks["weight"], float), dtype=torch.float32)
    assert weight.shape == (2, 12)
    hexes = lambda name: _rows(blocks[name], lambda t: int(t, 16))  # noqa: E731
    ints = lambda name: _rows(blocks[name], int)  # noqa: E731
    for bits in (8, 4):
        sparse = pack(weight, bits, "2:4")
        dense = pack(weight, bits, "dense")
        assert _hex_rows(sparse.scales) == hexes(f"scales-int{bits}")
        assert torch.equal(sparse.scales, dense.scales)
        assert sparse.codes().tolist() == ints(f"codes-int{bits}-2:4")
        assert _hex_rows(sparse.values) == hexes(f"values-int{bits}-2:4")
        assert _hex_rows(sparse.metadata) == hexes("metadata")
        assert _hex_rows(dense.values) == hexes(f"values-int{bits}-dense")
        assert dense.metadata is None
    # The storage totals the document quotes.
    assert pack(weight, 8, "2:4").nbytes() == {"values": 16, "metadata": 4, "scales": 8, "total": 28}
    assert pack(weight, 4, "2:4").nbytes() == {"values": 8, "metadata": 4, "scales": 8, "total": 20}
    # The document's scale for int8 is 7/127 in float32, for int4 exactly 1.0.
    assert pack(weight, 8).scales.tolist() == [torch.tensor(7.0 / 127).item()] * 2
    assert pack(weight, 4).scales.tolist() == [1.0, 1.0]


def test_doc_decoder_on_worked_example():
    blocks = _doc_blocks()
    weight = torch.tensor(_rows(blocks["weight"], float), dtype=torch.float32)
    decode = _decoder()
    for bits, pattern in CASES:
        p = pack(weight, bits, pattern)
        meta = None if p.metadata is None else p.metadata.numpy().tobytes()
        codes = decode(p.values.view(torch.uint8).numpy().tobytes(), meta, p.shape, bits, pattern)
        assert codes == quantize_weight(weight, bits)[0].tolist()


@pytest.mark.parametrize("bits,pattern", CASES)
@pytest.mark.parametrize("shape", [(3, 5), (33, 72), (2, 17)])
def test_doc_decoder_matches_pack(bits, pattern, shape):
    """The document's independent pure-Python decoder reads pack()'s bytes back to the codes."""
    w = torch.randn(shape)
    # Extra zeros so that groups with 0 and 1 non-zeros (the fill rule) occur too.
    w = w * (torch.rand(shape) > 0.3)
    p = pack(w, bits, pattern, prune=True)
    meta = None if p.metadata is None else p.metadata.numpy().tobytes()
    codes = _decoder()(p.values.view(torch.uint8).numpy().tobytes(), meta, p.shape, bits, pattern)
    expected_w = prune_nm(w) if pattern == "2:4" else w
    assert codes == quantize_weight(expected_w, bits)[0].tolist()


def test_doc_mentions_the_code_constants():
    text = DOC.read_text()
    assert f'`"{FORMAT_NAME}"`' in text
    assert f"This document is version {FORMAT_VERSION}." in text
    assert f"ceil(K / {K_ALIGN}) * {K_ALIGN}" in text
    assert f"{MAX_K}" in text


# ----------------------------------------------------------------------------- round trips
def _expected_dequant(w: torch.Tensor, bits: int, pattern: str) -> torch.Tensor:
    """The fake-quantized (and, for 2:4, pruned) weight: what unpack() must give back exactly."""
    base = prune_nm(w) if pattern == "2:4" else w
    return fake_quant_weight(base, bits, ste=False)


@pytest.mark.parametrize("bits,pattern", CASES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip(bits, pattern, shape):
    n, k = shape
    w = torch.randn(shape) * torch.rand(n, 1) * 3  # different row ranges -> different scales
    p = pack(w, bits, pattern, prune=True)
    kp = padded_k(k)
    assert p.shape == (n, k) and p.bits == bits and p.pattern == pattern and p.version == FORMAT_VERSION
    assert p.spec == f"{pattern}-w{bits}a8"
    # Shapes and dtypes of the canonical tensors.
    stored = kp // 2 if pattern == "2:4" else kp
    assert p.values.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert p.values.shape == (n, stored if bits == 8 else stored // 2)
    assert p.scales.dtype == torch.float32 and p.scales.shape == (n,)
    if pattern == "2:4":
        assert p.metadata.dtype == torch.uint8 and p.metadata.shape == (n, kp // 8)
    else:
        assert p.metadata is None
    for t in p.tensors().values():
        assert t.is_contiguous()
    # unpack == fake-quantized pruned weight, exactly.
    out = p.unpack()
    assert out.dtype == torch.float32 and out.shape == (n, k)
    assert torch.equal(out, _expected_dequant(w, bits, pattern))
    # int_weight: padding columns are zero, the rest are the codes.
    iw = p.int_weight()
    assert iw.shape == (n, kp) and iw.dtype == torch.int8
    assert not iw[:, k:].any()
    base = prune_nm(w) if pattern == "2:4" else w
    assert torch.equal(iw[:, :k], quantize_weight(base, bits)[0])
    # Codes stay in the symmetric range; 2:4 weights stay 2:4.
    q = 127 if bits == 8 else 7
    assert int(iw.abs().max()) <= q and int(iw.min()) >= -q
    if pattern == "2:4":
        assert is_nm(iw, 2, 4)
        i0, i1 = p.slot_offsets().unbind(-1)
        assert bool((i0 < i1).all())
    # Storage, by the documented formula.
    nb = p.nbytes()
    exp_values = {(8, "2:4"): n * kp // 2, (4, "2:4"): n * kp // 4, (8, "dense"): n * kp, (4, "dense"): n * kp // 2}
    assert nb["values"] == exp_values[(bits, pattern)]
    assert nb["metadata"] == (n * kp // 8 if pattern == "2:4" else 0)
    assert nb["scales"] == 4 * n
    assert nb["total"] == nb["values"] + nb["metadata"] + nb["scales"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_unpack_dtypes_and_input_dtypes(dtype):
    w = torch.randn(6, 20).to(dtype)
    p = pack(w, 8, "2:4", prune=True)
    ref = fake_quant_weight(prune_nm(w.float()), 8, ste=False)
    assert torch.equal(p.unpack(), ref)
    for out_dtype in (torch.float16, torch.bfloat16, torch.float64):
        got = p.unpack(out_dtype)
        assert got.dtype == out_dtype
        assert torch.equal(got, ref.to(out_dtype))
    with pytest.raises(TypeError, match="dtype"):
        p.unpack(torch.int32)


@pytest.mark.parametrize("bits", [8, 4])
def test_already_2_4_with_sparser_groups_packs_without_prune(bits):
    """A weight that is already 2:4, with many groups holding 0 or 1 non-zeros, packs as is."""
    n, k = 9, 44
    w = prune_nm(torch.randn(n, k))
    w = w * (torch.rand(n, k) > 0.4)  # extra zeros: groups with fewer than two non-zeros
    counts = (w != 0).reshape(n, -1, 4).sum(-1)
    assert bool((counts < 2).any()) and bool((counts == 2).any())
    p = pack(w, bits, "2:4")
    assert torch.equal(p.unpack(), fake_quant_weight(w, bits, ste=False))
    assert p == pack(w, bits, "2:4", prune=True)  # the projection leaves a 2:4 weight alone
    # Slot selection rule: non-zeros first, then the lowest zero offsets, sorted.
    codes = torch.nn.functional.pad(quantize_weight(w, bits)[0], (0, padded_k(k) - k)).reshape(n, -1, 4)
    offs = p.slot_offsets()
    for r in range(n):
        for g in range(codes.shape[1]):
            grp = codes[r, g].tolist()
            chosen = ([i for i in range(4) if grp[i] != 0] + [i for i in range(4) if grp[i] == 0])[:2]
            assert offs[r, g].tolist() == sorted(chosen)


def test_non_2_4_weight_refused_without_prune():
    w = torch.randn(4, 8) + 5.0  # every group dense
    with pytest.raises(ValueError, match=r"not 2:4 sparse.*8 of 8 groups.*prune"):
        pack(w, 8, "2:4")
    # One bad group is enough.
    w = prune_nm(torch.randn(4, 8))
    w[2, 4:8] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    with pytest.raises(ValueError, match="1 of 8 groups"):
        pack(w, 4, "2:4")
    # dense accepts any weight; prune=True makes the 2:4 one work.
    pack(w, 8, "dense")
    assert is_nm(pack(w, 8, "2:4", prune=True).int_weight(), 2, 4)


def test_spec_string_as_pattern():
    w = torch.randn(8, 24)
    p = pack(w, pattern="2:4-w4a8", prune=True)
    assert (p.bits, p.pattern, p.spec) == (4, "2:4", "2:4-w4a8")
    assert pack(w, pattern="dense-w8a8").spec == "dense-w8a8"
    for bad in ("1:4-w8a8", "2:8-w4a8"):
        with pytest.raises(ValueError, match="packable"):
            pack(w, pattern=bad)


def test_fixed_scale():
    w = prune_nm(torch.randn(5, 12))
    s = torch.rand(5) + 0.01
    p = pack(w, 8, "2:4", scale=s)
    assert torch.equal(p.scales, s)
    codes = torch.clamp(torch.round(w / s[:, None]), -127, 127)
    assert torch.equal(p.int_weight()[:, :12].float(), codes)
    with pytest.raises(ValueError, match="scale must have 5 entries"):
        pack(w, 8, scale=torch.ones(4))
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        pack(w, 8, scale=torch.zeros(5))
    with pytest.raises(TypeError, match="scale must have dtype"):
        pack(w, 8, scale=torch.ones(5, dtype=torch.float64))


def test_zero_rows_and_all_zero_weight():
    w = prune_nm(torch.randn(4, 12))
    w[1] = 0
    p = pack(w, 4)
    assert p.scales[1].item() == 1.0 and not p.int_weight()[1].any()
    assert torch.equal(p.unpack(), fake_quant_weight(w, 4, ste=False))
    z = pack(torch.zeros(3, 8), 8)
    assert torch.equal(z.scales, torch.ones(3)) and not z.unpack().any()
    assert torch.equal(z.metadata, torch.full((3, 2), 0x44, dtype=torch.uint8))  # (0,1) for every group


def test_int4_extremes_and_nibble_signs():
    """Codes -7..7 survive the nibble packing; the low nibble holds the even code."""
    codes = torch.arange(-7, 8, dtype=torch.float32)  # 15 values, max |.| = 7 -> scale 1
    w = torch.cat([codes, torch.zeros(1)]).reshape(1, 16)
    p = pack(w, 4, "dense")
    assert p.int_weight()[0].tolist() == list(range(-7, 8)) + [0]
    assert p.values[0, 0].item() == ((-7) & 0xF) | (((-6) & 0xF) << 4)


def test_pack_does_not_modify_input():
    w = torch.randn(6, 10)
    before = w.clone()
    pack(w, 4, "2:4", prune=True)
    assert torch.equal(w, before)


# ----------------------------------------------------------------------------- bad input to pack
@pytest.mark.parametrize("bits,exc", [(2, ValueError), (3, ValueError), (16, ValueError), (0, ValueError),
                                      (-8, ValueError), ("8", TypeError), (8.0, TypeError), (True, TypeError),
                                      (None, TypeError)])
def test_pack_bad_bits(bits, exc):
    with pytest.raises(exc, match="bits must be"):
        pack(torch.randn(4, 8), bits, "dense")


@pytest.mark.parametrize("pattern", ["1:4", "2:8", "4:8", "3:4", "sparse", "", None, 24])
def test_pack_bad_pattern(pattern):
    with pytest.raises((TypeError, ValueError), match="pattern"):
        pack(torch.randn(4, 8), 8, pattern, prune=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("pattern", ["2:4", "dense"])
def test_pack_refuses_non_finite(bad, pattern):
    w = torch.randn(4, 8)
    w[1, 3] = bad
    with pytest.raises(ValueError, match=r"weight must be finite, found 1 NaN/Inf"):
        pack(w, 8, pattern, prune=True)


def test_pack_refuses_float64_overflowing_float32():
    w = torch.randn(2, 8, dtype=torch.float64)
    w[0, 0] = 1e300
    with pytest.raises(ValueError, match="float32"):
        pack(w, 8, "dense")


@pytest.mark.parametrize("shape", [(0, 8), (4, 0), (0, 0)])
def test_pack_refuses_empty(shape):
    with pytest.raises(ValueError, match="must not be empty"):
        pack(torch.randn(shape), 8, "dense")


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.bool, torch.complex64])
def test_pack_refuses_wrong_dtype(dtype):
    with pytest.raises(TypeError, match="weight must have dtype"):
        pack(torch.ones(4, 8, dtype=dtype), 8, "dense")


@pytest.mark.parametrize("shape", [(8,), (2, 4, 8), ()])
def test_pack_refuses_wrong_rank(shape):
    with pytest.raises(ValueError, match="weight must be 2-D"):
        pack(torch.randn(shape), 8, "dense")


def test_pack_refuses_non_tensor_and_huge_k():
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        pack([[1.0, 2.0]], 8, "dense")
    with pytest.raises(ValueError, match=f"<= {MAX_K}"):
        pack(torch.randn(1, MAX_K + 1), 8, "dense")
    assert pack(torch.randn(1, MAX_K), 4, "dense").shape == (1, MAX_K)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("bits,pattern", CASES)
def test_safetensors_json_round_trip(tmp_path, bits, pattern):
    p = pack(torch.randn(33, 72), bits, pattern, prune=True)
    save_file(p.tensors(), tmp_path / "w.safetensors")
    (tmp_path / "w.json").write_text(json.dumps(p.config()))
    config = json.loads((tmp_path / "w.json").read_text())
    assert config == {"format": FORMAT_NAME, "version": FORMAT_VERSION, "shape": [33, 72], "bits": bits,
                      "pattern": pattern}
    tensors = load_file(tmp_path / "w.safetensors")
    assert set(tensors) == ({"values", "metadata", "scales"} if pattern == "2:4" else {"values", "scales"})
    q = PackedWeight.from_tensors(tensors, config)
    assert q == p
    assert torch.equal(q.unpack(), p.unpack())


def _good():
    p = pack(torch.randn(6, 20), 8, "2:4", prune=True)
    return dict(p.tensors()), p.config()


@pytest.mark.parametrize("version,match", [
    (2, "version 2 is newer.*upgrade nxm_kernels"),
    (99, "version 99 is newer"),
    (0, "version must be a positive int"),
    ("1", "version must be a positive int"),
    (1.0, "version must be a positive int"),
    (None, "version must be a positive int"),
])
def test_from_tensors_refuses_other_versions(version, match):
    tensors, config = _good()
    config["version"] = version
    with pytest.raises(ValueError, match=match):
        PackedWeight.from_tensors(tensors, config)


def test_from_tensors_newer_version_refused_before_its_tensors_are_read():
    """A newer file may name its tensors differently: the version error comes first."""
    with pytest.raises(ValueError, match="newer"):
        PackedWeight.from_tensors({"something_new": torch.zeros(1)}, {"format": FORMAT_NAME, "version": 2,
                                                                     "shape": [1, 1], "bits": 8,
                                                                     "pattern": "2:4"})


@pytest.mark.parametrize("edit,exc,match", [
    (lambda t, c: c.update(format="other"), ValueError, "does not describe"),
    (lambda t, c: c.pop("bits"), ValueError, "missing 'bits'"),
    (lambda t, c: c.pop("shape"), ValueError, "missing 'shape'"),
    (lambda t, c: c.update(shape=[6]), ValueError, "shape"),
    (lambda t, c: c.update(shape=[6, "20"]), ValueError, "shape"),
    (lambda t, c: c.update(shape=[6, 40]), ValueError, "values must have shape"),
    (lambda t, c: c.update(shape=[0, 20]), ValueError, "N, K >= 1"),
    (lambda t, c: c.update(bits=4), TypeError, "values must have dtype"),
    (lambda t, c: c.update(bits=8.0), TypeError, "bits must be an int"),
    (lambda t, c: c.update(pattern="dense"), ValueError, "values must have shape"),
    (lambda t, c: c.update(pattern="1:4"), ValueError, "pattern"),
    (lambda t, c: t.pop("scales"), ValueError, r"missing \['scales'\]"),
    (lambda t, c: t.pop("metadata"), ValueError, "metadata is required"),
    (lambda t, c: t.update(metadata=t["metadata"][:, :1].contiguous()), ValueError, "metadata must have shape"),
    (lambda t, c: t.update(metadata=t["metadata"].to(torch.int8)), TypeError, "metadata must have dtype"),
    (lambda t, c: t.update(values=t["values"].to(torch.int16)), TypeError, "values must have dtype"),
    (lambda t, c: t.update(scales=t["scales"].double()), TypeError, "scales must have dtype"),
    (lambda t, c: t.update(scales=t["scales"][:3]), ValueError, "scales must have shape"),
])
def test_from_tensors_refuses_malformed(edit, exc, match):
    tensors, config = _good()
    edit(tensors, config)
    with pytest.raises(exc, match=match):
        PackedWeight.from_tensors(tensors, config)


@pytest.mark.parametrize("bad_nibble", [0x0, 0x5, 0xA, 0xF, 0x1, 0x6, 0xB])  # i0 >= i1
def test_from_tensors_refuses_corrupt_metadata(bad_nibble):
    tensors, config = _good()
    meta = tensors["metadata"].clone()
    meta[3, 1] = (int(meta[3, 1]) & 0xF0) | bad_nibble
    tensors["metadata"] = meta
    with pytest.raises(ValueError, match="metadata is corrupt"):
        PackedWeight.from_tensors(tensors, config)


@pytest.mark.parametrize("corrupt,match", [
    ("scale_nan", "scales must be finite"),
    ("scale_zero", "scales must be > 0"),
    ("scale_negative", "scales must be > 0"),
    ("int8_min", "-128"),
    ("int4_min", "-8"),
])
def test_from_tensors_refuses_corrupt_data(corrupt, match):
    bits = 4 if corrupt == "int4_min" else 8
    p = pack(torch.randn(6, 20), bits, "dense")
    tensors, config = dict(p.tensors()), p.config()
    if corrupt == "scale_nan":
        tensors["scales"] = tensors["scales"].clone().fill_(float("nan"))
    elif corrupt == "scale_zero":
        tensors["scales"] = tensors["scales"].clone().index_fill_(0, torch.tensor([2]), 0.0)
    elif corrupt == "scale_negative":
        tensors["scales"] = -tensors["scales"]
    elif corrupt == "int8_min":
        tensors["values"] = tensors["values"].clone().index_fill_(1, torch.tensor([5]), -128)
    else:
        tensors["values"] = tensors["values"].clone().index_fill_(1, torch.tensor([5]), 0x08)
    with pytest.raises(ValueError, match=match):
        PackedWeight.from_tensors(tensors, config)


def test_from_tensors_dense_with_metadata_refused():
    p = pack(torch.randn(4, 16), 8, "dense")
    tensors = dict(p.tensors(), metadata=torch.zeros(4, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="metadata must be None"):
        PackedWeight.from_tensors(tensors, p.config())


def test_from_tensors_wrong_container_types():
    tensors, config = _good()
    with pytest.raises(ValueError, match="does not describe"):
        PackedWeight.from_tensors(tensors, json.dumps(config))
    with pytest.raises(TypeError, match="tensors must be a mapping"):
        PackedWeight.from_tensors(list(tensors.values()), config)


# ----------------------------------------------------------------------------- the dataclass itself
def test_constructor_validates_and_devices():
    p = pack(torch.randn(4, 16), 8, "2:4", prune=True)
    with pytest.raises(ValueError, match="one device"):
        PackedWeight(p.values, p.metadata, p.scales.to("meta"), p.shape, 8, "2:4")
    m = p.to("meta")  # the meta device stands in for a second device; no data is read
    assert m.device.type == "meta" and m.metadata.device.type == "meta" and m.prepared == {}
    assert m.shape == p.shape
    with pytest.raises(ValueError, match="version"):
        PackedWeight(p.values, p.metadata, p.scales, p.shape, 8, "2:4", version=2)
    with pytest.raises(ValueError, match="shape must be"):
        PackedWeight(p.values, p.metadata, p.scales, (4, 16, 1), 8, "2:4")
    with pytest.raises(ValueError, match=f"<= {MAX_K}"):
        PackedWeight(p.values, p.metadata, p.scales, (4, MAX_K + 1), 8, "2:4")


def test_equality_and_properties():
    w = torch.randn(5, 12)
    a, b = pack(w, 4, "2:4", prune=True), pack(w.clone(), 4, "2:4", prune=True)
    assert a == b and not (a != b)
    assert a != pack(w, 8, "2:4", prune=True)
    assert a != pack(w * 2 + 1, 4, "2:4", prune=True)
    assert a != "not a packed weight"
    assert (a.out_features, a.in_features, a.padded_in_features, a.sparse) == (5, 12, 16, True)
    assert not pack(w, 4, "dense").sparse
    with pytest.raises(ValueError, match="only defined for pattern '2:4'"):
        pack(w, 4, "dense").slot_offsets()


def test_padded_k():
    assert [padded_k(k) for k in (1, 15, 16, 17, 72, 768)] == [16, 16, 16, 32, 80, 768]
    assert all(padded_k(k) % K_ALIGN == 0 and padded_k(k) - k < K_ALIGN for k in range(1, 100))
    assert math.gcd(K_ALIGN, 16) == 16


@pytest.mark.parametrize("bits,pattern", CASES)
@pytest.mark.parametrize("shape", [(3, 5), (33, 72), (2, 17), (8, 768)])
def test_packed_shapes_match_pack(bits, pattern, shape):
    n, k = shape
    p = pack(torch.randn(shape), bits, pattern, prune=True)
    shapes = packed_shapes(n, k, bits, pattern == "2:4")
    assert shapes == p.expected_shapes()
    assert shapes["values"] == tuple(p.values.shape) and p.values.dtype == values_dtype(bits)
    assert shapes["scales"] == tuple(p.scales.shape)
    assert shapes["metadata"] == (None if p.metadata is None else tuple(p.metadata.shape))


def test_pad_metadata_byte_is_offsets_0_1():
    """The placeholder/padding metadata byte decodes to offsets (0, 1) in both of its groups."""
    values = torch.zeros(1, 8, dtype=torch.int8)
    p = PackedWeight(values, torch.full((1, 2), PAD_METADATA_BYTE, dtype=torch.uint8), torch.ones(1), (1, 16), 8,
                     "2:4")
    p.validate(deep=True)
    assert p.slot_offsets().tolist() == [[[0, 1]] * 4]


def test_public_names():
    assert nxm.pack is pack and nxm.PackedWeight is PackedWeight and nxm.FORMAT_VERSION == FORMAT_VERSION

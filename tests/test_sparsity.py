"""N:M projection, checker and mask helpers (nxm_kernels.sparsity)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nxm_kernels.sparsity import apply_mask, check_nm, count_nm_violations, density, is_nm, nm_mask, prune_nm

PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8), (1, 2), (3, 4)]
HYP = settings(max_examples=60, deadline=None)


def _oracle_mask(rows: list[list[float]], n: int, m: int) -> list[list[bool]]:
    """Independent plain-Python projection: per group, keep the n largest |v|, ties to the lower index."""
    out = []
    for row in rows:
        keep = [False] * len(row)
        for start in range(0, len(row), m):
            idx = list(range(start, min(start + m, len(row))))
            for i in sorted(idx, key=lambda i: (-abs(row[i]), i))[:n]:
                keep[i] = True
        out.append(keep)
    return out


@st.composite
def weights(draw, max_rows=5, max_cols=19):
    """Small float32 matrices, often with ties and zeros (integer-valued), sometimes continuous."""
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    if draw(st.booleans()):
        elem = st.integers(-3, 3).map(float)  # many ties, many zeros
    else:
        elem = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32, allow_subnormal=False)
    data = draw(st.lists(st.lists(elem, min_size=cols, max_size=cols), min_size=rows, max_size=rows))
    return torch.tensor(data, dtype=torch.float32)


@HYP
@given(w=weights(), nm=st.sampled_from(PATTERNS))
def test_projection_properties(w, nm):
    n, m = nm
    mask = nm_mask(w, n, m)
    pruned = prune_nm(w, n, m)
    # Exactly the oracle's choice: the n largest magnitudes per group, ties toward the lower index.
    assert mask.tolist() == _oracle_mask(w.tolist(), n, m)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    # Every group keeps min(n, group size) slots, and the result is N:M.
    k = w.shape[1]
    sizes = [min(m, k - s) for s in range(0, k, m)]
    kept = [int(mask[:, s:s + m].sum(1).min()) for s in range(0, k, m)]
    assert kept == [min(n, size) for size in sizes]
    assert is_nm(pruned, n, m) and count_nm_violations(pruned, n, m) == 0
    # Kept entries are untouched, dropped ones are +0.
    assert torch.equal(pruned[mask], w[mask])
    assert not pruned[~mask].any() and not torch.signbit(pruned[~mask]).any()
    # Idempotent, and the projection of an N:M weight is itself.
    assert torch.equal(prune_nm(pruned, n, m), pruned)
    # It is the Euclidean projection: no other N:M choice keeps more energy in any group.
    dropped = (w * ~mask).abs()
    kept_min = torch.where(mask, w.abs(), torch.full_like(w, float("inf")))
    for s in range(0, k, m):
        assert bool((dropped[:, s:s + m].amax(1) <= kept_min[:, s:s + m].amin(1)).all())


@HYP
@given(w=weights(), nm=st.sampled_from(PATTERNS))
def test_checker_agrees_with_definition(w, nm):
    n, m = nm
    k = w.shape[1]
    nnz = [(w[:, s:s + m] != 0).sum(1) for s in range(0, k, m)]
    bad = sum(int((c > n).sum()) for c in nnz)
    assert count_nm_violations(w, n, m) == bad
    assert is_nm(w, n, m) == (bad == 0)
    if bad:
        with pytest.raises(ValueError, match=f"{bad} of .* groups of {m} hold more than {n} non-zeros"):
            check_nm(w, n, m)
    else:
        check_nm(w, n, m)


@pytest.mark.parametrize("n,m", PATTERNS)
def test_random_weights_every_pattern(n, m):
    w = torch.randn(13, 37)
    p = prune_nm(w, n, m)
    assert is_nm(p, n, m)
    assert torch.equal(nm_mask(w, n, m), torch.tensor(_oracle_mask(w.tolist(), n, m)))
    # The expected count of kept entries: full groups keep n, the short tail group min(n, tail).
    tail = 37 % m
    assert int((p != 0).sum()) == 13 * ((37 // m) * n + min(n, tail))


def test_ties_go_to_lower_index():
    w = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0], [2.0, 5.0, -5.0, 5.0]])
    assert nm_mask(w).tolist() == [[True, True, False, False], [True, True, False, False],
                                   [False, True, True, False]]


def test_pattern_keyword_and_shapes():
    w = torch.randn(3, 4, 16)  # [..., in]: leading dims are rows
    assert torch.equal(nm_mask(w, pattern="1:4"), nm_mask(w, 1, 4))
    assert nm_mask(w).shape == w.shape
    assert torch.equal(nm_mask(w).reshape(12, 16), nm_mask(w.reshape(12, 16)))
    v = torch.randn(10)  # 1-D: one row
    assert torch.equal(prune_nm(v), prune_nm(v[None])[0])
    for shape in [(3, 0), (0, 8), (2, 0, 4)]:
        e = torch.randn(shape)
        assert nm_mask(e).shape == e.shape and prune_nm(e).shape == e.shape and is_nm(e)


def test_integer_and_half_inputs():
    w = torch.randint(-100, 100, (6, 12), dtype=torch.int8)
    assert is_nm(prune_nm(w), 2, 4) and prune_nm(w).dtype == torch.int8
    assert nm_mask(w).tolist() == _oracle_mask(w.tolist(), 2, 4)
    for dtype in (torch.float16, torch.bfloat16):
        h = torch.randn(6, 12).to(dtype)
        assert prune_nm(h).dtype == dtype
        assert torch.equal(nm_mask(h), nm_mask(h.float()))


def test_prune_does_not_modify_input_and_gradient_is_mask():
    w = torch.randn(4, 8, requires_grad=True)
    before = w.detach().clone()
    g = torch.randn(4, 8)
    (prune_nm(w) * g).sum().backward()
    assert torch.equal(w.detach(), before)
    assert torch.equal(w.grad, g * nm_mask(before))


def test_pruned_inf_becomes_zero_not_nan():
    w = torch.tensor([[float("inf"), 5.0, 6.0, 1.0], [-2.0, -3.0, 1.0, -4.0]])
    w2 = torch.tensor([[0.5, 5.0, 6.0, float("-inf")]])
    assert prune_nm(w).tolist() == [[float("inf"), 0.0, 6.0, 0.0], [0.0, -3.0, 0.0, -4.0]]
    assert prune_nm(w2).tolist() == [[0.0, 0.0, 6.0, float("-inf")]]


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(n=4, m=4), ValueError, "n must be < m"),
    (dict(n=5, m=4), ValueError, "n must be < m"),
    (dict(n=0, m=4), ValueError, "n must be >= 1"),
    (dict(n=1, m=1), ValueError, "m must be >= 2"),
    (dict(n=2.0, m=4), TypeError, "n must be an int"),
    (dict(n=2, m="4"), TypeError, "m must be an int"),
    (dict(pattern="dense"), ValueError, "N:M pattern here"),
    (dict(pattern="4:2"), ValueError, "1 <= N < M"),
    (dict(pattern="2-4"), ValueError, "'dense' or 'N:M'"),
])
def test_bad_pattern_arguments(kwargs, exc, match):
    w = torch.randn(2, 8)
    for fn in (nm_mask, prune_nm, count_nm_violations, is_nm):
        with pytest.raises(exc, match=match):
            fn(w, **kwargs)


def test_bad_weight_arguments():
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        nm_mask([[1.0, 2.0]])
    with pytest.raises(ValueError, match="at least 1 dimension"):
        prune_nm(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"my_w is not 2:4 sparse"):
        check_nm(torch.ones(2, 4), name="my_w")


def test_apply_mask_and_density():
    w = torch.randn(4, 8)
    mask = nm_mask(w)
    assert torch.equal(apply_mask(w, mask), prune_nm(w))
    with pytest.raises(ValueError, match="mask must have the weight's shape"):
        apply_mask(w, mask[:, :4])
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        apply_mask(w, None)
    assert density(prune_nm(torch.randn(4, 8) + 10)) == 0.5
    assert density(torch.tensor([1.0, 0.0, 0.0, 2.0])) == 0.5
    with pytest.raises(ValueError, match="must not be empty"):
        density(torch.zeros(0, 4))

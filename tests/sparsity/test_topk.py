"""Exact-k selection and the floor(S·N) counting rule (sparsity/topk.py)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsetrain.sparsity.topk import count_active, count_zeros, kth_largest, topk_mask

FAST = settings(max_examples=40, deadline=None)


def brute_force(scores, k, eligible=None):
    """Reference: eligible indices sorted by (-score, index), NaN as -inf, first k chosen."""
    idx = [i for i in range(len(scores)) if eligible is None or eligible[i]]
    key = [(-(s if not math.isnan(s) else -math.inf), i) for i, s in enumerate(scores)]
    chosen = sorted(idx, key=lambda i: key[i])[:k]
    return [i in chosen for i in range(len(scores))]


# small integer scores make ties common, which is where the tie rule matters
scores_st = st.lists(st.sampled_from([-1.0, 0.0, 2.0, float("nan")]), min_size=1, max_size=30)


@FAST
@given(data=st.data(), scores=scores_st)
def test_topk_matches_brute_force(data, scores):
    eligible = data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores)))
    k = data.draw(st.integers(0, sum(eligible)))
    got = topk_mask(torch.tensor(scores), k, eligible=torch.tensor(eligible))
    assert got.tolist() == brute_force(scores, k, eligible)
    assert int(got.sum()) == k


@FAST
@given(scores=scores_st, frac=st.floats(0, 1))
def test_topk_without_eligible_matches_brute_force(scores, frac):
    k = int(frac * len(scores))
    assert topk_mask(torch.tensor(scores), k).tolist() == brute_force(scores, k)


def test_ties_go_to_lower_flat_index_and_shape_is_kept():
    scores = torch.tensor([[1.0, 2.0, 2.0], [2.0, 0.0, 2.0]])
    got = topk_mask(scores, 2)
    assert got.shape == scores.shape
    assert got.tolist() == [[False, True, True], [False, False, False]]


def test_nan_ranks_lowest_and_ineligible_never_wins():
    scores = torch.tensor([float("nan"), -float("inf"), 5.0, 1.0])
    # the eligible -inf and NaN entries must be taken before the ineligible 5.0
    eligible = torch.tensor([True, True, False, False])
    assert topk_mask(scores, 2, eligible=eligible).tolist() == [True, True, False, False]
    assert topk_mask(scores, 3).tolist() == [False, True, True, True]


def test_k_larger_than_eligible_is_an_error_and_k_zero_selects_nothing():
    with pytest.raises(ValueError, match="cannot select 3 of 2"):
        topk_mask(torch.ones(4), 3, eligible=torch.tensor([1, 0, 1, 0], dtype=torch.bool))
    assert not topk_mask(torch.ones(4), 0).any()


@pytest.mark.parametrize("numel,sparsity,zeros", [
    (8, 0.5, 4), (18, 0.8, 14),  # floor(14.4)
    (48, 0.8, 38),  # floor(38.4)
    (10, 0.9, 9), (10, 1 - 0.1, 9),  # 0.8999999... · 10 must still give 9
    (7, 0.0, 0), (3, 0.99, 2),
])
def test_count_zeros_is_floor_of_s_times_n(numel, sparsity, zeros):
    assert count_zeros(numel, sparsity) == zeros
    assert count_active(numel, 1 - sparsity) == numel - zeros


@FAST
@given(numel=st.integers(1, 5000), data=st.data())
def test_count_zeros_hits_every_exact_count(numel, data):
    k = data.draw(st.integers(0, numel))
    # k/N is not exactly representable; the rule must still return the k the user meant
    assert count_zeros(numel, k / numel) == k
    assert count_active(numel, k / numel) == k


@FAST
@given(numel=st.integers(1, 5000), pct=st.integers(0, 99))
def test_count_zeros_agrees_with_exact_rational_floor(numel, pct):
    assert count_zeros(numel, pct / 100) == (pct * numel) // 100


@pytest.mark.parametrize("k", [1, 333, 5000, 9999, 10000])
def test_selection_equals_stable_sort_on_a_large_tied_tensor(k):
    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 7, (100, 100), generator=g).float()  # ~1400 entries per value
    eligible = torch.rand(100, 100, generator=g) < 0.7
    ref = torch.zeros(10000, dtype=torch.bool)
    ref[torch.sort(scores.reshape(-1), descending=True, stable=True).indices[:k]] = True
    assert torch.equal(topk_mask(scores, k).reshape(-1), ref)
    k_el = min(k, int(eligible.sum()))
    idx = torch.nonzero(eligible.reshape(-1)).squeeze(1)
    ref = torch.zeros(10000, dtype=torch.bool)
    ref[idx[torch.sort(scores.reshape(-1)[idx], descending=True, stable=True).indices[:k_el]]] = True
    assert torch.equal(topk_mask(scores, k_el, eligible=eligible).reshape(-1), ref)


@FAST
@given(data=st.data(), scores=scores_st)
def test_sort_and_selection_paths_choose_the_same_set(data, scores):
    """The GPU path (stable sort) and the CPU path (selection) pick the same positions."""
    from sparsetrain.sparsity.topk import _by_selection, _by_sort

    values = torch.nan_to_num(torch.tensor(scores), nan=-float("inf"))
    k = data.draw(st.integers(0, len(scores)))
    chosen = [set(f(values, k).tolist()) if k else set() for f in (_by_selection, _by_sort)]
    assert chosen[0] == chosen[1]
    assert chosen[1] == {i for i, b in enumerate(brute_force(scores, k)) if b}


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3000), frac=st.floats(0.0, 1.0), levels=st.integers(1, 50), seed=st.integers(0, 1000))
def test_kth_largest_is_the_kth_of_a_descending_sort(n, frac, levels, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(0, levels, (n,), generator=g).float()  # many ties
    k = max(1, min(n, int(frac * n)))
    assert kth_largest(v, k) == float(torch.sort(v, descending=True).values[k - 1])


@pytest.mark.parametrize("layout", ["random", "ties", "sample_positions_largest", "ascending"])
def test_kth_largest_sampled_path_is_exact(layout):
    # 2²¹ entries take the sampled path; the adversarial layout puts the largest values exactly
    # at the sampled positions, so fewer than k reach the sample's threshold and the exact
    # fallback must run
    n, k = 1 << 21, 50_000
    g = torch.Generator().manual_seed(3)
    v = {"random": lambda: torch.randn(n, generator=g),
         "ties": lambda: torch.randint(0, 7, (n,), generator=g).float(),
         "ascending": lambda: torch.arange(n, dtype=torch.float32),
         "sample_positions_largest": lambda: torch.rand(n, generator=g)}[layout]()
    if layout == "sample_positions_largest":
        v[:: n // (1 << 14)] += 10.0
    assert kth_largest(v, k) == float(torch.topk(v, k).values[-1])

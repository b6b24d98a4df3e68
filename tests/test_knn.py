"""k-NN engine (salad_lite.knn): exact top-k against brute force, ties, threads, memory bound, latent checks."""

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salad_lite import knn
from salad_lite.knn import (block_search, check_latents, cosine_topk, cpu_block_search, excluded_cells, merge_topk,
                            torch_block_search, unit_rows)


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


@pytest.mark.parametrize("block_elements", [7, 50, 1 << 20])
def test_chunked_topk_equals_brute_force(block_elements):
    gen = torch.Generator().manual_seed(3)
    queries, keys = torch.randn(13, 6, generator=gen), torch.randn(40, 6, generator=gen)
    sims, idx = cosine_topk(queries, keys, 5, block_elements=block_elements)
    full = F.normalize(queries, dim=1) @ F.normalize(keys, dim=1).T
    ref_sims, ref_idx = full.topk(5, dim=1)
    assert torch.allclose(sims, ref_sims, atol=1e-6)
    assert torch.equal(idx, ref_idx)


@pytest.mark.parametrize("block_elements", [3, 8, 1 << 20])
def test_equal_similarities_rank_by_ascending_key_across_blocks(block_elements):
    """Ties (duplicated keys) come out in ascending key order, whichever block saw them first."""
    gen = torch.Generator().manual_seed(5)
    base = F.normalize(torch.randn(4, 6, generator=gen), dim=1)
    keys = base[torch.tensor([2, 0, 1, 0, 3, 0, 2, 0, 1, 0, 0, 3])]  # row 0 of base at keys 1,3,5,7,9,10
    sims, idx = cosine_topk(base[:1], keys, 6, block_elements=block_elements)
    assert idx[0].tolist() == [1, 3, 5, 7, 9, 10]
    assert torch.allclose(sims, torch.ones_like(sims), atol=1e-6)


@pytest.mark.parametrize("queries", [1, 2])
def test_few_queries_split_the_keys_between_threads(queries):
    """With fewer query chunks than threads the keys are split; the merged top-k and angle sums are exact."""
    gen = torch.Generator().manual_seed(6)
    q = F.normalize(torch.randn(queries, 5, generator=gen), dim=1).numpy()
    keys = F.normalize(torch.randn(300, 5, generator=gen), dim=1).numpy()
    keys[[17, 150, 299]] = q[0]  # exact ties that land in different key parts
    exclude = np.full(queries, 150)
    sims, idx, angle_sum = cpu_block_search(q, keys, 7, with_angles=True, exclude=exclude, block_elements=16, threads=3)
    one_sims, one_idx, one_angles = cpu_block_search(q, keys, 7, with_angles=True, exclude=exclude, threads=1)
    assert torch.equal(idx, one_idx) and torch.allclose(sims, one_sims)
    assert idx[0, :2].tolist() == [17, 299]  # the excluded copy is left out, ties ascending
    full = np.clip(q.astype(np.float64) @ keys.T.astype(np.float64), -1, 1)
    full[:, 150] = 1.0  # excluded: contributes arccos(1) = 0
    np.testing.assert_allclose(angle_sum, np.arccos(full).sum(1), rtol=1e-5)
    np.testing.assert_allclose(one_angles, angle_sum, rtol=1e-6)


@pytest.mark.parametrize("with_angles", [True, False])
def test_torch_engine_matches_cpu_engine_with_exclusion(with_angles):
    """The torch engine (used off the CPU) gives the numba engine's neighbours, cosines and angle sums."""
    queries, keys = unit(9, 6, 7), unit(60, 6, 8)
    exclude = torch.arange(9) * 5
    c_sims, c_idx, c_angles = cpu_block_search(queries.numpy(), keys.numpy(), 4, with_angles, exclude.numpy(), 40)
    t_sims, t_idx, t_angles = torch_block_search(queries, keys, 4, with_angles, exclude, 40)
    assert torch.equal(c_idx, t_idx) and torch.allclose(c_sims, t_sims, atol=1e-6)
    assert not (t_idx == exclude[:, None]).any()
    if with_angles:
        full = (queries.double() @ keys.double().T).clamp(-1, 1)
        full[torch.arange(9), exclude] = 1.0
        assert torch.allclose(t_angles, torch.arccos(full).sum(1), rtol=1e-6)
        np.testing.assert_allclose(c_angles, t_angles.numpy(), rtol=1e-5)
    else:
        assert c_angles is None and t_angles is None


def test_block_search_dispatches_cpu_tensors_to_the_numba_engine(monkeypatch):
    calls = []
    original = knn.cpu_block_search
    monkeypatch.setattr(knn, "cpu_block_search", lambda *a, **k: calls.append(1) or original(*a, **k))
    sims, idx, angles = block_search(unit(3, 4, 1), unit(20, 4, 2), 2, True)
    assert calls == [1] and sims.shape == (3, 2) and idx.dtype == torch.int64 and angles.dtype == torch.float64


def test_merge_topk_ranks_by_value_then_ascending_index():
    values = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.9, 0.5]])
    indices = torch.tensor([[8, 6, 2, 0, 3, 5]])
    best, rows = merge_topk(values, indices, 4)
    assert rows.tolist() == [[3, 6, 2, 5]]  # 0.9 (3 before 6), then 0.5 (2 before 5; 8 cut)
    assert best[0].tolist() == pytest.approx([0.9, 0.9, 0.5, 0.5])


def test_excluded_cells_finds_the_left_out_key_in_its_block_only():
    exclude = torch.tensor([4, 0, 9, 6])
    rows, cols = excluded_cells(exclude, slice(1, 4), 4, 4)  # queries 1..3, keys 4..7
    assert rows.tolist() == [2] and cols.tolist() == [2]  # query 3 leaves out key 6 = column 2
    rows, cols = excluded_cells(exclude, slice(0, 4), 0, 4)  # keys 0..3
    assert rows.tolist() == [1] and cols.tolist() == [0]


def test_topk_never_builds_full_matrix(monkeypatch):
    """Every matrix product makes a small block, and the peak numpy memory stays far below one N x N matrix."""
    seen = []
    original = np.matmul

    def spy(a, b, out=None):
        seen.append(a.shape[0] * b.shape[1])
        return original(a, b, out=out)

    monkeypatch.setattr(np, "matmul", spy)
    keys = torch.randn(500, 4)
    cosine_topk(keys, keys, 3, block_elements=1000)
    assert max(seen) <= 1000 and len(seen) > 100
    monkeypatch.undo()

    n = 4000  # a full float32 similarity matrix would be 64 MB
    keys = unit(n, 8, 9)
    cosine_topk(keys[:300], keys[:600], 5)  # compile (or load) the kernels before measuring
    tracemalloc.start()
    try:
        cosine_topk(keys, keys, 5, exclude=torch.arange(n))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * n * 4 / 8


def test_unit_rows_is_f_normalize_bit_for_bit():
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(1)) * 3.0
    assert torch.equal(unit_rows(x, "x"), F.normalize(x, dim=1))
    assert torch.equal(check_latents(x.double(), "x"), x)


def test_zero_nan_and_overflowing_rows_are_refused_and_counted():
    x = unit(6, 4, 2)
    x[[1, 4]] = 0.0
    with pytest.raises(ValueError, match=r"keys has 2 zero-norm row\(s\) of 6 .*first: row 1"):
        cosine_topk(unit(2, 4, 3), x, 2)
    with pytest.raises(ValueError, match=r"queries has 2 zero-norm row"):
        cosine_topk(x, unit(5, 4, 3), 2)
    tiny = unit(3, 4, 4) * 1e-13
    with pytest.raises(ValueError, match="3 zero-norm"):
        unit_rows(tiny, "z")
    bad = unit(5, 4, 5)
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"1 row\(s\) with NaN or inf \(first: row 3\)"):
        check_latents(bad, "z")
    huge = torch.full((2, 4), 3e38)
    with pytest.raises(ValueError, match="2 row.* norm overflows"):
        check_latents(huge, "z")
    with pytest.raises(ValueError, match="2-D"):
        check_latents(torch.ones(4), "z")


def test_search_arguments_are_checked():
    keys = unit(10, 4, 6).numpy()
    with pytest.raises(ValueError, match=r"k must lie in 1..9 .*one left out per query.*got k=10"):
        cpu_block_search(keys[:2], keys, 10, False, exclude=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"k must lie in 1..10 .*got k=0"):
        torch_block_search(torch.from_numpy(keys), torch.from_numpy(keys), 0, False)
    with pytest.raises(ValueError, match=r"exclude must hold one key row per query, shape \(2,\)"):
        cpu_block_search(keys[:2], keys, 3, False, exclude=np.array([0]))
    with pytest.raises(ValueError, match=r"must share d, got shapes \(2, 4\) and \(10, 3\)"):
        cpu_block_search(keys[:2], keys[:, :3], 3, False)
    with pytest.raises(ValueError, match=r"must share d"):
        cosine_topk(torch.ones(2, 5), torch.from_numpy(keys), 3)
    with pytest.raises(ValueError, match=r"exclude must hold key rows in 0..9, got 0..10"):
        torch_block_search(torch.from_numpy(keys[:2]), torch.from_numpy(keys), 3, False, torch.tensor([0, 10]))


DEFAULT_BLOCK = knn.DEFAULT_BLOCK_ELEMENTS


def softmax_entropy_reference(bank: torch.Tensor, tau: float) -> torch.Tensor:
    """Float64 entropy of softmax_j(b_i . b_j / tau) over j != i, from the full matrix (small N only)."""
    logits = (bank.double() @ bank.double().T) / tau
    logits.fill_diagonal_(float("-inf"))
    log_p = torch.log_softmax(logits, dim=1)
    return -(log_p.exp() * torch.where(torch.isfinite(log_p), log_p, torch.zeros_like(log_p))).sum(1)


@pytest.mark.parametrize("n, d, k, block_elements, tau", [(9, 5, 3, 10, 0.1), (700, 16, 20, 1 << 24, 0.1),
                                                        (700, 16, 7, 3000, 0.05), (1100, 200, 20, 1 << 24, 0.5)])
def test_self_search_matches_full_matrix_and_the_separate_searches(n, d, k, block_elements, tau):
    """One pass: entropies equal a float64 full-matrix reference; neighbours are those of cpu_block_search."""
    bank = unit(n, d, n)
    entropy, sims, idx = knn.self_search(bank.numpy(), k, tau, block_elements)
    ref = softmax_entropy_reference(bank, tau)
    assert entropy.dtype == torch.float64 and entropy.shape == (n,)
    torch.testing.assert_close(entropy, ref, rtol=1e-5, atol=1e-6)  # float32 cosines: ~1e-7 nats near 0
    rows = np.arange(n)
    ref_sims, ref_idx, _ = cpu_block_search(bank.numpy(), bank.numpy(), k, False, rows, block_elements)
    assert torch.equal(idx, ref_idx) and torch.equal(sims, ref_sims)
    assert not (idx == torch.arange(n)[:, None]).any()


@pytest.mark.parametrize("spread, twins", [(0.01, False), (0.001, True)])
def test_self_search_clusters_twins_ties_and_threads(spread, twins):
    """Tight clusters, and twins (softmax all on the twin: entropy ~0), with exact duplicates: exact whatever the threads."""
    gen = torch.Generator().manual_seed(11)
    centres = F.normalize(torch.randn(300 if twins else 6, 32, generator=gen), dim=1)
    bank = F.normalize(centres[torch.arange(600) % len(centres)] + spread * torch.randn(600, 32, generator=gen), dim=1)
    bank[[5, 77, 301]] = bank[3].clone()  # exact ties with row 3
    entropy, _, idx = knn.self_search(bank.numpy(), 5, 0.025, threads=1)
    reference = softmax_entropy_reference(bank, 0.025)
    torch.testing.assert_close(entropy, reference, rtol=1e-5, atol=1e-6)
    assert float(reference.median()) < 1e-4 if twins else bool((reference > 4).all())
    two, _, idx_two = knn.self_search(bank.numpy(), 5, 0.025, threads=2)
    three, _, idx_three = knn.self_search(bank.numpy(), 5, 0.025, threads=3)
    assert torch.equal(two, three) and torch.equal(idx_two, idx_three)  # same blocks: bit for bit, whatever the threads
    small, _, _ = knn.self_search(bank.numpy(), 5, 0.025, block_elements=5000)
    torch.testing.assert_close(small, entropy, rtol=1e-6, atol=1e-6)  # other blocks: other float32 rounding
    assert idx[3, :3].tolist() == [5, 77, 301]


def test_self_search_refuses_small_temperatures_and_bad_k():
    bank = unit(20, 4, 1).numpy()
    with pytest.raises(ValueError, match="temperature >= 0.025"):
        knn.self_search(bank, 3, 0.02)
    with pytest.raises(ValueError, match="k must lie in 1..19"):
        knn.self_search(bank, 20, 0.1)


@pytest.mark.parametrize("k", [True, 2.5, 0])
def test_merge_topk_refuses_a_k_that_is_not_a_count(k) -> None:
    from salad_lite.knn import merge_topk

    values, indices = torch.rand(2, 5), torch.arange(5).repeat(2, 1)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        merge_topk(values, indices, k)


def test_exclude_as_numpy_or_list_and_complex_latents():
    bank = F.normalize(torch.randn(12, 4), dim=1)
    expected = cosine_topk(bank, bank, 2, exclude=torch.arange(12))
    for exclude in (np.arange(12), list(range(12))):
        got = cosine_topk(bank, bank, 2, exclude=exclude)
        assert torch.equal(got[1], expected[1])
    values, rows, _ = block_search(bank.numpy(), bank.numpy(), 2, False, np.arange(12))
    assert torch.equal(rows, expected[1])
    with pytest.raises(ValueError, match=r"queries must be real numbers \[rows, d\], got dtype torch.complex64"):
        cosine_topk(bank.to(torch.complex64), bank, 2)
    with pytest.raises(ValueError, match=r"bank has 1 row\(s\) of 12 that are not unit vectors"):
        knn.self_search((bank * torch.tensor([[100.0]] + [[1.0]] * 11)).numpy(), 2, 0.1)

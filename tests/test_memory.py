"""Memory bank: init, momentum update, chunked top-k and entropy against plain references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salad_lite.memory import MemoryBank, cosine_topk, cpu_block_search


def test_init_is_seeded_unit_vectors():
    a, b, c = MemoryBank(20, 7, seed=1), MemoryBank(20, 7, seed=1), MemoryBank(20, 7, seed=2)
    assert torch.allclose(a.bank.norm(dim=1), torch.ones(20), atol=1e-6)
    assert torch.equal(a.bank, b.bank) and not torch.equal(a.bank, c.bank)
    assert "bank" in dict(a.named_buffers())
    assert "bank" in a.state_dict()


def test_update_matches_loop_reference():
    memory = MemoryBank(6, 4, seed=0)
    before = memory.bank.clone().double().numpy()
    z = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    indices = torch.tensor([4, 0, 2])
    memory.update(indices, z, momentum=0.5)
    for row in range(6):
        if row in (4, 0, 2):
            slot = [4, 0, 2].index(row)
            mixed = [(1 - 0.5) * before[row, j] + 0.5 * float(z[slot, j]) for j in range(4)]
            norm = math.sqrt(sum(v * v for v in mixed))
            expected = [v / norm for v in mixed]
        else:
            expected = list(before[row])
        assert memory.bank[row].tolist() == pytest.approx(expected, abs=1e-5)


def test_update_has_no_gradient_and_rejects_bad_shapes():
    memory = MemoryBank(5, 3)
    z = torch.randn(2, 3, requires_grad=True)
    memory.update(torch.tensor([0, 1]), z)
    assert not memory.bank.requires_grad
    with pytest.raises(ValueError, match="update expects"):
        memory.update(torch.tensor([0]), torch.randn(1, 4))


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


def test_topk_exclude_self_and_k_errors():
    memory = MemoryBank(30, 8, seed=4)
    with_self = memory.neighbours_of_entries(4, include_self=True)
    assert torch.equal(with_self[:, 0], torch.arange(30))
    without = memory.neighbours_of_entries(3, include_self=False)
    assert not (without == torch.arange(30)[:, None]).any()
    assert torch.equal(with_self[:, 1:], without)
    with pytest.raises(ValueError, match="k must lie in 1..29"):
        memory.neighbours_of_entries(30, include_self=False)


def test_topk_never_builds_full_matrix(monkeypatch):
    """With a small block budget every similarity block stays small."""
    import salad_lite.memory as memory_module

    seen = []
    original = memory_module.similarity_blocks

    def spy(q, k, block_elements):
        for block in original(q, k, block_elements):
            seen.append(block[2].numel())
            yield block

    monkeypatch.setattr(memory_module, "similarity_blocks", spy)
    keys = torch.randn(500, 4)
    cosine_topk(keys, keys, 3, block_elements=1000)
    assert max(seen) <= 1000 and len(seen) > 100


def test_entropy_matches_loop_reference():
    memory = MemoryBank(9, 5, seed=5)
    tau = 0.1
    got = memory.entropy(tau, block_elements=10)
    bank = memory.bank.double().numpy()
    for i in range(9):
        logits = [float(bank[i] @ bank[j]) / tau for j in range(9) if j != i]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        p = [w / sum(weights) for w in weights]
        expected = -sum(pi * math.log(pi) for pi in p if pi > 0)
        assert float(got[i]) == pytest.approx(expected, abs=1e-4)
    assert np.all(got.numpy() <= math.log(8) + 1e-5)

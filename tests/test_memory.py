"""Memory bank: init, momentum update, chunked top-k and entropy against plain references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salad_lite.memory import MemoryBank, cosine_topk


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

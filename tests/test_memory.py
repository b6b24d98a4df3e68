"""Memory bank: init, momentum update, neighbours and entropy against plain references (search: test_knn.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salad_lite.memory import MemoryBank


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
    with pytest.raises(ValueError, match="update expects"):
        memory.update(torch.tensor([0, 1, 2]), torch.randn(2, 3))


def test_update_refuses_degenerate_latents_and_leaves_the_bank_alone():
    memory = MemoryBank(6, 3, seed=2)
    before = memory.bank.clone()
    z = F.normalize(torch.randn(3, 3, generator=torch.Generator().manual_seed(3)), dim=1)
    z[[0, 2]] = 0.0  # an encoder that collapsed: F.normalize hands out zero "unit" vectors
    with pytest.raises(ValueError, match=r"z \(memory update\) has 2 zero-norm row\(s\) of 3"):
        memory.update(torch.tensor([0, 1, 2]), z)
    with pytest.raises(ValueError, match=r"1 row\(s\) with NaN or inf"):
        memory.update(torch.tensor([0]), torch.tensor([[float("nan"), 0.0, 1.0]]))
    opposite = -memory.bank[[4, 5]]  # (1 - t) m + t z = 0 at t = 0.5
    with pytest.raises(ValueError, match=r"momentum mixture .* has 2 zero-norm row"):
        memory.update(torch.tensor([4, 5]), opposite, momentum=0.5)
    assert torch.equal(memory.bank, before)


def test_topk_exclude_self_and_k_errors():
    memory = MemoryBank(30, 8, seed=4)
    with_self = memory.neighbours_of_entries(4, include_self=True)
    assert torch.equal(with_self[:, 0], torch.arange(30))
    without = memory.neighbours_of_entries(3, include_self=False)
    assert not (without == torch.arange(30)[:, None]).any()
    assert torch.equal(with_self[:, 1:], without)
    with pytest.raises(ValueError, match="k must lie in 1..29"):
        memory.neighbours_of_entries(30, include_self=False)
    with pytest.raises(ValueError, match="k must lie in 1..30"):
        memory.neighbours_of_entries(31, include_self=True)
    assert torch.equal(memory.neighbours_of_entries(1), torch.arange(30)[:, None])


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
    with pytest.raises(ValueError, match="temperature must be a number > 0, got 0"):
        memory.entropy(0.0)


@pytest.mark.parametrize("include_self, k", [(True, 1), (True, 6), (False, 5), (False, 39)])
@pytest.mark.parametrize("tau", [0.1, 0.01])
def test_round_start_equals_entropy_and_neighbours(include_self, k, tau):
    """The one-pass round start (CPU, tau >= 0.025) and its fallback (tau 0.01) give the separate results."""
    memory = MemoryBank(40, 12, seed=7)
    entropy, neighbours = memory.round_start(k, tau, include_self=include_self)
    assert entropy.dtype == torch.float32 and neighbours.shape == (40, k)
    torch.testing.assert_close(entropy, memory.entropy(tau), rtol=1e-5, atol=0)
    assert torch.equal(neighbours, memory.neighbours_of_entries(k, include_self=include_self))


def test_round_start_checks_its_arguments():
    memory = MemoryBank(10, 4, seed=1)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        memory.round_start(3, 0.0)
    with pytest.raises(ValueError, match="k must lie in 1..9"):
        memory.round_start(10, 0.1, include_self=False)
    with pytest.raises(ValueError, match="k must lie in 1..10"):
        memory.round_start(11, 0.1)


@pytest.mark.parametrize("momentum", [0.0, 2.0, -0.5, float("nan")])
def test_update_refuses_a_momentum_outside_the_unit_interval(momentum):
    memory = MemoryBank(4, 3)
    before = memory.bank.clone()
    with pytest.raises(ValueError, match=r"momentum t must be a number in \(0, 1\]"):
        memory.update(torch.tensor([0]), torch.ones(1, 3), momentum)
    assert torch.equal(memory.bank, before)


def test_update_refuses_rows_that_would_land_elsewhere_and_a_bank_that_is_not_unit():
    memory = MemoryBank(10, 4)
    z = F.normalize(torch.randn(3, 4), dim=1)
    before = memory.bank.clone()
    for indices, message in ((torch.tensor([-1, -2, -3]), r"rows in 0\.\.9, got -3\.\.-1"),
                             (torch.tensor([0, 0, 1]), r"indices repeat 1 row"),
                             (torch.tensor([1.0, 2.0, 3.0]), "integer memory rows"),
                             (torch.tensor([True, False, True]), "integer memory rows")):
        with pytest.raises(ValueError, match=message):
            memory.update(indices, z)
    with pytest.raises(ValueError, match="must be real numbers"):
        memory.update(torch.tensor([1, 2, 3]), z.to(torch.complex64))
    assert torch.equal(memory.bank, before)
    memory.update(np.array([1, 2, 3]), z.numpy())  # NumPy rows and latents are read as tensors
    for args in ((10.0, 4), (10, True), (10, 4, -1)):
        with pytest.raises(ValueError, match="memory bank"):
            MemoryBank(*args)
    memory.bank[2] *= 50
    for call in (lambda: memory.round_start(3, 0.1), lambda: memory.entropy(0.1),
                 lambda: memory.neighbours_of_entries(2)):
        with pytest.raises(ValueError, match=r"memory bank has 1 row\(s\) of 10 that are not unit vectors"):
            call()
    with pytest.raises(ValueError, match="k must be an int, got 1.0"):
        memory.neighbours_of_entries(1.0)

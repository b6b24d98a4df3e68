"""Eqs. 1-3 and the anchor criterion against plain loop references on small tensors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salad_lite.config import LossConfig
from salad_lite.losses import (
    aggregation_loss,
    anchor_loss,
    instance_loss,
    reconstruction_loss,
    salad_loss,
    shard_terms,
)


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def ref_p(query, candidates, tau):
    """p_ij by loops: exp(c_j . z / tau) / sum_k exp(c_k . z / tau)."""
    logits = [sum(float(a) * float(b) for a, b in zip(query, c)) / tau for c in candidates]
    denom = sum(math.exp(v) for v in logits)
    return [math.exp(v) / denom for v in logits]


@pytest.mark.parametrize("num_views", [0, 1, 3])
def test_instance_loss_matches_loop_reference(num_views):
    batch, n, d, tau = 4, 12, 5, 0.1
    z, bank = unit(batch, d, seed=1), unit(n, d, seed=2)
    indices = torch.tensor([3, 0, 11, 7])
    views = unit(batch, num_views, d, seed=3) if num_views else None
    got = instance_loss(z, indices, bank, tau, views, reduction="sum")
    expected = 0.0
    for i in range(batch):
        candidates = [bank[j] for j in range(n)]
        positives = [int(indices[i])]
        if num_views:
            for b in range(batch):
                for v in range(num_views):
                    if b == i:
                        positives.append(len(candidates))
                    candidates.append(views[b, v])
        p = ref_p(z[i], candidates, tau)
        expected -= math.log(sum(p[j] for j in positives))
    assert float(got) == pytest.approx(expected, abs=1e-5)
    mean = instance_loss(z, indices, bank, tau, views, reduction="mean")
    assert float(mean) == pytest.approx(expected / batch, abs=1e-5)


def test_aggregation_loss_matches_loop_reference():
    batch, n, d, k, tau = 5, 10, 4, 3, 0.1
    z, bank = unit(batch, d, seed=4), unit(n, d, seed=5)
    neighbours = torch.randint(0, n, (batch, k), generator=torch.Generator().manual_seed(6))
    is_prototype = torch.tensor([True, False, True, True, False])
    got = aggregation_loss(z, bank, neighbours, is_prototype, tau, reduction="sum")
    expected = 0.0
    for i in range(batch):
        if is_prototype[i]:
            p = ref_p(z[i], list(bank), tau)
            expected -= math.log(sum(p[int(j)] for j in neighbours[i]))
    assert float(got) == pytest.approx(expected, abs=1e-5)


def test_aggregation_loss_without_prototypes_is_zero_and_keeps_graph():
    z = unit(3, 4, seed=7).requires_grad_()
    loss = aggregation_loss(z, unit(6, 4, seed=8), torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert z.grad is not None and float(z.grad.abs().sum()) == 0.0


def test_anchor_loss_matches_loop_reference():
    batch, n, d, tau = 4, 9, 4, 0.1
    z, bank = unit(batch, d, seed=9), unit(n, d, seed=10)
    indices = torch.tensor([0, 4, 5, 8])
    neighbours = torch.tensor([[1, 2], [3, 5], [6, 7], [0, 1]])
    is_anchor = torch.tensor([True, False, True, False])
    got = anchor_loss(z, indices, bank, neighbours, is_anchor, tau)
    expected = 0.0
    for i in range(batch):
        p = ref_p(z[i], list(bank), tau)
        mass = p[int(indices[i])] + (sum(p[int(j)] for j in neighbours[i]) if is_anchor[i] else 0.0)
        expected -= math.log(mass)
    assert float(got) == pytest.approx(expected / batch, abs=1e-5)


def test_total_loss_is_eq3_and_terms_switch_off():
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    x_hat = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    z, bank = unit(4, 5, seed=11), unit(10, 5, seed=12)
    indices = torch.tensor([0, 1, 2, 3])
    neighbours = torch.tensor([[0, 5], [1, 6], [2, 7], [3, 8]])
    protos = torch.tensor([True, True, False, True])
    cfg = LossConfig(num_views=0)
    terms = salad_loss(cfg, x, x_hat, z, indices, bank, None, neighbours, protos)
    rec = float(((x - x_hat) ** 2).mean())
    ss = float(instance_loss(z, indices, bank, 0.1))
    agg = float(aggregation_loss(z, bank, neighbours, protos, 0.1))
    assert float(terms.total) == pytest.approx(rec + 0.25 * (ss + agg), abs=1e-6)
    assert float(terms.reconstruction) == pytest.approx(rec)
    no_mse = salad_loss(LossConfig(reconstruction="none"), x, x_hat, z, indices, bank, None, neighbours, protos)
    assert float(no_mse.reconstruction) == 0.0
    no_agg = salad_loss(LossConfig(use_aggregation=False), x, x_hat, z, indices, bank, None, neighbours, protos)
    assert float(no_agg.aggregation) == 0.0 and float(no_agg.instance) == pytest.approx(ss)
    memdae = salad_loss(LossConfig(use_instance=False, use_aggregation=False), x, x_hat, z, indices, bank)
    assert float(memdae.total) == pytest.approx(rec)
    l1 = reconstruction_loss(x_hat, x, "l1")
    assert float(l1) == pytest.approx(float((x - x_hat).abs().mean()))
    with pytest.raises(ValueError, match="unknown reconstruction"):
        reconstruction_loss(x_hat, x, "ssim")


def test_anchor_objective_in_total_loss():
    z, bank = unit(4, 5, seed=13), unit(10, 5, seed=14)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    indices = torch.tensor([0, 1, 2, 3])
    cfg = LossConfig(latent_objective="anchors")
    pre = salad_loss(cfg, x, x, z, indices, bank)  # pretraining: -log p_ii, batch mean
    expected = np.mean([-math.log(ref_p(z[i], list(bank), 0.1)[i]) for i in range(4)])
    assert float(pre.instance) == pytest.approx(expected, abs=1e-5)
    neighbours = torch.tensor([[4, 5], [6, 7], [8, 9], [4, 6]])
    anchors = torch.tensor([True, False, False, True])
    rnd = salad_loss(cfg, x, x, z, indices, bank, None, neighbours, anchors)
    assert float(rnd.instance) == pytest.approx(float(anchor_loss(z, indices, bank, neighbours, anchors, 0.1)))


@pytest.mark.parametrize("loss", [{}, {"reduction": "mean", "num_views": 2}, {"latent_objective": "anchors"},
                                  {"reconstruction": "l1", "use_instance": False}])
def test_shard_parts_sum_to_the_global_batch_terms_and_gradients(loss):
    """What data-parallel training relies on: summed over shards (and x W, averaged), each rank's part of Eq. 3
    gives the single-process terms and gradient, with every view of the global batch among the candidates."""
    cfg = LossConfig(**loss)
    batch, n, d, views_per = 7, 20, 6, max(cfg.num_views, 1)
    bank = unit(n, d, seed=4).float()
    z0, v0 = unit(batch, d, seed=5).float(), unit(batch, views_per, d, seed=6).float()
    x, x_hat = torch.rand(batch, 1, 4, 4), torch.rand(batch, 1, 4, 4)
    indices = torch.tensor([3, 0, 11, 7, 19, 5, 2])
    neighbours = torch.randint(0, n, (batch, 3), generator=torch.Generator().manual_seed(7))
    prototypes = torch.tensor([True, False, True, True, False, False, True])

    def run(shards):
        z, v = z0.clone().requires_grad_(), v0.clone().requires_grad_()
        parts, start = [], 0
        for size in shards:
            rows = slice(start, start + size)
            terms = salad_loss(cfg, x[rows], x_hat[rows], z[rows], indices[rows], bank, v, neighbours[rows],
                               prototypes[rows], view_offset=start)
            parts.append(shard_terms(cfg, terms, size, batch, int(prototypes[rows].sum()), int(prototypes.sum())))
            start += size
        sum(p.total for p in parts).backward()  # DDP: the mean over W ranks of W x part
        return torch.stack([p.stacked() for p in parts]).sum(0), z.grad, v.grad

    whole, shards = run([batch]), run([4, 3])
    for a, b in zip(whole, shards):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert (whole[2] is not None) == (cfg.use_instance and cfg.latent_objective == "paper")
    assert float(whole[0][1]) > 0 and float(whole[1].abs().sum()) > 0
    with pytest.raises(ValueError, match="a shard of 8 image"):
        shard_terms(cfg, salad_loss(cfg, x, x_hat, z0, indices, bank), 8, 7)


def test_shapes_and_parameters_that_do_not_fit_are_refused():
    z, bank = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(10, 8), dim=1)
    idx, x = torch.arange(4), torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"x_hat and x must have one shape .* \(4, 1, 8, 8\) and \(1, 1, 8, 8\)"):
        reconstruction_loss(x, x[:1])  # would broadcast
    for bad, message in ((dict(indices=idx[:3]), r"indices must be \[4\] integer memory rows"),
                         (dict(indices=idx.float()), "indices must be"),
                         (dict(temperature=-0.1), "temperature tau must be a number > 0, got -0.1"),
                         (dict(temperature=0), "temperature tau must be a number > 0, got 0"),
                         (dict(bank=bank[:, :4]), "must share d"),
                         (dict(views=torch.randn(4, 2, 8), view_offset=-1), r"view_offset must be an int in 0\.\.0"),
                         (dict(views=torch.randn(4, 2, 8), view_offset=1), r"view_offset must be an int in 0\.\.0")):
        kwargs = {"z": z, "indices": idx, "bank": bank, **bad}
        with pytest.raises(ValueError, match=message):
            instance_loss(**kwargs)
    with pytest.raises(ValueError, match=r"neighbours must be \[4, k\]"):
        aggregation_loss(z, bank, torch.zeros(3, 2, dtype=torch.long), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must be \[4\]"):
        anchor_loss(z, idx, bank, torch.zeros(4, 2, dtype=torch.long), torch.ones(3, dtype=torch.bool))

"""Full size, dry run on the CPU: the paper's two networks at their paper sizes, one step of everything.

The ``full`` configuration (``paper_config``): the conv AE at 256 px (NIH) and the
ResNet-18 AE at 512 px (MURA). On a handful of random images each runs a round start,
one training step of the aggregation round (it runs every part of a pretraining step
too), then embeds the images and scores them with Eq. 4, so shape and memory errors at full size show here
before a GPU user meets them. The time and peak memory of each part are printed (run
with ``-s`` to see them).
"""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest
import torch

from conftest import ArrayDataset
from salad_lite.config import paper_config, profile_config
from salad_lite.scorer import SaladScorer
from salad_lite.trainer import SaladTrainer

IMAGES = 4  # per network: one batch


def _peak_rss_mb() -> float:
    """Peak resident set of this process so far (MB; Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> None:
    """Reset the peak resident set where Linux allows it, so that each part's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("dataset, arch, size", [("nih", "conv", 256), ("mura", "resnet18", 512)])
def test_paper_networks_train_start_a_round_and_score_at_full_size(dataset, arch, size):
    cfg = profile_config("full", dataset)
    assert cfg == paper_config(dataset).replace(data={"data_root": ""})
    assert (cfg.model.arch, cfg.model.image_size, cfg.model.latent_dim) == (arch, size, 200)
    cfg = cfg.replace(train={"batch_size": IMAGES})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (IMAGES, size, size), dtype=np.uint8)
    train = ArrayDataset(images, np.zeros(IMAGES, dtype=np.int64), prefix="train-")
    trainer = SaladTrainer(cfg, train, device="cpu")
    generator = torch.Generator().manual_seed(0)
    batch = np.arange(IMAGES)
    figures = {}

    def part(name, fn):
        _reset_peak_rss()
        start = time.perf_counter()
        result = fn()
        figures[name] = (time.perf_counter() - start, _peak_rss_mb())
        return result

    bank_before = trainer.memory.bank.clone()
    part("round start", lambda: trainer._start_round(1))  # entropy and neighbourhoods of the (random) memory
    k = min(cfg.train.neighbours(1), IMAGES)
    assert trainer.round_neighbours.shape == (IMAGES, k) and trainer.round_prototypes.shape == (IMAGES,)
    assert torch.equal(trainer.round_neighbours[:, 0], torch.arange(IMAGES))
    # a round's step runs everything a pretraining step runs (L_mse, L_ss with one augmented view) plus Eq. 2
    terms = part("training step", lambda: trainer.train_step(batch, 1, generator))
    assert np.isfinite(list(terms.values())).all() and terms["loss"] > 0, terms
    assert not torch.equal(trainer.memory.bank, bank_before)  # the momentum update ran

    z = part("embed", lambda: trainer.embed(train, batch_size=IMAGES))
    assert z.shape == (IMAGES, 200) and torch.allclose(z.norm(dim=1), torch.ones(IMAGES), atol=1e-5)
    scorer = SaladScorer(k=cfg.score.k).fit(trainer.memory.bank)
    scores = part("Eq. 4 scoring", lambda: scorer.decision_function(z))
    assert scorer.k_ == IMAGES - 1 and scores.shape == (IMAGES,) and np.isfinite(scores).all()
    errors = part("reconstruction errors", lambda: trainer.reconstruction_errors(train, batch_size=IMAGES))
    assert errors.shape == (IMAGES,) and np.isfinite(errors).all()

    print(f"\n{arch} AE at {size} px, {IMAGES} images, batch {IMAGES} (peak RSS of the process during each part):")
    for name, (seconds, peak) in figures.items():
        print(f"  {name:<22} {seconds:6.2f} s   peak RSS {peak:7.0f} MB")

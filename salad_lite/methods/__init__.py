"""The baselines of the paper's Fig. 5, one small module each, all trained and selected like SALAD.

| id | method | module |
|---|---|---|
| ``deep_ae`` | Deep AE: reconstruction error of a plain autoencoder | :mod:`.deep_ae` |
| ``deep_svdd`` | Deep SVDD, one-class (Ruff et al., ICML 2018) | :mod:`.deep_svdd` |
| ``deep_sad`` | Deep SAD (Ruff et al., ICLR 2020) | :mod:`.deep_sad` |
| ``geometric`` | Geometric transformations (Golan & El-Yaniv, NeurIPS 2018) | :mod:`.geometric` |
| ``gan_gp`` | adversarial one-class model, WGAN-GP (Tang et al. 2019; Gulrajani et al. 2017) | :mod:`.gan_gp` |
| ``supervised`` | supervised ResNet-18 on the training labels | :mod:`.supervised` |

Every method follows :class:`salad_lite.methods.base.DeepBaseline`:
``fit(train, val, folder, data_fingerprint)`` (resumable, epoch selected on validation, a
checkpoint of other splits refused; only Deep SAD and the supervised classifier see the
training labels) and ``decision_function(dataset)`` (higher = more abnormal).
:func:`build_method` makes one from its id and a book profile's :class:`SaladConfig`.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

from salad_lite.config import SaladConfig
from salad_lite.methods.base import BaselineConfig, DeepBaseline

__all__ = ["BASELINE_IDS", "GEOMETRIC_EPOCH_DIVISOR", "BaselineConfig", "DeepBaseline", "baseline_class", "baseline_config", "build_method"]

#: Fig. 5's methods: id -> "module:Class" (imported on first use).
_REGISTRY = {
    "deep_ae": "salad_lite.methods.deep_ae:DeepAE",
    "deep_svdd": "salad_lite.methods.deep_svdd:DeepSVDD",
    "deep_sad": "salad_lite.methods.deep_sad:DeepSAD",
    "geometric": "salad_lite.methods.geometric:Geometric",
    "gan_gp": "salad_lite.methods.gan_gp:GANGP",
    "supervised": "salad_lite.methods.supervised:SupervisedResNet18",
}
BASELINE_IDS: tuple[str, ...] = tuple(_REGISTRY)

#: Geometric's epochs are SALAD's divided by this: each of its epochs shows every training image under
#: 72 transformations, so SALAD's epoch count / 9 shows it 72 / 9 = 8 times the images SALAD's epochs show.
GEOMETRIC_EPOCH_DIVISOR = 9


def baseline_class(method_id: str) -> type[DeepBaseline]:
    """The class of baseline ``method_id``.

    Raises:
        ValueError: an unknown id (the known ones listed).
    """
    if method_id not in _REGISTRY:
        raise ValueError(f"unknown baseline {method_id!r}; choose one of {', '.join(BASELINE_IDS)}")
    module_name, class_name = _REGISTRY[method_id].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def baseline_config(method_id: str, cfg: SaladConfig, **overrides: Any) -> BaselineConfig:
    """The config of baseline ``method_id`` for a book profile: SALAD's network family, size and budget.

    The baseline trains for as many epochs as SALAD (pre-training + rounds), with
    SALAD's batch size, learning rate and seed, on the same image size; a method's
    own hyperparameters keep their documented defaults unless given in ``overrides``.

    Geometric's budget is counted in images seen, not epochs: one of its epochs is a
    pass over N x 72 transformed images (and each validation 72 forward passes per
    image), so it gets ``max(2, ceil(E / 9))`` epochs for SALAD's E, 8x the images
    SALAD's E epochs show (72 / 9): 2 at the default profile (E = 15), 62 at the full
    one (E = 550). Golan's own code trains ``ceil(200 / 72) = 3`` epochs over the
    transformed set. Its ``validate_every`` stays SALAD's (its epochs are few).

    Raises:
        ValueError: an unknown id or a field out of range.
    """
    cls = baseline_class(method_id).config_class
    t, m = cfg.train, cfg.model
    shared = {"arch": m.arch, "image_size": m.image_size, "width": m.width, "latent_dim": m.latent_dim,
              "epochs": t.pretrain_epochs + t.rounds * t.epochs_per_round, "batch_size": t.batch_size,
              "lr": t.lr, "validate_every": t.validate_every, "seed": t.seed, "progress": t.progress}
    if method_id == "geometric":
        shared["epochs"] = max(2, math.ceil(shared["epochs"] / GEOMETRIC_EPOCH_DIVISOR))
    return cls(**{**shared, **overrides})


def build_method(method_id: str, cfg: SaladConfig, device: str = "auto", **overrides: Any) -> DeepBaseline:
    """Baseline ``method_id`` configured by :func:`baseline_config`, on ``device``."""
    return baseline_class(method_id)(baseline_config(method_id, cfg, **overrides), device=device)

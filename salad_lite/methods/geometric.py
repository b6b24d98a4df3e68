"""Geometric (Fig. 5): Golan & El-Yaniv, "Deep Anomaly Detection Using Geometric Transformations", NeurIPS 2018.

A classifier learns which of :data:`TRANSFORMS` (72 compositions of a
horizontal flip, a translation and a rotation by a multiple of 90 degrees) was
applied to a normal image; on an abnormal image it is less sure of the
transformation actually applied.

The transformation set is the one of Golan's code (``transformations.Transformer``):
``itertools.product(flip in (no, yes), shift_1 in (0, -s, +s), shift_2 in (0, -s, +s), k in 0..3)``,
each applied as flip, then translate (the uncovered border filled by reflection,
Keras' ``fill_mode="reflect"``), then rotate by ``k`` quarter turns. Golan
translates by 8 px at 32 px (CIFAR-10), a quarter of the side; here
``s = round(SHIFT_FRACTION * S)`` so that the shift scales with the image size
(64 px at the paper's 256 px). Every transform is a pure tensor operation,
deterministic.

Training: every training image (labels are ignored) under ``transforms_per_image``
transformations (default: all 72, as Golan; fewer, drawn at random per image and
batch, to save time at large sizes), cross-entropy over the
transformation index. The transformed images of a batch of the shared loop are
shuffled and stepped through in mini-batches of ``batch_size``, so an epoch is one
pass over N x transforms_per_image images, Golan's epoch over the transformed set.

Budget: counted in images seen, not epochs. At SALAD's epoch count an epoch of
72 transformed copies (and a validation of 72 forward passes per image) made
Geometric ~27x slower than Deep AE (~266 s against ~10 s per replicate at the
default profile; impractical at the full one, 550 epochs at 256 px), so
:func:`salad_lite.methods.baseline_config` gives it ``max(2, ceil(E / 9))``
epochs for SALAD's E: 8x the images SALAD's E epochs show (72 / 9), 2 epochs
at the default profile, 62 at the full one. Golan's own code trains
``ceil(200 / 72) = 3`` epochs over the transformed set. It keeps SALAD's
``validate_every`` (1 in the book's profiles: every epoch), its epochs being few.

Network: SALAD's encoder family (:func:`classifier_for`) with a linear head over the
72 transformations.

Score: ``-(1/T) sum_t log p(t | T_t(x))``, the negative mean log-probability of
the transformation actually applied (:func:`transformation_score`). Golan et al.
report both a Dirichlet normality score (a Dirichlet fitted per transformation
to the softmax outputs on the training images) and a simpler score without that
fit; this is the simple one in its log-likelihood form, as many
reimplementations use it.

What it can see: an image class that looks alike under a flip or a quarter turn
leaves those labels ambiguous on unseen normal images; the classifier's guesses
among them are then noise in the score. The rotation-invariant planted blobs of
the other baselines' tests are such a class (test AUC 0.75-0.82 measured); its
learning test uses the same planted disk on upright, one-side-marked images
(AUC >= 0.85), as radiographs, with their defined orientation, are.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from salad_lite.methods.base import BaselineConfig, DeepBaseline, check_fields
from salad_lite.methods.deep_ae import autoencoder_for
from salad_lite.methods.supervised import resnet18_classifier
from salad_lite.trainer import epoch_batches

__all__ = ["SHIFT_FRACTION", "TRANSFORMS", "Geometric", "GeometricConfig", "Transform", "classifier_for",
           "transform_images", "transformation_score"]

#: The translation, as a fraction of the image side (Golan: 8 px at 32 px).
SHIFT_FRACTION = 0.25


class Transform(NamedTuple):
    """One composition: ``flip`` (horizontal), shifts in units of ``SHIFT_FRACTION * S`` along rows
    (``shift_y``, + = down) and columns (``shift_x``, + = right), then ``quarter_turns`` counter-clockwise."""

    flip: bool
    shift_y: int
    shift_x: int
    quarter_turns: int


#: Golan's 72 transformations, enumerated like their ``Transformer`` (flip, the two shifts, the rotation varying
#: fastest): index = ((flip*3 + iy)*3 + ix)*4 + k, with shift index 0, 1, 2 = shift 0, -1, +1.
TRANSFORMS: tuple[Transform, ...] = tuple(Transform(flip, dy, dx, k) for flip, dy, dx, k in itertools.product(
    (False, True), (0, -1, 1), (0, -1, 1), range(4)))


def _reflected_positions(n: int, shift: int, device: torch.device) -> torch.Tensor:
    """Source index of every output position [n] of a shift by ``shift`` px, the border filled by half-sample
    reflection (``d c b a | a b c d | d c b a``, scipy's and Keras' ``"reflect"``); needs ``|shift| <= n``."""
    source = torch.arange(n, device=device) - shift
    source = torch.where(source < 0, -source - 1, source)
    return torch.where(source >= n, 2 * n - 1 - source, source)


def transform_images(x: torch.Tensor, index: int) -> torch.Tensor:
    """Images ``x`` [B, C, S, S] under ``TRANSFORMS[index]``: flip, then translate (reflected border), then rotate.

    Raises:
        IndexError: ``index`` outside ``[0, 72)``.
        ValueError: ``x`` is not [B, C, S, S] with square images.
    """
    if not 0 <= index < len(TRANSFORMS):
        raise IndexError(f"transformation index {index} outside [0, {len(TRANSFORMS)})")
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"transform_images expects square images [B, C, S, S], got {list(x.shape)}")
    t, side = TRANSFORMS[index], x.shape[-1]
    step = round(SHIFT_FRACTION * side)
    if t.flip:
        x = torch.flip(x, dims=(-1,))
    if t.shift_y:
        x = x.index_select(-2, _reflected_positions(side, t.shift_y * step, x.device))
    if t.shift_x:
        x = x.index_select(-1, _reflected_positions(side, t.shift_x * step, x.device))
    return torch.rot90(x, t.quarter_turns, dims=(-2, -1))


def transformation_score(log_probs: torch.Tensor) -> torch.Tensor:
    """The simplified score (no Dirichlet fit) [B]: ``-(1/T) sum_t log_probs[b, t, t]``, higher = more abnormal.

    ``log_probs`` [B, T, T]: row ``t`` of image ``b`` is the classifier's log-softmax on ``T_t(x_b)``.

    Raises:
        ValueError: ``log_probs`` is not [B, T, T].
    """
    if log_probs.ndim != 3 or log_probs.shape[1] != log_probs.shape[2]:
        raise ValueError(f"transformation_score expects log-probabilities [B, T, T], got {list(log_probs.shape)}")
    return -torch.diagonal(log_probs, dim1=1, dim2=2).mean(dim=1)


def classifier_for(cfg: BaselineConfig, num_outputs: int) -> nn.Module:
    """SALAD's encoder family as a classifier: images [B, 1, S, S] -> logits [B, num_outputs].

    ``conv``: the conv encoder of :class:`salad_lite.models.ConvAutoencoder` (six conv layers)
    whose final Linear outputs the logits instead of the latent; ``resnet18``: torchvision's
    ResNet-18 with a 1-channel stem (:func:`salad_lite.methods.supervised.resnet18_classifier`).
    """
    if cfg.arch == "resnet18":
        return resnet18_classifier(num_outputs)
    encoder = autoencoder_for(cfg).encoder
    encoder[-1] = nn.Linear(encoder[-1].in_features, num_outputs)
    return encoder


@dataclasses.dataclass(frozen=True)
class GeometricConfig(BaselineConfig):
    """:class:`BaselineConfig` plus ``transforms_per_image``: how many of the 72 transformations
    each training image gets per epoch (None = all 72, Golan's setting).

    Raises:
        ValueError: ``transforms_per_image`` outside [1, 72].
    """

    transforms_per_image: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.transforms_per_image is not None:
            check_fields(self, {"transforms_per_image": (1, len(TRANSFORMS))})


class Geometric(DeepBaseline):
    """Transformation-classification anomaly detector (Golan & El-Yaniv 2018); unsupervised."""

    name = "Geometric"
    method_id = "geometric"
    config_class = GeometricConfig

    def build(self) -> None:
        self.networks["classifier"] = classifier_for(self.cfg, len(TRANSFORMS))
        self.optimizers["adam"] = torch.optim.Adam(self.networks["classifier"].parameters(), lr=self.cfg.lr,
                                                   weight_decay=self.cfg.weight_decay)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        n_images, n_transforms = len(x), len(TRANSFORMS)
        per_image = self.cfg.transforms_per_image or n_transforms
        if per_image == n_transforms:
            chosen = torch.arange(n_transforms).expand(n_images, -1)  # [B, T]
        else:
            chosen = torch.rand(n_images, n_transforms, generator=generator).argsort(dim=1)[:, :per_image]  # [B, k]
        images = torch.empty((n_images, per_image, *x.shape[1:]), dtype=x.dtype, device=x.device)
        for index in chosen.unique().tolist():
            rows, slots = (chosen == index).to(x.device).nonzero(as_tuple=True)
            images[rows, slots] = transform_images(x[rows], index)
        images, targets = images.flatten(0, 1), chosen.flatten().to(x.device)  # [B*k, 1, S, S], [B*k]
        classifier, adam = self.networks["classifier"], self.optimizers["adam"]
        losses = []
        for batch in epoch_batches(len(images), self.cfg.batch_size, generator):
            batch = torch.as_tensor(batch, device=x.device)
            loss = F.cross_entropy(classifier(images[batch]), targets[batch])
            adam.zero_grad(set_to_none=True)
            loss.backward()
            adam.step()
            losses.append(loss.detach())
        return {"loss": torch.stack(losses).mean().item()}

    def score_batch(self, x: torch.Tensor) -> torch.Tensor:
        classifier = self.networks["classifier"]
        log_probs = torch.stack([F.log_softmax(classifier(transform_images(x, t)).float(), dim=1)
                                 for t in range(len(TRANSFORMS))], dim=1)  # [B, T, T]
        return transformation_score(log_probs)

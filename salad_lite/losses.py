"""SALAD's losses, Eqs. 1-3 of the paper, plus the authors' code's anchor criterion.

Notation: a batch of B images with latents ``z`` [B, d] (unit rows), the memory
bank ``bank`` [N, d] (unit rows, no gradient), ``indices`` [B] = each image's bank
row, temperature tau. All probabilities are

    p_ij = exp(c_j . z_i / tau) / sum_k exp(c_k . z_i / tau)

over a candidate set c. For Eq. 2 and the anchor criterion the candidates are
the N memory entries. For Eq. 1 they are the N memory entries plus the batch's
augmented-view latents, so that "the augmented views of image i" (AUG_i) can be
positives next to its own memory slot; with no views Eq. 1 is exactly Wu et al.'s
instance discrimination, ``-log p_ii``.

The latent losses depend on ``z`` only, so they update the encoder only; the
decoder's gradient comes from the reconstruction term alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from salad_lite.config import LossConfig, Reduction
from salad_lite.utils import is_int, is_number


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Pixel loss between reconstructions and inputs, both [B, 1, H, W] in [0, 1]; mean over pixels.

    ``kind``: ``"mse"`` (paper), ``"l1"`` (authors' code) or ``"none"`` (the "w/o L_mse" ablation: 0).

    Raises:
        ValueError: an unknown ``kind``; ``x_hat`` and ``x`` of different shapes (they would broadcast).
    """
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat and x must have one shape [B, 1, H, W], got {tuple(x_hat.shape)} and {tuple(x.shape)}")
    if kind == "mse":
        return F.mse_loss(x_hat.float(), x.float())
    if kind == "l1":
        return F.l1_loss(x_hat.float(), x.float())
    if kind == "none":
        return x_hat.new_zeros((), dtype=torch.float32)
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose mse, l1 or none")


def _check_latent_inputs(z: torch.Tensor, indices: torch.Tensor, bank: torch.Tensor, temperature: float,
                         views: torch.Tensor | None = None, view_offset: int = 0,
                         neighbours: torch.Tensor | None = None, marked: torch.Tensor | None = None) -> None:
    """The shapes and parameters every latent loss relies on (cheap: no pass over the values).

    Raises:
        ValueError: ``z`` not [B, d]; ``bank`` not [N, d] of that d; ``indices`` not [B] integer rows of the bank;
            tau not a number > 0; ``views`` not [G, V, d] with ``view_offset`` an int in 0..G-B;
            ``neighbours`` not [B, k] integer rows; ``marked`` (prototypes or anchors) not [B].
    """
    if z.ndim != 2 or bank.ndim != 2 or z.shape[1] != bank.shape[1]:
        raise ValueError(f"z [B, d] and bank [N, d] must share d, got {tuple(z.shape)} and {tuple(bank.shape)}")
    batch = z.shape[0]
    if indices.shape != (batch,) or indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be [{batch}] integer memory rows (one per latent), got {tuple(indices.shape)} "
                         f"{indices.dtype}")
    if not is_number(temperature) or not temperature > 0:
        raise ValueError(f"temperature tau must be a number > 0, got {temperature!r}")
    if views is not None:
        if views.ndim != 3 or views.shape[2] != z.shape[1]:
            raise ValueError(f"views must be [G, V, {z.shape[1]}], got {tuple(views.shape)}")
        if not is_int(view_offset) or not 0 <= view_offset <= views.shape[0] - batch:
            raise ValueError(f"view_offset must be an int in 0..{views.shape[0] - batch} (views of {views.shape[0]} "
                             f"images, a batch of {batch}), got {view_offset!r}")
    if neighbours is not None and (neighbours.ndim != 2 or neighbours.shape[0] != batch
                                   or neighbours.is_floating_point() or neighbours.dtype == torch.bool):
        raise ValueError(f"neighbours must be [{batch}, k] integer memory rows, got {tuple(neighbours.shape)} "
                         f"{neighbours.dtype}")
    if marked is not None and marked.shape != (batch,):
        raise ValueError(f"the prototype / anchor mask must be [{batch}], got {tuple(marked.shape)}")


def _reduce(per_sample: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if per_sample.numel() == 0:
        return per_sample.new_zeros(())
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"unknown reduction {reduction!r}; choose sum or mean")


def instance_loss(z: torch.Tensor, indices: torch.Tensor, bank: torch.Tensor, temperature: float = 0.1,
                  views: torch.Tensor | None = None, reduction: Reduction = "sum",
                  view_offset: int = 0) -> torch.Tensor:
    """Eq. 1: ``L_ss = -sum_i log(sum_{j in AUG_i} p_ij)``.

    Args:
        z: [B, d] latents of the images.
        indices: [B] their memory rows (own slot = positive).
        bank: [N, d] memory (treated as a constant).
        temperature: tau.
        views: optional [G, V, d] latents of V augmented views per image of the
            batch (G = B) or of the global batch that ``z`` is a shard of
            (data-parallel training); they all join the candidate set and view
            ``(view_offset + i, v)`` is a positive of image i.
        reduction: ``"sum"`` over the batch (paper) or ``"mean"``.
        view_offset: the row of ``views`` that belongs to ``z[0]`` (0 unless ``z`` is a shard).
    Returns:
        scalar loss.

    Raises:
        ValueError: shapes, rows or parameters that do not fit (:func:`_check_latent_inputs`).
    """
    _check_latent_inputs(z, indices, bank, temperature, views, view_offset)
    return _instance_from_logits(_bank_logits(z, bank, temperature), z, indices, temperature, views, reduction,
                                 view_offset)


def _bank_logits(z: torch.Tensor, bank: torch.Tensor, temperature: float) -> torch.Tensor:
    """``z . m_j / tau`` for every memory entry: [B, N]; the bank is a constant."""
    return z @ bank.detach().to(z.dtype).T / temperature


def _instance_from_logits(bank_logits: torch.Tensor, z: torch.Tensor, indices: torch.Tensor, temperature: float,
                          views: torch.Tensor | None, reduction: Reduction, view_offset: int = 0) -> torch.Tensor:
    """Eq. 1 from the memory logits [B, N] (shared with Eq. 2): the views' logits are appended, not the bank copied.

    ``views`` [G, V, d]: row ``view_offset + i`` holds image i's views (see :func:`instance_loss`).
    """
    batch, n_bank = bank_logits.shape
    num_views = 0 if views is None else views.shape[1]
    logits = bank_logits
    if num_views:
        view_logits = z @ views.reshape(views.shape[0] * num_views, -1).T / temperature  # [B, G V]
        logits = torch.cat([bank_logits, view_logits], dim=1)  # [B, N + G V]
    log_p = torch.log_softmax(logits, dim=1)  # [B, N + G V]
    positive_cols = [indices.to(z.device)[:, None]]  # own slot, [B, 1]
    if num_views:
        view_cols = n_bank + (view_offset + torch.arange(batch, device=z.device))[:, None] * num_views \
            + torch.arange(num_views, device=z.device)[None, :]  # [B, V]
        positive_cols.append(view_cols)
    positives = log_p.gather(1, torch.cat(positive_cols, dim=1))  # [B, 1 + V]
    return _reduce(-torch.logsumexp(positives, dim=1), reduction)


def aggregation_loss(z: torch.Tensor, bank: torch.Tensor, neighbours: torch.Tensor, is_prototype: torch.Tensor,
                     temperature: float = 0.1, reduction: Reduction = "sum") -> torch.Tensor:
    """Eq. 2: ``L_agg = -sum_{i in B_ps} log(sum_{j in N_k(z_i)} p_ij)``, p over the N memory entries.

    Args:
        z: [B, d] latents.
        bank: [N, d] memory (constant).
        neighbours: [B, k] memory rows forming N_k(z_i) (fixed for the round).
        is_prototype: [B] bool, membership of B_ps (the batch's prototypical samples).
        temperature: tau.
        reduction: ``"sum"`` over B_ps (paper) or ``"mean"``.
    Returns:
        scalar loss (0 when the batch has no prototypical sample).

    Raises:
        ValueError: shapes or parameters that do not fit (:func:`_check_latent_inputs`).
    """
    _check_latent_inputs(z, torch.zeros(z.shape[0], dtype=torch.long), bank, temperature, neighbours=neighbours,
                         marked=is_prototype)
    mask = is_prototype.to(z.device).bool()
    if not bool(mask.any()):
        return z.sum() * 0.0  # keeps the graph, contributes nothing
    return _aggregation_from_logits(_bank_logits(z[mask], bank, temperature), neighbours.to(z.device)[mask],
                                    reduction)


def _aggregation_from_logits(prototype_logits: torch.Tensor, prototype_neighbours: torch.Tensor,
                             reduction: Reduction) -> torch.Tensor:
    """Eq. 2 from the prototypical samples' memory logits [P, N] and their neighbourhoods [P, k]."""
    log_p = torch.log_softmax(prototype_logits, dim=1)  # [P, N]
    in_neighbourhood = log_p.gather(1, prototype_neighbours)  # [P, k]
    return _reduce(-torch.logsumexp(in_neighbourhood, dim=1), reduction)


def anchor_loss(z: torch.Tensor, indices: torch.Tensor, bank: torch.Tensor, neighbours: torch.Tensor,
                is_anchor: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The authors' public code's AND-style criterion, averaged over the batch.

    Non-anchor i: ``-log p_ii``; anchor i: ``-log(p_ii + sum_{j in N(i)} p_ij)`` with N(i)
    its most similar memory entries excluding itself.

    Args:
        z: [B, d]; indices: [B] own memory rows; bank: [N, d];
        neighbours: [B, k] memory rows of N(i) (self excluded); is_anchor: [B] bool.

    Raises:
        ValueError: shapes, rows or parameters that do not fit (:func:`_check_latent_inputs`).
    """
    _check_latent_inputs(z, indices, bank, temperature, neighbours=neighbours, marked=is_anchor)
    log_p = torch.log_softmax(z @ bank.detach().to(z.dtype).T / temperature, dim=1)  # [B, N]
    own = log_p.gather(1, indices.to(z.device)[:, None])  # [B, 1]
    around = log_p.gather(1, neighbours.to(z.device))  # [B, k]
    with_neighbours = torch.logsumexp(torch.cat([own, around], dim=1), dim=1)  # [B]
    per_sample = torch.where(is_anchor.to(z.device).bool(), with_neighbours, own[:, 0])
    return -per_sample.mean()


@dataclass
class LossTerms:
    """The terms of Eq. 3 for one batch (tensors with graph)."""

    reconstruction: torch.Tensor
    instance: torch.Tensor
    aggregation: torch.Tensor
    total: torch.Tensor

    NAMES: ClassVar[tuple[str, ...]] = ("loss", "loss_rec", "loss_ss", "loss_agg")  # the history's keys

    def stacked(self) -> torch.Tensor:
        """[4] detached: total, reconstruction, instance, aggregation (the order of :attr:`NAMES`)."""
        return torch.stack([self.total, self.reconstruction, self.instance, self.aggregation]).detach()

    def as_floats(self) -> dict[str, float]:
        """The terms as floats, keyed by :attr:`NAMES`."""
        return dict(zip(self.NAMES, self.stacked().tolist()))


def salad_loss(cfg: LossConfig, x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor, indices: torch.Tensor,
               bank: torch.Tensor, views: torch.Tensor | None = None, neighbours: torch.Tensor | None = None,
               is_prototype: torch.Tensor | None = None, view_offset: int = 0) -> LossTerms:
    """Eq. 3: ``L = L_mse + lambda (L_ss + L_agg)``, with every term switchable by ``cfg``.

    ``neighbours`` [B, k] and ``is_prototype`` [B] are None during pretraining (no
    L_agg). With ``cfg.latent_objective == "anchors"`` the latent part is the
    anchor criterion instead (``neighbours`` then exclude self; ``is_prototype``
    marks anchors). ``views`` [G, V, d] and ``view_offset``: see :func:`instance_loss`.

    Raises:
        ValueError: an unknown ``cfg.latent_objective`` or reconstruction kind; shapes that do not fit
            (:func:`reconstruction_loss`, :func:`_check_latent_inputs`).
    """
    _check_latent_inputs(z, indices, bank, cfg.temperature, views, view_offset, neighbours, is_prototype)
    rec = reconstruction_loss(x_hat, x, cfg.reconstruction)
    zero = z.sum() * 0.0
    if cfg.latent_objective == "anchors":
        instance = zero
        if cfg.use_instance or cfg.use_aggregation:
            if neighbours is None or is_prototype is None or not cfg.use_aggregation:
                logits = z @ bank.detach().to(z.dtype).T / cfg.temperature
                instance = F.cross_entropy(logits, indices.to(z.device))  # -log p_ii, batch mean
            else:
                instance = anchor_loss(z, indices, bank, neighbours, is_prototype, cfg.temperature)
        return LossTerms(rec, instance, zero, rec + cfg.latent_weight * instance)
    if cfg.latent_objective != "paper":
        raise ValueError(f"unknown latent objective {cfg.latent_objective!r}; choose paper or anchors")
    # Eqs. 1 and 2 share the memory logits z . m_j / tau: one [B, N] product (and one backward) per step
    wants_aggregation = cfg.use_aggregation and neighbours is not None and is_prototype is not None
    mask = is_prototype.to(z.device).bool() if wants_aggregation else None
    wants_aggregation = wants_aggregation and bool(mask.any())
    bank_logits = _bank_logits(z, bank, cfg.temperature) if cfg.use_instance or wants_aggregation else None
    instance = zero
    if cfg.use_instance:
        instance = _instance_from_logits(bank_logits, z, indices, cfg.temperature, views, cfg.reduction,
                                         view_offset)
    aggregation = zero
    if wants_aggregation:
        aggregation = _aggregation_from_logits(bank_logits[mask], neighbours.to(z.device)[mask], cfg.reduction)
    return LossTerms(rec, instance, aggregation, rec + cfg.latent_weight * (instance + aggregation))


def shard_terms(cfg: LossConfig, terms: LossTerms, shard: int, batch: int, shard_prototypes: int = 0,
                batch_prototypes: int = 0) -> LossTerms:
    """One rank's part of the global batch's loss: summed over the ranks, each term is the single-process value.

    A rank computed ``terms`` with :func:`salad_loss` on ``shard`` of the ``batch``
    images of the global batch (``shard_prototypes`` of its ``batch_prototypes``
    prototypical samples). A term summed over the batch (Eqs. 1-2 with
    ``reduction="sum"``) is its own part; a mean over the batch (the pixel loss,
    the anchor criterion, ``reduction="mean"``) is weighted by ``shard / batch``,
    and Eq. 2's mean over the prototypical samples by ``shard_prototypes /
    batch_prototypes``. DistributedDataParallel averages gradients over the W
    ranks, so a rank back-propagates ``W * part.total`` to take the
    single-process step on the global batch.

    Raises:
        ValueError: ``shard`` outside 1..``batch``, or more prototypes in the shard than in the batch.
    """
    if not 1 <= shard <= batch or not 0 <= shard_prototypes <= batch_prototypes:
        raise ValueError(f"a shard of {shard} image(s) ({shard_prototypes} prototypical) does not fit a batch of "
                         f"{batch} ({batch_prototypes} prototypical)")
    share = shard / batch
    summed = cfg.reduction == "sum" and cfg.latent_objective == "paper"
    instance = terms.instance if summed else terms.instance * share
    aggregation = terms.aggregation
    if not summed and cfg.latent_objective == "paper":
        aggregation = aggregation * (shard_prototypes / batch_prototypes if batch_prototypes else 0.0)
    reconstruction = terms.reconstruction * share
    return LossTerms(reconstruction, instance, aggregation,
                     reconstruction + cfg.latent_weight * (instance + aggregation))

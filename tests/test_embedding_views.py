"""embedding_views: snapshot loading, cluster-formation measures, memory neighbours, aligned projections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from salad_lite import embedding_views as ev
from salad_lite.checkpoint import save_checkpoint
from salad_lite.files import CorruptFileError


def _clusters(n_per: int = 30, d: int = 16, spread: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two tight clusters around orthogonal directions: latents [2 n_per, d], labels [2 n_per]."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d, dtype=np.float32)[:2]
    labels = np.repeat([0, 1], n_per)
    latents = centres[labels] + spread * rng.normal(size=(2 * n_per, d)).astype(np.float32)
    return latents / np.linalg.norm(latents, axis=1, keepdims=True), labels


def test_measures_separate_clusters_from_noise() -> None:
    clustered, labels = _clusters()
    noise = np.random.default_rng(1).normal(size=clustered.shape).astype(np.float32)
    assert ev.knn_purity(clustered, labels, k=5) == pytest.approx(1.0)
    assert ev.knn_purity(noise, labels, k=5) < 0.75
    assert ev.silhouette(clustered, labels) > 0.8
    assert abs(ev.silhouette(noise, labels)) < 0.1
    assert ev.neighbour_similarity(clustered, k=5) > 0.95 > ev.neighbour_similarity(noise, k=5)


def test_knn_purity_counts_neighbours_by_hand() -> None:
    # points on a line in 2-D directions: 0,1 close; 2,3 close; labels make one mixed pair
    angles = np.array([0.0, 0.1, 1.5, 1.6])
    latents = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.array([0, 0, 0, 1])
    # k=1: 0->1 same, 1->0 same, 2->3 different, 3->2 different
    assert ev.knn_purity(latents, labels, k=1) == pytest.approx(0.5)


def test_cluster_formation_table_and_errors() -> None:
    clustered, labels = _clusters()
    noise = np.random.default_rng(2).normal(size=clustered.shape)
    table = ev.cluster_formation({1: torch.from_numpy(clustered), 0: noise}, labels, k=5)
    assert list(table.index) == [0, 1]
    assert list(table.columns) == ["knn_purity", "chance_purity", "normal_knn_purity", "silhouette",
                                   "neighbour_cosine"]
    assert table["chance_purity"].tolist() == [0.5, 0.5]  # two equal classes
    assert table.loc[1, "knn_purity"] > table.loc[0, "knn_purity"]
    assert table.loc[1, "silhouette"] > table.loc[0, "silhouette"]
    with pytest.raises(ValueError, match="k must lie"):
        ev.knn_purity(clustered, labels, k=len(labels))
    for bad in (np.r_[labels, labels], np.asarray(labels)[:5]):  # more or fewer labels than points
        with pytest.raises(ValueError, match=r"round 0: labels must be 1-D, one per latent"):
            ev.cluster_formation({0: noise}, bad, k=5)
    with pytest.raises(ValueError, match="latents_per_round must map at least one round"):
        ev.cluster_formation({}, labels, k=5)
    with pytest.raises(ValueError, match=r"labels must be 1-D, one per latent"):
        ev.knn_purity(clustered, labels[:-1])
    for bad in (np.asarray(labels)[:, None], np.r_[np.asarray(labels, dtype=float)[:-1], np.nan]):
        with pytest.raises(ValueError, match=r"labels must be 1-D|missing \(NaN/None\)"):
            ev.knn_purity(clustered, bad)  # never flattened, never a NaN that matches nothing
        with pytest.raises(ValueError, match=r"labels must be 1-D|missing \(NaN/None\)"):
            ev.silhouette(clustered, bad)
    with pytest.raises(ValueError, match="NaN"):
        ev.neighbour_similarity(np.full((5, 3), np.nan))


def test_memory_neighbours_excludes_the_slot_itself() -> None:
    bank = torch.eye(6)
    bank[1] = torch.tensor([0.9, 0.1, 0, 0, 0, 0])
    bank[2] = torch.tensor([0.8, 0.0, 0.2, 0, 0, 0])
    idx, sims = ev.memory_neighbours(bank, slot=0, k=2)
    assert idx.tolist() == [1, 2]
    assert sims[0] > sims[1] > 0.9
    with pytest.raises(IndexError, match="slot 6"):
        ev.memory_neighbours(bank, slot=6)
    for bad in (1.0, True):
        with pytest.raises(TypeError, match="slot must be an int"):
            ev.memory_neighbours(bank, slot=bad)


def test_load_round_snapshots_in_round_order(tmp_path) -> None:
    for r in (2, 0, 10, 1):
        save_checkpoint(tmp_path / "snapshots" / f"round{r}", {"memory": torch.full((3, 2), float(r)),
                                                              "val": torch.zeros(4, 2)}, {"round": r})
    snaps = ev.load_round_snapshots(tmp_path)
    assert list(snaps) == [0, 1, 2, 10]
    assert float(snaps[10]["memory"][0, 0]) == 10.0 and snaps[1]["val"].shape == (4, 2)
    with pytest.raises(FileNotFoundError, match="no round"):
        ev.load_round_snapshots(tmp_path / "empty")
    save_checkpoint(tmp_path / "snapshots" / "round3", {"memory": torch.full((3, 2), float("nan"))}, {"round": 3})
    with pytest.raises(CorruptFileError, match=r"round3\.safetensors holds NaN or inf in 1 tensor"):
        ev.load_round_snapshots(tmp_path)


def test_aligned_projections_shapes_and_structure() -> None:
    """One AlignedUMAP fit (most of the time is numba compiling UMAP's layout code)."""
    clustered, labels = _clusters(n_per=25)
    rounds = [clustered, clustered + 0.01]
    views = ev.aligned_projections(rounds, n_neighbors=8)
    assert len(views) == 2 and all(v.shape == (50, 2) and np.isfinite(v).all() for v in views)
    # the two clusters stay apart in 2-D: nearest 2-D neighbours keep their label
    assert ev.knn_purity(views[-1], labels, k=3) > 0.9
    # a point sits where it sat in the previous round when its latent did not move
    shift = np.linalg.norm(views[1] - views[0], axis=1).mean()
    extent = np.ptp(views[0], axis=0).max()
    assert shift < 0.2 * extent
    with pytest.raises(ValueError, match="same 50 points"):
        ev.aligned_projections([clustered, clustered[:10]])


def test_cluster_formation_labels_follow_the_package_label_check() -> None:
    latents, labels = _clusters(10)
    assert ev.cluster_formation({0: latents}, labels, k=3)["normal_knn_purity"].notna().all()
    for bad in (labels.astype(str), np.where(labels == 1, "abnormal", "normal"), labels * 2):
        with pytest.raises(ValueError, match=r"cluster_formation needs labels 0 \(normal\) and 1 \(abnormal\)"):
            ev.cluster_formation({0: latents}, bad, k=3)
    with pytest.raises(ValueError, match=r"keys must be int rounds, got \['1'\]"):
        ev.cluster_formation({0: latents, "1": latents}, labels, k=3)


def test_measures_refuse_bad_k_empty_input_and_zero_latents() -> None:
    latents, labels = _clusters(10)
    for k in ("5", 2.5, None):
        with pytest.raises(ValueError, match="k must be an int"):
            ev.knn_purity(latents, labels, k=k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"at least one row"):
        ev.knn_purity(np.zeros((0, 4)), [], k=1)
    with pytest.raises(ValueError, match="need at least 2 points"):
        ev.neighbour_similarity(latents[:1], k=1)
    zero = latents.copy()
    zero[3] = 0.0
    for measure in (lambda: ev.silhouette(zero, labels), lambda: ev.knn_purity(zero, labels, k=3)):
        with pytest.raises(ValueError, match="1 zero-norm row"):
            measure()

"""Configuration: frozen dataclasses, one place for the paper's defaults, small CPU profiles.

Every run is described by one :class:`SaladConfig`. It round-trips through JSON
(``to_json`` / ``from_json``) and is saved beside each checkpoint.

The paper's hyperparameters (Bozorgtabar et al., MICCAI 2020) are the dataclass
defaults. :func:`profile_config` derives the ``smoke`` (CI, minutes), ``default``
(this book on a 2-core CPU, <= 30 min for all chapters) and ``full`` (the paper,
for a GPU server) settings from them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ReconstructionKind = Literal["mse", "l1", "none"]
LatentObjective = Literal["paper", "anchors"]
ScoreRule = Literal["paper", "code"]
Reduction = Literal["sum", "mean"]
Profile = Literal["smoke", "default", "full"]
DatasetName = Literal["nih", "mura", "folder"]


@dataclass(frozen=True)
class ModelConfig:
    """Autoencoder architecture.

    ``arch="conv"`` is the paper's NIH network (6+6 conv layers), ``"resnet18"``
    its MURA network. ``image_size`` is the square input side in pixels.
    ``width`` is the channel count of the first conv layer (conv AE only).
    """

    arch: Literal["conv", "resnet18"] = "conv"
    image_size: int = 256
    in_channels: int = 1
    latent_dim: int = 200
    width: int = 32


@dataclass(frozen=True)
class LossConfig:
    """Which loss terms are on and how they are weighted (Eqs. 1-3).

    ``latent_objective="paper"`` uses L_ss (Eq. 1) + L_agg (Eq. 2);
    ``"anchors"`` uses the authors' public code's AND-style criterion instead.
    The ablations of Table 1: MemDAE = ``use_aggregation=False`` with
    ``num_views=0``; "w/o L_mse" = ``reconstruction="none"``;
    "w/o L_agg" = ``use_aggregation=False``.
    """

    reconstruction: ReconstructionKind = "mse"
    use_instance: bool = True
    use_aggregation: bool = True
    latent_objective: LatentObjective = "paper"
    temperature: float = 0.1  # tau
    latent_weight: float = 0.25  # lambda of Eq. 3
    num_views: int = 1  # augmented views per image that count as L_ss positives
    anchor_neighbours: int = 10  # |N(i)| of the anchor criterion
    reduction: Reduction = "sum"  # Eqs. 1-2 sum over the batch


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the progressive schedule.

    Round r (1..R) uses the ``prototype_fraction(r)`` lowest-entropy memory
    entries as prototypical samples and ``neighbours(r)`` memory neighbours,
    both interpolated linearly between the ``*_start`` and ``*_end`` values.
    """

    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0
    memory_momentum: float = 0.5  # t of the memory update
    pretrain_epochs: int = 50
    rounds: int = 10
    epochs_per_round: int = 50
    prototype_fraction_start: float = 0.1
    prototype_fraction_end: float = 1.0
    neighbours_start: int = 5
    neighbours_end: int = 20
    validate_every: int = 1  # epochs between validation AUCs
    amp: bool = True  # CUDA only
    channels_last: bool = True
    seed: int = 0
    progress: bool = True

    def prototype_fraction(self, round_index: int) -> float:
        """Fraction of the bank that is prototypical in round ``round_index`` (1..R)."""
        return _interpolate(self.prototype_fraction_start, self.prototype_fraction_end, round_index, self.rounds)

    def neighbours(self, round_index: int) -> int:
        """Neighbourhood size k of round ``round_index`` (1..R)."""
        return int(round(_interpolate(self.neighbours_start, self.neighbours_end, round_index, self.rounds)))


@dataclass(frozen=True)
class ScoreConfig:
    """Anomaly scoring (Eq. 4). ``rule="code"`` is the authors' code's mean of the K smallest angles / pi.

    ``bank="memory"`` scores against the momentum memory bank (paper);
    ``"embeddings"`` re-embeds the training set with the current encoder in eval
    mode. Short runs leave the memory stale and built with train-mode BatchNorm
    statistics, so the CPU profiles use ``"embeddings"``.
    """

    k: int = 100
    bank: Literal["memory", "embeddings"] = "memory"
    discard_anomalous: bool = True
    rule: ScoreRule = "paper"
    chunk_size: int = 4096


@dataclass(frozen=True)
class DataConfig:
    """Which data, at what resolution. An empty ``data_root`` means the embedded synthetic set."""

    dataset: DatasetName = "nih"
    data_root: str = ""
    anomaly_ratio: float = 0.05  # AR: share of abnormal images placed in training
    max_train_images: int = 0  # 0 = all
    replicates: int = 4
    embedded_scale: Literal["default", "small"] = "default"  # size of the embedded set (no data_root)


@dataclass(frozen=True)
class SaladConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SaladConfig":
        parts = {}
        for f in dataclasses.fields(cls):
            sub_cls = {"model": ModelConfig, "loss": LossConfig, "train": TrainConfig,
                       "score": ScoreConfig, "data": DataConfig}[f.name]
            parts[f.name] = _build(sub_cls, data.get(f.name, {}))
        return cls(**parts)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "SaladConfig":
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))

    def replace(self, **sections: Any) -> "SaladConfig":
        """Copy with some fields changed: ``cfg.replace(train={"rounds": 2}, loss={"tau": ...})``."""
        updated = {}
        for name, changes in sections.items():
            current = getattr(self, name)
            updated[name] = dataclasses.replace(current, **changes) if isinstance(changes, dict) else changes
        return dataclasses.replace(self, **updated)


def _build(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {sorted(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


def _interpolate(start: float, end: float, round_index: int, rounds: int) -> float:
    if not 1 <= round_index <= max(rounds, 1):
        raise ValueError(f"round_index must lie in 1..{rounds}, got {round_index}")
    if rounds <= 1:
        return float(end)
    return start + (end - start) * (round_index - 1) / (rounds - 1)


def paper_config(dataset: DatasetName = "nih") -> SaladConfig:
    """The paper's hyperparameters: conv AE at 256 px for NIH, ResNet-18 AE at 512 px for MURA."""
    model = ModelConfig() if dataset != "mura" else ModelConfig(arch="resnet18", image_size=512)
    return SaladConfig(model=model, data=DataConfig(dataset=dataset))


def profile_config(profile: Profile, dataset: DatasetName = "nih", data_root: str = "") -> SaladConfig:
    """Settings for one of the book's profiles.

    - ``full``: the paper (GPU server, real data).
    - ``default``: the embedded data on a 2-core CPU; all chapters in <= 30 min.
    - ``smoke``: a few minutes for all chapters, for CI.
    """
    cfg = paper_config(dataset)
    cfg = cfg.replace(data={"data_root": data_root})
    if profile == "full":
        return cfg
    if profile == "default":
        size = 64
        if cfg.model.arch == "resnet18":
            # The ResNet-18 AE costs ~10x the conv AE per image on a CPU (measured single-thread:
            # 8 vs 87 training images/s at 64 px): fewer training images and epochs, and
            # validation (for model selection) only at the end of pre-training and of each round.
            return cfg.replace(
                model={"image_size": size},
                train={"pretrain_epochs": 4, "rounds": 3, "epochs_per_round": 2, "batch_size": 32,
                       "lr": 1e-3, "neighbours_start": 5, "neighbours_end": 10, "validate_every": 2,
                       "progress": True},
                score={"k": 20, "bank": "embeddings"},
                data={"replicates": 2, "max_train_images": 250},
            )
        return cfg.replace(
            model={"image_size": size, "width": 16},
            train={"pretrain_epochs": 6, "rounds": 3, "epochs_per_round": 3, "batch_size": 32,
                   "lr": 1e-3, "neighbours_start": 5, "neighbours_end": 10, "progress": True},
            score={"k": 20, "bank": "embeddings"},
            data={"replicates": 4, "max_train_images": 1500},  # the paper's 4 replicates (~1.5 min each here)
        )
    if profile == "smoke":
        size = 64 if cfg.model.arch == "resnet18" else 32  # ResNet-18's five halvings need >= 64 px
        return cfg.replace(
            model={"image_size": size, "width": 8},
            train={"pretrain_epochs": 1, "rounds": 2, "epochs_per_round": 1, "batch_size": 32,
                   "lr": 1e-3, "neighbours_start": 3, "neighbours_end": 5, "progress": False},
            score={"k": 10, "bank": "embeddings"},
            data={"replicates": 1, "max_train_images": 200, "embedded_scale": "small"},
        )
    raise ValueError(f"unknown profile {profile!r}; choose smoke, default or full")

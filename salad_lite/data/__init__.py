"""Datasets, preprocessing, splits and caches for salad_lite.

Every dataset yields sample dicts ``{"image": FloatTensor[1, S, S] in [0, 1],
"label": int, "index": int, "patient_id": str, "finding": str}`` and exposes
``.metadata`` / ``.labels`` (see :mod:`salad_lite.data.base`).
"""

from salad_lite.data.base import CachedXrayDataset, XrayDataset, subset
from salad_lite.data.io import DataWarning, ImageReadError, read_grayscale
from salad_lite.data.splits import PatientLeakError, check_patient_disjoint, one_class_split
from salad_lite.data.transforms import autocontrast, resize_pad, to_tensor

__all__ = [
    "CachedXrayDataset",
    "DataWarning",
    "ImageReadError",
    "PatientLeakError",
    "XrayDataset",
    "autocontrast",
    "check_patient_disjoint",
    "one_class_split",
    "read_grayscale",
    "resize_pad",
    "subset",
    "to_tensor",
]

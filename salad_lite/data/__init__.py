"""Datasets, preprocessing, splits and caches for salad_lite.

Every dataset yields sample dicts ``{"image": FloatTensor[1, S, S] in [0, 1],
"label": int, "index": int, "patient_id": str, "finding": str}`` and exposes
``.metadata`` / ``.labels`` (see :mod:`salad_lite.data.base`).
:func:`load_splits` goes from a dataset name to cached train/val/test sets.
The MURA modules are imported on demand (``salad_lite.data.mura``,
``.mura_preprocess``). This package holds loaders, transforms, splits and
caches only: the synthetic renderers live in :mod:`salad_lite.synth`.
Hidden and system files are never images (:func:`is_hidden_or_system`); labels
are parsed strictly (:class:`LabelError` names the file, row and value).
"""

from salad_lite.data.base import CachedXrayDataset, LabelError, XrayDataset, subset
from salad_lite.data.generic import ImageFolderXray, ManifestXray
from salad_lite.data.io import DataWarning, ImageReadError, is_hidden_or_system, list_files, read_grayscale
from salad_lite.data.nih import NIHChestXray, find_torchxrayvision_csv, load_nih_labels
from salad_lite.data.registry import describe_splits, embedded_root, ensure_embedded, load_splits
from salad_lite.data.splits import PatientLeakError, check_patient_disjoint, one_class_split
from salad_lite.data.transforms import autocontrast, resize_pad, to_tensor

__all__ = [
    "CachedXrayDataset",
    "DataWarning",
    "ImageFolderXray",
    "ImageReadError",
    "LabelError",
    "ManifestXray",
    "NIHChestXray",
    "PatientLeakError",
    "XrayDataset",
    "autocontrast",
    "check_patient_disjoint",
    "describe_splits",
    "embedded_root",
    "ensure_embedded",
    "find_torchxrayvision_csv",
    "is_hidden_or_system",
    "list_files",
    "load_nih_labels",
    "load_splits",
    "one_class_split",
    "read_grayscale",
    "resize_pad",
    "subset",
    "to_tensor",
]

"""Seeding, device selection and the progress-bar policy."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

PROGRESS_ENV = "TQDM_DISABLE"


def progress_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """The package's one progress-bar policy: False when ``TQDM_DISABLE`` is set to any non-empty value.

    tqdm itself treats even ``"0"`` as "disable", but ``tqdm.notebook`` ignores the
    variable, so the trainer and the book ask here (the static book build sets it).
    """
    return not (os.environ if environ is None else environ).get(PROGRESS_ENV, "")


def is_int(value: Any) -> bool:
    """True for a Python or NumPy integer; False for a bool (an int subclass that is never a count) and the rest."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a Python or NumPy real number (int or float); False for a bool, text and the rest."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` if it is an int in [0, :data:`salad_lite.config.MAX_SEED`] (NumPy's range); else refused.

    Raises:
        ValueError: a bool, float, text or out-of-range value (``name``, the value and the range named).
    """
    from salad_lite.config import MAX_SEED

    if not is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an int in [0, {MAX_SEED}], got {seed!r}")
    return int(seed)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator seeded the same way.

    Raises:
        ValueError: ``seed`` is not an int >= 0 (a bool or a float would seed silently differently).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


#: The device texts every entry point accepts (torch's own forms).
DEVICE_FORMS = "'auto', 'cpu', 'mps', 'cuda' or 'cuda:<index>'"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``.

    Raises:
        ValueError: ``device`` is not a device torch knows (the value and :data:`DEVICE_FORMS` named).
        RuntimeError: CUDA is requested but not available.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device {device!r} is not a device torch knows: use {DEVICE_FORMS}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
    return resolved

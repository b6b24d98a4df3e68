"""Seeding, device selection and the progress-bar policy."""

from __future__ import annotations

import os
import random
import re
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


def is_finite_number(value: Any) -> bool:
    """:func:`is_number`, and neither NaN nor infinite."""
    return is_number(value) and bool(np.isfinite(value))


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
        ValueError: ``seed`` is not an int in NumPy's seed range (a bool or a float would seed
            silently differently; NumPy refuses larger ints).
    """
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


#: The device texts every entry point accepts (torch's own forms), and their pattern.
DEVICE_FORMS = "'auto', 'cpu', 'mps' (or 'mps:0'), 'cuda' or 'cuda:<index>' (no leading zero)"
DEVICE_PATTERN = re.compile(r"auto|cpu|mps(:0)?|cuda(:(0|[1-9]\d*))?")  # mps:0 is what an MPS tensor reports


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; else one of :data:`DEVICE_FORMS`, opened as ``torch.device``.

    Raises:
        ValueError: ``device`` is not one of :data:`DEVICE_FORMS` (a torch device of another type, such as
            ``meta``, or another spelling, such as ``cpu:0``), named with the accepted forms.
        RuntimeError: CUDA (or that CUDA index) or MPS is requested but not available on this machine.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = str(device) if isinstance(device, torch.device) else device
    if not isinstance(text, str) or not DEVICE_PATTERN.fullmatch(text):
        raise ValueError(f"device {device!r} is not a device salad_lite runs on: use {DEVICE_FORMS}")
    resolved = torch.device(text)
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= count:
            raise RuntimeError(f"device {device!r} requested but this machine has {count} CUDA device(s) "
                               f"(cuda:0 to cuda:{count - 1})")
    mps = getattr(torch.backends, "mps", None)
    if resolved.type == "mps" and not (mps is not None and mps.is_available()):
        raise RuntimeError(f"device {device!r} requested but MPS is not available on this machine")
    return resolved

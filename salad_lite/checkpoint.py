"""Checkpoints: tensors in safetensors, everything else (config, counters, history) in JSON. No pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def checkpoint_paths(stem: str | Path) -> tuple[Path, Path]:
    """``run/last`` -> (``run/last.safetensors``, ``run/last.json``)."""
    stem = Path(stem)
    if stem.suffix in {".safetensors", ".json"}:
        stem = stem.with_suffix("")
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_checkpoint(stem: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``stem.safetensors`` and ``stem.json`` atomically (temp file + rename); returns the tensor path."""
    tensor_path, json_path = checkpoint_paths(stem)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    tmp_tensor = tensor_path.with_name(tensor_path.name + ".tmp")
    tmp_json = json_path.with_name(json_path.name + ".tmp")
    save_file(contiguous, str(tmp_tensor))
    tmp_json.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp_tensor, tensor_path)
    os.replace(tmp_json, json_path)  # the JSON lands last: its presence marks a complete checkpoint
    return tensor_path


def load_checkpoint(stem: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: (tensors, metadata)."""
    tensor_path, json_path = checkpoint_paths(stem)
    for path in (tensor_path, json_path):
        if not path.exists():
            raise FileNotFoundError(f"checkpoint file {path} is missing")
    return load_file(str(tensor_path), device=str(device)), json.loads(json_path.read_text())


def checkpoint_exists(stem: str | Path) -> bool:
    return all(p.exists() for p in checkpoint_paths(stem))


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint JSON")

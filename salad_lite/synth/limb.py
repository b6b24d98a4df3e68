"""Synthetic upper-limb radiographs in the MURA v1.1 layout.

MURA cannot be downloaded on the machines this project is built on and its
licence forbids redistribution, so the embedded MURA-like set is rendered here.
Each image is a simplified but physically motivated radiograph:

* **Anatomy.** Bones are tapered capsules ("tubes", long bones and phalanges)
  and ellipsoids ("blobs", carpals, epiphyses, humeral head, scapula) with a
  cortical shell: the X-ray path length through the cortex and through the
  medulla is computed analytically for every pixel (a cylinder of radius ``r``
  has chord ``2 sqrt(r^2 - d^2)`` at distance ``d`` from its axis). The soft
  tissue envelope is the union of wider capsules/ellipsoids. Seven body parts
  (finger, hand, wrist, forearm, elbow, humerus, shoulder), each with
  patient-specific proportions and view-specific poses (AP / lateral / oblique).
* **Physics.** Total attenuation ``A = mu_cortex * L_cortex + mu_medulla *
  L_medulla * (1 + trabecular texture) + mu_soft * L_soft + metal``; the
  displayed intensity is ``base + (peak - base) * (1 - exp(-A))``, then a small
  blur (detector PSF), a heel-effect gradient and noise.
* **Detector plate ("carrier").** The radiograph is drawn on a rectangular
  plate raster with lead text markers ("L"/"R", view letters) in a free corner,
  then warped (rotation, offset, slight perspective) onto a darker background
  (or, for some images, a bright light-box background).
* **Abnormal studies.** One of ``fracture`` (oblique cortical break with a gap,
  lateral displacement and angulation), ``hardware`` (a very bright plate with
  screws along a bone) or ``lytic`` (a lucent ellipse in a bone, optionally a
  sclerotic rim), each with a ``severity`` in ``[0.2, 1]``; all images of a
  positive study show the same lesion.

Output, under ``<out_dir>``::

    MURA-v1.1/train_image_paths.csv        (no header; MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png)
    MURA-v1.1/train_labeled_studies.csv    (no header; MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/,1)
    MURA-v1.1/valid_image_paths.csv, MURA-v1.1/valid_labeled_studies.csv
    MURA-v1.1/{train,valid}/XR_<PART>/patientNNNNN/studyN_{positive,negative}/imageN.png
    groundtruth/annotations.csv            (one row per image: carrier corners, lesion, view, ...)
    groundtruth/<same relative path>_body.png, _bone.png   (uint8 masks, 255 = inside)
    synth_limb_manifest.json               (parameters + counts; a complete set is not re-rendered)

Images are 8-bit grayscale PNGs of varied, non-square sizes (about 240-352 px
per side). Everything is deterministic given ``seed``: the PNGs are
byte-identical across runs and across worker counts (every image draws from its
own ``numpy`` generator seeded by ``(seed, image number)``).

Carrier corners in ``annotations.csv`` are pixel coordinates ``(x, y)`` of the
plate's outer corners (pixel centres at integers, so the image spans
``[-0.5, W - 0.5]``), ordered top-left, top-right, bottom-right, bottom-left of
the *plate* (not of the frame). The ``_body`` mask is the whole body part (soft
tissue and bone, cut at the plate edge), ``_bone`` the bones only.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from salad_lite.synth import EMBEDDED_SCALES, LIMB_ANNOTATIONS, LIMB_MANIFEST, LIMB_MIN_PATIENTS
from salad_lite.synth.writer import SetWriter, check_workers
from salad_lite.utils import check_seed, is_int

__all__ = [
    "BODY_PARTS",
    "ABNORMALITIES",
    "MANIFEST_NAME",
    "ImageSpec",
    "RenderedImage",
    "check_limb_arguments",
    "plan_limb_set",
    "render_image",
    "render_limb_set",
    "read_annotations",
]

BODY_PARTS: tuple[str, ...] = ("ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS", "SHOULDER", "WRIST")
ABNORMALITIES: tuple[str, ...] = ("fracture", "hardware", "lytic")
MANIFEST_NAME = LIMB_MANIFEST
GENERATOR_VERSION = 2  # bump whenever the rendered pixels change (invalidates old sets)

# Relative frequency of body parts (roughly MURA's: wrist, shoulder, hand, finger, elbow most common).
_PART_WEIGHTS = {"ELBOW": 0.13, "FINGER": 0.14, "FOREARM": 0.07, "HAND": 0.15, "HUMERUS": 0.06, "SHOULDER": 0.2, "WRIST": 0.25}

# Attenuation coefficients per anatomy unit (au; a body part spans about 1 au).
_MU_CORTEX = 17.0
_MU_MEDULLA = 5.0
_MU_SOFT = 1.15
_MU_METAL = 6.0


# --------------------------------------------------------------------------- primitives


@dataclass(frozen=True)
class Tube:
    """A tapered capsule: a long bone, phalanx, finger or limb segment (units: au).

    ``flare0``/``flare1`` widen the ends (metaphyses) by that fraction;
    ``cortex`` is the cortical thickness as a fraction of the shaft radius.
    ``cut = (qx, qy, nx, ny, gap)`` keeps only the half plane
    ``(p - q) . n >= gap / 2`` (a fracture fragment).
    """

    p0: tuple[float, float]
    p1: tuple[float, float]
    r0: float
    r1: float
    cortex: float = 0.3
    flare0: float = 0.0
    flare1: float = 0.0
    density: float = 1.0
    name: str = ""
    cut: tuple[float, float, float, float, float] | None = None  # qx, qy, nx, ny, gap


@dataclass(frozen=True)
class Blob:
    """An ellipsoid (carpal bone, condyle, humeral head, scapula...) (units: au).

    ``a``/``b`` are the in-plane semi-axes, ``angle`` their rotation (radians),
    ``depth`` the semi-axis along the beam.
    """

    center: tuple[float, float]
    a: float
    b: float
    angle: float = 0.0
    depth: float | None = None
    cortex: float = 0.3
    density: float = 1.0
    name: str = ""


@dataclass(frozen=True)
class Anatomy:
    """Bones and soft tissue of one body part in anatomy units (au), plate-independent."""

    bones: tuple[Tube | Blob, ...]
    soft: tuple[Tube | Blob, ...]
    long_bones: tuple[int, ...]  # indices into ``bones`` of tubes that may carry a lesion


def _rot(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _tube_paths(t: Tube, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chord lengths (au) through cortex and medulla of a tube at points ``px, py`` (au)."""
    x0, y0 = t.p0
    dx, dy = t.p1[0] - x0, t.p1[1] - y0
    length2 = dx * dx + dy * dy + 1e-12
    u = np.clip(((px - x0) * dx + (py - y0) * dy) / length2, 0.0, 1.0)
    ddx = px - (x0 + u * dx)
    ddy = py - (y0 + u * dy)
    dist2 = ddx * ddx + ddy * ddy
    shaft = t.r0 + (t.r1 - t.r0) * u
    flare = 1.0 + t.flare0 * np.exp(-((u / 0.14) ** 2)) + t.flare1 * np.exp(-(((1.0 - u) / 0.14) ** 2))
    radius = shaft * flare
    outer = 2.0 * np.sqrt(np.maximum(radius * radius - dist2, 0.0))
    # The cortex keeps the shaft's absolute thickness and thins towards the (flared) ends.
    inner_r = radius - shaft * t.cortex / (1.0 + 1.5 * (flare - 1.0))
    inner = 2.0 * np.sqrt(np.maximum(inner_r * inner_r - dist2, 0.0))
    cortex, medulla = outer - inner, inner
    if t.cut is not None:
        qx, qy, nx, ny, gap = t.cut
        signed = (px - qx) * nx + (py - qy) * ny - gap / 2.0
        keep = np.clip(signed / 0.004 + 0.5, 0.0, 1.0)
        cortex, medulla = cortex * keep, medulla * keep
    return cortex * t.density, medulla * t.density


def _blob_paths(b: Blob, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chord lengths (au) through the shell and the core of an ellipsoid."""
    c, s = math.cos(b.angle), math.sin(b.angle)
    u = (px - b.center[0]) * c + (py - b.center[1]) * s
    v = -(px - b.center[0]) * s + (py - b.center[1]) * c
    depth = b.depth if b.depth is not None else min(b.a, b.b)
    q = (u / b.a) ** 2 + (v / b.b) ** 2
    outer = 2.0 * depth * np.sqrt(np.maximum(1.0 - q, 0.0))
    k = 1.0 - b.cortex
    q_in = q / (k * k)
    inner = 2.0 * depth * k * np.sqrt(np.maximum(1.0 - q_in, 0.0))
    return (outer - inner) * b.density, inner * b.density


def _paths(prim: Tube | Blob, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _tube_paths(prim, px, py) if isinstance(prim, Tube) else _blob_paths(prim, px, py)


def _extent(prim: Tube | Blob) -> tuple[float, float, float, float]:
    """Axis-aligned bounding box (xmin, ymin, xmax, ymax) in au."""
    if isinstance(prim, Tube):
        r = max(prim.r0 * (1 + prim.flare0), prim.r1 * (1 + prim.flare1), prim.r0, prim.r1) * 1.05
        xs, ys = (prim.p0[0], prim.p1[0]), (prim.p0[1], prim.p1[1])
        return min(xs) - r, min(ys) - r, max(xs) + r, max(ys) + r
    r = max(prim.a, prim.b) * 1.02
    return prim.center[0] - r, prim.center[1] - r, prim.center[0] + r, prim.center[1] + r


# --------------------------------------------------------------------------- body parts


def _chain(start: tuple[float, float], angle: float, lengths: Sequence[float], radii: Sequence[float],
           bends: Sequence[float], gap: float, name: str, flare: float = 0.25) -> tuple[list[Tube], tuple[float, float]]:
    """Bones end to end from ``start`` along ``angle`` (radians, 0 = +y), bending at each joint."""
    tubes: list[Tube] = []
    x, y = start
    for i, (length, radius) in enumerate(zip(lengths, radii)):
        angle += bends[i]
        ex, ey = x + math.sin(angle) * length, y + math.cos(angle) * length
        tubes.append(Tube((x, y), (ex, ey), radius, radius * 0.85, 0.32, flare, flare * 0.8, name=f"{name}{i}"))
        x, y = ex + math.sin(angle) * gap, ey + math.cos(angle) * gap
    return tubes, (x, y)


def _carpals(center: tuple[float, float], width: float, height: float, rng: np.random.Generator, angle: float = 0.0) -> list[Blob]:
    """Two rows of four small carpal ellipsoids (plus jitter)."""
    blobs = []
    rot = _rot(angle)
    for row in range(2):
        for col in range(4):
            local = np.array([(col - 1.5) * width / 4.0, (row - 0.5) * height / 2.0])
            local += rng.normal(0.0, 0.006, 2)
            cx, cy = np.asarray(center) + rot @ local
            a = width / 8.5 * rng.uniform(0.85, 1.15)
            b = height / 4.2 * rng.uniform(0.85, 1.15)
            blobs.append(Blob((float(cx), float(cy)), a, b, angle + rng.normal(0, 0.2), cortex=0.35, name="carpal"))
    return blobs


def _anatomy(part: str, proportions: np.ndarray, view: str, rng: np.random.Generator) -> Anatomy:
    """Bones and soft tissue of ``part`` in au, the long axis along +y (proximal at -y).

    ``proportions`` (6 floats near 1) are fixed per patient; ``view`` changes the
    projection (lateral: paired bones overlap, joints flex).
    """
    pr = proportions
    lateral = view == "LAT"
    oblique = view == "OBL"
    spread = 0.35 if lateral else (0.7 if oblique else 1.0)
    bones: list[Tube | Blob] = []
    soft: list[Tube | Blob] = []
    long_bones: list[int] = []

    def add(prims: Sequence[Tube | Blob], lesionable: bool = False) -> None:
        for p in prims:
            if lesionable and isinstance(p, Tube):
                long_bones.append(len(bones))
            bones.append(p)

    if part == "FINGER":
        flex = rng.uniform(0.15, 0.45) if lateral else rng.uniform(-0.06, 0.06)
        r = 0.052 * pr[0]
        meta = Tube((0.0, -0.66), (0.0, -0.40), r * 1.1, r * 1.15, 0.33, 0.0, 0.35, name="metacarpal")
        lengths = np.array([0.36, 0.22, 0.14]) * pr[1]
        chain, tip = _chain((0.0, -0.36), 0.0, lengths, [r, r * 0.85, r * 0.72], [0.0, flex, flex * 0.7], 0.035, "phalanx")
        add([meta]); add(chain, lesionable=True)
        soft.append(Tube((0.0, -0.72), chain[0].p1, 0.13 * pr[2], 0.115 * pr[2]))
        soft.append(Tube(chain[0].p1, chain[1].p1, 0.112 * pr[2], 0.1 * pr[2]))
        soft.append(Tube(chain[1].p1, (tip[0], tip[1] - 0.01), 0.1 * pr[2], 0.085 * pr[2]))
    elif part == "HAND":
        add(_carpals((0.0, -0.36), 0.26 * pr[0], 0.12, rng))
        add([Tube((-0.06, -0.75), (-0.07, -0.47), 0.05, 0.055, 0.3, 0, 0.45, name="radius"),
             Tube((0.08, -0.75), (0.08, -0.48), 0.03, 0.033, 0.3, 0, 0.3, name="ulna")])
        bases = [-0.105, -0.04, 0.02, 0.075] if not lateral else [-0.02, -0.005, 0.01, 0.025]
        fan = [-0.12, -0.03, 0.05, 0.13] if not lateral else [-0.03, 0.0, 0.02, 0.04]
        meta_len = np.array([0.3, 0.31, 0.29, 0.26]) * pr[1]
        phal = [np.array([0.19, 0.12, 0.08]), np.array([0.21, 0.14, 0.09]), np.array([0.2, 0.13, 0.085]), np.array([0.16, 0.1, 0.075])]
        curl = rng.uniform(0.2, 0.5) if lateral else rng.uniform(-0.03, 0.08)
        for k in range(4):
            x0, y0 = bases[k] * pr[0], -0.27
            meta, end = _chain((x0, y0), fan[k] * spread, [meta_len[k]], [0.026 * pr[3]], [0.0], 0.025, "metacarpal")
            fingers, tip = _chain(end, fan[k] * spread * 1.25, phal[k] * pr[1], [0.022 * pr[3], 0.019 * pr[3], 0.016 * pr[3]],
                                  [0.0, curl, curl * 0.7], 0.018, "phalanx")
            add(meta, lesionable=True); add(fingers, lesionable=True)
            soft.append(Tube(meta[0].p1, (tip[0], tip[1] - 0.012), 0.047 * pr[2], 0.038 * pr[2]))
        thumb_angle = -0.75 * spread - 0.1
        tmeta, tend = _chain((-0.13 * pr[0], -0.32), thumb_angle, [0.2 * pr[1]], [0.03 * pr[3]], [0.0], 0.025, "metacarpal")
        tph, ttip = _chain(tend, thumb_angle + 0.15, [0.14 * pr[1], 0.1 * pr[1]], [0.025 * pr[3], 0.02 * pr[3]], [0.0, 0.0], 0.02, "phalanx")
        add(tmeta, lesionable=True); add(tph)
        soft.append(Tube(tmeta[0].p0, (ttip[0], ttip[1] - 0.01), 0.06 * pr[2], 0.042 * pr[2]))
        soft.append(Blob((0.0, -0.18), 0.2 * pr[0] * (0.75 if lateral else 1.0), 0.24, 0.0, 0.1))
        soft.append(Tube((0.0, -0.8), (0.0, -0.3), 0.17 * pr[2], 0.17 * pr[2]))
    elif part == "WRIST":
        sep = 0.1 * spread * pr[0]
        add([Tube((-sep, -0.8), (-sep * 1.05, -0.12), 0.06 * pr[3], 0.075 * pr[3], 0.28, 0.0, 0.6, name="radius"),
             Tube((sep * 1.1, -0.8), (sep * 1.2, -0.13), 0.04 * pr[3], 0.045 * pr[3], 0.3, 0.0, 0.35, name="ulna")],
            lesionable=True)
        add([Blob((-sep * 1.5 - 0.06, -0.08), 0.025, 0.04, 0.3, name="styloid")])
        add(_carpals((0.0, 0.06), 0.34 * pr[0] * (0.6 if lateral else 1.0), 0.17, rng))
        for k, xb in enumerate([-0.13, -0.045, 0.04, 0.12]):
            xb *= pr[0] * (0.4 if lateral else 1.0)
            meta, _ = _chain((xb, 0.2), (xb * 0.9) * spread, [0.5 * pr[1]], [0.032 * pr[3]], [0.0], 0.0, "metacarpal")
            add(meta, lesionable=True)
        soft.append(Tube((0.0, -0.85), (0.0, 0.05), 0.2 * pr[2], 0.22 * pr[2]))
        soft.append(Blob((0.0, 0.35), 0.25 * pr[2] * (0.75 if lateral else 1.0), 0.45, 0.0, 0.12))
    elif part == "FOREARM":
        sep = 0.075 * spread * pr[0]
        bow = rng.uniform(0.01, 0.03)
        add([Tube((-sep, -0.47), (-sep - bow, 0.0), 0.03 * pr[3], 0.034 * pr[3], 0.38, 0.5, 0.0, name="radius"),
             Tube((-sep - bow, 0.0), (-sep * 1.1, 0.47), 0.034 * pr[3], 0.042 * pr[3], 0.38, 0.0, 0.6, name="radius"),
             Tube((sep, -0.5), (sep * 1.05, 0.46), 0.036 * pr[3], 0.027 * pr[3], 0.4, 0.5, 0.4, name="ulna")],
            lesionable=True)
        add([Blob((sep * 0.9, -0.54), 0.05, 0.04, 0.0, name="olecranon")])
        add(_carpals((0.0, 0.57), 0.26 * pr[0], 0.1, rng))
        soft.append(Tube((0.0, -0.62), (0.0, 0.62), 0.16 * pr[2], 0.115 * pr[2]))
    elif part == "ELBOW":
        flexion = rng.uniform(1.1, 1.6) if lateral else rng.uniform(-0.15, 0.15)
        hum = Tube((0.0, -0.75), (0.0, -0.08), 0.05 * pr[3], 0.055 * pr[3], 0.33, 0.0, 0.4, name="humerus")
        add([hum], lesionable=True)
        add([Blob((0.0, -0.04), 0.15 * pr[0] * (0.6 if lateral else 1.0), 0.065, 0.0, 0.07, name="condyles")])
        rot = _rot(-flexion)
        def fore(p: tuple[float, float]) -> tuple[float, float]:
            v = rot @ np.array(p)
            return float(v[0]), float(v[1]) + 0.02
        sep = 0.06 * spread * pr[0]
        add([Tube(fore((sep, 0.06)), fore((sep * 1.2, 0.6)), 0.035 * pr[3], 0.03 * pr[3], 0.33, 0.5, 0.0, name="radius"),
             Tube(fore((-sep, 0.03)), fore((-sep * 1.2, 0.6)), 0.04 * pr[3], 0.03 * pr[3], 0.35, 0.6, 0.0, name="ulna")],
            lesionable=True)
        add([Blob(fore((-sep - 0.01, 0.0)), 0.045, 0.055, 0.0, name="olecranon")])
        soft.append(Tube((0.0, -0.8), (0.0, 0.0), 0.17 * pr[2], 0.16 * pr[2]))
        soft.append(Tube(fore((0.0, 0.0)), fore((0.0, 0.65)), 0.16 * pr[2], 0.13 * pr[2]))
    elif part == "HUMERUS":
        add([Blob((0.02, -0.44), 0.1 * pr[0], 0.09, 0.2, name="humeral_head")])
        add([Tube((0.0, -0.4), (0.0, 0.38), 0.05 * pr[3], 0.045 * pr[3], 0.4, 0.5, 0.7, name="humerus")], lesionable=True)
        add([Blob((0.0, 0.42), 0.13 * pr[0] * (0.6 if lateral else 1.0), 0.055, 0.0, 0.06, name="condyles")])
        add([Tube((0.05, 0.5), (0.06, 0.75), 0.03, 0.028, 0.33, 0.4, 0.0, name="radius"),
             Tube((-0.05, 0.48), (-0.06, 0.75), 0.032, 0.028, 0.33, 0.5, 0.0, name="ulna")])
        soft.append(Tube((0.0, -0.5), (0.0, 0.55), 0.17 * pr[2], 0.15 * pr[2]))
        soft.append(Blob((0.0, -0.48), 0.22 * pr[2], 0.14, 0.0, 0.12))
        soft.append(Tube((0.0, 0.5), (0.0, 0.8), 0.15 * pr[2], 0.14 * pr[2]))
    elif part == "SHOULDER":
        abduct = rng.uniform(-0.05, 0.35) if not lateral else rng.uniform(0.3, 0.7)
        rot = _rot(-abduct)
        def arm(p: tuple[float, float]) -> tuple[float, float]:
            v = rot @ (np.array(p) - np.array([0.1, -0.1])) + np.array([0.1, -0.1])
            return float(v[0]), float(v[1])
        add([Blob(arm((0.1, -0.1)), 0.13 * pr[0], 0.12, 0.3, name="humeral_head")])
        add([Tube(arm((0.13, -0.05)), arm((0.17, 0.65)), 0.075 * pr[3], 0.06 * pr[3], 0.35, 0.4, 0.0, name="humerus")],
            lesionable=True)
        add([Blob((-0.06, -0.08), 0.045, 0.11, 0.15, name="glenoid"),
             Blob((-0.3, 0.15), 0.2, 0.33, 0.35, depth=0.025, cortex=0.25, name="scapula"),
             Tube((-0.1, -0.3), (0.17, -0.3), 0.035, 0.03, 0.35, 0.0, 0.3, name="acromion")])
        add([Tube((-0.75, -0.38), (-0.35, -0.32), 0.036 * pr[3], 0.038 * pr[3], 0.36, 0.0, 0.0, name="clavicle"),
             Tube((-0.35, -0.32), (0.02, -0.3), 0.038 * pr[3], 0.04 * pr[3], 0.36, 0.0, 0.4, name="clavicle")],
            lesionable=True)
        for k in range(4):  # posterior ribs, faint arcs
            y = -0.05 + 0.17 * k
            add([Tube((-0.75, y - 0.02), (-0.48, y + 0.05), 0.018, 0.018, 0.5, density=0.55, name="rib"),
                 Tube((-0.48, y + 0.05), (-0.28, y + 0.16), 0.018, 0.016, 0.5, density=0.55, name="rib")])
        soft.append(Blob((-0.15, 0.05), 0.55, 0.75, -0.1, 0.16))
        soft.append(Tube(arm((0.12, -0.1)), arm((0.16, 0.8)), 0.22 * pr[2], 0.19 * pr[2]))
    else:
        raise ValueError(f"unknown body part {part!r}; expected one of {BODY_PARTS}")
    return Anatomy(tuple(bones), tuple(soft), tuple(long_bones))


# --------------------------------------------------------------------------- lesions


@dataclass(frozen=True)
class Lesion:
    """One abnormality, in au, attached to the lesionable bone ``bone_rank`` (modulo their count)."""

    kind: str  # fracture | hardware | lytic
    severity: float  # 0.2 .. 1
    bone_rank: int
    position: float  # 0.25..0.75 along the bone
    angle: float  # fracture obliquity / hardware side
    side: float  # +1 / -1: displacement or plate side


def _apply_fracture(anatomy: Anatomy, lesion: Lesion, idx: int) -> Anatomy:
    """Split tube ``idx`` into two fragments with a gap, displacement and angulation."""
    bone = anatomy.bones[idx]
    assert isinstance(bone, Tube)
    p0, p1 = np.array(bone.p0), np.array(bone.p1)
    axis = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-12)
    normal_axis = np.array([-axis[1], axis[0]])
    q = p0 + lesion.position * (p1 - p0)
    n = _rot(lesion.angle) @ axis  # fracture-plane normal (oblique to the axis)
    radius = bone.r0 + (bone.r1 - bone.r0) * lesion.position
    gap = 0.006 + 0.012 * lesion.severity
    shift = lesion.side * normal_axis * radius * (0.25 + 1.1 * lesion.severity) + axis * radius * 0.2 * lesion.severity
    turn = lesion.side * 0.3 * lesion.severity
    rot = _rot(turn)

    def move(p: np.ndarray) -> tuple[float, float]:
        v = rot @ (p - q) + q + shift
        return float(v[0]), float(v[1])

    proximal = replace(bone, cut=(float(q[0]), float(q[1]), float(-n[0]), float(-n[1]), gap))
    n_moved = rot @ n
    q_moved = np.array(move(q))
    distal = replace(bone, p0=move(p0), p1=move(p1),
                     cut=(float(q_moved[0]), float(q_moved[1]), float(n_moved[0]), float(n_moved[1]), gap))
    bones = list(anatomy.bones)
    bones[idx] = proximal
    bones.append(distal)
    return replace(anatomy, bones=tuple(bones))


def _metal_field(anatomy: Anatomy, lesion: Lesion, idx: int, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Metal path length (au) of a bone plate with screws along tube ``idx``."""
    bone = anatomy.bones[idx]
    assert isinstance(bone, Tube)
    p0, p1 = np.array(bone.p0), np.array(bone.p1)
    length = float(np.linalg.norm(p1 - p0))
    axis = (p1 - p0) / (length + 1e-12)
    across = np.array([-axis[1], axis[0]])
    radius = 0.5 * (bone.r0 + bone.r1)
    centre = p0 + lesion.position * (p1 - p0)
    plate_len = min(length * 0.85, length * (0.3 + 0.4 * lesion.severity))
    plate_w = max(0.014, radius * 0.45)
    plate_c = centre + across * lesion.side * (radius * 0.95)
    u = (px - plate_c[0]) * axis[0] + (py - plate_c[1]) * axis[1]
    v = (px - plate_c[0]) * across[0] + (py - plate_c[1]) * across[1]
    edge = 0.0025

    def box(uu: np.ndarray, vv: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
        return np.clip((half_u - np.abs(uu)) / edge + 0.5, 0, 1) * np.clip((half_v - np.abs(vv)) / edge + 0.5, 0, 1)

    metal = 0.05 * box(u, v, plate_len / 2, plate_w / 2)
    n_screws = 2 + int(round(2 + 4 * lesion.severity))
    half_screw = radius * 1.15
    for k in range(n_screws):
        su = (k + 0.5) / n_screws * plate_len - plate_len / 2
        sv = v + lesion.side * half_screw  # screw spans the bone from the plate across
        metal = np.maximum(metal, 0.04 * box(u - su, sv, plate_w * 0.22, half_screw))
        metal = np.maximum(metal, 0.07 * box(u - su, v, plate_w * 0.4, plate_w * 0.55))  # screw head
    return metal


def _lytic_factor(anatomy: Anatomy, lesion: Lesion, idx: int, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicative bone-attenuation factor (lucency) and sclerotic rim of a lytic lesion."""
    bone = anatomy.bones[idx]
    assert isinstance(bone, Tube)
    p0, p1 = np.array(bone.p0), np.array(bone.p1)
    axis = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-12)
    across = np.array([-axis[1], axis[0]])
    radius = bone.r0 + (bone.r1 - bone.r0) * lesion.position
    centre = p0 + lesion.position * (p1 - p0) + across * lesion.side * radius * 0.2
    a = radius * (0.9 + 1.6 * lesion.severity)
    b = radius * (0.55 + 0.5 * lesion.severity)
    u = ((px - centre[0]) * axis[0] + (py - centre[1]) * axis[1]) / a
    v = ((px - centre[0]) * across[0] + (py - centre[1]) * across[1]) / b
    rr = np.sqrt(u * u + v * v)
    profile = np.clip((1.0 - rr) / 0.25, 0.0, 1.0)
    depth = 0.45 + 0.45 * lesion.severity
    rim = 0.25 * np.exp(-(((rr - 1.0) / 0.1) ** 2)) * (lesion.angle > 0)
    return 1.0 - depth * profile, rim


# --------------------------------------------------------------------------- one image


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render one image (picklable, drawn in :func:`plan_limb_set`)."""

    rel_path: str  # MURA-v1.1/train/XR_WRIST/patient00001/study1_positive/image1.png
    split: str
    part: str
    patient: str
    study: int
    image: int
    label: int
    view: str
    side: str  # L / R
    proportions: tuple[float, ...]
    lesion: Lesion | None
    seed: tuple[int, int]


@dataclass
class RenderedImage:
    """A rendered radiograph with its ground truth."""

    image: np.ndarray  # uint8 [H, W]
    body_mask: np.ndarray  # bool [H, W]
    bone_mask: np.ndarray  # bool [H, W]
    corners: np.ndarray  # float64 [4, 2] (x, y): plate top-left, top-right, bottom-right, bottom-left
    info: dict[str, object] = field(default_factory=dict)


def _anatomy_fields(anatomy: Anatomy, lesion: Lesion | None, to_au: np.ndarray, shape: tuple[int, int],
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attenuation ``[h, w]``, body mask and bone mask on the plate raster.

    ``to_au`` (3x3) maps plate pixel coordinates (x, y, 1) to anatomy units.
    """
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    px = to_au[0, 0] * xs + to_au[0, 1] * ys + to_au[0, 2]
    py = to_au[1, 0] * xs + to_au[1, 1] * ys + to_au[1, 2]
    from_au = np.linalg.inv(to_au)

    def window(prim: Tube | Blob) -> tuple[slice, slice] | None:
        x0, y0, x1, y1 = _extent(prim)
        pts = np.array([[x0, y0, 1], [x1, y0, 1], [x1, y1, 1], [x0, y1, 1]]).T
        pix = from_au @ pts
        c0, c1 = int(math.floor(pix[0].min())) - 1, int(math.ceil(pix[0].max())) + 2
        r0, r1 = int(math.floor(pix[1].min())) - 1, int(math.ceil(pix[1].max())) + 2
        c0, c1, r0, r1 = max(c0, 0), min(c1, w), max(r0, 0), min(r1, h)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    lesion_idx = None
    if lesion is not None and anatomy.long_bones:
        lesion_idx = anatomy.long_bones[lesion.bone_rank % len(anatomy.long_bones)]
        if lesion.kind == "fracture":
            anatomy = _apply_fracture(anatomy, lesion, lesion_idx)

    cortex = np.zeros(shape)
    medulla = np.zeros(shape)
    for prim in anatomy.bones:
        win = window(prim)
        if win is None:
            continue
        c, m = _paths(prim, px[win], py[win])
        cortex[win] += c
        medulla[win] += m
    soft = np.zeros(shape)
    for prim in anatomy.soft:
        win = window(prim)
        if win is None:
            continue
        c, m = _paths(replace(prim, cortex=0.0) if isinstance(prim, Blob) else replace(prim, cortex=0.0, flare0=0.0, flare1=0.0), px[win], py[win])
        soft[win] = np.maximum(soft[win], c + m)
    bone_len = cortex + medulla

    # Trabecular texture: band-limited noise modulating the medulla.
    px_per_au = 1.0 / math.sqrt(abs(np.linalg.det(to_au[:2, :2])))
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(0.8, 0.005 * px_per_au))
    texture /= texture.std() + 1e-9
    atten = _MU_CORTEX * cortex + _MU_MEDULLA * medulla * (1.0 + 0.35 * texture) + _MU_SOFT * soft
    if lesion is not None and lesion_idx is not None:
        if lesion.kind == "lytic":
            factor, rim = _lytic_factor(anatomy, lesion, lesion_idx, px, py)
            bone_atten = _MU_CORTEX * cortex + _MU_MEDULLA * medulla
            atten = atten - bone_atten * (1.0 - factor) + rim * (bone_len > 0) * 1.5
        elif lesion.kind == "hardware":
            metal = _metal_field(anatomy, lesion, lesion_idx, px, py)
            atten = atten + _MU_METAL * metal / 0.01
    body = (soft > 0.012) | (bone_len > 0.004)
    bone = bone_len > 0.004
    return np.maximum(atten, 0.0), body, bone


def _draw_markers(plate: np.ndarray, body: np.ndarray, side: str, view: str, rng: np.random.Generator) -> None:
    """Draw lead markers ("L"/"R" and the view) in one free plate corner, in place."""
    h, w = plate.shape
    texts = [side] + ([view] if rng.random() < 0.6 else []) + ([rng.choice(["A", "B", "S", "H", "X"]) + str(rng.integers(1, 9))] if rng.random() < 0.3 else [])
    scale = min(h, w) / 260.0 * rng.uniform(0.55, 0.8)
    thick = max(1, int(round(2 * scale)))
    font = cv2.FONT_HERSHEY_SIMPLEX if rng.random() < 0.5 else cv2.FONT_HERSHEY_DUPLEX
    busy = ndimage.binary_dilation(body, iterations=max(3, min(h, w) // 30))
    corners = [0, 1, 2, 3]
    rng.shuffle(corners)
    for text in texts:
        (tw, th), base = cv2.getTextSize(text, font, scale, thick)
        for corner in list(corners):
            margin = int(min(h, w) * 0.06)
            x = margin if corner in (0, 3) else w - margin - tw
            y = margin + th if corner in (0, 1) else h - margin - base
            x0, y0, x1, y1 = x - 2, y - th - 2, x + tw + 2, y + base + 2
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h or busy[y0:y1, x0:x1].any():
                continue
            ink = np.zeros((h, w), np.uint8)  # OpenCV draws text on 8-bit rasters only
            cv2.putText(ink, text, (x, y), font, scale, 255, thick, cv2.LINE_AA)
            level = float(rng.uniform(0.85, 1.0))
            np.maximum(plate, ink.astype(np.float32) * (level / 255.0), out=plate)
            busy[y0:y1, x0:x1] = True
            corners.remove(corner)
            break


def render_image(spec: ImageSpec) -> RenderedImage:
    """Render one radiograph on its detector plate, with ground truth.

    Returns a :class:`RenderedImage`: ``image`` uint8 ``[H, W]`` (H, W in about
    240..352, not square), boolean masks in the same frame, and the plate's
    corners ``[4, 2]`` in pixel coordinates (x, y).
    """
    rng = np.random.default_rng(list(spec.seed))
    portrait = rng.random() < 0.8
    long_side, short_side = int(rng.integers(300, 353)), int(rng.integers(236, 292))
    height, width = (long_side, short_side) if portrait else (short_side, long_side)

    # Plate geometry in the output frame.
    plate_aspect = rng.uniform(0.72, 0.86)
    plate_portrait = portrait if rng.random() < 0.9 else not portrait
    theta = rng.normal(0.0, 0.09) if rng.random() < 0.85 else rng.uniform(-0.35, 0.35)
    base_w, base_h = (plate_aspect, 1.0) if plate_portrait else (1.0, plate_aspect)
    bw = base_w * abs(math.cos(theta)) + base_h * abs(math.sin(theta))
    bh = base_w * abs(math.sin(theta)) + base_h * abs(math.cos(theta))
    margin = 6.0
    k = min((width - 2 * margin) / bw, (height - 2 * margin) / bh) * rng.uniform(0.74, 0.95)
    plate_w, plate_h = base_w * k, base_h * k
    free_x = (width - 2 * margin - bw * k) / 2
    free_y = (height - 2 * margin - bh * k) / 2
    cx = width / 2 + rng.uniform(-free_x, free_x)
    cy = height / 2 + rng.uniform(-free_y, free_y)
    rot = _rot(theta)
    local = np.array([[-plate_w / 2, -plate_h / 2], [plate_w / 2, -plate_h / 2], [plate_w / 2, plate_h / 2], [-plate_w / 2, plate_h / 2]])
    corners = (rot @ local.T).T + np.array([cx, cy])
    corners += rng.normal(0.0, 0.012 * k, corners.shape)  # slight perspective (tilted plate / camera)
    corners[:, 0] = np.clip(corners[:, 0], margin - 0.5, width - margin - 0.5)
    corners[:, 1] = np.clip(corners[:, 1], margin - 0.5, height - margin - 0.5)

    # Plate raster: about the plate's size in the frame.
    ph, pw = int(round(plate_h)), int(round(plate_w))
    src = np.array([[-0.5, -0.5], [pw - 0.5, -0.5], [pw - 0.5, ph - 0.5], [-0.5, ph - 0.5]], dtype=np.float32)
    homography = cv2.getPerspectiveTransform(src, corners.astype(np.float32))

    # Anatomy placement on the plate (au -> plate pixels).
    anatomy = _anatomy(spec.part, np.asarray(spec.proportions), spec.view, rng)
    long_extent = {"FINGER": 1.3, "HAND": 1.45, "WRIST": 1.3, "FOREARM": 1.25, "ELBOW": 1.35, "HUMERUS": 1.35, "SHOULDER": 1.4}[spec.part]
    scale = max(ph, pw) * rng.uniform(0.78, 0.95) / long_extent  # plate px per au
    phi = rng.normal(0.0, 0.15) + (0.0 if plate_portrait else math.pi / 2) + (math.pi if rng.random() < 0.25 else 0.0)
    mirror = -1.0 if spec.side == "L" else 1.0
    a_cx = pw / 2 + rng.uniform(-0.06, 0.06) * pw
    a_cy = ph / 2 + rng.uniform(-0.06, 0.06) * ph
    # plate = T + scale * R(phi) * diag(mirror, 1) * au
    lin = scale * _rot(phi) @ np.diag([mirror, 1.0])
    from_au = np.eye(3)
    from_au[:2, :2] = lin
    from_au[:2, 2] = [a_cx, a_cy]
    to_au = np.linalg.inv(from_au)
    atten, body, bone = _anatomy_fields(anatomy, spec.lesion, to_au, (ph, pw), rng)

    # Exposure: plate base level, detector response, PSF, heel effect.
    inverted = rng.random() < 0.04
    bright_background = bool(rng.random() < 0.12) and not inverted  # a negative film lies on a dark surround
    base = rng.uniform(0.13, 0.3)
    peak = rng.uniform(0.85, 0.97)
    plate = base + (peak - base) * (1.0 - np.exp(-atten * rng.uniform(0.85, 1.15)))
    plate = cv2.GaussianBlur(plate, (0, 0), rng.uniform(0.5, 0.9))
    gy, gx = np.mgrid[0:ph, 0:pw]
    heel = rng.uniform(-0.06, 0.06) * (gy / ph - 0.5) + rng.uniform(-0.04, 0.04) * (gx / pw - 0.5)
    plate = plate + heel
    if rng.random() < 0.35:  # cassette rim
        rim = max(2, int(min(ph, pw) * 0.012))
        plate[:rim, :] += 0.1; plate[-rim:, :] += 0.1; plate[:, :rim] += 0.1; plate[:, -rim:] += 0.1
    plate = plate.astype(np.float32)
    _draw_markers(plate, body, spec.side, spec.view, rng)
    if inverted:
        plate = 1.0 - plate

    # Warp onto the frame background.
    size = (width, height)
    plate_f = cv2.warpPerspective(plate, homography, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
    cover = cv2.warpPerspective(np.ones((ph, pw), np.float32), homography, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
    body_f = cv2.warpPerspective(body.astype(np.float32), homography, size, flags=cv2.INTER_LINEAR) > 0.5
    bone_f = cv2.warpPerspective(bone.astype(np.float32), homography, size, flags=cv2.INTER_LINEAR) > 0.5
    if bright_background:
        bg_level = rng.uniform(0.72, 0.9)
    else:
        bg_level = rng.uniform(0.0, 0.05)
    yy, xx = np.mgrid[0:height, 0:width]
    background = bg_level + rng.uniform(-0.03, 0.03) * (xx / width) + rng.uniform(-0.03, 0.03) * (yy / height)
    frame = background * (1.0 - cover) + plate_f * cover
    noise_sd = rng.uniform(0.008, 0.022)
    frame = frame + rng.normal(0.0, 1.0, frame.shape) * noise_sd * (0.5 + np.sqrt(np.clip(frame, 0, 1)))
    image = np.clip(np.rint(frame * 255.0), 0, 255).astype(np.uint8)
    info = {"inverted": inverted, "bright_background": bright_background, "theta": float(theta)}
    return RenderedImage(image, body_f, bone_f, corners, info)


# --------------------------------------------------------------------------- the set


def _patient_plan(rng: np.random.Generator) -> list[tuple[str, list[int]]]:
    """Body parts of one patient and, per part, the study labels (0/1)."""
    parts_names = list(_PART_WEIGHTS)
    weights = np.array([_PART_WEIGHTS[p] for p in parts_names])
    n_parts = 1 if rng.random() < 0.78 else 2
    parts = rng.choice(parts_names, size=n_parts, replace=False, p=weights / weights.sum())
    plan = []
    for part in parts:
        n_studies = int(rng.choice([1, 2, 3], p=[0.4, 0.38, 0.22]))
        abnormal_patient = rng.random() < 0.48
        if abnormal_patient:
            labels = [1 if rng.random() < 0.75 else 0 for _ in range(n_studies)]
            if not any(labels):
                labels[-1] = 1
        else:
            labels = [0] * n_studies
        plan.append((str(part), labels))
    return plan


def check_limb_arguments(n_patients: int, seed: int) -> None:
    """Refuse arguments :func:`plan_limb_set` (and so :func:`render_limb_set`) cannot plan a loadable set from.

    Raises:
        ValueError: ``n_patients`` not an int >= :data:`~salad_lite.synth.LIMB_MIN_PATIENTS`, or ``seed``
            not an int in NumPy's range (named).
    """
    if not is_int(n_patients) or n_patients < LIMB_MIN_PATIENTS:
        raise ValueError(f"n_patients must be an int >= {LIMB_MIN_PATIENTS} (the MURA layout needs at least one "
                         f"training and one validation patient; its loader refuses an empty valid split), "
                         f"got {n_patients!r}")
    check_seed(seed)


def plan_limb_set(n_patients: int = EMBEDDED_SCALES["default"].mura_patients, seed: int = 0) -> list[ImageSpec]:
    """Draw the list of images of a synthetic set (no rendering).

    Patients are numbered ``00001..``; about 12% of them (at least one) form the
    ``valid`` split (numbers continue after the training patients, as in MURA). Each
    patient has 1-2 body parts, 1-3 studies per part and 1-5 images (views) per study.

    Raises:
        ValueError: ``n_patients`` not an int >= :data:`~salad_lite.synth.LIMB_MIN_PATIENTS` (2: the
            MURA loader needs a training and a validation patient; a bool, float, NaN or inf is
            refused), or ``seed`` not an int in NumPy's range; the parameter and the value named.
    """
    check_limb_arguments(n_patients, seed)
    rng = np.random.default_rng([seed, 7919])
    n_valid = max(1, int(round(n_patients * 0.12)))
    specs: list[ImageSpec] = []
    views_all = ["AP", "LAT", "OBL", "PA"]
    for pnum in range(1, n_patients + 1):
        split = "train" if pnum <= n_patients - n_valid else "valid"
        patient = f"patient{pnum:05d}"
        side = "L" if rng.random() < 0.45 else "R"
        for part, labels in _patient_plan(rng):
            proportions = tuple(float(v) for v in rng.normal(1.0, 0.07, 6).clip(0.82, 1.18))
            lesion_rank = int(rng.integers(0, 1000))
            kind = str(rng.choice(ABNORMALITIES, p=[0.5, 0.25, 0.25]))
            for s, label in enumerate(labels, start=1):
                lesion = None
                if label:
                    lesion = Lesion(kind, float(rng.uniform(0.2, 1.0)), lesion_rank, float(rng.uniform(0.3, 0.7)),
                                    float(rng.uniform(-0.9, 0.9)), float(rng.choice([-1.0, 1.0])))
                n_images = int(rng.choice([1, 2, 3, 4, 5], p=[0.06, 0.22, 0.36, 0.22, 0.14]))
                study_dir = f"MURA-v1.1/{split}/XR_{part}/{patient}/study{s}_{'positive' if label else 'negative'}"
                for i in range(1, n_images + 1):
                    view = views_all[(i - 1) % len(views_all)] if rng.random() < 0.8 else str(rng.choice(views_all))
                    specs.append(ImageSpec(f"{study_dir}/image{i}.png", split, part, patient, s, i, label, view, side,
                                           proportions, lesion, (seed, len(specs))))
    return specs


def _render_and_save(args: tuple[ImageSpec, str]) -> dict[str, object]:
    spec, out = args
    out_dir = Path(out)
    rendered = render_image(spec)
    image_path = out_dir / spec.rel_path
    image_path.parent.mkdir(parents=True, exist_ok=True)
    _write_png(image_path, rendered.image)
    gt_stem = out_dir / "groundtruth" / spec.rel_path[: -len(".png")]
    gt_stem.parent.mkdir(parents=True, exist_ok=True)
    _write_png(gt_stem.with_name(gt_stem.name + "_body.png"), rendered.body_mask.astype(np.uint8) * 255)
    _write_png(gt_stem.with_name(gt_stem.name + "_bone.png"), rendered.bone_mask.astype(np.uint8) * 255)
    row: dict[str, object] = {
        "path": spec.rel_path, "split": spec.split, "body_part": spec.part, "patient": spec.patient,
        "study": spec.study, "image": spec.image, "label": spec.label, "view": spec.view, "side": spec.side,
        "abnormality": spec.lesion.kind if spec.lesion else "none",
        "severity": round(spec.lesion.severity, 4) if spec.lesion else 0.0,
        "height": rendered.image.shape[0], "width": rendered.image.shape[1],
        "inverted": int(bool(rendered.info["inverted"])), "bright_background": int(bool(rendered.info["bright_background"])),
    }
    for k, (x, y) in enumerate(rendered.corners):
        row[f"x{k}"], row[f"y{k}"] = round(float(x), 3), round(float(y), 3)
    return row


def _write_png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise OSError(f"could not encode PNG for {path}")
    path.write_bytes(buf.tobytes())


_GROUNDTRUTH = "groundtruth"


def render_limb_set(out_dir: Path, n_patients: int = EMBEDDED_SCALES["default"].mura_patients, seed: int = 0,
                    progress: bool = True, *, workers: int | None = None) -> Path:
    """Render a synthetic MURA-like set under ``out_dir`` and return its ``MURA-v1.1`` folder.

    Args:
        out_dir: target folder; gets ``MURA-v1.1/``, ``groundtruth/`` and the manifest.
        n_patients: number of patients (default: the ``default`` embedded scale,
            :data:`salad_lite.synth.EMBEDDED_SCALES`; 300 give about 2,000 images).
        seed: all randomness derives from it; same seed -> byte-identical PNGs.
        progress: show a tqdm bar.
        workers: processes (default: all CPUs, at most 8; 1 = in-process; at most
            ``os.cpu_count()``). The output does not depend on it.

    Returns:
        ``out_dir / "MURA-v1.1"``.

    If ``out_dir`` already holds a complete set rendered with the same
    parameters (checked through ``synth_limb_manifest.json``: parameters and
    the presence of every file it lists; :class:`~salad_lite.synth.writer.SetWriter`)
    nothing is rendered. A set with other parameters made by this function, or
    an interrupted one, is deleted and re-rendered; a ``MURA-v1.1`` or
    ``groundtruth`` folder without our manifest (e.g. a real download) is never
    touched.

    Every argument is checked before anything is read or written.

    Raises:
        ValueError: an argument :func:`check_limb_arguments` refuses (``n_patients`` < 2, ``seed``),
            or ``workers`` not None nor an int in [1, CPUs]; named.
        NotADirectoryError: ``out_dir`` or one of its parents is a file (named).
        FileExistsError: ``out_dir`` holds a set not made by this function.
        CorruptFileError: the manifest in ``out_dir`` cannot be read (named).
    """
    out_dir = Path(out_dir)
    check_limb_arguments(n_patients, seed)
    if workers is not None:
        check_workers(workers)
    writer = SetWriter(
        out_dir, MANIFEST_NAME, maker="render_limb_set", generator="salad_lite.synth.limb",
        version=GENERATOR_VERSION, params={"n_patients": int(n_patients), "seed": int(seed)},
        outputs=("MURA-v1.1", _GROUNDTRUTH),
    )
    root = out_dir / "MURA-v1.1"
    if writer.is_complete():
        return root
    specs = plan_limb_set(n_patients, seed)
    writer.start()
    root.mkdir(parents=True, exist_ok=True)
    if workers is None:  # small sets are faster in-process than with a pool
        n_workers = 1 if len(specs) < 40 else min(8, os.cpu_count() or 1)
    else:
        n_workers = workers
    jobs = [(spec, str(out_dir)) for spec in specs]
    bar = tqdm(total=len(specs), desc="rendering synthetic MURA", unit="img", disable=not progress)
    rows: list[dict[str, object]] = []
    try:
        if n_workers == 1:
            for job in jobs:
                rows.append(_render_and_save(job))
                bar.update()
        else:
            # spawn, never fork: a forked child of a process whose OpenCV/OpenMP pools already ran can deadlock
            with ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for row in pool.map(_render_and_save, jobs, chunksize=8):
                    rows.append(row)
                    bar.update()
    finally:
        bar.close()

    counts: dict[str, dict[str, int]] = {}
    files: list[str] = []
    for split in ("train", "valid"):
        split_specs = [s for s in specs if s.split == split]
        studies: dict[str, int] = {}
        for s in split_specs:
            studies[s.rel_path.rsplit("/", 1)[0] + "/"] = s.label
        for kind, table in (("image_paths", [[s.rel_path] for s in split_specs]),
                            ("labeled_studies", [[d, lab] for d, lab in studies.items()])):
            files.append(writer.write_csv(f"MURA-v1.1/{split}_{kind}.csv", table).relative_to(out_dir).as_posix())
        counts[split] = {
            "images": len(split_specs),
            "abnormal_images": sum(s.label for s in split_specs),
            "studies": len(studies),
            "patients": len({s.patient for s in split_specs}),
        }
    columns = list(rows[0])
    annotations = writer.write_csv(LIMB_ANNOTATIONS, ([row[c] for c in columns] for row in rows), header=columns)
    files.append(annotations.relative_to(out_dir).as_posix())
    for spec in specs:
        stem = f"{_GROUNDTRUTH}/{spec.rel_path[: -len('.png')]}"
        files += [spec.rel_path, f"{stem}_body.png", f"{stem}_bone.png"]
    writer.finish(counts, files)
    return root


def read_annotations(out_dir: Path) -> Iterator[dict[str, object]]:
    """Yield the ground-truth rows of a rendered set, with ``corners`` as a float ``[4, 2]`` array.

    ``body_mask_path`` / ``bone_mask_path`` point at the mask PNGs.
    """
    out_dir = Path(out_dir)
    with open(out_dir / LIMB_ANNOTATIONS, newline="") as fh:
        for row in csv.DictReader(fh):
            corners = np.array([[float(row[f"x{k}"]), float(row[f"y{k}"])] for k in range(4)])
            stem = out_dir / "groundtruth" / row["path"][: -len(".png")]
            yield {**row, "label": int(row["label"]), "corners": corners,
                   "image_path": out_dir / row["path"],
                   "body_mask_path": stem.with_name(stem.name + "_body.png"),
                   "bone_mask_path": stem.with_name(stem.name + "_bone.png")}

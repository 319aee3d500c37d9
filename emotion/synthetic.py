"""Procedural synthetic faces: the default data set, so a fresh machine trains with no download.

Each sample is a cartoon-like frontal face drawn with OpenCV (antialiased polygons, rendered at a
higher resolution and downsampled). Its expression is made from facial actions (brows, lids,
lip corners, mouth opening, nose wrinkle, cheek raise, jaw drop) applied with a random intensity
in [0.5, 1.0]; the identity (face shape, skin tone, hair, eye spacing, pose, lighting, background,
noise) is random and independent of the expression. Every sample records the facial regions its
expression changed (a subset of ``FACE_REGIONS``; neutral changes none), the ground truth against
which attention-based explanations can be checked.

The face follows the canonical crop layout the explanation module assumes (fractions of the image
height): brows ~0.25-0.38, eyes ~0.35-0.48, nose ~0.45-0.62, cheeks ~0.5-0.7 at the sides,
mouth ~0.65-0.8, jaw ~0.78-0.95.

Sample ``i`` of a split is drawn from ``np.random.default_rng([seed, split_id, i])``: the same
image whatever the number of processes or the order of generation.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import datasets
import numpy as np

from emotion.config import DEFAULT_CACHE_DIR
from emotion.labels import CLASS_LISTS, CLASS_NAMES, FACE_REGIONS, NUM_CLASSES

__all__ = ["render_face", "expression_regions", "load_synthetic", "save_preview_grid", "SPLIT_IDS"]

# Bump when the drawing changes in a way the source hash would not catch (it catches any edit).
GENERATOR_VERSION = 1

# Split ids feed the per-sample seed: train and validation never share an image.
SPLIT_IDS: dict[str, int] = {"train": 0, "validation": 1}
_PREVIEW_SPLIT_ID = 2


# ---------------------------------------------------------------------------------------------
# Expressions: facial-action deltas at intensity 1.0 (face-local units: 1.0 = half the face
# height; +y is down) and the regions they change. Parameters left out stay at the resting face.
# ---------------------------------------------------------------------------------------------
_REST: dict[str, float] = dict(
    brow_y=0.0,          # whole brow, +down
    brow_inner_y=0.0,    # inner end, +down (anger) / -up (sad, fear)
    brow_outer_y=0.0,    # outer end, +down
    brow_inner_x=0.0,    # inner ends pulled toward the midline
    brow_arch=0.0,       # extra arch
    glabella=0.0,        # vertical frown lines between the brows
    forehead=0.0,        # horizontal forehead lines
    eye_upper=0.0,       # relative change of the upper-lid opening (+ wide, - narrowed)
    eye_lower=0.0,       # relative change of the lower-lid opening (- raised / tightened)
    lid_slant=0.0,       # upper lid lowered at the inner corner (anger)
    crow=0.0,            # crow's feet / lower-lid crease (Duchenne smile)
    cheek=0.0,           # cheek raise: apples up, deeper nasolabial folds
    nose_wrinkle=0.0,    # wrinkles across the nose bridge
    nostril_y=0.0,       # nostrils, -up
    nose_flare=0.0,      # relative widening of the nose wings
    mouth_w=0.0,         # relative change of the mouth width
    corner_up=0.0,       # both lip corners, +up
    corner_one=0.0,      # one lip corner, +up (side random)
    mouth_open=0.0,      # lip opening height
    open_round=0.0,      # 1: round "O" opening, 0: wide flat opening
    upper_lip_raise=0.0, # upper lip lifted in its centre (disgust)
    lip_thin=0.0,        # fraction the lips thin (pressed)
    press=0.0,           # pressed mouth line
    teeth=0.0,           # >0: teeth show in an opening
    dimple=0.0,          # dimple at the raised corner (contempt)
    jaw_drop=0.0,        # chin lowered
    chin_crease=0.0,     # chin boss / crease under the lower lip (clenched jaw)
    jaw_square=0.0,      # jaw widened (clenched masseters)
)

_EXPRESSIONS: dict[str, tuple[tuple[str, ...], dict[str, float]]] = {
    "neutral": ((), {}),
    "happy": (("eyes", "cheeks", "mouth"),
              dict(corner_up=0.085, mouth_w=0.12, cheek=1.0, eye_lower=-0.55, eye_upper=-0.15, crow=1.0)),
    "sad": (("brows", "eyes", "mouth"),
            dict(brow_inner_y=-0.09, brow_outer_y=0.03, brow_inner_x=0.015, eye_upper=-0.3,
                 corner_up=-0.085, mouth_w=-0.05)),
    "surprise": (("brows", "eyes", "mouth", "jaw"),
                 dict(brow_y=-0.10, brow_arch=0.05, forehead=1.0, eye_upper=0.85, eye_lower=0.35,
                      mouth_open=0.17, open_round=1.0, mouth_w=-0.4, jaw_drop=0.10)),
    "fear": (("brows", "eyes", "mouth"),
             dict(brow_y=-0.05, brow_inner_y=-0.08, brow_inner_x=0.035, brow_arch=-0.02, forehead=0.6,
                  eye_upper=0.75, eye_lower=-0.15, mouth_w=0.3, mouth_open=0.06, corner_up=-0.03, teeth=1.0)),
    "disgust": (("nose", "mouth"),
                dict(nose_wrinkle=1.0, nostril_y=-0.04, nose_flare=0.25, upper_lip_raise=0.07,
                     corner_up=-0.03, mouth_w=-0.05, teeth=1.0)),
    "anger": (("brows", "eyes", "mouth", "jaw"),
              dict(brow_y=0.04, brow_inner_y=0.08, brow_inner_x=0.04, glabella=1.0, eye_upper=-0.45,
                   eye_lower=-0.35, lid_slant=1.0, mouth_w=-0.15, lip_thin=0.65, press=1.0,
                   chin_crease=1.0, jaw_square=1.0)),
    "contempt": (("mouth",), dict(corner_one=0.16, dimple=1.0, lip_thin=0.15)),
}

if set(_EXPRESSIONS) != set(CLASS_NAMES):  # pragma: no cover - guards edits of labels.py
    raise RuntimeError(f"synthetic expressions {sorted(_EXPRESSIONS)} do not match CLASS_NAMES {CLASS_NAMES}")
for _name, (_regions, _deltas) in _EXPRESSIONS.items():
    if not set(_regions) <= set(FACE_REGIONS) or not set(_deltas) <= set(_REST):  # pragma: no cover
        raise RuntimeError(f"bad synthetic expression spec for {_name!r}")


def expression_regions(label: int) -> list[str]:
    """The regions the generator changes for a class (the ground truth per class), in FACE_REGIONS order."""
    if not 0 <= int(label) < NUM_CLASSES:
        raise ValueError(f"label must be in [0, {NUM_CLASSES}), got {label}")
    regions = set(_EXPRESSIONS[CLASS_NAMES[int(label)]][0])
    return [r for r in FACE_REGIONS if r in regions]


# ---------------------------------------------------------------------------------------------
# Drawing helpers
# ---------------------------------------------------------------------------------------------
_SKIN_TONES = np.array([(255, 226, 200), (240, 196, 168), (224, 172, 138), (198, 138, 102),
                        (164, 106, 72), (120, 78, 52), (86, 56, 40)], np.float32)
_HAIR_COLOURS = np.array([(20, 16, 14), (45, 30, 20), (80, 52, 30), (120, 80, 45), (170, 130, 80),
                          (215, 180, 120), (140, 60, 30), (150, 150, 150)], np.float32)
_IRIS_COLOURS = np.array([(70, 45, 25), (110, 75, 40), (60, 100, 150), (80, 120, 80), (40, 30, 25)], np.float32)


def _col(c) -> tuple[float, float, float]:
    c = np.clip(np.asarray(c, np.float32), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _ell(cx: float, cy: float, rx: float, ry: float, t0: float = 0.0, t1: float = 2 * math.pi,
         n: int = 40) -> np.ndarray:
    t = np.linspace(t0, t1, n, endpoint=(t1 - t0) < 2 * math.pi - 1e-6)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _arc(side: int, cx: float, cy: float, rx: float, ry: float, t0: float, t1: float, n: int = 40) -> np.ndarray:
    """An elliptic arc drawn for the right side of the face (side=+1), mirrored about its centre for side=-1."""
    return _ell(0.0, 0.0, rx, ry, t0, t1, n) * [side, 1] + [cx, cy]


class _Canvas:
    """An RGB canvas drawn in face-local coordinates (rotated, scaled, translated to pixels)."""

    def __init__(self, size: int, centre: tuple[float, float], scale: float, angle_deg: float):
        self.size = size
        self.img = np.zeros((size, size, 3), np.uint8)
        self.scale = scale
        a = math.radians(angle_deg)
        self.m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], np.float64) * scale
        self.t = np.asarray(centre, np.float64)
        self.off = np.zeros(2)

    def px(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts, np.float64) @ self.m.T + self.t

    def _fx(self, pts: np.ndarray) -> np.ndarray:
        return np.round((self.px(pts) - self.off) * 16).astype(np.int32).reshape(-1, 1, 2)

    def thick(self, w: float) -> int:
        return max(1, int(round(w * self.scale)))

    def fill(self, pts, colour) -> None:
        cv2.fillPoly(self.img, [self._fx(pts)], _col(colour), cv2.LINE_AA, shift=4)

    def line(self, pts, colour, width: float, closed: bool = False) -> None:
        cv2.polylines(self.img, [self._fx(pts)], closed, _col(colour), self.thick(width), cv2.LINE_AA, shift=4)

    def blend_fill(self, polys: list[np.ndarray], colour, alpha: float) -> None:
        """Fill polygons with partial opacity (shading, blush)."""
        if alpha <= 0:
            return
        pts = [self._fx(p) for p in polys]
        allp = np.concatenate(pts).reshape(-1, 2) >> 4
        x0, y0 = np.maximum(allp.min(0) - 2, 0)
        x1, y1 = np.minimum(allp.max(0) + 3, [self.img.shape[1], self.img.shape[0]])
        if x1 <= x0 or y1 <= y0:
            return
        roi = self.img[y0:y1, x0:x1]
        layer = roi.copy()
        shift = np.array([x0, y0], np.int32) * 16
        cv2.fillPoly(layer, [q - shift for q in pts], _col(colour), cv2.LINE_AA, shift=4)
        roi[:] = cv2.addWeighted(layer, alpha, roi, 1 - alpha, 0)

    def clipped(self, clip_poly: np.ndarray, draw: Callable[[], None]) -> None:
        """Run ``draw`` on a copy of the canvas and keep its pixels only inside ``clip_poly``."""
        p = self.px(clip_poly)
        x0, y0 = np.maximum(np.floor(p.min(0)).astype(int) - 2, 0)
        x1, y1 = np.minimum(np.ceil(p.max(0)).astype(int) + 3, self.size)
        if x1 <= x0 or y1 <= y0:
            return
        roi = self.img[y0:y1, x0:x1]
        layer = roi.copy()
        saved_img, saved_off = self.img, self.off
        self.img, self.off = layer, np.array([x0, y0], np.float64)
        try:
            draw()
            mask = np.zeros(roi.shape[:2], np.uint8)
            cv2.fillPoly(mask, [self._fx(clip_poly)], 255, cv2.LINE_AA, shift=4)
        finally:
            self.img, self.off = saved_img, saved_off
        a = mask.astype(np.float32)[..., None] / 255.0
        roi[:] = (roi * (1 - a) + layer * a + 0.5).astype(np.uint8)


def _ribbon(centre: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """A polygon of varying width around a centre line (brows, creases)."""
    d = np.gradient(centre, axis=0)
    n = np.stack([-d[:, 1], d[:, 0]], 1)
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-9
    half = (widths / 2)[:, None]
    return np.concatenate([centre + n * half, (centre - n * half)[::-1]])


_GRID_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    if size not in _GRID_CACHE:
        v = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
        _GRID_CACHE[size] = (v[None, :].repeat(size, 0), v[:, None].repeat(size, 1))
    return _GRID_CACHE[size]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(3)
    c0 = rng.uniform(20, 235, 3)
    if kind == 0:  # flat colour
        return np.broadcast_to(c0.astype(np.uint8), (size, size, 3)).copy()
    gx, gy = _grid(size)
    if kind == 1:  # linear gradient
        c1 = rng.uniform(20, 235, 3)
        a = rng.uniform(0, 2 * math.pi)
        t = np.clip((gx * math.cos(a) + gy * math.sin(a)) + 0.5, 0, 1)[..., None]
        return (c0 * (1 - t) + c1 * t).astype(np.uint8)
    img = np.broadcast_to(c0.astype(np.uint8), (size, size, 3)).copy()  # clutter
    for _ in range(int(rng.integers(6, 14))):
        c = _col(rng.uniform(0, 255, 3))
        x, y = rng.uniform(-0.1, 1.1, 2) * size
        r = rng.uniform(0.05, 0.3) * size
        shape = rng.integers(3)
        if shape == 0:
            cv2.rectangle(img, (int(x - r), int(y - r * rng.uniform(0.3, 1))), (int(x + r), int(y + r)), c, -1)
        elif shape == 1:
            cv2.circle(img, (int(x), int(y)), int(r), c, -1, cv2.LINE_AA)
        else:
            x2, y2 = rng.uniform(-0.1, 1.1, 2) * size
            cv2.line(img, (int(x), int(y)), (int(x2), int(y2)), c, max(1, int(r / 6)), cv2.LINE_AA)
    k = 2 * int(size / 96) + 1
    return cv2.GaussianBlur(img, (k, k), 0)


# ---------------------------------------------------------------------------------------------
# The face
# ---------------------------------------------------------------------------------------------
def _expression_params(label: int, rng: np.random.Generator) -> tuple[dict[str, float], float, int]:
    """Resting-face jitter (identity) + the class's facial actions at a random intensity."""
    p = dict(_REST)
    # Resting faces differ: some look a little stern, sad or smiley. This is what makes neutral
    # and low-intensity expressions confusable.
    p["brow_y"] += rng.normal(0, 0.012)
    p["brow_inner_y"] += rng.normal(0, 0.012)
    p["brow_arch"] += rng.normal(0, 0.01)
    p["eye_upper"] += rng.normal(0, 0.1)
    p["eye_lower"] += rng.normal(0, 0.1)
    p["corner_up"] += rng.normal(0, 0.01)
    p["corner_one"] += rng.normal(0, 0.006)
    p["mouth_w"] += rng.normal(0, 0.05)
    if rng.random() < 0.15:
        p["mouth_open"] += rng.uniform(0.005, 0.02)  # lips slightly parted
    name = CLASS_NAMES[label]
    _, deltas = _EXPRESSIONS[name]
    intensity = 0.0 if not deltas else float(rng.uniform(0.5, 1.0))
    deltas = dict(deltas)
    if name == "happy" and rng.random() < 0.5:  # open smile showing teeth
        deltas.update(mouth_open=0.07, teeth=1.0)
    if name in ("fear", "disgust") and rng.random() < 0.35:
        deltas["teeth"] = 0.0
    for key, value in deltas.items():
        p[key] += value * intensity * rng.uniform(0.85, 1.15)
    side = 1 if rng.random() < 0.5 else -1  # raised corner for contempt (+1: image right)
    return p, intensity, side


@dataclass(frozen=True)
class _Colours:
    """One identity's colours: skin, its shade, ink (creases and outlines), hair, brows and lips."""

    skin: np.ndarray
    shade: np.ndarray
    ink: np.ndarray
    hair: np.ndarray
    brow: np.ndarray
    lip: np.ndarray


@dataclass(frozen=True)
class _Layout:
    """Where one identity's features sit, in face-local units (eye_x, mouth_w: from the midline)."""

    aspect: float  # face half-width / half-height
    brow_y: float
    eye_x: float
    eye_y: float
    eye_rx: float
    upper_lid: float  # opening of the resting lids
    lower_lid: float
    nose_tip: float
    nose_w: float
    mouth_y: float
    mouth_w: float


def _colours(rng: np.random.Generator) -> _Colours:
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    i0 = int(t)
    skin = _SKIN_TONES[i0] * (1 - (t - i0)) + _SKIN_TONES[min(i0 + 1, len(_SKIN_TONES) - 1)] * (t - i0)
    skin = np.clip(skin + rng.normal(0, 6, 3), 0, 255)
    ink = skin * rng.uniform(0.22, 0.36)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.8, 1.15)
    lip = skin * np.array([0.85, 0.58, 0.58]) + np.array([25, 0, 5]) * rng.uniform(0.3, 1.0)
    return _Colours(skin=skin, shade=skin * 0.82, ink=ink, hair=hair,
                    brow=np.minimum(hair * 0.75, skin * 0.55) * 0.6 + skin * 0.35 * 0.4, lip=lip)


def _layout(rng: np.random.Generator, aspect: float, brow_y: float) -> _Layout:
    # Keyword arguments are evaluated in the order written: the order of the draws, which the data set depends on.
    return _Layout(aspect=aspect, brow_y=brow_y, eye_x=rng.uniform(0.28, 0.35) * (aspect / 0.8) ** 0.5,
                   eye_y=rng.uniform(-0.27, -0.22), eye_rx=rng.uniform(0.11, 0.135), upper_lid=rng.uniform(0.05, 0.065),
                   lower_lid=rng.uniform(0.035, 0.048), nose_tip=rng.uniform(0.1, 0.17), nose_w=rng.uniform(0.06, 0.085),
                   mouth_y=rng.uniform(0.42, 0.48), mouth_w=rng.uniform(0.19, 0.24))


def _chin(p: dict[str, float]) -> float:
    """The chin's height: a dropped jaw lowers it."""
    return 1.0 + p["jaw_drop"]


def _draw_face(cv: _Canvas, rng: np.random.Generator, p: dict[str, float], side: int, aspect: float) -> None:
    """One identity's face wearing the expression `p`, part by part, back to front; the parts draw from `rng` in this
    order, which fixes every image of the data set."""
    colours = _colours(rng)
    brow_y = _draw_head(cv, rng, p, colours, aspect)
    blush = rng.uniform(0, 0.18) if rng.random() < 0.35 else 0.0  # identity blush (rest position)
    face = _layout(rng, aspect, brow_y)
    _draw_cheeks(cv, rng, p, colours, face, blush)
    _draw_brows(cv, rng, p, colours, face)
    _draw_eyes(cv, rng, p, colours, face)
    _draw_nose(cv, rng, p, colours, face)
    lower_lip = _draw_mouth(cv, rng, p, side, colours, face)
    _draw_jaw(cv, p, colours, face, lower_lip)


def _draw_head(cv: _Canvas, rng: np.random.Generator, p: dict[str, float], colours: _Colours, a: float) -> float:
    """Neck, clothes, hair, ears, the face's outline and the forehead lines; returns the height of the brow line."""
    hair_style = rng.choice(["none", "cap", "long"], p=[0.25, 0.45, 0.30])
    hairline = rng.uniform(-0.9, -0.74)
    taper = rng.uniform(0.05, 0.2) * (1 - 0.6 * min(1.0, p["jaw_square"]))
    cloth = rng.uniform(20, 230, 3)
    cv.fill(np.array([[-0.3 * a, 0.5], [0.3 * a, 0.5], [0.36 * a, 1.6], [-0.36 * a, 1.6]]), colours.shade)
    cv.fill(np.concatenate([_ell(0, 1.55, 1.25, 0.45, math.pi, 2 * math.pi), [[1.4, 2.2], [-1.4, 2.2]]]), cloth)
    if hair_style == "long":
        back = np.concatenate([_ell(0, -0.1, a * 1.22, 1.05, math.pi, 2 * math.pi),
                               [[a * 1.25, 0.9], [-a * 1.25, 0.9]]])
        cv.fill(back, colours.hair * 0.85)
    if rng.random() < 0.9:  # ears
        for s in (-1, 1):
            cv.fill(_ell(s * a * 0.97, -0.12, 0.09, 0.17), colours.shade)
            cv.line(_arc(s, s * a * 0.99, -0.12, 0.045, 0.1, -math.pi / 2, math.pi / 2), colours.ink * 1.6, 0.012)
    # face outline (upper half ellipse, tapered lower half to the chin)
    th = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    sin = np.sin(th)
    x = a * np.cos(th) * np.where(sin > 0, 1 - taper * sin ** 2, 1.0)
    y = np.where(sin > 0, sin * _chin(p), sin)
    cv.fill(np.stack([x, y], 1), colours.skin)
    brow_y = rng.uniform(-0.5, -0.45)
    if p["forehead"] > 0.05:  # forehead lines, under the hair
        for j in range(3):
            yy = brow_y - 0.12 - 0.07 * j
            arc = _ell(0, yy + 0.12, 0.32 - 0.03 * j, 0.1, 1.25 * math.pi, 1.75 * math.pi, 14)
            cv.blend_fill([_ribbon(arc, np.full(len(arc), 0.012))], colours.ink, min(0.7, 0.6 * p["forehead"]))
    if hair_style != "none":
        _draw_hair_cap(cv, rng, colours.hair, a, hairline)
    return brow_y


def _draw_hair_cap(cv: _Canvas, rng: np.random.Generator, hair: np.ndarray, a: float, hairline: float) -> None:
    xs = np.linspace(-a * 1.08, a * 1.08, 40)
    line = hairline + (-0.25 - hairline) * np.clip(np.abs(xs) / (a * 1.02), 0, 1) ** 4
    cap_top = _ell(0, 0.0, a * 1.08, 1.07, math.pi, 2 * math.pi)
    cv.fill(np.concatenate([cap_top, np.stack([xs, line], 1)[::-1]]), hair)
    if rng.random() < 0.5:  # a parting or fringe strand
        px = rng.uniform(-0.4, 0.4) * a
        cv.line(np.array([[px, -1.02], [px * 1.2, hairline + 0.02]]), hair * 0.6, 0.02)


def _draw_cheeks(cv: _Canvas, rng: np.random.Generator, p: dict[str, float], colours: _Colours, face: _Layout,
                 blush: float) -> None:
    """Cheek apples (raised in a smile) and the nasolabial folds: faint at rest for some identities, deep in a smile."""
    cheek_col = colours.skin * 0.75 + np.array([255, 120, 120]) * 0.25
    ck = float(np.clip(p["cheek"], 0, 1.2))
    apple_y = 0.2 - 0.09 * ck
    apples = [_ell(sg * (face.eye_x + 0.1), apple_y, 0.14, 0.085 + 0.01 * ck) for sg in (-1, 1)]
    cv.blend_fill(apples, cheek_col, blush + 0.35 * ck)
    if ck > 0.05:
        for sg in (-1, 1):  # lower edge of the raised cheek
            arc = _ell(sg * (face.eye_x + 0.1), apple_y + 0.02, 0.13, 0.09, 0.2 * math.pi, 0.8 * math.pi, 14)
            cv.blend_fill([_ribbon(arc, np.full(len(arc), 0.012 * ck))], colours.ink, 0.55)
    fold_rest = rng.uniform(0, 0.3) if rng.random() < 0.4 else 0.0
    fold = fold_rest + 0.7 * ck
    if fold > 0.03:
        for sg in (-1, 1):
            t_ = np.linspace(0, 1, 12)[:, None]
            p0 = np.array([sg * (face.nose_w + 0.04), face.nose_tip - 0.02])
            p2 = np.array([sg * (face.mouth_w * (1 + p["mouth_w"]) + 0.05), face.mouth_y + 0.03])
            p1 = np.array([sg * (face.nose_w + 0.04 + 0.12 + 0.06 * ck), (p0[1] + p2[1]) / 2])
            curve = (1 - t_) ** 2 * p0 + 2 * (1 - t_) * t_ * p1 + t_ ** 2 * p2
            cv.blend_fill([_ribbon(curve, np.linspace(0.016, 0.004, 12))], colours.ink, min(0.9, fold))


def _draw_brows(cv: _Canvas, rng: np.random.Generator, p: dict[str, float], colours: _Colours, face: _Layout) -> None:
    """Both brows (tapered ribbons) and the vertical frown lines between them."""
    by = face.brow_y
    brow_th = rng.uniform(0.032, 0.055)
    for sg in (-1, 1):
        xi = rng.uniform(0.1, 0.13) - p["brow_inner_x"]
        xo = face.eye_x + face.eye_rx + rng.uniform(0.02, 0.06)
        yi = by + p["brow_y"] + p["brow_inner_y"]
        yo = by + p["brow_y"] + p["brow_outer_y"] + 0.01
        tt = np.linspace(0, 1, 16)
        arch = (0.025 + p["brow_arch"]) * np.sin(math.pi * tt ** 0.8)
        centre = np.stack([sg * (xi + (xo - xi) * tt), yi + (yo - yi) * tt - arch], 1)
        cv.fill(_ribbon(centre, brow_th * (1 - 0.55 * tt ** 1.5)), colours.brow)
    if p["glabella"] > 0.05:
        for sg in (-1, 1):
            gx = sg * 0.035
            cv.blend_fill([_ribbon(np.array([[gx, by + 0.03], [gx * 1.2, by + 0.1]]), np.full(2, 0.013))],
                          colours.ink, min(0.9, p["glabella"]))


def _draw_eyeball(cv: _Canvas, eye_poly: np.ndarray, iris_c: tuple[float, float], iris_r: float, sclera: np.ndarray,
                  iris_col: np.ndarray) -> None:
    cv.fill(eye_poly, sclera)
    cv.fill(_ell(iris_c[0], iris_c[1], iris_r, iris_r, n=24), iris_col)
    cv.fill(_ell(iris_c[0], iris_c[1], iris_r * 0.45, iris_r * 0.45, n=16), (15, 12, 12))
    cv.fill(_ell(iris_c[0] + iris_r * 0.3, iris_c[1] - iris_r * 0.35, iris_r * 0.18, iris_r * 0.18, n=10),
            (250, 250, 250))


def _draw_eyes(cv: _Canvas, rng: np.random.Generator, p: dict[str, float], colours: _Colours, face: _Layout) -> None:
    """Both eyes: the eyeball inside the lids, the lid lines and crease, and the crow's feet of a Duchenne smile."""
    ink, ey, erx = colours.ink, face.eye_y, face.eye_rx
    sclera = np.array([245, 243, 238]) * rng.uniform(0.9, 1.0)
    iris_col = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]
    iris_r = rng.uniform(0.045, 0.055)
    gaze = rng.normal(0, 0.012, 2)
    tilt = rng.uniform(-0.005, 0.02)
    hu = face.upper_lid * max(0.25, 1 + p["eye_upper"])
    hl = face.lower_lid * max(0.2, 1 + p["eye_lower"])
    for sg in (-1, 1):
        cx = sg * face.eye_x
        tt = np.linspace(-1, 1, 25)
        inner = (1 - sg * tt) / 2  # 1 at the corner toward the nose
        xs = cx + erx * tt
        corner_y = ey - tilt * (1 - inner) + tilt * inner
        upper = corner_y - hu * (1 - tt ** 2) ** 0.8 + p["lid_slant"] * 0.025 * inner * (1 - tt ** 2) ** 0.5
        lower = corner_y + hl * (1 - tt ** 2) ** 1.2
        eye_poly = np.concatenate([np.stack([xs, upper], 1), np.stack([xs, lower], 1)[::-1]])
        iris_c = (cx + gaze[0], ey + gaze[1] * 0.5 + 0.004)
        cv.clipped(eye_poly, functools.partial(_draw_eyeball, cv, eye_poly, iris_c, iris_r, sclera, iris_col))
        cv.line(np.stack([xs, upper], 1), ink * 0.6, 0.022 + 0.01 * max(0.0, p["lid_slant"]))
        cv.line(np.stack([xs, lower], 1)[3:-3], ink * 1.3, 0.01)
        # upper-lid crease (eyelid fold); it moves with the lid
        crease = np.stack([xs[3:-3], upper[3:-3] - 0.03 - 0.3 * hu * (1 - tt[3:-3] ** 2)], 1)
        cv.blend_fill([_ribbon(crease, np.full(len(crease), 0.01))], ink, 0.45)
        if p["crow"] > 0.05:
            ox = cx + sg * (erx + 0.02)
            for ang in (-25, 0, 25):
                r = math.radians(ang)
                seg = np.array([[ox, ey], [ox + sg * 0.07 * math.cos(r), ey + 0.07 * math.sin(r)]])
                cv.blend_fill([_ribbon(seg, np.array([0.012, 0.006]))], ink, min(0.8, 0.65 * p["crow"]))
            under = _ell(cx, ey + hl + 0.01, erx * 0.8, 0.035, 0.15 * math.pi, 0.85 * math.pi, 12)
            cv.blend_fill([_ribbon(under, np.full(len(under), 0.011))], ink, min(0.8, 0.6 * p["crow"]))


def _draw_nose(cv: _Canvas, rng: np.random.Generator, p: dict[str, float], colours: _Colours, face: _Layout) -> None:
    """The bridge's shadow on the unlit side, the tip, the wings and nostrils, and the wrinkles of disgust."""
    ink, ey = colours.ink, face.eye_y
    nw = face.nose_w * (1 + p["nose_flare"])
    ny = face.nose_tip + p["nostril_y"]
    light = 1 if rng.random() < 0.5 else -1
    cv.blend_fill([_ribbon(np.array([[light * 0.055, ey + 0.02], [light * 0.065, ny - 0.08]]),
                           np.array([0.008, 0.02]))], ink, 0.35)
    cv.line(_ell(0, ny - 0.02, nw * 0.45, 0.035, 0.15 * math.pi, 0.85 * math.pi, 12), ink, 0.012)
    for sg in (-1, 1):
        cv.line(_arc(sg, sg * nw * 0.85, ny - 0.02, nw * 0.35, 0.045, -0.4 * math.pi, 0.55 * math.pi, 12),
                ink, 0.014)
        cv.fill(_ell(sg * nw * 0.45, ny + 0.005, 0.022, 0.013, n=14), ink * 0.7)
    if p["nose_wrinkle"] > 0.05:
        alpha = min(0.95, 0.8 * p["nose_wrinkle"])
        for j in range(3):
            yy = ey + 0.07 + 0.045 * j
            arc = _ell(0, yy + 0.05, 0.07, 0.05, 1.2 * math.pi, 1.8 * math.pi, 10)
            cv.blend_fill([_ribbon(arc, np.full(len(arc), 0.012))], ink, alpha)
        for sg in (-1, 1):  # wrinkles down the sides of the bridge
            seg = np.array([[sg * 0.07, ey + 0.08], [sg * (nw + 0.035), ny - 0.06]])
            cv.blend_fill([_ribbon(seg, np.array([0.012, 0.008]))], ink, alpha)


def _draw_mouth(cv: _Canvas, rng: np.random.Generator, p: dict[str, float], side: int, colours: _Colours,
                face: _Layout) -> float:
    """Lips, the opening with its teeth, and the skin the corners press or dimple; returns the lower lip's thickness."""
    ink, my = colours.ink, face.mouth_y
    w = face.mouth_w * max(0.4, 1 + p["mouth_w"])
    tt = np.linspace(-1, 1, 41)
    xs = w * tt
    cl = p["corner_up"] + (p["corner_one"] if side < 0 else -p["corner_one"] * 0.15)
    cr = p["corner_up"] + (p["corner_one"] if side > 0 else -p["corner_one"] * 0.15)
    y_line = my - np.where(tt < 0, cl, cr) * tt ** 2
    pe = 2 + 3 * (1 - min(1.0, max(0.0, p["open_round"])))
    prof = np.clip(1 - np.abs(tt) ** pe, 0, 1) ** 0.5
    opening = max(0.0, p["mouth_open"]) + 0.8 * max(0.0, p["jaw_drop"])
    lift = max(0.0, p["upper_lip_raise"]) * np.clip(1 - np.abs(tt / 0.8) ** 3, 0, 1)
    yu = y_line - opening * 0.3 * prof - lift
    yl = y_line + opening * 0.7 * prof
    thin = 1 - min(0.9, max(0.0, p["lip_thin"]))
    th_u = rng.uniform(0.022, 0.035) * thin
    th_l = rng.uniform(0.03, 0.048) * thin
    env = (1 - tt ** 2) ** 0.6
    yuo = yu - th_u * env * (1 - 0.35 * np.exp(-(tt / 0.12) ** 2)) + 0.6 * lift * 0.3
    ylo = yl + th_l * env
    cv.fill(np.concatenate([np.stack([xs, yuo], 1), np.stack([xs, ylo], 1)[::-1]]), colours.lip)
    gap = yl - yu
    if gap.max() > 0.012:
        inner_poly = np.concatenate([np.stack([xs, yu], 1), np.stack([xs, yl], 1)[::-1]])
        cv.fill(inner_poly, (70, 22, 28))
        if p["teeth"] > 0.3:
            teeth_y = yu + np.minimum(gap, 0.035 + 0.3 * lift.max())
            cv.fill(np.concatenate([np.stack([xs, yu], 1), np.stack([xs, teeth_y], 1)[::-1]]), (236, 232, 222))
            if opening > 0.06:  # lower teeth in a wide opening
                cv.fill(np.concatenate([np.stack([xs, yl - np.minimum(gap * 0.3, 0.025)], 1),
                                        np.stack([xs, yl], 1)[::-1]]), (222, 218, 208))
        cv.line(inner_poly, ink * 0.5, 0.008, closed=True)
    else:
        cv.line(np.stack([xs, (yu + yl) / 2], 1), ink * 0.5, 0.014 + 0.016 * min(1.0, max(0.0, p["press"])))
    if p["press"] > 0.05:  # pressed lips bulge the skin at the corners
        for sg in (-1, 1):
            cy_ = my - (cr if sg > 0 else cl)
            seg = np.array([[sg * (w + 0.005), cy_ - 0.02], [sg * (w + 0.02), cy_ + 0.02]])
            cv.blend_fill([_ribbon(seg, np.full(2, 0.012))], ink, min(0.8, 0.7 * p["press"]))
    if p["dimple"] > 0.05:
        cy_ = my - (cr if side > 0 else cl)
        arc = _arc(side, side * (w + 0.015), cy_ - 0.005, 0.025, 0.045, -0.5 * math.pi, 0.5 * math.pi, 10)
        cv.blend_fill([_ribbon(arc, np.full(len(arc), 0.012))], ink, min(0.85, 0.75 * p["dimple"]))
    return th_l


def _draw_jaw(cv: _Canvas, p: dict[str, float], colours: _Colours, face: _Layout, lower_lip: float) -> None:
    """The chin crease and masseters of a clenched jaw, and the stretched chin under a dropped one."""
    ink, a = colours.ink, face.aspect
    if p["chin_crease"] > 0.05:
        yc = face.mouth_y + lower_lip + 0.14
        arc = _ell(0, yc - 0.05, 0.1, 0.05, 0.2 * math.pi, 0.8 * math.pi, 12)
        cv.blend_fill([_ribbon(arc, np.full(len(arc), 0.014))], ink, min(0.85, 0.7 * p["chin_crease"]))
    if p["jaw_square"] > 0.05:
        for sg in (-1, 1):  # clenched masseters
            seg = np.array([[sg * a * 0.8, 0.45], [sg * a * 0.72, 0.7]])
            cv.blend_fill([_ribbon(seg, np.array([0.012, 0.018]))], ink, min(0.7, 0.55 * p["jaw_square"]))
    if p["jaw_drop"] > 0.02:  # stretched chin under the dropped jaw
        arc = _ell(0, _chin(p) - 0.16, 0.12, 0.04, 0.15 * math.pi, 0.85 * math.pi, 12)
        cv.blend_fill([_ribbon(arc, np.full(len(arc), 0.012))], ink, min(0.6, 4 * p["jaw_drop"]))


def render_face(label: int, rng: np.random.Generator, image_size: int = 96) -> tuple[np.ndarray, list[str], float]:
    """RGB uint8 array (image_size, image_size, 3), regions changed by the expression, intensity."""
    label = int(label)
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label must be in [0, {NUM_CLASSES}), got {label}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    # Supersample small images so thin lines keep their relative weight.
    ss = max(2, math.ceil(192 / image_size)) if image_size <= 256 else 1
    size = image_size * ss
    p, intensity, side = _expression_params(label, rng)
    half_h = rng.uniform(0.38, 0.43)       # face half-height / image height: the face fills ~76-86 %
    aspect = rng.uniform(0.72, 0.86)        # face half-width / half-height
    centre = (0.5 + rng.uniform(-0.03, 0.03), 0.53 + rng.uniform(-0.02, 0.02))
    angle = rng.uniform(-10, 10)
    cv = _Canvas(size, (centre[0] * size, centre[1] * size), half_h * size, angle)
    # the background is smooth: draw it at the output size and upsample
    cv.img = cv2.resize(_background(rng, image_size), (size, size), interpolation=cv2.INTER_LINEAR)
    _draw_face(cv, rng, p, side, aspect)
    img = cv2.resize(cv.img, (image_size, image_size), interpolation=cv2.INTER_AREA).astype(np.float32)
    # lighting: a linear gradient and a global gain; then sensor noise
    gx, gy = _grid(image_size)
    a = rng.uniform(0, 2 * math.pi)
    gain = rng.uniform(0.8, 1.15) * (1 + rng.uniform(0, 0.5) * (gx * math.cos(a) + gy * math.sin(a)))
    img *= gain[..., None]
    img += rng.normal(0, rng.uniform(1.0, 6.0), img.shape).astype(np.float32)
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return out, expression_regions(label), intensity


# ---------------------------------------------------------------------------------------------
# Data set
# ---------------------------------------------------------------------------------------------
def _source_hash() -> str:
    try:
        data = Path(__file__).read_bytes()
    except OSError:  # pragma: no cover - frozen / zipped installs
        data = b""
    return hashlib.sha256(data + str(GENERATOR_VERSION).encode()).hexdigest()[:10]


def _features(classes: int = NUM_CLASSES) -> datasets.Features:
    return datasets.Features({
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=list(CLASS_LISTS[classes])),
        "regions": datasets.Sequence(datasets.Value("string")),
        "intensity": datasets.Value("float32"),
        "id": datasets.Value("string"),
    })


def _generate(shards: list[tuple[int, int]], split: str, image_size: int, seed: int, id_width: int,
              classes: int = NUM_CLASSES):
    """Yield the samples of ``shards`` (index ranges); each sample depends on (seed, split, index) only."""
    split_id = SPLIT_IDS[split]
    for start, stop in shards:
        for i in range(start, stop):
            label = i % classes
            image, regions, intensity = render_face(label, np.random.default_rng([seed, split_id, i]), image_size)
            ok, png = cv2.imencode(".png", image[:, :, ::-1])
            if not ok:  # pragma: no cover
                raise RuntimeError("PNG encoding failed")
            yield {
                "image": {"bytes": png.tobytes(), "path": None},
                "label": label,
                "regions": regions,
                "intensity": intensity,
                "id": f"synthetic/{split}/{i:0{id_width}d}",
            }


def _shards(n: int) -> list[tuple[int, int]]:
    """Fixed index ranges (they depend on n only, never on num_proc)."""
    k = max(min(n, 8), math.ceil(n / 256))
    edges = np.linspace(0, n, k + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def load_synthetic(num_train: int, num_val: int, image_size: int = 96, seed: int = 0,
                   cache_dir: str | os.PathLike | None = None,
                   num_proc: int | None = None, classes: int = NUM_CLASSES) -> datasets.DatasetDict:
    """DatasetDict with 'train' and 'validation' splits of synthetic faces, cached as Arrow.

    Features: image (PNG via ``datasets.Image``), label (``ClassLabel(names=CLASS_NAMES)``), regions
    (the facial regions the expression changed), intensity (float32, 0 for neutral) and id
    ('synthetic/train/000123'). Labels are balanced: sample i has label ``i % classes`` (8, or 7 without contempt). The cache lives
    under ``<cache_dir>/synthetic`` (``cache_dir`` as training's --cache-dir, default ``~/.cache/emotion``) in a folder keyed by every argument
    that changes the data and by the generator's source: the same call reuses it, any other builds
    its own. ``num_proc`` only parallelises the build; the images do not depend on it.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    root = Path(cache_dir if cache_dir is not None else DEFAULT_CACHE_DIR).expanduser() / "synthetic"
    code = _source_hash()
    key = f"synthetic_px{image_size}_seed{seed}_train{num_train}_val{num_val}" + \
        ("" if classes == NUM_CLASSES else f"_classes{classes}") + f"_{code}"
    features = _features(classes)
    splits = {}
    for split, n in (("train", num_train), ("validation", num_val)):
        if n == 0:
            splits[split] = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
            continue
        shards = _shards(n)
        fingerprint = hashlib.sha256(f"synthetic|{key}|{split}".encode()).hexdigest()[:16]
        nproc = min(num_proc or 1, len(shards))
        splits[split] = datasets.Dataset.from_generator(
            _generate,
            features=features,
            cache_dir=str(root / key),
            gen_kwargs={"shards": shards, "split": split, "image_size": int(image_size), "seed": int(seed),
                        "id_width": max(6, len(str(n - 1))), "classes": classes},
            num_proc=nproc if nproc > 1 else None,
            split=datasets.NamedSplit(split),
            fingerprint=fingerprint,
        )
    return datasets.DatasetDict(splits)


def save_preview_grid(path: str | os.PathLike, image_size: int = 96, per_class: int = 6, seed: int = 0) -> Path:
    """Write a PNG grid of faces (one row per class, labelled with the class name); return its path."""
    pad = 4
    label_w = max(90, image_size)
    rows = []
    for label, name in enumerate(CLASS_NAMES):
        row = np.full((image_size + 2 * pad, label_w + per_class * (image_size + pad) + pad, 3), 255, np.uint8)
        cv2.putText(row, name, (6, image_size // 2 + pad + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
        for j in range(per_class):
            img, _, k = render_face(label, np.random.default_rng([seed, _PREVIEW_SPLIT_ID, label, j]), image_size)
            x = label_w + j * (image_size + pad)
            row[pad:pad + image_size, x:x + image_size] = img
            if k > 0:
                cv2.putText(row, f"{k:.2f}", (x + 2, pad + image_size - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                            (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    grid = np.concatenate(rows, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), grid[:, :, ::-1]):
        raise OSError(f"could not write {path}")
    return path

"""Facial regions -> facial-action prototype phrase ("Brows Down + Lids Tight -> Anger"), weighed by occlusion or attention.

Pure functions on numpy arrays (and one OpenCV blur). Every face crop follows one canonical layout (the synthetic
generator's; the face pipeline crops a detected face by training's rule, emotion.faces.crop_region), given as
fractions of the crop: brows y 0.25-0.38, eyes 0.35-0.48, nose 0.45-0.62, cheeks 0.5-0.7 at the sides, mouth
0.65-0.8, jaw 0.78-0.95.

Occlusion (the default, `occluded_copies` + `occlusion_weights`): a region's weight is the predicted class's
probability on the face over its probability with that region blurred away, so it says what the decision rests on
whatever the attention map does. Across training seeds of the `cpu` preset this points at the regions the synthetic
expression changed far more often than the attention does (docs/learning.md, "Explanations by occlusion").

Attention: a region's weight is its attention *lift*, the attention mass inside it divided by its area, so 1.0 means
"as much as a uniform map would give" and regions of different sizes compare fairly. Given the model's attention on
neutral faces (the `attention_prior` a trained model keeps in its config), the lift is taken relative to it: facial
actions are departures from the resting face, and a model looks at some places (often the face's centre) whatever the
expression. How well this follows the expression depends on the training seed and the grid (0-55% agreement over
ten seeds of the 64-px `cpu` preset, against 71-83% by occlusion).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

import cv2
import numpy as np

from emotion.labels import ACTION_PROTOTYPES, CLASS_NAMES, FACE_REGIONS, NUM_CLASSES, ONE_SIDED_CLASSES

# Canonical face-crop layout: region -> rectangles (x0, y0, x1, y1) as fractions of the crop side.
REGION_LAYOUT: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "brows": ((0.18, 0.25, 0.82, 0.38),),
    "eyes": ((0.18, 0.35, 0.82, 0.48),),
    "nose": ((0.38, 0.45, 0.62, 0.62),),
    "cheeks": ((0.14, 0.50, 0.38, 0.70), (0.62, 0.50, 0.86, 0.70)),
    "mouth": ((0.30, 0.65, 0.70, 0.80),),
    "jaw": ((0.20, 0.78, 0.80, 0.95),),
}

# FACS action units the prototypes use: number -> (name, region where it shows, words in the phrase).
ACTION_UNITS: dict[int, tuple[str, str, str]] = {
    1: ("inner brow raiser", "brows", "Inner Brows Up"),
    2: ("outer brow raiser", "brows", "Brows Raised"),
    4: ("brow lowerer", "brows", "Brows Down"),
    5: ("upper lid raiser", "eyes", "Eyes Wide"),
    6: ("cheek raiser", "cheeks", "Cheeks Raised"),
    7: ("lid tightener", "eyes", "Lids Tight"),
    9: ("nose wrinkler", "nose", "Nose Wrinkled"),
    12: ("lip corner puller", "mouth", "Lip Corners Up"),
    14: ("dimpler", "mouth", "Dimple"),
    15: ("lip corner depressor", "mouth", "Lip Corners Down"),
    16: ("lower lip depressor", "mouth", "Lower Lip Down"),
    20: ("lip stretcher", "mouth", "Lips Stretched"),
    23: ("lip tightener", "mouth", "Lips Tight"),
    26: ("jaw drop", "jaw", "Jaw Dropped"),
}

if set(ACTION_PROTOTYPES) != set(CLASS_NAMES) or not {au for p in ACTION_PROTOTYPES.values() for au in p} <= set(ACTION_UNITS):
    raise RuntimeError("ACTION_PROTOTYPES in labels.py must cover every class with known action units")  # pragma: no cover
if set(REGION_LAYOUT) != set(FACE_REGIONS):  # pragma: no cover - guards edits of labels.py
    raise RuntimeError(f"REGION_LAYOUT {sorted(REGION_LAYOUT)} does not match FACE_REGIONS {FACE_REGIONS}")

# Thresholds: a region supports an action when its lift reaches SUPPORT_LIFT; below MIN_CONFIDENCE we do not explain.
SUPPORT_LIFT = 1.0
MIN_CONFIDENCE = 0.4
# Where the region weights come from: hiding each region in turn (faithful, 6 extra model passes) or the attention map.
EXPLAIN_BY = ("occlusion", "attention")
# Occlusion evidence: a region supports an action when hiding it lowers the predicted class's probability by 10% or more.
SUPPORT_OCCLUSION = 1.1
# Sigma of the blur that hides a region, as a fraction of the crop side: fine lines go, the features' shapes stay;
# at 1/8 the eyes vanished into a flat band the model never saw, and that, not their evidence, decided the weights.
OCCLUSION_BLUR = 1 / 16
MAX_ACTIONS_IN_PHRASE = 3


@dataclass(frozen=True)
class Explanation:
    label: str
    confidence: float
    phrase: str                      # what the overlay and the JSON show
    status: str                      # supported | unsupported | low_confidence | neutral
    top_region: str                  # the region with the highest weight
    region_weights: dict[str, float] # per region, FACE_REGIONS order: occlusion evidence or attention lift (`source`)
    actions: list[str] = field(default_factory=list)  # "AU4 brow lowerer" for each action the phrase names
    source: str = "attention"        # what the weights measure: occlusion | attention

    @property
    def supported(self) -> bool:
        return self.status in ("supported", "neutral")

    def to_dict(self) -> dict:
        return asdict(self)


def _overlap_1d(a0: np.ndarray, a1: np.ndarray, b0: float, b1: float) -> np.ndarray:
    return np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None)


def region_coverage(grid_h: int, grid_w: int) -> dict[str, np.ndarray]:
    """Per region, the fraction of each attention cell's area that lies inside it, shape (grid_h, grid_w)."""
    ys = np.arange(grid_h + 1) / grid_h
    xs = np.arange(grid_w + 1) / grid_w
    cell_area = 1.0 / (grid_h * grid_w)
    coverage = {}
    for region, rects in REGION_LAYOUT.items():
        cover = np.zeros((grid_h, grid_w))
        for x0, y0, x1, y1 in rects:
            cover += np.outer(_overlap_1d(ys[:-1], ys[1:], y0, y1), _overlap_1d(xs[:-1], xs[1:], x0, x1)) / cell_area
        coverage[region] = cover
    return coverage


@lru_cache(maxsize=16)
def _lift_matrix(grid_h: int, grid_w: int) -> np.ndarray:
    """(regions, cells): a normalised map's lift per region is this matrix times the flattened map."""
    # lift = mass inside / area, and area = covered cell fractions / cell count
    matrix = np.stack([cover.ravel() * (grid_h * grid_w / cover.sum()) for cover in region_coverage(grid_h, grid_w).values()])
    matrix.flags.writeable = False
    return matrix


def region_weights(attention: np.ndarray, baseline: dict[str, float] | None = None) -> dict[str, float]:
    """Attention lift per facial region for one (H, W) map over the face crop.

    1.0 = uniform attention; with `baseline` (the region weights of the model's neutral-face attention,
    see `baseline_weights`), 1.0 = as much as the model gives that region on a neutral face.
    """
    attention = np.asarray(attention, dtype=np.float64)
    if attention.ndim != 2 or attention.size == 0:
        raise ValueError(f"attention must be a 2-D map, got shape {attention.shape}")
    total = attention.sum()
    attention = attention / total if total > 0 else np.full_like(attention, 1.0 / attention.size)
    lifts = _lift_matrix(*attention.shape) @ attention.ravel()
    weights = dict(zip(REGION_LAYOUT, lifts.tolist()))
    if baseline is not None:
        weights = {region: weight / max(baseline[region], 1e-6) for region, weight in weights.items()}
    return weights


def occluded_copies(crop: np.ndarray) -> list[np.ndarray]:
    """One copy of a face crop (H, W, 3, canonical layout) per facial region, FACE_REGIONS order, with that region hidden
    under a blur of the crop (sigma OCCLUSION_BLUR of its side): the region's lines and creases go, its shapes stay."""
    height, width = crop.shape[:2]
    blurred = cv2.GaussianBlur(crop, (0, 0), OCCLUSION_BLUR * height)
    copies = []
    for region in FACE_REGIONS:
        copy = crop.copy()
        for x0, y0, x1, y1 in REGION_LAYOUT[region]:
            rows = slice(int(round(y0 * height)), int(round(y1 * height)))
            cols = slice(int(round(x0 * width)), int(round(x1 * width)))
            copy[rows, cols] = blurred[rows, cols]
        copies.append(copy)
    return copies


def occlusion_weights(probabilities: np.ndarray, occluded: np.ndarray) -> dict[str, float]:
    """Occlusion evidence per region: the predicted class's probability on the face over its probability with that
    region hidden (`occluded`: one row per region, FACE_REGIONS order, as `occluded_copies` makes them).
    1.0 = hiding the region changes nothing; 2.0 = it halves the class's probability; below 1 the region speaks against it."""
    probabilities, occluded = np.asarray(probabilities, np.float64), np.asarray(occluded, np.float64)
    if occluded.shape != (len(FACE_REGIONS), probabilities.shape[0]):
        raise ValueError(f"expected {len(FACE_REGIONS)} x {probabilities.shape[0]} occluded probabilities, got {occluded.shape}")
    index = int(probabilities.argmax())
    ratios = probabilities[index] / np.clip(occluded[:, index], 1e-9, None)
    return dict(zip(FACE_REGIONS, ratios.tolist()))


def baseline_weights(attention_prior) -> dict[str, float] | None:
    """Region weights of a model's mean attention on neutral faces (config `attention_prior`), or None without one."""
    return None if attention_prior is None else region_weights(np.asarray(attention_prior, dtype=np.float64))


def top_region(weights: dict[str, float]) -> str:
    """The highest-lift region; ties go to the first in FACE_REGIONS order."""
    return max(FACE_REGIONS, key=lambda r: (weights[r], -FACE_REGIONS.index(r)))


def explain(probabilities: Sequence[float], attention: np.ndarray, min_confidence: float = MIN_CONFIDENCE,
            support_lift: float = SUPPORT_LIFT, baseline: dict[str, float] | None = None,
            class_names: Sequence[str] = CLASS_NAMES, evidence: dict[str, float] | None = None) -> Explanation:
    """The phrase and the region weights behind it, for one face's class probabilities and attention map.

    `evidence`: occlusion weights (`occlusion_weights`); when given, they are the region weights and a region backs
    an action at SUPPORT_OCCLUSION. Otherwise the weights are the attention's lifts, relative to `baseline` (region
    weights of the model's neutral-face attention, `baseline_weights`) when given, and a region backs an action at
    `support_lift`. `class_names`: the model's classes (its config.json), in the order of `probabilities`. Only
    actions of the predicted class whose region backs them are named, strongest first; when none is, or the
    confidence is below min_confidence, the phrase says so.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(class_names),):
        raise ValueError(f"expected {len(class_names)} probabilities, got shape {probabilities.shape}")
    index = int(probabilities.argmax())
    label, confidence = class_names[index], float(probabilities[index])
    if evidence is not None:
        weights, source, support_lift = {r: float(evidence[r]) for r in FACE_REGIONS}, "occlusion", SUPPORT_OCCLUSION
    else:
        weights, source = region_weights(attention, baseline), "attention"
    top = top_region(weights)
    title = label.capitalize()
    common = dict(label=label, confidence=confidence, top_region=top, region_weights=weights, source=source)
    if confidence < min_confidence:
        return Explanation(phrase=f"Unsure: maybe {title} ({confidence:.0%})", status="low_confidence", **common)
    prototype = ACTION_PROTOTYPES[label]
    if not prototype:
        return Explanation(phrase=f"No facial action -> {title}", status="neutral", **common)
    backed = [au for au in prototype if weights[ACTION_UNITS[au][1]] >= support_lift]
    if not backed:
        expected = sorted({ACTION_UNITS[au][1] for au in prototype}, key=FACE_REGIONS.index)
        focus = "the decision rests on" if source == "occlusion" else "attention is on"
        return Explanation(phrase=f"{title}, but {focus} the {top}, not the {'/'.join(expected)}",
                           status="unsupported", **common)
    # Strongest region first; within a region, the prototype's own order.
    backed.sort(key=lambda au: -weights[ACTION_UNITS[au][1]])
    backed = backed[:MAX_ACTIONS_IN_PHRASE]
    side = "One-Sided " if label in ONE_SIDED_CLASSES else ""
    words = " + ".join(side + ACTION_UNITS[au][2] for au in backed)
    return Explanation(phrase=f"{words} -> {title}", status="supported",
                       actions=[f"AU{au} {ACTION_UNITS[au][0]}" for au in backed], **common)


def prototype_regions(class_name: str) -> list[str]:
    """The facial regions where the class's prototype actions show (FACS; ACTION_PROTOTYPES): the regions an
    explanation of a real face is expected to name, where no generator says what changed."""
    return sorted({ACTION_UNITS[unit][1] for unit in ACTION_PROTOTYPES[class_name]})


def agreement_by_class(weights: Iterable[dict[str, float]], labels: Iterable[int],
                       changed: Iterable[Sequence[str]]) -> dict[str, dict[str, float] | None]:
    """Per true class, how well each face's region weights (occlusion or attention) point at what the expression changed.

    `changed` holds the ground-truth regions of each face (the synthetic set's `regions` column). Per class:
    agreement: share of faces whose top region is a changed one; chance: what a uniformly random region would
    score (the bar agreement has to clear); contrast: share of faces whose changed regions average a higher lift
    than the unchanged ones (0.5 = no signal; sharper than agreement, which an always-'mouth' map would win,
    since every non-neutral class changes the mouth); faces. Classes that change no region (neutral) or have
    no faces get None; 'overall' pools every class that counts.
    """
    rows: dict[int, list[tuple[float, float, float]]] = {i: [] for i in range(NUM_CLASSES)}
    for face_weights, label, truth in zip(weights, labels, changed):
        truth = set(truth)
        if not truth:
            continue
        others = [face_weights[r] for r in FACE_REGIONS if r not in truth]
        inside = np.mean([face_weights[r] for r in truth])
        rows[int(label)].append((float(top_region(face_weights) in truth), len(truth) / len(FACE_REGIONS),
                                 float(not others or inside > np.mean(others))))

    def summary(faces: list[tuple[float, float, float]]) -> dict[str, float] | None:
        if not faces:
            return None
        agreement, chance, contrast = np.mean(faces, axis=0)
        return {"agreement": float(agreement), "chance": float(chance), "contrast": float(contrast), "faces": len(faces)}

    table = {name: summary(rows[i]) for i, name in enumerate(CLASS_NAMES)}
    table["overall"] = summary([face for faces in rows.values() for face in faces])
    return table

"""Attention -> facial regions -> facial-action prototype phrase ("Brows Down + Lids Tight -> Anger").

Pure functions on numpy arrays. The spatial attention map (H x W cells, summing to 1) covers the square
face crop the model saw; every crop follows one canonical layout (the synthetic generator's, which the
demo's Haar crops are margined to match), given as fractions of the crop:
brows y 0.25-0.38, eyes 0.35-0.48, nose 0.45-0.62, cheeks 0.5-0.7 at the sides, mouth 0.65-0.8, jaw 0.78-0.95.

A region's weight is its attention *lift*: the attention mass inside it divided by its area, so 1.0 means
"as much as a uniform map would give" and regions of different sizes compare fairly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

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
MAX_ACTIONS_IN_PHRASE = 3


@dataclass(frozen=True)
class Explanation:
    label: str
    confidence: float
    phrase: str                      # what the overlay and the JSON show
    status: str                      # supported | unsupported | low_confidence | neutral
    top_region: str                  # the region the attention favours most (highest lift)
    region_weights: dict[str, float] # lift per region, FACE_REGIONS order
    actions: list[str] = field(default_factory=list)  # "AU4 brow lowerer" for each action the phrase names

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


def region_weights(attention: np.ndarray) -> dict[str, float]:
    """Attention lift per facial region (1.0 = uniform attention) for one (H, W) map over the face crop."""
    attention = np.asarray(attention, dtype=np.float64)
    if attention.ndim != 2 or attention.size == 0:
        raise ValueError(f"attention must be a 2-D map, got shape {attention.shape}")
    total = attention.sum()
    attention = attention / total if total > 0 else np.full_like(attention, 1.0 / attention.size)
    cell_area = 1.0 / attention.size
    weights = {}
    for region, cover in region_coverage(*attention.shape).items():
        area = cover.sum() * cell_area
        weights[region] = float((attention * cover).sum() / area)
    return weights


def top_region(weights: dict[str, float]) -> str:
    """The highest-lift region; ties go to the first in FACE_REGIONS order."""
    return max(FACE_REGIONS, key=lambda r: (weights[r], -FACE_REGIONS.index(r)))


def explain(probabilities: Sequence[float], attention: np.ndarray, min_confidence: float = MIN_CONFIDENCE,
            support_lift: float = SUPPORT_LIFT) -> Explanation:
    """The phrase and the region weights behind it, for one face's class probabilities and attention map.

    Only actions of the predicted class whose region the attention favours (lift >= support_lift) are named,
    strongest first; when none is, or the confidence is below min_confidence, the phrase says so.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (NUM_CLASSES,):
        raise ValueError(f"expected {NUM_CLASSES} probabilities, got shape {probabilities.shape}")
    index = int(probabilities.argmax())
    label, confidence = CLASS_NAMES[index], float(probabilities[index])
    weights = region_weights(attention)
    top = top_region(weights)
    title = label.capitalize()
    common = dict(label=label, confidence=confidence, top_region=top, region_weights=weights)
    if confidence < min_confidence:
        return Explanation(phrase=f"Unsure: maybe {title} ({confidence:.0%})", status="low_confidence", **common)
    prototype = ACTION_PROTOTYPES[label]
    if not prototype:
        return Explanation(phrase=f"No facial action -> {title}", status="neutral", **common)
    backed = [au for au in prototype if weights[ACTION_UNITS[au][1]] >= support_lift]
    if not backed:
        expected = sorted({ACTION_UNITS[au][1] for au in prototype}, key=FACE_REGIONS.index)
        return Explanation(phrase=f"{title}, but attention is on the {top}, not the {'/'.join(expected)}",
                           status="unsupported", **common)
    # Strongest region first; within a region, the prototype's own order.
    backed.sort(key=lambda au: -weights[ACTION_UNITS[au][1]])
    backed = backed[:MAX_ACTIONS_IN_PHRASE]
    side = "One-Sided " if label in ONE_SIDED_CLASSES else ""
    words = " + ".join(side + ACTION_UNITS[au][2] for au in backed)
    return Explanation(phrase=f"{words} -> {title}", status="supported",
                       actions=[f"AU{au} {ACTION_UNITS[au][0]}" for au in backed], **common)


def agreement_by_class(top_regions: Iterable[str], labels: Iterable[int],
                       changed: Iterable[Sequence[str]]) -> dict[str, float | None]:
    """Share of samples per true class whose top attention region is one the expression changed.

    `changed` holds the ground-truth regions of each sample (the synthetic set's `regions` column). Classes
    that change no region (neutral) or have no samples get None; 'overall' pools every class that counts.
    """
    hits = np.zeros(NUM_CLASSES)
    counts = np.zeros(NUM_CLASSES)
    for region, label, truth in zip(top_regions, labels, changed):
        if truth:
            counts[label] += 1
            hits[label] += region in truth
    table: dict[str, float | None] = {
        name: (float(hits[i] / counts[i]) if counts[i] else None) for i, name in enumerate(CLASS_NAMES)
    }
    table["overall"] = float(hits.sum() / counts.sum()) if counts.sum() else None
    return table

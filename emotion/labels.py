"""The 8 expression classes in AffectNet order: the one source of truth for class ids and names."""
from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
NUM_CLASSES = len(CLASS_NAMES)
CLASS_TO_ID: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
# AffectNet-7: contempt (the last id) dropped, so the ids of the other seven stay the same.
CLASS_NAMES_7: tuple[str, ...] = CLASS_NAMES[:7]
CLASS_LISTS: dict[int, tuple[str, ...]] = {8: CLASS_NAMES, 7: CLASS_NAMES_7}

# The reference runs log beside their own figure: DDAMFN's supervised AffectNet-8 validation accuracy (docs/datasets.md).
PUBLISHED_AFFECTNET8_BEST = 64.25
# AffectNet-7 (3,500 validation images): QCS, arXiv 2411.01988 (best row of the published AffectNet-7 figures).
PUBLISHED_AFFECTNET7_BEST = 67.94

# How data sets number their classes (number -> class name): their own order, not the canonical one.
LABEL_ORDERS: dict[str, dict[int, str]] = {
    "affectnet": dict(enumerate(CLASS_NAMES)),
    "rafdb": {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "anger", 7: "neutral"},
    "fer2013": {0: "anger", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"},
}

# Spellings used by public data sets (FER2013, RAF-DB, CK+, ExpW, AffectNet exports).
ALIASES: dict[str, str] = {
    "neutrality": "neutral", "calm": "neutral",
    "happiness": "happy", "happy": "happy", "joy": "happy",
    "sadness": "sad", "sad": "sad",
    "surprised": "surprise", "surprise": "surprise",
    "fearful": "fear", "afraid": "fear", "scared": "fear",
    "disgusted": "disgust", "disgust": "disgust",
    "angry": "anger", "anger": "anger", "mad": "anger",
    "contemptuous": "contempt", "contempt": "contempt",
}

# Facial regions the explanation speaks about, top of the face to the bottom.
FACE_REGIONS: tuple[str, ...] = ("brows", "eyes", "nose", "cheeks", "mouth", "jaw")
# Classes whose prototype acts on one side of the face only (contempt: one lip corner).
ONE_SIDED_CLASSES: tuple[str, ...] = ("contempt",)


def canonical_label(name: str) -> int | None:
    """Map a class name or alias (any case, '_'/'-'/' ' ignored) to its AffectNet id, or None."""
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    key = ALIASES.get(key, key)
    return CLASS_TO_ID.get(key)


def label_order(spec: str) -> dict[int, int]:
    """Number -> canonical id for a set's numbering (affectnet, rafdb, fer2013) or a comma list of class names
    numbered from 0; ValueError naming the entry that maps to no class."""
    if spec.strip().lower() in LABEL_ORDERS:
        return {number: CLASS_TO_ID[name] for number, name in LABEL_ORDERS[spec.strip().lower()].items()}
    order = {}
    for number, name in enumerate(spec.split(",")):
        label = canonical_label(name)
        if label is None:
            raise ValueError(f"{name.strip()!r} is none of {', '.join(CLASS_NAMES)}")
        order[number] = label
    return order

# Facial-action (FACS action unit) prototype of each class, as the explanation reads it.
# Contempt's AU12 / AU14 are one-sided; neutral shows no action.
ACTION_PROTOTYPES: dict[str, tuple[int, ...]] = {
    "neutral": (),
    "happy": (6, 12),
    "sad": (1, 4, 15),
    "surprise": (1, 2, 5, 26),
    "fear": (1, 2, 4, 5, 20, 26),
    "disgust": (9, 15, 16),
    "anger": (4, 7, 23),
    "contempt": (12, 14),
}

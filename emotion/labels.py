"""The 8 expression classes in AffectNet order: the one source of truth for class ids and names."""
from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
NUM_CLASSES = len(CLASS_NAMES)
CLASS_TO_ID: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

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

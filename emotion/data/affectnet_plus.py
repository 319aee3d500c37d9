"""AffectNet+ (arXiv 2410.22506): human_annotated/{train_set,validation_set}/{images,annotations}/<n>.jpg|.json.

Images are face crops already. Each JSON holds, as released, `human-label` (0-10, AffectNet ids), `soft-label` (8
probabilities in canonical order), `subset` (0 easy, 1 challenging, 2 difficult) and `meta-data` (age, valence,
arousal, ...). Key spellings vary between releases: every known variant is accepted; a release with none is a
one-line error. `--subset` filters training only: validation stays the full set, the one the published table uses.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from emotion.data.affectnet import affect_value, keep_label
from emotion.data.imagefolder import IMAGE_SUFFIXES
from emotion.data.prepare import Issues, Record, Source, whole_number
from emotion.errors import EmotionError
from emotion.labels import NUM_CLASSES, canonical_label

HARD_KEYS = ("human-label", "human_label", "humanLabel", "human label", "hard-label", "hard_label", "label", "expression")
SOFT_KEYS = ("soft-label", "soft_label", "softLabel", "soft label", "soft-labels", "soft_labels", "soft")
SUBSET_KEYS = ("subset", "sub-set", "sub_set", "difficulty", "category")
META_KEYS = ("meta-data", "meta_data", "metadata", "metaData", "meta")
SUBSETS = ("easy", "challenging", "difficult")  # the release's subset codes 0, 1, 2
SPLIT_FOLDERS = {"train": ("train_set", "train"), "validation": ("validation_set", "val_set", "validation", "val")}
LAYOUT = "human_annotated/{train_set,validation_set}/{images,annotations}/<n>.jpg|.json"


def _first(data: dict, keys: tuple[str, ...]):
    return next((data[k] for k in keys if k in data), None)


def parse_soft(value) -> list[float] | None:
    """8 probabilities in canonical order (a list, or a dict keyed by class name), normalised to sum 1; None if unusable."""
    if isinstance(value, dict):
        probs = [0.0] * NUM_CLASSES
        for name, p in value.items():
            label = whole_number(name) if str(name).isdecimal() else canonical_label(str(name))
            if label is None or not 0 <= label < NUM_CLASSES:
                return None
            probs[label] = p
        value = probs
    if not isinstance(value, list) or len(value) != NUM_CLASSES:
        return None
    try:
        probs = [float(p) for p in value]
    except (TypeError, ValueError, OverflowError):
        return None
    total = sum(probs)
    if not all(math.isfinite(p) and p >= 0 for p in probs) or not 0 < total < math.inf:
        return None
    return [p / total for p in probs]


def subset_name(value) -> str:
    """'easy' | 'challenging' | 'difficult' from the release's code (0, 1, 2) or a name; '' when neither."""
    text = str(value).strip().lower()
    return {str(code): name for code, name in enumerate(SUBSETS)}.get(text, text)


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def read_split(folder: Path, split: str, subset: str, source: Source, found: dict[str, int]) -> list[Record]:
    skipped, excluded = source.skipped[split], source.excluded[split]
    images = {p.stem: p for p in sorted((folder / "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES} \
        if (folder / "images").is_dir() else {}
    annotations = sorted((folder / "annotations").glob("*.json")) if (folder / "annotations").is_dir() else []
    if not annotations:
        raise EmotionError(f"no annotation files in {folder / 'annotations'}: expected the AffectNet+ layout {LAYOUT}")
    records = []
    for path in annotations:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # also a 5,000-digit number or nesting 100,000 deep
            skipped.add("bad_annotation", str(path))
            continue
        if not isinstance(data, dict):
            skipped.add("bad_annotation", str(path))
            continue
        hard, soft_value, subset_value = _first(data, HARD_KEYS), _first(data, SOFT_KEYS), _first(data, SUBSET_KEYS)
        meta = _first(data, META_KEYS)
        meta = meta if isinstance(meta, dict) else {}
        found["hard"] += hard is not None
        found["soft"] += soft_value is not None
        found["subset"] += subset_value is not None
        found.setdefault("example_keys", ", ".join(sorted(data)[:12]))
        image = images.get(path.stem, folder / "images" / f"{path.stem}.jpg")
        if hard is None:
            skipped.add("missing_label_key", str(path))
            continue
        label = whole_number(hard)
        if label is None:  # true, 3.9, "x": not an expression code, though int() would take the first two
            skipped.add("bad_label", str(path))
            continue
        if not keep_label(label, str(path), skipped, excluded):
            continue
        if subset != "all" and subset_name(subset_value) != subset:
            excluded.add("other_subset", str(path))
            continue
        soft = None
        if soft_value is not None:
            soft = parse_soft(soft_value)
            if soft is None:
                skipped.add("bad_soft_label", str(path))
                continue
        records.append(Record(path=str(image), label=label, id=f"{split}/{path.stem}", soft_label=soft,
                              valence=affect_value(meta.get("valence")), arousal=affect_value(meta.get("arousal"))))
    return records


def read_affectnet_plus(config) -> Source:
    given = Path(config.data_dir).expanduser()
    if not given.is_dir():
        raise EmotionError(f"--data-dir {given} is not a folder: expected the AffectNet+ release ({LAYOUT})")
    root = given / "human_annotated" if (given / "human_annotated").is_dir() else given
    source = Source(dataset="affectnet_plus", root=given, splits={}, options={"subset": config.subset})
    found = {"hard": 0, "soft": 0, "subset": 0}
    for split, names in SPLIT_FOLDERS.items():
        folder = _find(root, names)
        if folder is None:
            raise EmotionError(f"no {names[0]}/ folder in {root}: expected the AffectNet+ layout {LAYOUT}")
        # The published figures use the full validation set: a subset filters what the model trains on, nothing else.
        source.splits[split] = read_split(folder, split, config.subset if split == "train" else "all", source, found)
    keys = found.get("example_keys", "")
    if found["hard"] == 0:
        raise EmotionError(f"no known hard-label key in the JSON files under {root} (keys seen: {keys}): expected one of "
                           f"{', '.join(HARD_KEYS)}")
    if config.soft_labels and found["soft"] == 0:
        raise EmotionError(f"--soft-labels: no known soft-label key in the JSON files under {root} (keys seen: {keys}): "
                           f"expected one of {', '.join(SOFT_KEYS)}, or drop --soft-labels")
    if config.subset != "all" and found["subset"] == 0:
        raise EmotionError(f"--subset {config.subset}: the JSON files under {root} mark no subset (keys seen: {keys}): "
                           f"expected one of {', '.join(SUBSET_KEYS)}, or use --subset all")
    if found["soft"]:
        for records in source.splits.values():
            for r in records:
                if r.soft_label is None:  # a row without one trains on its hard label as a one-hot distribution
                    r.soft_label = [float(i == r.label) for i in range(NUM_CLASSES)]
    return source

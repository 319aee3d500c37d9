"""Folder-per-class sets (FER2013, RAF-DB, CK+, JAFFE, ExpW exports): root/[train|val|test]/<class>/*, or root/<class>/*.

Class folders map by name (aliases included) to the canonical 8. Split folders are used when present; otherwise,
or when only a train folder exists, a seeded stratified split holds out `val_fraction` of each class.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from emotion.data.prepare import Issues, Record, Source
from emotion.errors import EmotionError
from emotion.labels import CLASS_NAMES, canonical_label

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"})
SPLIT_FOLDERS = {"train": ("train", "training"), "validation": ("val", "validation", "valid", "test", "testing")}
LAYOUT = "root/[train|val]/<class name>/*.jpg or root/<class name>/*.jpg"


def _subfolders(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _split_folder(folders: dict[str, Path], split: str) -> Path | None:
    return next((folders[name] for name in SPLIT_FOLDERS[split] if name in folders), None)


def _read_classes(folder: Path, split: str, drop_unknown: bool, skipped: Issues, excluded: Issues) -> list[Record]:
    records = []
    for class_dir in _subfolders(folder).values():
        label = canonical_label(class_dir.name)
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        if label is None:
            if not drop_unknown:
                raise EmotionError(f"class folder {class_dir} maps to none of {', '.join(CLASS_NAMES)}: rename it to one "
                                   f"of them (or an alias) or pass --drop-unknown-classes true")
            for path in files:
                excluded.add(f"unknown_class_{class_dir.name}", str(path))
            continue
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped.add("not_an_image_file", str(path))
                continue
            records.append(Record(path=str(path), label=label, id=f"{split}/{path.relative_to(folder).as_posix()}"))
    return records


def stratified_split(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out round(fraction * n) of each class (at least one when the class has two or more), seeded."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for label in sorted({r.label for r in records}):
        members = [r for r in records if r.label == label]
        order = rng.permutation(len(members))
        n_held = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
        held_idx = set(order[:n_held].tolist())
        for i, record in enumerate(members):
            (held if i in held_idx else train).append(record)
    return train, held


def read_imagefolder(config) -> Source:
    root = Path(config.data_dir).expanduser()
    if not root.is_dir():
        raise EmotionError(f"--data-dir {root} is not a folder: expected a folder-per-class data set ({LAYOUT})")
    options = {"val_fraction": config.val_fraction, "drop_unknown_classes": config.drop_unknown_classes}
    source = Source(dataset="imagefolder", root=root, splits={}, options=options)
    folders = _subfolders(root)
    train_dir = _split_folder(folders, "train")
    if train_dir is None:
        everything = _read_classes(root, "all", config.drop_unknown_classes, source.skipped["train"], source.excluded["train"])
        train, validation = stratified_split(everything, config.val_fraction, config.seed)
        options["split"] = f"stratified seed {config.seed}"
    else:
        train = _read_classes(train_dir, "train", config.drop_unknown_classes, source.skipped["train"], source.excluded["train"])
        val_dir = _split_folder(folders, "validation")
        if val_dir is None:
            train, validation = stratified_split(train, config.val_fraction, config.seed)
            options["split"] = f"stratified seed {config.seed}"
        else:
            validation = _read_classes(val_dir, "validation", config.drop_unknown_classes, source.skipped["validation"],
                                       source.excluded["validation"])
            options["split"] = f"folders {train_dir.name}/{val_dir.name}"
    if not train:
        raise EmotionError(f"no images found under {root}: expected a folder-per-class data set ({LAYOUT})")
    source.splits = {"train": train, "validation": validation}
    return source

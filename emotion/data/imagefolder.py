"""Folder-per-class sets (FER2013, RAF-DB, CK+, JAFFE, ExpW exports): root/{train,val,test}/<class>/*, or root/<class>/*.

Class folders map by name (aliases included) to the canonical 8. A numbered name (`0_neutral` ... `7_contempt`) maps by
its name and its number must be that name's canonical id. Bare numbers (`1`..`7` of RAF-DB re-packs, `0`..`7` of
AffectNet exports) mean what the set's numbering says: `--label-order` names it, never a guess. `train|training` is the train split, `val|validation|
valid` the validation split and `test|testing` a test split kept apart: it is never used for model selection. Without
a validation folder (root/<class>/* only, train/ only, or train/ + test/ as many sets ship), a stratified split seeded
by `data_seed` holds out `val_fraction` of each class of train as validation.
"""
from __future__ import annotations

from pathlib import Path

import re

import numpy as np

from emotion.data.prepare import Issues, Record, Source, face_options
from emotion.errors import EmotionError
from emotion.labels import CLASS_NAMES, LABEL_ORDERS, canonical_label, label_order

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"})
SPLIT_FOLDERS = {"train": ("train", "training"), "validation": ("val", "validation", "valid"), "test": ("test", "testing")}
LAYOUT = "root/train/<class name>/*.jpg with optional root/val/<class name>/ and root/test/<class name>/, or root/<class name>/*.jpg"


NUMBERED = re.compile(r"^(\d+)[ _.-]+(.+)$")


def folder_label(class_dir: Path, order: dict[int, int] | None) -> int | None:
    """Canonical id of a class folder: by name, by a numbered name, or by a bare number in the --label-order numbering."""
    name = class_dir.name
    numbered = NUMBERED.match(name)
    if numbered:
        number, label = int(numbered.group(1)), canonical_label(numbered.group(2))
        if label is not None and number != label:
            raise EmotionError(f"class folder {class_dir}: number {number} is not the id of {numbered.group(2)!r} "
                               f"({label}, in the order {', '.join(f'{i}_{n}' for i, n in enumerate(CLASS_NAMES))}): "
                               f"rename it {label}_{CLASS_NAMES[label]}")
        return label
    if name.isdigit():
        if order is None:
            raise EmotionError(f"class folder {class_dir} is a bare number: say whose numbering the folders use with "
                               f"--label-order {'|'.join(LABEL_ORDERS)}|<comma list of class names numbered from 0>")
        return order.get(int(name))
    return canonical_label(name)


def _subfolders(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _split_folder(folders: dict[str, Path], split: str) -> Path | None:
    return next((folders[name] for name in SPLIT_FOLDERS[split] if name in folders), None)


def _read_classes(folder: Path, split: str, drop_unknown: bool, order: dict[int, int] | None, skipped: Issues,
                  excluded: Issues) -> list[Record]:
    records = []
    for class_dir in _subfolders(folder).values():
        label = folder_label(class_dir, order)
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        if label is None:
            if not drop_unknown:
                raise EmotionError(f"class folder {class_dir} maps to none of {', '.join(CLASS_NAMES)}: rename it to one "
                                   f"of them (or an alias) or pass --drop-unknown-classes")
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
    options = {"val_fraction": config.val_fraction, "drop_unknown_classes": config.drop_unknown_classes,
               "label_order": config.label_order, **face_options(config)}
    source = Source(dataset="imagefolder", root=root, splits={}, options=options)
    drop = config.drop_unknown_classes
    order = label_order(config.label_order) if config.label_order else None  # checked by emotion.config.validate

    def read(folder: Path, split: str, counted_in: str | None = None) -> list[Record]:
        counted_in = counted_in or split
        return _read_classes(folder, split, drop, order, source.skipped[counted_in], source.excluded[counted_in])

    folders = _subfolders(root)
    train_dir = _split_folder(folders, "train")
    val_dir = _split_folder(folders, "validation") if train_dir is not None else None
    test_dir = _split_folder(folders, "test") if train_dir is not None else None
    # Model selection and the lr schedule look at validation only: without a val folder it is a seeded, stratified
    # share of train (drawn by --data-seed, so a sweep over --seed keeps it), never the test folder.
    train = read(train_dir, "train") if train_dir is not None else read(root, "all", counted_in="train")
    if val_dir is None:
        train, validation = stratified_split(train, config.val_fraction, config.data_seed)
        held = f"stratified {config.val_fraction} of {train_dir.name if train_dir else 'all'} seed {config.data_seed}"
    else:
        validation = read(val_dir, "validation")
        held = f"folder {val_dir.name}"
    options["split"] = f"train {train_dir.name if train_dir else 'all'}, validation {held}" + \
        (f", test folder {test_dir.name}" if test_dir is not None else "")
    if not train:
        raise EmotionError(f"no images found under {root}: expected a folder-per-class data set ({LAYOUT})")
    source.splits = {"train": train, "validation": validation}
    if test_dir is not None:
        source.splits["test"] = read(test_dir, "test")
    return source

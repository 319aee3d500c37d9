"""RAF-DB basic (Li et al. 2017): EmoLabel/list_patition_label.txt and Image/aligned/ (or Image/original/).

Each label line is `train_00001.jpg 5` in RAF-DB's own numbering (1 surprise ... 7 neutral), mapped to the canonical
ids by name. The published protocol has train and test only: `test_*` images are the test split, kept apart from
model selection, and a stratified share of train (`val_fraction`, seeded by `data_seed`) is the validation split.
Aligned images are 100 x 100 face crops (`train_00001_aligned.jpg`); the original photos are full pictures, read with
`--rafdb-images original` (add `--detect-faces` to crop their faces).
"""
from __future__ import annotations

from pathlib import Path

from emotion.data.imagefolder import stratified_split
from emotion.data.prepare import Record, Source, face_options, inside_check, whole_number
from emotion.errors import EmotionError
from emotion.labels import LABEL_ORDERS, label_order

LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
LAYOUT = "DIR/EmoLabel/list_patition_label.txt (lines `train_00001.jpg 5`) and DIR/Image/aligned/train_00001_aligned.jpg"
NUMBERING = label_order("rafdb")
SPLIT_PREFIXES = {"train": "train", "test": "test"}


def image_path(root: Path, name: str, images: str) -> Path:
    """Where RAF-DB keeps the picture a label line names: aligned copies carry an `_aligned` suffix."""
    if images == "aligned":
        stem, dot, suffix = name.rpartition(".")
        return root / "Image" / "aligned" / f"{stem}_aligned.{suffix}"
    return root / "Image" / "original" / name


def read_rafdb(config) -> Source:
    given = Path(config.data_dir).expanduser()
    if not given.is_dir():
        raise EmotionError(f"--data-dir {given} is not a folder: expected the RAF-DB basic layout {LAYOUT}")
    root = given / "basic" if not (given / LABEL_FILE).is_file() and (given / "basic" / LABEL_FILE).is_file() else given
    label_file = root / LABEL_FILE
    if not label_file.is_file():
        raise EmotionError(f"no {LABEL_FILE} in {given}: expected the RAF-DB basic layout {LAYOUT}")
    options = {"images": config.rafdb_images, "val_fraction": config.val_fraction, **face_options(config)}
    source = Source(dataset="rafdb", root=root, splits={}, options=options, stat_files=[label_file])
    found: dict[str, list[Record]] = {"train": [], "test": []}
    inside = inside_check(root, root / "Image" / config.rafdb_images)  # the image folder may be a symlink
    lines = label_file.read_text(encoding="utf-8", errors="replace").splitlines()
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        split = next((s for s, prefix in SPLIT_PREFIXES.items() if parts[0].startswith(prefix)), None)
        example = f"{label_file}:{line_number}"
        number = whole_number(parts[1]) if len(parts) == 2 else None
        if split is None or number is None:
            source.skipped["train"].add("bad_row", example)
            continue
        label = NUMBERING.get(number)
        if label is None:
            source.skipped[split].add("label_out_of_range", example)
            continue
        path = image_path(root, parts[0], config.rafdb_images)
        if not inside(path):
            source.skipped[split].add("outside_data_dir", example)
            continue
        found[split].append(Record(path=str(path), label=label, id=parts[0]))
    if not found["train"]:
        raise EmotionError(f"{label_file} lists no train_* image with a label 1-7 ({', '.join(f'{n} {c}' for n, c in LABEL_ORDERS['rafdb'].items())}): "
                           f"expected the RAF-DB basic layout {LAYOUT}")
    # The published protocol has no validation split: model selection must not look at test, so hold out of train.
    train, validation = stratified_split(found["train"], config.val_fraction, config.data_seed)
    source.splits = {"train": train, "validation": validation, "test": found["test"]}
    options["split"] = f"train, validation stratified {config.val_fraction} of train seed {config.data_seed}, test"
    return source

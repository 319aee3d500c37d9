"""AffectNet (Mollahosseini et al. 2017), in either layout it is released in:

- CSV: training.csv / validation.csv over full photos with face boxes; the face is cropped by its box grown by
  `face_margin` of the box side on each side.
- per-image .npy (the later release): {train_set,val_set}/images/<id>.jpg (face crops) and
  annotations/<id>_exp.npy, <id>_val.npy, <id>_aro.npy.

Rows keep classes 0-7; 8 (None), 9 (Uncertain) and 10 (No-Face) are counted as excluded; rows with missing
fields, unparsable numbers, labels outside 0-10, unusable face boxes or image paths outside --data-dir are counted as
skipped. Valence and arousal are kept (NaN when absent or outside [-1, 1], e.g. the -2 of rows without a rating).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from emotion.data.prepare import Issues, Record, Source, csv_rows, inside_check, whole_number
from emotion.errors import EmotionError
from emotion.faces.detect import coordinates_in_range
from emotion.labels import NUM_CLASSES

COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
           "expression", "valence", "arousal")
BOX_COLUMNS = ("face_x", "face_y", "face_width", "face_height")
REQUIRED = ("subDirectory_filePath", *BOX_COLUMNS, "expression")
EXCLUDED = {8: "none", 9: "uncertain", 10: "no_face"}
CSV_NAMES = {"train": "training.csv", "validation": "validation.csv"}
# The release keeps the lists in a sub-folder; some copies put them at the root.
CSV_FOLDERS = ("", "Manually_Annotated_file_lists")
IMAGE_FOLDER = "Manually_Annotated_Images"
NPY_SPLITS = {"train": "train_set", "validation": "val_set"}
# One number, as a string of at most a few dozen characters: a header claiming more is not an annotation.
MAX_NPY_BYTES = 1024
NPY_LAYOUT = "{train_set,val_set}/images/<id>.jpg and {train_set,val_set}/annotations/<id>_exp.npy (+ _val.npy, _aro.npy)"


def find_csv(root: Path, name: str) -> Path:
    for folder in CSV_FOLDERS:
        if (root / folder / name).is_file():
            return root / folder / name
    raise EmotionError(f"no {name} in {root} (nor {root / CSV_FOLDERS[1]}): expected the AffectNet lists "
                       f"training.csv and validation.csv with columns {', '.join(REQUIRED)}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def affect_value(text) -> float | None:
    """A valence or arousal rating in [-1, 1]; None for anything else (missing, unparsable, AffectNet's -2)."""
    try:
        value = float(text)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) and -1 <= value <= 1 else None


def keep_label(label: int, example: str, skipped: Issues, excluded: Issues) -> bool:
    """Whether a row of this expression code trains; codes 8-10 are counted as excluded, others outside 0-7 as skipped."""
    if label in EXCLUDED:
        excluded.add(EXCLUDED[label], example)
    elif not 0 <= label < NUM_CLASSES:
        skipped.add("label_out_of_range", example)
    else:
        return True
    return False


def usable_box(box: tuple[float, float, float, float]) -> bool:
    """Finite coordinates within range and a positive width and height."""
    return coordinates_in_range(box) and box[2] > 0 and box[3] > 0


def _box_and_label(row: list[str], where: dict[str, int]) -> tuple[tuple[float, float, float, float], int] | None:
    """A row's face box and expression code; None when a box field is not a number or the code not a whole one."""
    try:
        box = tuple(float(row[where[k]]) for k in BOX_COLUMNS)
    except ValueError:
        return None
    label = whole_number(row[where["expression"]])
    return None if label is None else (box, label)


def read_rows(path: Path, root: Path, image_root: Path, skipped: Issues, excluded: Issues) -> list[Record]:
    rows = list(csv_rows(path))
    if not rows:
        raise EmotionError(f"{path} is empty: expected a header with columns {', '.join(REQUIRED)}")
    header = [h.strip() for h in rows[0]]
    if all(c in header for c in REQUIRED):
        body = rows[1:]
    elif len(header) == len(COLUMNS) and _is_number(header[1]):
        header, body = list(COLUMNS), rows  # the release's validation.csv has no header row
    else:
        missing = [c for c in REQUIRED if c not in header]
        raise EmotionError(f"{path} lacks the columns {', '.join(missing)}: expected an AffectNet list with "
                           f"{', '.join(REQUIRED)} (found {', '.join(header[:10])})")
    where = {name: header.index(name) for name in REQUIRED + ("valence", "arousal") if name in header}
    inside = inside_check(root, image_root)  # the image folder counts even when it is a symlink to another disk
    records = []
    for line, row in enumerate(body, start=2 if body is not rows else 1):
        example = f"{path}:{line}"
        parsed = _box_and_label(row, where) if len(row) == len(header) else None
        if parsed is None:
            skipped.add("bad_row", example)
            continue
        box, label = parsed
        relative = row[where["subDirectory_filePath"]].strip()
        if label in EXCLUDED:
            excluded.add(EXCLUDED[label], relative)
        elif not 0 <= label < NUM_CLASSES:
            skipped.add("label_out_of_range", example)
        elif not usable_box(box):
            skipped.add("bad_box", example)
        elif not inside(image_root / relative):
            skipped.add("outside_data_dir", example)
        else:
            records.append(Record(path=str(image_root / relative), label=label, id=relative, box=box,
                                  valence=affect_value(row[where["valence"]]) if "valence" in where else None,
                                  arousal=affect_value(row[where["arousal"]]) if "arousal" in where else None))
    return records


def _npy_value(path: Path):
    """The scalar an annotation .npy holds (the release stores numbers as strings, e.g. '3' or '0.785'); None if unreadable.
    The header is checked first: a file that claims 10^11 values is refused before anything is allocated."""
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            if math.prod(shape) != 1 or dtype.itemsize > MAX_NPY_BYTES:
                return None
            handle.seek(0)
            return np.load(handle, allow_pickle=False).item()
    except (OSError, ValueError):  # missing, not an .npy, or not one value
        return None


def read_npy_split(folder: Path, split: str, skipped: Issues, excluded: Issues) -> list[Record]:
    annotations = folder / "annotations"
    if not annotations.is_dir():
        raise EmotionError(f"no annotations/ folder in {folder}: expected the AffectNet .npy layout {NPY_LAYOUT}")
    images = {p.stem: p for p in (folder / "images").iterdir()} if (folder / "images").is_dir() else {}
    records = []
    for path in sorted(annotations.glob("*_exp.npy")):
        image_id = path.name[: -len("_exp.npy")]
        label = whole_number(_npy_value(path))
        if label is None:
            skipped.add("bad_annotation", str(path))
            continue
        if keep_label(label, str(path), skipped, excluded):
            image = images.get(image_id, folder / "images" / f"{image_id}.jpg")
            records.append(Record(path=str(image), label=label, id=f"{split}/{image_id}",
                                  valence=affect_value(_npy_value(annotations / f"{image_id}_val.npy")),
                                  arousal=affect_value(_npy_value(annotations / f"{image_id}_aro.npy"))))
    return records


def read_npy_layout(root: Path, source: Source) -> None:
    for split, name in NPY_SPLITS.items():
        source.splits[split] = read_npy_split(root / name, split, source.skipped[split], source.excluded[split])
    if not source.splits["train"]:
        raise EmotionError(f"{root / NPY_SPLITS['train']} has no usable annotation with expression 0-7: expected the "
                           f"AffectNet .npy layout {NPY_LAYOUT}")


def read_affectnet(config) -> Source:
    root = Path(config.data_dir).expanduser()
    if not root.is_dir():
        raise EmotionError(f"--data-dir {root} is not a folder: expected the AffectNet root with training.csv, "
                           f"validation.csv and {IMAGE_FOLDER}/")
    image_root = root / IMAGE_FOLDER if (root / IMAGE_FOLDER).is_dir() else root
    source = Source(dataset="affectnet", root=root, splits={}, options={"face_margin": config.face_margin})
    if all((root / name).is_dir() for name in NPY_SPLITS.values()):
        source.options = {"layout": "npy"}  # face crops already: no box, no margin
        read_npy_layout(root, source)
        return source
    for split, name in CSV_NAMES.items():
        path = find_csv(root, name)
        source.stat_files.append(path)
        source.splits[split] = read_rows(path, root, image_root, source.skipped[split], source.excluded[split])
    if not source.splits["train"]:
        raise EmotionError(f"{source.stat_files[0]} lists no usable row with expression 0-7: expected AffectNet rows "
                           f"({', '.join(REQUIRED)})")
    return source

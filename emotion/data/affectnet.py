"""AffectNet (Mollahosseini et al. 2017): training.csv / validation.csv over full photos with face boxes.

Rows keep classes 0-7; 8 (None), 9 (Uncertain) and 10 (No-Face) are counted as excluded; rows with missing
fields, unparsable numbers or labels outside 0-10 are counted as skipped. The face is cropped by its box grown
by `face_margin` of the box side on each side.
"""
from __future__ import annotations

import csv
from pathlib import Path

from emotion.data.prepare import Issues, Record, Source
from emotion.errors import EmotionError
from emotion.labels import NUM_CLASSES

COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
           "expression", "valence", "arousal")
REQUIRED = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
EXCLUDED = {8: "none", 9: "uncertain", 10: "no_face"}
CSV_NAMES = {"train": "training.csv", "validation": "validation.csv"}
# The release keeps the lists in a sub-folder; some copies put them at the root.
CSV_FOLDERS = ("", "Manually_Annotated_file_lists")
IMAGE_FOLDER = "Manually_Annotated_Images"


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


def read_rows(path: Path, image_root: Path, skipped: Issues, excluded: Issues) -> list[Record]:
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        rows = list(csv.reader(handle))
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
    where = {name: header.index(name) for name in REQUIRED}
    records = []
    for line, row in enumerate(body, start=2 if body is not rows else 1):
        example = f"{path}:{line}"
        if len(row) != len(header):
            skipped.add("bad_row", example)
            continue
        try:
            box = tuple(float(row[where[k]]) for k in ("face_x", "face_y", "face_width", "face_height"))
            label = int(float(row[where["expression"]]))
        except ValueError:
            skipped.add("bad_row", example)
            continue
        relative = row[where["subDirectory_filePath"]].strip()
        if label in EXCLUDED:
            excluded.add(EXCLUDED[label], relative)
        elif not 0 <= label < NUM_CLASSES:
            skipped.add("label_out_of_range", example)
        else:
            records.append(Record(path=str(image_root / relative), label=label, id=relative, box=box))
    return records


def read_affectnet(config) -> Source:
    root = Path(config.data_dir).expanduser()
    if not root.is_dir():
        raise EmotionError(f"--data-dir {root} is not a folder: expected the AffectNet root with training.csv, "
                           f"validation.csv and {IMAGE_FOLDER}/")
    image_root = root / IMAGE_FOLDER if (root / IMAGE_FOLDER).is_dir() else root
    source = Source(dataset="affectnet", root=root, splits={}, options={"face_margin": config.face_margin})
    for split, name in CSV_NAMES.items():
        path = find_csv(root, name)
        source.stat_files.append(path)
        source.splits[split] = read_rows(path, image_root, source.skipped[split], source.excluded[split])
    if not source.splits["train"]:
        raise EmotionError(f"{source.stat_files[0]} lists no usable row with expression 0-7: expected AffectNet rows "
                           f"({', '.join(REQUIRED)})")
    return source

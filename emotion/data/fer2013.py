"""FER2013 (Kaggle, 2013): fer2013.csv with columns emotion, pixels, Usage; the faces are the CSV's pixels.

`emotion` uses FER2013's numbering (0 angry ... 6 neutral), mapped to the canonical ids by name; `pixels` holds
48 x 48 = 2,304 space-separated grey values. Usage Training -> train, PublicTest -> validation (the usual
validation set), PrivateTest -> test (kept apart from model selection).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from emotion.data.prepare import Record, Source, csv_rows, whole_number
from emotion.errors import EmotionError
from emotion.labels import label_order

CSV_NAME = "fer2013.csv"
COLUMNS = ("emotion", "pixels", "Usage")
SIDE = 48
USAGE = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
NUMBERING = label_order("fer2013")
LAYOUT = f"DIR/{CSV_NAME} with the header {','.join(COLUMNS)} (pixels: {SIDE * SIDE} space-separated grey values)"


def face_png(pixels: str) -> bytes | None:
    """The 48 x 48 grey face of a `pixels` cell as PNG bytes; None when the cell is not 2,304 values in 0-255."""
    try:
        values = np.array(pixels.split(), dtype=np.int64)
    except (ValueError, OverflowError):  # not whole numbers, or beyond 64 bits (10^22)
        return None
    if values.size != SIDE * SIDE or values.min() < 0 or values.max() > 255:
        return None
    buffer = io.BytesIO()
    Image.fromarray(values.reshape(SIDE, SIDE).astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def read_fer2013(config) -> Source:
    given = Path(config.data_dir).expanduser()
    path = given if given.is_file() else given / CSV_NAME
    if not path.is_file():
        raise EmotionError(f"no {CSV_NAME} at {given}: expected {LAYOUT}")
    source = Source(dataset="fer2013", root=path.parent, splits={"train": [], "validation": [], "test": []},
                    options={}, stat_files=[path])
    rows = csv_rows(path)
    header = [h.strip() for h in next(rows, [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise EmotionError(f"{path} lacks the columns {', '.join(missing)}: expected {LAYOUT} (found {', '.join(header[:6])})")
    where = {c: header.index(c) for c in COLUMNS}
    for line, row in enumerate(rows, start=2):
        example = f"{path}:{line}"
        if len(row) != len(header):
            source.skipped["train"].add("bad_row", example)
            continue
        split = USAGE.get(row[where["Usage"]].strip())
        if split is None:
            source.skipped["train"].add("unknown_usage", example)
            continue
        label = NUMBERING.get(whole_number(row[where["emotion"]]))
        if label is None:
            source.skipped[split].add("label_out_of_range", example)
            continue
        png = face_png(row[where["pixels"]])
        if png is None:
            source.skipped[split].add("bad_pixels", example)
            continue
        source.splits[split].append(Record(path=example, label=label, id=f"{split}/{line}", image_bytes=png))
    if not source.splits["train"]:
        raise EmotionError(f"{path} has no usable Training row: expected {LAYOUT}")
    return source

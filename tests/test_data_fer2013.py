"""FER2013 CSV: faces decoded from the pixels column, FER2013's numbering mapped to the canonical ids by name,
Usage -> train / validation / test, bad rows counted, a CSV without the columns refused in one line."""
import json

import numpy as np
import pytest

from data_fakes import FER2013_NAMES, config, make_fer2013, write_csv
from emotion.data import load_splits
from emotion.data.prepare import cache_root
from emotion.errors import EmotionError
from emotion.labels import CLASS_NAMES


def test_pixels_numbering_usage_and_report(tmp_path):
    root = make_fer2013(tmp_path / "fer2013")
    splits = load_splits(config("fer2013", root, tmp_path / "cache", image_size=48))
    assert {s: len(d) for s, d in splits.items()} == {"train": 14, "validation": 7, "test": 7}
    for row in splits["train"]:
        # Face of FER2013 label k is filled with grey 10 * k: its pixels tell which number the row had.
        number = int(round(np.asarray(row["image"], dtype=np.float64).mean() / 10))
        assert CLASS_NAMES[row["label"]] == FER2013_NAMES[number]
        assert row["image"].mode == "RGB" and row["image"].size == (48, 48)
    assert splits["validation"]["label"].count(7) == 0  # no contempt in FER2013
    [folder] = list(cache_root(str(tmp_path / "cache")).iterdir())
    report = json.loads((folder / "report.json").read_text())["splits"]["train"]
    assert {r: v["count"] for r, v in report["skipped"].items()} == {"bad_pixels": 1, "label_out_of_range": 1, "unknown_usage": 1}
    assert report["converted"]["grayscale"]["count"] == 14


def test_wrong_columns_is_one_line_error(tmp_path):
    write_csv(tmp_path / "fer2013.csv", ["label", "image"], [[1, "0 0"]])
    with pytest.raises(EmotionError, match=r"fer2013\.csv lacks the columns emotion, pixels, Usage"):
        load_splits(config("fer2013", tmp_path, tmp_path / "cache"))
    with pytest.raises(EmotionError, match="no fer2013.csv at"):
        load_splits(config("fer2013", tmp_path / "cache", tmp_path / "cache2"))

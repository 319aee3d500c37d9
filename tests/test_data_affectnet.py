"""AffectNet CSV and per-image .npy layouts: classes 0-7 kept, 8/9/10 and bad rows counted, faces cropped by their box
inside the photo, valence and arousal kept."""
import json
import math

import pytest

from data_fakes import AFFECTNET_HEADER, config, make_affectnet, make_affectnet_npy, write_csv
from emotion.data import load_splits
from emotion.data.prepare import cache_root, crop_box
from emotion.errors import EmotionError


@pytest.fixture(scope="module")
def affectnet(tmp_path_factory):
    return make_affectnet(tmp_path_factory.mktemp("affectnet"))


def test_rows_classes_crops_and_report(affectnet, tmp_path):
    root, expected = affectnet
    splits = load_splits(config("affectnet", root, tmp_path, face_margin=0.2))
    train = splits["train"]
    assert [train["label"].count(i) for i in range(8)] == expected["train_per_class"]
    assert [splits["validation"]["label"].count(i) for i in range(8)] == [1] * 8  # header-less validation.csv
    for row in train.select_columns(["crop", "path"]):
        x0, y0, x1, y1 = row["crop"]
        width, height = (40, 40) if "/bad/" in row["path"] else (80, 60)
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    # Valence and arousal kept as columns: the fake's ratings, as float32.
    assert {(round(v, 4), round(a, 4)) for v, a in zip(train["valence"], train["arousal"])} == {(0.1, 0.2), (0.0, 0.0)}
    second = train[1]
    assert second["image"].size == (32, 32)
    assert second["crop"] == [2, 1, 50, 49]  # box (11, 8, 30, 34): a 34 px side * 1.4, centred on (26, 25)
    [folder] = list(cache_root(str(tmp_path)).iterdir())
    report = json.loads((folder / "report.json").read_text())["splits"]["train"]
    assert {r: v["count"] for r, v in report["excluded"].items()} == expected["excluded"]
    assert {r: v["count"] for r, v in report["skipped"].items()} == {
        "bad_row": 2, "box_outside_image": 1, "empty_file": 1, "label_out_of_range": 1, "missing_file": 1,
        "truncated": 1, "undecodable": 1}
    assert report["skipped"]["missing_file"]["examples"] == [str(root / "Manually_Annotated_Images" / "9" / "missing.jpg")]
    assert report["skipped"]["bad_row"]["examples"] == [f"{root / 'training.csv'}:{n}" for n in (39, 40)]  # file lines, header = 1
    assert report["converted"]["box_clipped"]["count"] == 6


def test_crop_box_margin_and_clipping():
    assert crop_box(100, 100, (40, 40, 20, 20), 0.5) == ((30, 30, 70, 70), [])
    crop, notes = crop_box(100, 80, (90, 70, 20, 20), 0.1)
    assert crop == (88, 68, 100, 80) and notes == ["box_clipped"]
    assert crop_box(100, 80, None, 0.2) == ((10, 0, 90, 80), [])  # no box: the centre square


def test_wrong_columns_is_one_line_error_naming_the_file(tmp_path):
    write_csv(tmp_path / "training.csv", ["path", "x", "y", "w", "h", "emotion"], [["a.jpg", 1, 1, 5, 5, 1]])
    write_csv(tmp_path / "validation.csv", AFFECTNET_HEADER, [])
    with pytest.raises(EmotionError, match=r"training\.csv lacks the columns subDirectory_filePath.*expression"):
        load_splits(config("affectnet", tmp_path, tmp_path / "cache"))
    (tmp_path / "training.csv").unlink()
    with pytest.raises(EmotionError, match="no training.csv in"):
        load_splits(config("affectnet", tmp_path, tmp_path / "cache"))


def test_per_image_npy_layout_classes_exclusions_and_ratings(tmp_path):
    root = make_affectnet_npy(tmp_path / "release")
    splits = load_splits(config("affectnet", root, tmp_path / "cache"))
    assert [splits["train"]["label"].count(i) for i in range(8)] == [2] * 8
    assert [splits["validation"]["label"].count(i) for i in range(8)] == [1] * 8
    for row in splits["train"].select_columns(["id", "label", "valence", "arousal", "crop"]):
        image_id = int(row["id"].split("/")[1])
        assert row["label"] == image_id % 8 and row["valence"] == pytest.approx(image_id / 100)
        assert math.isnan(row["arousal"]) if image_id == 3 else row["arousal"] == 0.5
        assert row["crop"] == [0, 0, 48, 48]  # face crops already: the whole image
    [folder] = list(cache_root(str(tmp_path / "cache")).iterdir())
    report = json.loads((folder / "report.json").read_text())["splits"]["train"]
    assert {r: v["count"] for r, v in report["excluded"].items()} == {"none": 1, "no_face": 1}
    assert {r: v["count"] for r, v in report["skipped"].items()} == {"bad_annotation": 1}

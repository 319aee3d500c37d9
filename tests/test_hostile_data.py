"""Hostile and damaged data sets through the public path (emotion.data.load_splits): each case is a one-line error
naming the file and line, or a row counted as skipped by reason in report.json while the good rows are kept."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_fakes import (config, ferplus_votes, make_affectnet_npy, make_affectnet_plus, make_small_affectnet,
                        make_small_fer2013, make_small_ferplus, make_small_rafdb, npy_header_only, png_header_only, save)
from emotion.data import load_splits
from emotion.data.prepare import cache_root
from emotion.errors import EmotionError

FIELD_OVER_LIMIT = "x" * 131_073  # one character over Python csv's field_size_limit
RED = (255, 0, 0)


def report(cache: Path) -> dict:
    [folder] = list(cache_root(str(cache)).iterdir())
    return json.loads((folder / "report.json").read_text())["splits"]


def counted(part: dict) -> dict[str, int]:
    return {reason: v["count"] for reason, v in part.items()}


def good_box_row(**fields) -> list:
    """An AffectNet row for photo 0 (class 1) with some fields replaced."""
    row = {"subDirectory_filePath": "0.jpg", "face_x": 2, "face_y": 2, "face_width": 20, "face_height": 20,
           "facial_landmarks": "", "expression": 1, "valence": 0, "arousal": 0}
    return list({**row, **fields}.values())


@pytest.mark.parametrize("field, value", [("face_width", "1.7e308"), ("face_height", "1.7e308"), ("face_width", "inf"),
                                          ("face_x", "nan"), ("face_height", "-30"), ("face_y", "-1e300")])
def test_affectnet_unusable_box_is_a_counted_skip(tmp_path, field, value):
    root = make_small_affectnet(tmp_path / "affectnet", [good_box_row(**{field: value})])
    splits = load_splits(config("affectnet", root, tmp_path / "cache"))
    assert len(splits["train"]) == 4
    skipped = report(tmp_path / "cache")["train"]["skipped"]
    assert counted(skipped) == {"bad_box": 1}
    assert skipped["bad_box"]["examples"] == [f"{root / 'training.csv'}:6"]  # the CSV line, not the photo


def _affectnet_long_field(root: Path) -> Path:
    make_small_affectnet(root, [good_box_row(subDirectory_filePath=FIELD_OVER_LIMIT)])
    return root / "training.csv"


def _ferplus_long_field(root: Path) -> Path:
    make_small_ferplus(root, [[FIELD_OVER_LIMIT, "(0, 0, 48, 48)", *ferplus_votes(happiness=10)]])
    return root / "FER2013Train" / "label.csv"


def _fer2013_long_field(root: Path) -> Path:
    make_small_fer2013(root, [[3, FIELD_OVER_LIMIT, "Training"]])
    return root / "fer2013.csv"


@pytest.mark.parametrize("dataset, build, line", [("affectnet", _affectnet_long_field, 6),
                                                  ("ferplus", _ferplus_long_field, 4),
                                                  ("fer2013", _fer2013_long_field, 6)], ids=["affectnet", "ferplus", "fer2013"])
def test_csv_field_over_the_csv_limit_is_a_one_line_error(tmp_path, dataset, build, line):
    path = build(tmp_path / dataset)
    with pytest.raises(EmotionError, match=rf"^{re.escape(str(path))}, line {line}: field larger than field limit") as err:
        load_splits(config(dataset, tmp_path / dataset, tmp_path / "cache"))
    assert "\n" not in str(err.value) and "fix or remove that line" in str(err.value)


@pytest.mark.parametrize("pixels", [" ".join(["1" + "0" * 22] * 2304),  # 10^22: beyond int64
                                    " ".join(["-5"] * 2304), " ".join(["x"] * 2304), " ".join(["7"] * 100)],
                         ids=["10^22", "negative", "non_numeric", "wrong_count"])
def test_fer2013_bad_pixel_values_are_a_counted_skip(tmp_path, pixels):
    root = make_small_fer2013(tmp_path / "fer2013", [[3, pixels, "Training"]])
    splits = load_splits(config("fer2013", root, tmp_path / "cache"))
    assert len(splits["train"]) == 2
    skipped = report(tmp_path / "cache")["train"]["skipped"]
    assert counted(skipped) == {"bad_pixels": 1} and skipped["bad_pixels"]["examples"] == [f"{root / 'fer2013.csv'}:6"]


def test_affectnet_npy_header_claiming_huge_arrays_is_skipped_before_loading(tmp_path):
    root = make_affectnet_npy(tmp_path / "release")
    notes = root / "train_set" / "annotations"
    npy_header_only(notes / "0_exp.npy", "<f8", (10**11,))  # 745 GiB of float64
    npy_header_only(notes / "1_exp.npy", "<U100000000", ())  # one string of 400 MB
    npy_header_only(notes / "2_val.npy", "<f8", (10**11,))  # a rating file: the row stays, without a valence
    splits = load_splits(config("affectnet", root, tmp_path / "cache"))
    train = splits["train"]
    assert [train["label"].count(i) for i in range(8)] == [1, 1, 2, 2, 2, 2, 2, 2]
    valence = dict(zip(train["id"], train["valence"]))
    assert np.isnan(valence["train/2"]) and valence["train/10"] == pytest.approx(0.1)
    skipped = report(tmp_path / "cache")["train"]["skipped"]
    assert counted(skipped) == {"bad_annotation": 3}  # the two above and the fake's own unreadable 99_exp.npy
    assert {str(notes / "0_exp.npy"), str(notes / "1_exp.npy")} <= set(skipped["bad_annotation"]["examples"])


def test_affectnet_plus_json_nested_100000_deep_is_a_counted_skip(tmp_path):
    root = make_affectnet_plus(tmp_path / "release")
    deep = root / "human_annotated" / "train_set" / "annotations" / "200.json"
    deep.write_text('{"human-label": ' + "[" * 100_000 + "]" * 100_000 + "}")
    splits = load_splits(config("affectnet_plus", root, tmp_path / "cache"))
    assert len(splits["train"]) == 24
    skipped = report(tmp_path / "cache")["train"]["skipped"]
    assert skipped["bad_annotation"]["count"] == 2 and str(deep) in skipped["bad_annotation"]["examples"]


@pytest.mark.parametrize("label", [True, 3.9, "3.9"], ids=["true", "3.9", "text_3.9"])
def test_affectnet_plus_label_that_is_not_a_whole_number_is_a_counted_skip(tmp_path, label):
    root = make_affectnet_plus(tmp_path / "release")
    train = root / "human_annotated" / "train_set"
    save(Image.new("RGB", (32, 32)), train / "images" / "200.jpg")
    (train / "annotations" / "200.json").write_text(json.dumps({"human-label": label, "soft-label": [0.125] * 8}))
    splits = load_splits(config("affectnet_plus", root, tmp_path / "cache"))
    assert len(splits["train"]) == 24 and "train/200" not in splits["train"]["id"]
    skipped = report(tmp_path / "cache")["train"]["skipped"]
    assert skipped["bad_label"] == {"count": 1, "examples": [str(train / "annotations" / "200.json")]}


def _secret(outside: Path, name: str) -> Path:
    """A solid red picture outside the data set: its pixels must not reach the cache."""
    return save(Image.new("RGB", (16, 16), RED), outside / name)


def _affectnet_outside(data: Path, outside: Path) -> int:
    secret = _secret(outside, "secret.png")
    images = data / "Manually_Annotated_Images"
    images.mkdir(parents=True)
    (images / "link.png").symlink_to(secret)
    make_small_affectnet(data, [good_box_row(subDirectory_filePath=p) for p in ("../../outside/secret.png", str(secret),
                                                                                "link.png")])
    return 3


def _ferplus_outside(data: Path, outside: Path) -> int:
    secret = _secret(outside, "secret.png")
    (data / "FER2013Train").mkdir(parents=True)
    (data / "FER2013Train" / "link.png").symlink_to(secret)
    make_small_ferplus(data, [[p, "(0, 0, 48, 48)", *ferplus_votes(happiness=10)]
                              for p in ("../../outside/secret.png", str(secret), "link.png")])
    return 3


def _rafdb_outside(data: Path, outside: Path) -> int:
    secret = _secret(outside, "secret_aligned.jpg")
    aligned = data / "Image" / "aligned"
    (aligned / "train_x").mkdir(parents=True)  # so the kernel can walk train_x/../ as the old reader did
    (aligned / "train_link_aligned.jpg").symlink_to(secret)
    make_small_rafdb(data, ["train_x/../../../../outside/secret.jpg 4", "train_link.jpg 4"])
    return 2


@pytest.mark.parametrize("dataset, build", [("affectnet", _affectnet_outside), ("ferplus", _ferplus_outside),
                                            ("rafdb", _rafdb_outside)], ids=["affectnet", "ferplus", "rafdb"])
def test_listed_paths_outside_the_data_dir_are_skipped(tmp_path, dataset, build):
    data, outside = tmp_path / "data", tmp_path / "outside"
    listed_outside = build(data, outside)
    splits = load_splits(config(dataset, data, tmp_path / "cache"))
    kept = [row for split in splits.values() for row in split]
    assert len(kept) == {"affectnet": 4 + 2, "ferplus": 3 * 3, "rafdb": 4 + 2}[dataset]  # the fakes' good rows only
    assert not any("secret" in row["path"] or "link" in row["path"] for row in kept)
    assert not any(np.abs(np.asarray(row["image"], dtype=np.float64).mean(axis=(0, 1)) - RED).max() < 30 for row in kept)
    skipped = report(tmp_path / "cache")["train"]["skipped"]
    assert counted(skipped) == {"outside_data_dir": listed_outside}


@pytest.mark.parametrize("limit, claimed", [("1000", None), (None, (10_000, 6_000)), (None, (20_000, 20_000))],
                         ids=["real_48px_over_1000", "header_claims_60_mpx", "header_claims_400_mpx"])
def test_image_over_the_pixel_limit_is_skipped_from_its_header(tmp_path, monkeypatch, limit, claimed):
    if limit is None:
        monkeypatch.delenv("EMOTION_MAX_PIXELS", raising=False)  # the default: 50 Mpx
    else:
        monkeypatch.setenv("EMOTION_MAX_PIXELS", limit)
    root = make_small_ferplus(tmp_path / "ferplus", [["big.png", "(0, 0, 48, 48)", *ferplus_votes(happiness=10)]])
    if claimed is None:
        save(Image.new("L", (48, 48), 128), root / "FER2013Train" / "big.png")  # 2,304 px: decodable, over the limit
    else:  # 60 Mpx: under Pillow's own bomb limit, over ours; 400 Mpx: over Pillow's, which refuses it while opening
        png_header_only(root / "FER2013Train" / "big.png", *claimed)
    splits = load_splits(config("ferplus", root, tmp_path / "cache"))
    assert len(splits["train"]) == 3  # the 24 x 24 faces stay
    skipped = report(tmp_path / "cache")["train"]["skipped"]
    assert skipped == {"too_large": {"count": 1, "examples": [str(root / "FER2013Train" / "big.png")]}}


@pytest.mark.parametrize("dataset, label, reason", [
    ("fer2013", "²", "label_out_of_range"), ("fer2013", "9" * 5000, "label_out_of_range"),  # int() refuses both
    ("rafdb", "²", "bad_row"), ("rafdb", "9" * 5000, "bad_row"),
    ("affectnet", "9" * 5000, "bad_row"), ("affectnet", "inf", "bad_row"),  # int(float(...)) overflows
], ids=["fer2013-superscript_2", "fer2013-5000_digits", "rafdb-superscript_2", "rafdb-5000_digits",
        "affectnet-5000_digits", "affectnet-inf"])
def test_labels_that_only_look_like_numbers_are_a_counted_skip(tmp_path, dataset, label, reason):
    root = tmp_path / dataset
    if dataset == "fer2013":
        make_small_fer2013(root, [[label, " ".join(["7"] * 2304), "Training"]])
    elif dataset == "rafdb":
        make_small_rafdb(root, [f"train_00001.jpg {label}"])
    else:
        make_small_affectnet(root, [good_box_row(expression=label)])
    load_splits(config(dataset, root, tmp_path / "cache"))
    assert counted(report(tmp_path / "cache")["train"]["skipped"]) == {reason: 1}

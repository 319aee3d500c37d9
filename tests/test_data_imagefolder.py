"""Folder-per-class sets: class names, aliases, numbered names and bare numbers (with --label-order) to canonical ids,
--detect-faces crops, split folders (test/ kept apart, validation held
out of train when there is no val/ folder) or a seeded stratified split, bad files counted in the report, the
prepared cache reused and rebuilt."""
import json
from collections import Counter

import numpy as np
import pytest

from PIL import Image

from data_fakes import config, make_imagefolder, make_numbered_folders, picture, save
from emotion.cli import prepare_main
from emotion.data import load_splits
from emotion.data.prepare import cache_root
from emotion.errors import EmotionError
from emotion.labels import CLASS_NAMES


def counts(split):
    return [split["label"].count(i) for i in range(len(CLASS_NAMES))]


@pytest.fixture(scope="module")
def folder_set(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("fer"), per_class=4)


def test_split_folders_map_to_canonical_classes_and_bad_files_are_reported(folder_set, tmp_path, capsys):
    splits = load_splits(config("imagefolder", folder_set, tmp_path))
    # train/ + test/ only: validation is a share of train/, the test/ folder is a split of its own.
    assert set(splits) == {"train", "validation", "test"}
    # 4 good per class; 'happiness' also holds 4 odd-but-usable files (grey, CMYK, RGBA, 16-bit); no contempt folder.
    held_and_trained = np.add(counts(splits["train"]), counts(splits["validation"])).tolist()
    assert held_and_trained == [4, 8, 4, 4, 4, 4, 4, 0]
    assert counts(splits["test"]) == [2, 2, 2, 2, 2, 2, 2, 0]
    assert splits["train"].features["label"].names == list(CLASS_NAMES)
    image = splits["train"][0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)
    [folder] = list(cache_root(str(tmp_path)).iterdir())
    report = json.loads((folder / "report.json").read_text())
    assert report["splits"]["test"]["kept"] == 14
    skipped, converted = Counter(), Counter()
    for split in ("train", "validation"):
        skipped.update({r: v["count"] for r, v in report["splits"][split]["skipped"].items()})
        converted.update({r: v["count"] for r, v in report["splits"][split]["converted"].items()})
    assert skipped == {"empty_file": 1, "truncated": 1, "undecodable": 1}
    examples = [e for split in ("train", "validation") for e in report["splits"][split]["skipped"].get("truncated", {}).get("examples", [])]
    assert examples == [str(folder_set / "train" / "happiness" / "truncated.jpg")]
    assert converted == {"16bit": 1, "alpha": 1, "cmyk": 1, "grayscale": 1}
    assert report["absent_classes"] == ["contempt"]
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("prepared:")]
    assert len(line) == 1 and "skipped 3" in line[0] and "absent classes: contempt" in line[0]
    assert f"validation {len(splits['validation'])}, test 14;" in line[0]


def test_train_and_test_folders_hold_validation_out_of_train_and_keep_test_apart(folder_set, tmp_path):
    splits = load_splits(config("imagefolder", folder_set, tmp_path / "a"))
    paths = {split: set(splits[split]["path"]) for split in splits}
    assert all(p.startswith(str(folder_set / "test") + "/") for p in paths["test"])
    assert all(p.startswith(str(folder_set / "train") + "/") for p in paths["train"] | paths["validation"])
    assert not paths["train"] & paths["validation"]
    # One of each class's train files held out (val-fraction 0.1, at least one per class; happiness: 1 of its 11 files).
    [report_dir] = list(cache_root(str(tmp_path / "a")).iterdir())
    validation = json.loads((report_dir / "report.json").read_text())["splits"]["validation"]
    assert validation["kept"] + sum(v["count"] for v in validation["skipped"].values()) == 7
    # The held-out share is drawn by --data-seed: --seed (training only) leaves it alone.
    other_seed = load_splits(config("imagefolder", folder_set, tmp_path / "b", seed=7))
    other_data_seed = load_splits(config("imagefolder", folder_set, tmp_path / "c", data_seed=7))
    assert other_seed["validation"]["id"] == splits["validation"]["id"]
    assert other_data_seed["validation"]["id"] != splits["validation"]["id"]
    assert other_data_seed["test"]["id"] == splits["test"]["id"]


def test_train_val_and_test_folders_are_three_splits(tmp_path):
    root = make_imagefolder(tmp_path / "set", per_class=2, seed=3)
    rng = np.random.default_rng(3)
    for name in ("neutral", "happiness", "sadness"):
        save(picture(rng, 48, 48), root / "valid" / name / "0.jpg")
    (root / "test").rename(root / "testing")
    splits = load_splits(config("imagefolder", root, tmp_path / "cache"))
    assert counts(splits["validation"]) == [1, 1, 1, 0, 0, 0, 0, 0]
    assert counts(splits["test"]) == [2, 2, 2, 2, 2, 2, 2, 0]
    assert counts(splits["train"]) == [2, 6, 2, 2, 2, 2, 2, 0]  # nothing held out of train


def test_cache_is_reused_and_rebuilt_when_source_or_size_changes(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "set", per_class=2, seed=1)
    cache = tmp_path / "cache"
    load_splits(config("imagefolder", root, cache))
    again = load_splits(config("imagefolder", root, cache))
    assert "prepared cache reused" in capsys.readouterr().out
    assert len(list(cache_root(str(cache)).iterdir())) == 1 and len(again["train"]) + len(again["validation"]) == 2 * 7 + 4
    load_splits(config("imagefolder", root, cache, image_size=40))  # another size: its own cache
    save(picture(np.random.default_rng(5)), root / "train" / "neutral" / "new.jpg")
    rebuilt = load_splits(config("imagefolder", root, cache))  # a new file: rebuilt
    assert len(rebuilt["train"]) + len(rebuilt["validation"]) == 2 * 7 + 4 + 1
    assert rebuilt["train"][0]["image"].size == (32, 32)
    assert len(list(cache_root(str(cache)).iterdir())) == 3
    assert not [p for p in cache_root(str(cache)).iterdir() if p.name.startswith(".tmp")]


def test_without_split_folders_a_seeded_stratified_split(tmp_path):
    root = make_imagefolder(tmp_path / "flat", per_class=10, with_splits=False)
    first = load_splits(config("imagefolder", root, tmp_path / "c1", val_fraction=0.2))
    second = load_splits(config("imagefolder", root, tmp_path / "c2", val_fraction=0.2))
    assert counts(first["validation"]) == [2, 2, 2, 2, 2, 2, 2, 0]  # 20% of each class (bad files then skipped)
    assert first["validation"]["id"] == second["validation"]["id"]
    assert not set(first["validation"]["path"]) & set(first["train"]["path"])
    assert set(first) == {"train", "validation"}  # no test folder, no test split


def test_unknown_class_folder_fails_by_name_unless_dropped(tmp_path):
    root = make_imagefolder(tmp_path / "set", per_class=1)
    save(picture(np.random.default_rng(0)), root / "train" / "confused" / "0.jpg")
    with pytest.raises(EmotionError, match="confused.*--drop-unknown-classes"):
        load_splits(config("imagefolder", root, tmp_path / "cache"))
    splits = load_splits(config("imagefolder", root, tmp_path / "cache", drop_unknown_classes=True))
    assert len(splits["train"]) + len(splits["validation"]) == 7 + 4


def test_unusable_source_is_one_line_error_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, expected in ((tmp_path / "nowhere", "is not a folder"), (empty, "no images found")):
        code = prepare_main(["--dataset", "imagefolder", "--data-dir", str(path), "--cache-dir", str(tmp_path / "c")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and str(path) in err and expected in err
        assert "root/train/<class name>" in err and "root/test/<class name>" in err


def test_numbered_class_folders_map_by_name_and_the_number_must_agree(tmp_path):
    names = [f"{i}_{name}" for i, name in enumerate(CLASS_NAMES)]
    root = make_numbered_folders(tmp_path / "numbered", names)
    splits = load_splits(config("imagefolder", root, tmp_path / "cache"))
    assert np.add(counts(splits["train"]), counts(splits["validation"])).tolist() == [2] * 8
    assert all(f"/{row['label']}_{CLASS_NAMES[row['label']]}/" in row["path"] for row in splits["train"])
    (root / "train" / "7_contempt").rename(root / "train" / "6_contempt")
    with pytest.raises(EmotionError, match=r"6_contempt: number 6 is not the id of 'contempt' \(7.*rename it 7_contempt"):
        load_splits(config("imagefolder", root, tmp_path / "cache"))


@pytest.mark.parametrize("order, expected", [
    ("rafdb", {"1": "surprise", "4": "happy", "7": "neutral"}),
    ("fer2013", {"0": "anger", "4": "sad", "6": "neutral"}),
    ("affectnet", {"0": "neutral", "4": "fear", "7": "contempt"}),
    ("sad, happy , angry", {"0": "sad", "1": "happy", "2": "anger"}),
])
def test_bare_number_folders_need_label_order(tmp_path, order, expected):
    root = make_numbered_folders(tmp_path / "bare", list(expected), per_class=3)
    with pytest.raises(EmotionError, match=r"class folder .* is a bare number: .*--label-order affectnet\|rafdb\|fer2013"):
        load_splits(config("imagefolder", root, tmp_path / "cache"))
    splits = load_splits(config("imagefolder", root, tmp_path / "cache", label_order=order))
    for row in splits["train"]:
        folder = row["path"].split("/")[-2]
        assert CLASS_NAMES[row["label"]] == expected[folder]


def test_label_order_refusals_name_the_value(capsys, tmp_path):
    for flags, expected in ((["--label-order", "happy,glee"], "--label-order 'happy,glee': 'glee' is none of neutral"),
                            (["--label-order", "rafdb", "--dataset", "affectnet"], "--label-order needs --dataset imagefolder")):
        code = prepare_main(["--dataset", "imagefolder", "--data-dir", str(tmp_path), *flags])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and expected in err


def test_detect_faces_crops_the_largest_face_and_counts_photos_without_one(tmp_path):
    from skimage import data

    root = tmp_path / "photos"
    save(Image.fromarray(data.astronaut()), root / "train" / "happy" / "astronaut.png")
    save(Image.fromarray(np.full((200, 300, 3), 128, np.uint8)), root / "train" / "neutral" / "wall.png")
    save(Image.fromarray(data.astronaut()), root / "val" / "happy" / "astronaut.png")
    splits = load_splits(config("imagefolder", root, tmp_path / "cache", detect_faces=True))
    # Haar finds the face at (174, 66, 98, 98); --face-margin 0.2 grows its side to 137 px around the same centre.
    assert splits["train"]["crop"] == [[154, 46, 292, 184]] and splits["validation"]["crop"] == [[154, 46, 292, 184]]
    [folder] = list(cache_root(str(tmp_path / "cache")).iterdir())
    report = json.loads((folder / "report.json").read_text())
    assert report["splits"]["train"]["skipped"] == {"no_face": {"count": 1, "examples": [str(root / "train" / "neutral" / "wall.png")]}}
    assert report["options"]["detect_faces"] is True and report["options"]["face_margin"] == 0.2
    plain = load_splits(config("imagefolder", root, tmp_path / "cache"))  # without the flag: the centre square, its own cache
    assert plain["train"]["crop"] == [[0, 0, 512, 512], [50, 0, 250, 200]]

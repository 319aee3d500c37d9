"""Folder-per-class sets: class names and aliases to canonical ids, split folders or a seeded stratified split,
bad files counted in the report, the prepared cache reused and rebuilt."""
import json
from pathlib import Path

import numpy as np
import pytest

from data_fakes import config, make_imagefolder, save, picture
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
    # 4 good per class; 'happiness' also holds 4 odd-but-usable files (grey, CMYK, RGBA, 16-bit); no contempt folder.
    assert counts(splits["train"]) == [4, 8, 4, 4, 4, 4, 4, 0]
    assert counts(splits["validation"]) == [2, 2, 2, 2, 2, 2, 2, 0]
    assert splits["train"].features["label"].names == list(CLASS_NAMES)
    image = splits["train"][0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)
    [folder] = list(cache_root(str(tmp_path)).iterdir())
    report = json.loads((folder / "report.json").read_text())
    skipped = report["splits"]["train"]["skipped"]
    assert {r: v["count"] for r, v in skipped.items()} == {"empty_file": 1, "truncated": 1, "undecodable": 1}
    assert skipped["truncated"]["examples"] == [str(folder_set / "train" / "happiness" / "truncated.jpg")]
    converted = report["splits"]["train"]["converted"]
    assert {r: v["count"] for r, v in converted.items()} == {"16bit": 1, "alpha": 1, "cmyk": 1, "grayscale": 1}
    assert report["absent_classes"] == ["contempt"]
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("prepared:")]
    assert len(line) == 1 and "skipped 3" in line[0] and "absent classes: contempt" in line[0]


def test_cache_is_reused_and_rebuilt_when_source_or_size_changes(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "set", per_class=2, seed=1)
    cache = tmp_path / "cache"
    load_splits(config("imagefolder", root, cache))
    again = load_splits(config("imagefolder", root, cache))
    assert "prepared cache reused" in capsys.readouterr().out
    assert len(list(cache_root(str(cache)).iterdir())) == 1 and len(again["train"]) == 2 * 7 + 4
    load_splits(config("imagefolder", root, cache, image_size=40))  # another size: its own cache
    save(picture(np.random.default_rng(5)), root / "train" / "neutral" / "new.jpg")
    rebuilt = load_splits(config("imagefolder", root, cache))  # a new file: rebuilt
    assert len(rebuilt["train"]) == 2 * 7 + 4 + 1
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


def test_unknown_class_folder_fails_by_name_unless_dropped(tmp_path):
    root = make_imagefolder(tmp_path / "set", per_class=1)
    save(picture(np.random.default_rng(0)), root / "train" / "confused" / "0.jpg")
    with pytest.raises(EmotionError, match="confused.*--drop-unknown-classes"):
        load_splits(config("imagefolder", root, tmp_path / "cache"))
    splits = load_splits(config("imagefolder", root, tmp_path / "cache", drop_unknown_classes=True))
    assert len(splits["train"]) == 7 + 4


def test_unusable_source_is_one_line_error_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for path, expected in ((tmp_path / "nowhere", "is not a folder"), (empty, "no images found")):
        code = prepare_main(["--dataset", "imagefolder", "--data-dir", str(path), "--cache-dir", str(tmp_path / "c")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and str(path) in err and expected in err
        assert "root/[train|val]/<class name>" in err

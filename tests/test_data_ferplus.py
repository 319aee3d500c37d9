"""FER+ (FERPlus tools layout): vote columns mapped to the canonical classes by name, majority-vote exclusions
counted by reason, soft labels in canonical order, the test split kept apart, one-line errors for a broken layout."""
import json
import shutil

import numpy as np
import pytest

from data_fakes import config, make_ferplus
from emotion.cli import prepare_main
from emotion.data import load_splits
from emotion.data.prepare import cache_root

# The oracle of the mapping, written by hand: FER+ column -> canonical id (AffectNet order).
FERPLUS_TO_CANONICAL = {"neutral": 0, "happiness": 1, "sadness": 2, "surprise": 3, "fear": 4, "disgust": 5, "anger": 6,
                        "contempt": 7}


@pytest.fixture(scope="module")
def ferplus(tmp_path_factory):
    return make_ferplus(tmp_path_factory.mktemp("ferplus"))


def by_id(split):
    """id -> (label, soft_label or None)."""
    soft = split["soft_label"] if "soft_label" in split.column_names else [None] * len(split)
    return {row_id: (label, distribution) for row_id, label, distribution in zip(split["id"], split["label"], soft)}


def reports(cache):
    return {json.loads((p / "report.json").read_text())["options"]["label_mode"]: json.loads((p / "report.json").read_text())
            for p in cache_root(str(cache)).iterdir()}


def counted(part):
    return {reason: v["count"] for reason, v in part.items()}


def test_majority_votes_map_by_name_and_exclusions_are_counted(ferplus, tmp_path, capsys):
    root, names = ferplus
    splits = load_splits(config("ferplus", root, tmp_path))
    assert set(splits) == {"train", "validation", "test"}
    assert "soft_label" not in splits["train"].column_names  # majority caches stay lean
    train = by_id(splits["train"])
    for column, canonical in FERPLUS_TO_CANONICAL.items():
        for k in (0, 1):
            assert train[f"FER2013Train/{names['FER2013Train'][f'clear_{column}_{k}']}"][0] == canonical, column
    assert [splits["train"]["label"].count(i) for i in range(8)] == [2] * 8  # contempt included
    for kind in ("tie", "tie_with_unknown", "unknown", "not_a_face", "missing"):
        assert f"FER2013Train/{names['FER2013Train'][kind]}" not in train
    valid = by_id(splits["validation"])
    assert len(valid) == 8 and valid[f"FER2013Valid/{names['FER2013Valid']['clear_anger']}"][0] == 6
    test = by_id(splits["test"])
    assert len(test) == 5 and sorted(label for label, _ in test.values()) == [0, 1, 2, 6, 7]
    assert test[f"FER2013Test/{names['FER2013Test']['clear_contempt']}"][0] == 7
    assert not set(test) & set(valid) and not set(test) & set(train)
    image = splits["test"][0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)

    report = reports(tmp_path)["majority"]
    train_report = report["splits"]["train"]
    assert counted(train_report["excluded"]) == {"no_majority": 2, "unknown": 1, "not_a_face": 1}
    assert counted(train_report["skipped"]) == {"bad_row": 2, "missing_file": 1}
    assert counted(train_report["converted"]) == {"grayscale": 16}  # 48 x 48 grey PNGs made RGB
    assert train_report["skipped"]["bad_row"]["examples"][0].endswith("FER2013Train/label.csv:22")
    assert counted(report["splits"]["validation"]["excluded"]) == {"no_majority": 1}
    assert counted(report["splits"]["test"]["excluded"]) == {"not_a_face": 1}
    assert report["splits"]["test"]["kept"] == 5 and report["absent_classes"] == []
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("prepared:")]
    assert len(line) == 1 and "kept train 16, validation 8, test 5" in line[0]
    assert "excluded 6 (no_majority 3, not_a_face 2, unknown 1)" in line[0]


def test_soft_mode_trains_on_the_vote_distribution_and_evaluates_by_majority(ferplus, tmp_path):
    root, names = ferplus
    soft = load_splits(config("ferplus", root, tmp_path, label_mode="soft"))
    train = by_id(soft["train"])
    # Sadness 6, anger 2 (unknown 1, NF 1 left out): canonical order puts sad at 2 and anger at 6.
    label, distribution = train[f"FER2013Train/{names['FER2013Train']['clear_sadness_0']}"]
    assert label == 2 and distribution == [0, 0, 0.75, 0, 0, 0, 0.25, 0]
    label, distribution = train[f"FER2013Train/{names['FER2013Train']['clear_surprise_1']}"]
    assert label == 3 and distribution == [0, 0, 0.25, 0.75, 0, 0, 0, 0]  # the next FER+ column is sadness
    # A tie between two emotions and one between an emotion and unknown are kept for soft training.
    label, distribution = train[f"FER2013Train/{names['FER2013Train']['tie']}"]
    assert label == 0 and distribution == [0.5, 0.5, 0, 0, 0, 0, 0, 0]
    label, distribution = train[f"FER2013Train/{names['FER2013Train']['tie_with_unknown']}"]
    assert label == 2 and distribution == pytest.approx([0, 0.2, 0.8, 0, 0, 0, 0, 0], abs=1e-7)
    assert len(train) == 18 and np.allclose(np.asarray(soft["train"]["soft_label"]).sum(axis=1), 1, atol=1e-6)
    # Validation and test: the majority protocol (same rows as majority mode), with the soft column present.
    majority = load_splits(config("ferplus", root, tmp_path, label_mode="majority"))
    for split in ("validation", "test"):
        assert soft[split]["id"] == majority[split]["id"] and soft[split]["label"] == majority[split]["label"]
        assert "soft_label" in soft[split].column_names
    label, distribution = by_id(soft["test"])[f"FER2013Test/{names['FER2013Test']['clear_contempt']}"]
    assert label == 7 and distribution == pytest.approx([0, 0, 0, 0.2, 0, 0, 0, 0.8], abs=1e-7)
    report = reports(tmp_path)  # the label mode is part of the cache key: two caches
    assert set(report) == {"majority", "soft"} and report["soft"]["soft_labels"] is True
    assert counted(report["soft"]["splits"]["train"]["excluded"]) == {"unknown": 1, "not_a_face": 1}
    assert counted(report["soft"]["splits"]["validation"]["excluded"]) == {"no_majority": 1}


def test_changed_label_csv_rebuilds_the_cache(tmp_path, capsys):
    root, names = make_ferplus(tmp_path / "set", seed=1)
    load_splits(config("ferplus", root, tmp_path / "cache"))
    load_splits(config("ferplus", root, tmp_path / "cache"))
    assert "prepared cache reused" in capsys.readouterr().out
    label_csv = root / "FER2013Valid" / "label.csv"
    label_csv.write_text(label_csv.read_text() + "broken,row\n")  # a new bad row changes no record, only the file
    rebuilt = load_splits(config("ferplus", root, tmp_path / "cache"))
    assert len(list(cache_root(str(tmp_path / "cache")).iterdir())) == 2 and len(rebuilt["validation"]) == 8


@pytest.mark.parametrize("broken, expected", [("folder", "no FER2013Test/ folder in"), ("label", "no label.csv in")])
def test_broken_layout_is_a_one_line_error(ferplus, tmp_path, capsys, broken, expected):
    root = tmp_path / "copy"
    shutil.copytree(ferplus[0], root)
    if broken == "folder":
        shutil.rmtree(root / "FER2013Test")
        where = root
    else:
        (root / "FER2013Valid" / "label.csv").unlink()
        where = root / "FER2013Valid"
    code = prepare_main(["--dataset", "ferplus", "--data-dir", str(root), "--cache-dir", str(tmp_path / "c"),
                         "--image-size", "32", "--num-proc", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{expected} {where}" in err
    assert "FER2013Train,FER2013Valid,FER2013Test" in err and "label.csv" in err
    assert not cache_root(str(tmp_path / "c")).exists()


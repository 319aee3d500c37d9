"""RAF-DB basic: its own numbering mapped to the canonical ids by name, the published train / test partition with
validation held out of train, aligned or original images, bad lines counted, a wrong folder refused in one line."""
import json

import pytest

from data_fakes import RAFDB_NAMES, config, make_rafdb
from emotion.cli import prepare_main
from emotion.data import load_splits
from emotion.data.prepare import cache_root
from emotion.labels import CLASS_TO_ID


@pytest.fixture(scope="module")
def rafdb(tmp_path_factory):
    return make_rafdb(tmp_path_factory.mktemp("rafdb"))


def per_class(split):
    return [split["label"].count(i) for i in range(8)]


def test_numbering_splits_and_report(rafdb, tmp_path):
    splits = load_splits(config("rafdb", rafdb, tmp_path))
    assert set(splits) == {"train", "validation", "test"}
    # 4 train images per RAF-DB label, one of each held out as validation (val-fraction 0.1, at least one); no contempt.
    assert per_class(splits["train"]) == [3, 3, 3, 3, 3, 3, 3, 0]
    assert per_class(splits["validation"]) == [1, 1, 1, 1, 1, 1, 1, 0]
    assert per_class(splits["test"]) == [1, 1, 1, 1, 1, 1, 1, 0]
    # RAF-DB's own number of each image, read back through the label file, lands on the canonical id of its name.
    numbers = dict(line.split() for line in (rafdb / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
                   if len(line.split()) == 2)
    for row in splits["train"].select_columns(["id", "label"]):
        assert row["label"] == CLASS_TO_ID[RAFDB_NAMES[int(numbers[row["id"]])]]
    assert all(p.endswith("_aligned.jpg") for p in splits["test"]["path"])
    assert not set(splits["train"]["id"]) & set(splits["validation"]["id"])
    [folder] = list(cache_root(str(tmp_path)).iterdir())
    report = json.loads((folder / "report.json").read_text())["splits"]
    assert {r: v["count"] for r, v in report["train"]["skipped"].items()} == {"bad_row": 1, "label_out_of_range": 1}
    assert {r: v["count"] for r, v in report["test"]["skipped"].items()} == {"missing_file": 1}


def test_original_images_and_wrong_folder(rafdb, tmp_path, capsys):
    splits = load_splits(config("rafdb", rafdb, tmp_path, rafdb_images="original"))
    assert splits["test"][0]["image"].size == (32, 32)
    assert all("/Image/original/" in p and not p.endswith("_aligned.jpg") for p in splits["test"]["path"])
    capsys.readouterr()
    code = prepare_main(["--dataset", "rafdb", "--data-dir", str(rafdb / "Image"), "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "EmoLabel/list_patition_label.txt" in err

"""benchmarks/cross_dataset.py: a saved model scored on folder-per-class sets from elsewhere, as a user runs it."""
import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

spec = importlib.util.spec_from_file_location("cross_dataset", ROOT / "benchmarks" / "cross_dataset.py")
cross_dataset = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cross_dataset)


def folder_set(root, per_class: dict[str, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    for name, count in per_class.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (60, 50, 3), dtype=np.uint8)).save(root / name / f"{i}.jpg")
    return root


def test_scores_every_face_of_each_set_with_shares_and_recalls(tiny_run, tmp_path, capsys):
    sfew_like = folder_set(tmp_path / "movie", {"Angry": 3, "Happy": 5, "Neutral": 2})
    (sfew_like / "Happy" / "broken.jpg").write_bytes(b"not an image")
    other = folder_set(tmp_path / "lab", {"surprised": 4}, seed=1)
    output = tmp_path / "cross.json"
    assert cross_dataset.main(["--model", str(tiny_run / "best_model"), "--set", f"movie={sfew_like}",
                               "--set", f"lab={other}", "--output", str(output), "--no-grey"]) == 0
    result = json.loads(output.read_text())
    movie = result["sets"]["movie"]
    assert movie["faces"] == 10 and movie["skipped"]["undecodable"]["count"] == 1
    shares = {name: row["true_share"] for name, row in movie["per_class"].items() if row["support"]}
    assert shares == pytest.approx({"anger": 0.3, "happy": 0.5, "neutral": 0.2})
    assert sum(row["predicted_share"] for row in movie["per_class"].values()) == pytest.approx(1.0)
    recalls = [row["recall"] for row in movie["per_class"].values() if row["recall"] is not None]
    assert movie["balanced_accuracy"] == pytest.approx(np.mean(recalls)) and len(recalls) == 3
    assert movie["accuracy"] == pytest.approx(sum(row["recall"] * row["true_share"] for row in movie["per_class"].values()
                                                  if row["recall"] is not None))
    assert result["sets"]["lab"]["faces"] == 4 and result["input_colour"] == "rgb"
    table = capsys.readouterr().out
    assert "| movie | 10 |" in table and "| lab | 4 |" in table and "movie: per class" in table
    # --grey overrides the model's rule: the same faces, shown grey
    assert cross_dataset.main(["--model", str(tiny_run / "best_model"), "--set", f"movie={sfew_like}",
                               "--output", str(tmp_path / "grey.json"), "--grey"]) == 0
    assert json.loads((tmp_path / "grey.json").read_text())["input_colour"] == "grey"


def test_a_bad_set_is_one_line(tiny_run, tmp_path, capsys):
    assert cross_dataset.main(["--model", str(tiny_run / "best_model"), "--set", str(tmp_path)]) == 2
    assert "NAME=DIR" in capsys.readouterr().err
    unknown = folder_set(tmp_path / "odd", {"bored": 2})
    assert cross_dataset.main(["--model", str(tiny_run / "best_model"), "--set", f"odd={unknown}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "bored" in error

"""eval_accelerate.py as a user runs it: report files, TTA, predictions, 1 vs 2 processes, and offline wandb tracking."""
import csv
import glob
import json
import shutil
import subprocess
import sys

import matplotlib.image
import pytest

from conftest import ROOT, run_script
from emotion.labels import CLASS_NAMES


def read_predictions(path):
    with path.open() as handle:
        return sorted(csv.DictReader(handle), key=lambda row: row["id"])


def test_report_files_tta_and_predictions(tiny_run, tmp_path):
    run_script("eval_accelerate.py", "--model", str(tiny_run / "best_model"), "--output-dir", str(tmp_path),
               "--tta", "hflip", "--save-predictions", "--batch-size", "7")
    report = json.loads((tmp_path / "report.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "per_class", "confusion_matrix", "num_samples",
                "model", "dataset", "split"):
        assert key in report
    assert report["tta"] == "hflip" and list(report["per_class"]) == list(CLASS_NAMES)
    markdown = (tmp_path / "report.md").read_text()
    assert "| balanced_accuracy |" in markdown and "| contempt |" in markdown
    picture = matplotlib.image.imread(tmp_path / "confusion_matrix.png")
    assert picture.shape[1] > 2 * picture.shape[0] * 0.9  # counts and row-normalised side by side
    rows = read_predictions(tmp_path / "predictions.csv")
    assert len(rows) == report["num_samples"] == len({r["id"] for r in rows})
    assert set(rows[0]) == {"id", "true", "predicted", *(f"p_{n}" for n in CLASS_NAMES)}
    assert all(abs(sum(float(r[f"p_{n}"]) for n in CLASS_NAMES) - 1) < 1e-4 for r in rows)


def test_two_processes_give_the_one_process_report(tiny_run, tmp_path):
    # 32 validation images, batch 5 per process: not a multiple of 2 x 5, so the last batch is padded on one rank.
    common = ["--model", str(tiny_run / "best_model"), "--batch-size", "5", "--save-predictions"]
    run_script("eval_accelerate.py", *common, "--output-dir", str(tmp_path / "one"))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "eval_accelerate.py", *common, "--output-dir", str(tmp_path / "two")]
    result = subprocess.run(launch, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    for report in (one, two):
        report.pop("loss")
        report.pop("model")
    assert one == two and two["num_samples"] == 32
    rows_one, rows_two = read_predictions(tmp_path / "one" / "predictions.csv"), read_predictions(tmp_path / "two" / "predictions.csv")
    assert [r["id"] for r in rows_one] == [r["id"] for r in rows_two]  # every sample once, none twice
    for a, b in zip(rows_one, rows_two):
        assert a["predicted"] == b["predicted"]
        assert all(abs(float(a[f"p_{n}"]) - float(b[f"p_{n}"])) < 1e-5 for n in CLASS_NAMES)


def test_wandb_offline_run_has_the_logged_keys(tmp_path, cache_dir):
    output = tmp_path / "run"
    result = run_script("train_accelerate.py", "--preset", "tiny", "--epochs", "1", "--output-dir", str(output),
                        "--cache-dir", str(cache_dir), "--report-to", "wandb", "--baseline-accuracy", "64.25",
                        env={"WANDB_MODE": None, "WANDB_API_KEY": None})
    assert "wandb sync" in result.stdout
    runs = glob.glob(str(output / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    logged = open(runs[0], "rb").read()
    for key in ("train/loss", "val/accuracy", "val/balanced_accuracy", "lr", "train/images_per_second",
                "baseline/accuracy", "baseline/gap", "val/f1_contempt", "val/confusion_matrix"):
        assert key.encode() in logged, key
    state = json.loads((output / "checkpoints" / "epoch_1" / "trainer_state.json").read_text())
    assert state["run_id"] in runs[0]  # the id a resumed run passes back to continue the same wandb run


def tiny_saved_run(run, **config_fields):
    """A run folder as training leaves it, without training: an untrained tiny model in best_model/ and config.json."""
    from emotion.config import TrainConfig
    from emotion.model import EmotionNet

    EmotionNet(backbone="test_efficientnet", image_size=32, output_stride=16, lstm_hidden=8, proj_dim=8).save_pretrained(
        str(run / "best_model"))
    TrainConfig(image_size=32, num_proc=1, num_workers=0, **config_fields).save(run / "config.json")
    return run / "best_model"


def test_test_split_of_a_ferplus_run_and_one_line_error_without_one(tmp_path, capsys):
    from data_fakes import make_ferplus, make_imagefolder
    from emotion.cli import eval_main, eval_parser
    from emotion.data.prepare import cache_root

    root, _ = make_ferplus(tmp_path / "ferplus")
    cache = tmp_path / "cache"
    model = tiny_saved_run(tmp_path / "run", dataset="ferplus", data_dir=str(root), cache_dir=str(cache), label_mode="soft")
    assert eval_main(["--model", str(model), "--split", "test", "--batch-size", "4"]) == 0
    report = json.loads((tmp_path / "run" / "eval-test" / "report.json").read_text())  # the validation report stays apart
    assert report["split"] == "test" and report["dataset"] == "ferplus" and report["num_samples"] == 5
    assert sum(row["support"] for row in report["per_class"].values()) == 5 and report["per_class"]["contempt"]["support"] == 1
    assert "- split: `test`" in (tmp_path / "run" / "eval-test" / "report.md").read_text()
    # The cache was built with the run's label mode (from config.json beside best_model), not the default.
    [prepared] = list(cache_root(str(cache)).iterdir())
    assert json.loads((prepared / "report.json").read_text())["options"] == {"label_mode": "soft"}
    assert eval_parser().parse_args(["--model", "m", "--dataset", "ferplus", "--split", "test"]).dataset == "ferplus"

    flat = make_imagefolder(tmp_path / "flat", per_class=2, with_splits=False)
    capsys.readouterr()
    code = eval_main(["--model", str(model), "--dataset", "imagefolder", "--data-dir", str(flat), "--split", "test"])
    [error] = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]  # (progress bars aside)
    assert code == 2 and error.startswith("error: --split test: ")
    assert f"the imagefolder data set at {flat} has no test split (it has train, validation)" in error

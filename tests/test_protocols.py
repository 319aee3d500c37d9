"""Protocol choices end to end: --classes 7 (contempt dropped, 7 outputs, every downstream reader takes the class list
from the saved model), --select-metric picking the best model, the imbalanced-validation hint, the AffectNet-7
baseline, evaluation with --detect-faces; and the one-line refusals of these flags."""
import json

import numpy as np
import pytest
from PIL import Image
from skimage import data

from data_fakes import make_numbered_folders, save
from emotion.cli import eval_main, prepare_main, train_main
from emotion.faces import Predictor, draw_overlay
from emotion.labels import CLASS_NAMES, CLASS_NAMES_7, PUBLISHED_AFFECTNET7_BEST
from emotion.training import selection_line

NUMBERED = [f"{i}_{name}" for i, name in enumerate(CLASS_NAMES)]


@pytest.fixture(scope="module")
def seven_class_run(tmp_path_factory):
    """2 tiny epochs on numbered folders (contempt included) with --classes 7 and --select-metric balanced_accuracy;
    the validation folder holds 6 neutral faces and 1 of each other class."""
    root = make_numbered_folders(tmp_path_factory.mktemp("numbered"), NUMBERED, per_class=4)
    rng = np.random.default_rng(1)
    for name in NUMBERED:
        for i in range(6 if name == "0_neutral" else 1):
            save(Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)), root / "val" / name / f"{i}.png")
    run = tmp_path_factory.mktemp("runs") / "seven"
    cache = tmp_path_factory.mktemp("cache")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train_main(["--preset", "tiny", "--dataset", "imagefolder", "--data-dir", str(root), "--classes", "7",
                           "--select-metric", "balanced_accuracy", "--epochs", "2", "--image-size", "32", "--batch-size", "32",
                           "--no-pretrained", "--output-dir", str(run), "--cache-dir", str(cache)]) == 0
    return run, cache, out.getvalue()


def test_seven_classes_train_select_and_report(seven_class_run, tmp_path):
    run, cache, out = seven_class_run
    assert "train counts: neutral=4, happy=4, sad=4, surprise=4, fear=4, disgust=4, anger=4\n" in out
    assert ("model selection: validation balanced_accuracy picks the best model and drives the lr schedule; the "
            "validation set is imbalanced (6 vs 1 images per class)\n") in out
    model_config = json.loads((run / "best_model" / "config.json").read_text())
    assert model_config["class_names"] == list(CLASS_NAMES_7) and model_config["num_classes"] == 7
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = json.loads((run / "best_model" / "metrics.json").read_text())
    scores = [r["val_balanced_accuracy"] for r in history]
    assert best["epoch"] == 1 + scores.index(max(scores)) and best["select_metric"] == "balanced_accuracy"
    assert best["baseline_accuracy"] == PUBLISHED_AFFECTNET7_BEST
    card = (run / "best_model" / "README.md").read_text()
    assert "6. anger" in card and "7. contempt" not in card and "AffectNet-7 validation accuracy, QCS" in card
    assert eval_main(["--model", str(run / "best_model"), "--output-dir", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert list(report["per_class"]) == list(CLASS_NAMES_7) and np.asarray(report["confusion_matrix"]).shape == (7, 7)
    assert report["num_samples"] == 12  # contempt's validation face is not scored by a 7-class model
    assert "| true \\ pred | neutral | happy | sad | surprise | fear | disgust | anger |\n" in (tmp_path / "eval" / "report.md").read_text()


def test_seven_class_model_in_the_face_pipeline(seven_class_run):
    run, _, _ = seven_class_run
    predictor = Predictor.from_model_dir(run / "best_model")
    faces = predictor.classify(data.astronaut()[:, :, ::-1].copy(), [(174, 66, 98, 98)])
    assert faces[0].probabilities.shape == (7,) and faces[0].label in CLASS_NAMES_7
    assert list(faces[0].to_dict(predictor.class_names)["probabilities"]) == list(CLASS_NAMES_7)
    tracked = predictor.new_tracker().update(predictor.classify(data.astronaut()[:, :, ::-1].copy(), [(174, 66, 98, 98)],
                                                                explained=False))
    assert tracked[0].explanation is not None and tracked[0].label in CLASS_NAMES_7
    draw_overlay(data.astronaut()[:, :, ::-1].copy(), faces, class_names=predictor.class_names)


def test_eval_detect_faces_crops_photos_and_skips_those_without_a_face(seven_class_run, tmp_path):
    run, cache, _ = seven_class_run
    photos = tmp_path / "photos"
    save(Image.fromarray(data.astronaut()), photos / "train" / "happy" / "astronaut.png")
    save(Image.fromarray(data.astronaut()), photos / "val" / "happy" / "astronaut.png")
    save(Image.fromarray(np.full((200, 300, 3), 128, np.uint8)), photos / "val" / "neutral" / "wall.png")
    assert eval_main(["--model", str(run / "best_model"), "--data-dir", str(photos), "--detect-faces",
                      "--output-dir", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["num_samples"] == 1  # the wall has no face


def test_selection_line_names_an_imbalanced_validation_set_and_suggests_balanced_accuracy():
    assert selection_line(np.array([500] * 8), "accuracy") == \
        "model selection: validation accuracy picks the best model and drives the lr schedule"  # AffectNet: balanced
    assert selection_line(np.array([500] * 8), "accuracy", "cosine") == \
        "model selection: validation accuracy picks the best model and the lr follows a cosine over --epochs"
    assert selection_line(np.array([500] * 8), "accuracy", "wsd") == \
        "model selection: validation accuracy picks the best model and the lr is held, then falls in the last epochs"
    line = selection_line(np.array([1100, 900, 400, 400, 200, 20, 300, 5]), "accuracy")
    assert "imbalanced (1100 vs 5 images per class): accuracy mostly rewards the large classes, --select-metric " \
           "balanced_accuracy weighs every class alike" in line


@pytest.mark.parametrize("flags, expected", [
    (["--classes", "6"], "--classes 6 is not supported: use 8 (AffectNet-8) or 7"),
    (["--detect-faces", "--dataset", "affectnet"], "--detect-faces needs a set of photos (--dataset imagefolder or rafdb)"),
    (["--rafdb-images", "original"], "--rafdb-images needs --dataset rafdb (got imagefolder)"),
])
def test_protocol_flags_refused_in_one_line(flags, expected, tmp_path, capsys):
    code = prepare_main(["--dataset", "imagefolder", "--data-dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err


def test_unknown_select_metric_is_refused_in_one_line(tmp_path, capsys):
    code = train_main(["--preset", "tiny", "--select-metric", "f1", "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown --select-metric 'f1': choose accuracy, balanced_accuracy, macro_f1" in err
    assert not (tmp_path / "run").exists()

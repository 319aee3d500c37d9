"""AffectNet+: hard labels by default, soft labels summing to 1, key spellings, subset codes filtering training only,
meta-data valence and arousal, 7 classes, the soft-target loss, and train + eval end to end on the layout."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_fakes import config, make_affectnet_plus
from emotion.cli import eval_main, train_main
from emotion.data import build_dataloader, build_transform, load_splits
from emotion.data.prepare import cache_root
from emotion.errors import EmotionError
from emotion.labels import CLASS_NAMES_7
from emotion.losses import build_criterion, soft_cross_entropy


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_affectnet_plus(tmp_path_factory.mktemp("affectnet_plus"))


def test_hard_and_soft_labels_and_report(release, tmp_path):
    splits = load_splits(config("affectnet_plus", release, tmp_path))
    train = splits["train"]
    assert [train["label"].count(i) for i in range(8)] == [3] * 8
    soft = np.asarray(train["soft_label"])
    assert soft.shape == (24, 8) and np.allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    assert (soft.argmax(axis=1) == np.asarray(train["label"])).all()
    # meta-data valence and arousal kept as columns, NaN where a file has none (image 5 has no arousal).
    ids = [int(i.split("/")[1]) for i in train["id"]]
    assert np.allclose(train["valence"], [i / 100 for i in ids], atol=1e-6)
    assert [i for i, a in zip(ids, train["arousal"]) if np.isnan(a)] == [5]
    [folder] = list(cache_root(str(tmp_path)).iterdir())
    report = json.loads((folder / "report.json").read_text())["splits"]["train"]
    assert {r: v["count"] for r, v in report["skipped"].items()} == {
        "bad_annotation": 1, "bad_soft_label": 1, "missing_file": 1, "missing_label_key": 1}
    assert {r: v["count"] for r, v in report["excluded"].items()} == {"uncertain": 1}
    loader = build_dataloader(train, build_transform((0.5,) * 3, (0.5,) * 3, train=True), batch_size=8, train=True)
    batch = next(iter(loader))
    assert batch["soft_labels"].shape == (8, 8) and torch.allclose(batch["soft_labels"].sum(1), torch.ones(8))


def test_key_spellings_subsets_and_missing_keys(tmp_path):
    variant = make_affectnet_plus(tmp_path / "v2", hard_key="human_label", soft_key="soft_label", subset_key="difficulty",
                                  subset_names=True)
    easy = load_splits(config("affectnet_plus", variant, tmp_path / "cache", subset="easy", soft_labels=True))
    # every third train image is 'easy'; validation stays the full set, the one the published figures use
    assert len(easy["train"]) == 8 and len(easy["validation"]) == 8
    plain = make_affectnet_plus(tmp_path / "nosubset", subset_key=None)
    with pytest.raises(EmotionError, match="--subset easy: .* mark no subset"):
        load_splits(config("affectnet_plus", plain, tmp_path / "cache", subset="easy"))
    unknown = make_affectnet_plus(tmp_path / "unknown", hard_key="mood", soft_key="guess")
    with pytest.raises(EmotionError, match="no known hard-label key .* human-label"):
        load_splits(config("affectnet_plus", unknown, tmp_path / "cache"))
    with pytest.raises(EmotionError, match="expected the AffectNet\\+ layout"):
        load_splits(config("affectnet_plus", tmp_path / "unknown" / "human_annotated" / "train_set", tmp_path / "cache"))


def test_released_subset_codes_filter_training_only(release, tmp_path):
    difficult = load_splits(config("affectnet_plus", release, tmp_path, subset="difficult"))
    assert sorted(int(i.split("/")[1]) % 3 for i in difficult["train"]["id"]) == [2] * 8  # subset code 2 = difficult
    assert len(difficult["validation"]) == 8  # the full validation set: the figure the published table compares


def test_seven_classes_drop_contempt_and_renormalise_soft_labels(release, tmp_path):
    splits = load_splits(config("affectnet_plus", release, tmp_path, classes=7))
    assert splits["train"].features["label"].names == list(CLASS_NAMES_7)
    assert [splits["train"]["label"].count(i) for i in range(7)] == [3] * 7 and len(splits["validation"]) == 7
    soft = np.asarray(splits["train"]["soft_label"])
    assert soft.shape == (21, 7) and np.allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    [folder] = list(cache_root(str(tmp_path)).iterdir())
    report = json.loads((folder / "report.json").read_text())["splits"]
    assert report["train"]["excluded"]["contempt"]["count"] == 3 and report["validation"]["excluded"]["contempt"]["count"] == 1
    assert list(report["train"]["per_class"]) == list(CLASS_NAMES_7)


def test_soft_target_loss_applies_class_weights():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 7, 7, 3])
    weight = torch.tensor([0.5, 1, 1, 2, 1, 1, 1, 3.0])
    one_hot = F.one_hot(labels, 8).float()
    for smoothing in (0.0, 0.1):  # one-hot targets give exactly the hard weighted CE
        expected = F.cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)
        assert torch.allclose(soft_cross_entropy(logits, one_hot, weight, smoothing), expected, atol=1e-6)
    soft = torch.softmax(torch.randn(6, 8), dim=1)
    hard_loss = build_criterion(weight)(logits, {"labels": labels, "soft_labels": soft})
    soft_loss = build_criterion(weight, soft=True)(logits, {"labels": labels, "soft_labels": soft})
    manual = -(soft * weight * logits.log_softmax(1)).sum() / (soft * weight).sum()
    assert torch.allclose(soft_loss, manual) and not torch.allclose(soft_loss, hard_loss)
    doubled = soft_cross_entropy(logits, soft, weight * torch.tensor([1, 1, 1, 1, 1, 1, 1, 4.0]))
    assert not torch.allclose(doubled, soft_loss)  # the weights change the loss


def test_train_and_eval_on_the_layout_with_soft_labels(release, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--preset", "tiny", "--dataset", "affectnet_plus", "--data-dir", str(release), "--soft-labels",
                       "--no-pretrained", "--image-size", "32", "--batch-size", "24", "--output-dir", str(run),
                       "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "class weights (inverse)" in out and "train counts: neutral=3" in out
    assert eval_main(["--model", str(run / "best_model"), "--output-dir", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["dataset"] == "affectnet_plus" and report["num_samples"] == 8
    assert "prepared cache reused" in capsys.readouterr().out  # eval reads the cache training built

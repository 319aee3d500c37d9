"""Batched augmentation and the input rules: per-sample determinism, every step doing what it says, the colour rule
from data to every inference path, the crop rule measured on already-cropped faces, the machine's precision."""
import json

import cv2
import datasets
import numpy as np
import pytest
import skimage.data
import torch

from emotion.config import AUGMENT_RECIPES
from emotion.data import AugmentRecipe, build_dataloader, build_transform, choose_input_colour
from emotion.data.augment import COLUMN, Augment, grey_uint8
from emotion.faces import Predictor, TorchRunner
from emotion.faces.detect import HaarDetector, crop_face, crop_region, estimate_crop_rule
from emotion.losses import build_criterion, logit_offsets
from emotion.model import EmotionNet, load_model
from emotion import runtime

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
EVERYTHING = AugmentRecipe(**{**AUGMENT_RECIPES["domain"], "blur_prob": 1.0, "noise_prob": 1.0, "erase_prob": 1.0})


def faces(count: int = 12, side: int = 32, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]
    return datasets.Dataset.from_dict({"image": images, "label": [i % 8 for i in range(count)]},
                                      features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))


def batch_of(loader_dataset, indices):
    items = [loader_dataset[i] for i in indices]
    return {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}


def test_each_sample_is_augmented_by_its_seed_epoch_and_index_alone():
    augment = build_transform(MEAN, STD, True, EVERYTHING)
    dataset = build_dataloader(faces(), augment, 4, train=True, seed=7).dataset
    whole = augment(batch_of(dataset, range(12)))
    # the same sample alone, at another batch position, or in a half batch (two processes) gets the same pixels
    torch.testing.assert_close(augment(batch_of(dataset, [5])), whole[5:6], rtol=0, atol=0)
    torch.testing.assert_close(augment(batch_of(dataset, [9, 3, 5])), whole[[9, 3, 5]], rtol=0, atol=0)
    torch.testing.assert_close(augment(batch_of(dataset, range(6, 12))), whole[6:], rtol=0, atol=0)
    dataset.set_epoch(1)
    assert not torch.equal(augment(batch_of(dataset, [5])), whole[5:6])  # another epoch draws again
    dataset.set_epoch(0)
    torch.testing.assert_close(augment(batch_of(dataset, [5])), whole[5:6], rtol=0, atol=0)  # and back: the same
    other_seed = build_dataloader(faces(), augment, 4, train=True, seed=8).dataset
    assert not torch.equal(augment(batch_of(other_seed, [5])), whole[5:6])


@pytest.mark.parametrize("step", ["geometry", "photometric", "blur", "noise", "erase"])
def test_every_step_changes_the_face_and_only_where_it_should(step):
    recipe = AugmentRecipe(**AUGMENT_RECIPES["domain"])
    augment = Augment(recipe, MEAN, STD)
    pixels = torch.from_numpy(np.array(faces(4, 32)["image"][0]))[None].repeat(4, 1, 1, 1)
    identity = np.zeros((4, len(COLUMN)), np.float32)
    for name, value in (("area", 1.0), ("flip", 1.0), ("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0),
                        ("gamma", 1.0), ("shift_x", 0.5), ("shift_y", 0.5)):
        identity[:, COLUMN[name]] = value
    plain = Augment(AugmentRecipe(translate=0.0), MEAN, STD)({"pixels": pixels, "augment": torch.from_numpy(identity)})
    eval_pixels = build_transform(MEAN, STD, False)({"pixels": pixels})
    torch.testing.assert_close(plain, eval_pixels, atol=2e-5, rtol=0)  # no step drawn: the eval transform
    changed = identity.copy()
    changed[1:, COLUMN[{"geometry": "angle", "photometric": "contrast", "blur": "blur_sigma", "noise": "noise_std",
                        "erase": "erase"}[step]]] = {"geometry": 0.2, "photometric": 1.4, "blur": 1.0, "noise": 0.05,
                                                     "erase": 1.0}[step]
    if step == "erase":
        changed[1:, COLUMN["erase_x0"]: COLUMN["erase_y1"] + 1] = (0.25, 0.25, 0.5, 0.5)
    out = augment({"pixels": pixels, "augment": torch.from_numpy(changed)})
    torch.testing.assert_close(out[0], eval_pixels[0], atol=2e-5, rtol=0)  # sample 0 drew nothing
    assert (out[1:] - eval_pixels[1:]).abs().amax() > 0.05
    if step == "erase":
        assert (out[1, :, 8:16, 8:16] == 0).all()
        torch.testing.assert_close(out[1, :, :8], eval_pixels[1, :, :8], atol=2e-5, rtol=0)


def test_the_colour_rule_is_chosen_from_the_data_and_travels_to_every_inference_path(tmp_path):
    colour_faces = np.stack([np.asarray(image) for image in faces(8)["image"]])
    assert choose_input_colour("auto", colour_faces)[0] == "rgb"
    assert choose_input_colour("auto", grey_uint8(colour_faces))[0] == "grey"
    assert choose_input_colour("rgb", grey_uint8(colour_faces))[0] == "rgb"  # an explicit rule wins

    model = EmotionNet(backbone="test_efficientnet", image_size=64, output_stride=16, lstm_hidden=8, proj_dim=8,
                       input_colour="grey").eval()
    model.save_pretrained(tmp_path / "grey")
    assert json.loads((tmp_path / "grey" / "config.json").read_text())["input_colour"] == "grey"
    reloaded = load_model(tmp_path / "grey")
    assert reloaded.input_colour == "grey"
    rng = np.random.default_rng(1)
    crop = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # BGR, as OpenCV hands it over
    fed = Predictor(TorchRunner(reloaded), detector=None).preprocess([crop])
    shown = lambda batch: batch[0] * np.asarray(reloaded.std)[:, None, None] + np.asarray(reloaded.mean)[:, None, None]
    assert np.abs(shown(fed) - shown(fed)[0:1]).max() < 1e-5  # shown grey: every channel the same
    expected = build_transform(reloaded.mean, reloaded.std, False, colour="grey")(
        {"pixels": torch.from_numpy(crop[None, :, :, ::-1].copy())}).numpy()
    np.testing.assert_array_equal(fed, expected)  # the demo feeds what evaluation feeds
    model.set_config("input_colour", "rgb")
    fed_rgb = Predictor(TorchRunner(model), detector=None).preprocess([crop])
    assert np.abs(shown(fed_rgb) - shown(fed_rgb)[0:1]).max() > 0.5  # an rgb model sees the colours


def test_onnx_export_keeps_the_colour_rule(tmp_path):
    from emotion.export import export_onnx
    from emotion.faces.predict import OnnxRunner

    model = EmotionNet(backbone="test_efficientnet", image_size=64, output_stride=16, lstm_hidden=8, proj_dim=8,
                       input_colour="grey", face_margin=0.05, face_shift=(0.0, -0.1))
    model.save_pretrained(tmp_path / "model")
    export_onnx(tmp_path / "model", tmp_path / "onnx")
    runner = OnnxRunner(tmp_path / "onnx" / "model.onnx")
    predictor = Predictor(runner, detector=None)
    assert runner.config["input_colour"] == "grey" and predictor.preprocess.colour == "grey"
    assert (predictor.margin, predictor.shift) == (0.05, (0.0, -0.1))


def test_the_crop_rule_frames_a_detected_face_as_the_training_crops_frame_it():
    """Training faces cut by a data set's own cropper (tighter than the demo's default margin, centred a little
    higher); the rule measured on them makes the demo's crop of the same face look like them."""
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    detector = HaarDetector()
    box = max(detector.detect(photo), key=lambda b: b[2] * b[3])
    rng = np.random.default_rng(0)
    training = []
    for _ in range(12):  # the set's cropper: 8% margin, centre 6% of a side higher, a little jitter
        jitter = rng.normal(0, 0.01, 3)
        region = crop_region(photo.shape[1], photo.shape[0], box, 0.08 + jitter[0], (jitter[1], -0.06 + jitter[2]))
        training.append(crop_face(photo, region, 64)[:, :, ::-1])
    rule = estimate_crop_rule(np.stack(training), detector)
    assert rule is not None and rule["face_margin"] == pytest.approx(0.08, abs=0.04)
    assert rule["face_shift"][1] == pytest.approx(-0.06, abs=0.04)

    mean_training = np.mean(np.stack(training).astype(np.float32), axis=0)

    def demo_crop(config: dict) -> np.ndarray:
        model = EmotionNet(backbone="test_efficientnet", image_size=64, output_stride=16, lstm_hidden=8, proj_dim=8, **config)
        predictor = Predictor(TorchRunner(model), detector=detector)
        [_], [_], [crop] = predictor.crops(photo, detector.detect(photo)[:1] if len(detector.detect(photo)) == 1 else [box])
        return crop[:, :, ::-1].astype(np.float32)

    measured = demo_crop({k: rule[k] for k in ("face_margin", "face_shift")})
    default = demo_crop({})  # the configured margin (0.2), as models kept before the rule
    error = lambda crop: float(np.abs(crop - mean_training).mean())
    assert error(measured) < 0.5 * error(default)
    correlation = lambda crop: float(np.corrcoef(crop.ravel(), mean_training.ravel())[0, 1])
    assert correlation(measured) > 0.9 > correlation(default) + 0.1
    assert abs(measured.mean() - mean_training.mean()) < 3 and abs(measured.std() - mean_training.std()) < 5


@pytest.mark.parametrize("amx, avx512_bf16, expected", [(True, True, "bf16"), (False, True, "bf16"), (False, False, "no")])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    chosen, reason = runtime.choose_mixed_precision("auto")
    assert chosen == expected and reason.startswith("auto:")
    assert ("AMX" in reason) == amx and ("AVX2" in reason) == (expected == "no")
    assert runtime.choose_mixed_precision("no") == ("no", "--mixed-precision")  # an explicit choice wins
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert runtime.choose_mixed_precision("auto") == ("fp16", "accelerate launch --mixed_precision")


def test_a_run_is_not_resumed_at_another_precision(tiny_run, tmp_path, cache_dir):
    import shutil

    from conftest import run_script

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    saved = json.loads((run / "config.json").read_text())["mixed_precision"]
    other = "no" if saved == "bf16" else "bf16"
    result = run_script("train_accelerate.py", "--preset", "tiny", "--epochs", "3", "--output-dir", str(run),
                        "--cache-dir", str(cache_dir), "--resume", "latest", "--mixed-precision", other, check=False)
    assert result.returncode == 2 and "mixed_precision" in result.stderr and result.stderr.strip().count("\n") == 0


def test_logit_adjustment_offsets_follow_the_class_shares():
    counts = np.array([600, 300, 100, 0, 0, 0, 0, 0])
    offsets = logit_offsets(counts, 1.0)
    share = counts / counts.sum()
    np.testing.assert_allclose(offsets[:3].numpy(), np.log(share[:3]), rtol=1e-6)
    assert (offsets[3:] == offsets[2]).all()  # absent classes: the smallest present share
    assert logit_offsets(counts, 0.0) is None
    logits = torch.zeros(1, 8)
    for label, rarer in ((0, False), (2, True)):
        batch = {"labels": torch.tensor([label])}
        plain, adjusted = build_criterion(None)(logits, batch), build_criterion(None, offsets=offsets)(logits, batch)
        assert (adjusted > plain) == rarer  # a rare class's face costs more, so training lifts its own logit further

"""The training entry point as a user runs it: layout written, metrics sane, best model reloadable, help complete."""
import json
from dataclasses import fields

import numpy as np
import pytest
import torch

from emotion.config import PRESETS, TrainConfig
from emotion.data import build_dataloader, build_transform, load_splits
from emotion.model import load_model
from conftest import run_script


def test_tiny_run_writes_the_documented_layout(tiny_run):
    assert (tiny_run / "config.json").is_file()
    assert (tiny_run / "best_model" / "config.json").is_file()
    assert (tiny_run / "best_model" / "model.safetensors").is_file()
    for epoch in (1, 2):
        assert (tiny_run / "checkpoints" / f"epoch_{epoch}" / "COMPLETE").is_file()
    lines = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for record in lines:
        for key in ("epoch", "train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "lr", "epoch_seconds",
                    "train_images_per_second"):
            assert key in record
        assert 0.0 <= record["val_accuracy"] <= 1.0 and record["train_images_per_second"] > 0
    saved = TrainConfig.load(tiny_run / "config.json")
    assert saved.backbone == PRESETS["tiny"]["backbone"] and saved.epochs == 2  # preset, then the explicit flag
    # the explanations' baseline: mean attention on neutral validation faces, one weight per cell (4 x 4 at 64 px)
    prior = np.array(json.loads((tiny_run / "best_model" / "config.json").read_text())["attention_prior"])
    assert prior.shape == (4, 4) and prior.sum() == pytest.approx(1.0, abs=1e-4) and (prior > 0).all()


def test_best_model_reloads_to_identical_logits(tiny_run, cache_dir):
    model = load_model(tiny_run / "best_model").eval()
    again = load_model(tiny_run / "best_model").eval()
    config = TrainConfig.load(tiny_run / "config.json")
    splits = load_splits(config)
    loader = build_dataloader(splits["validation"], build_transform(model.mean, model.std, train=False, colour=model.input_colour),
                              batch_size=8, train=False)
    inputs = loader.dataset.transform(next(iter(loader)))
    with torch.no_grad():
        assert torch.equal(model(inputs), again(inputs))
    best = json.loads((tiny_run / "best_model" / "metrics.json").read_text())
    history = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert best["val_accuracy"] == max(r["val_accuracy"] for r in history)


def test_eval_script_reports_on_the_run_data(tiny_run, tmp_path):
    result = run_script("eval_accelerate.py", "--model", str(tiny_run / "best_model"), "--output-dir", str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["num_samples"] == PRESETS["tiny"]["synthetic_val"]
    assert sum(map(sum, report["confusion_matrix"])) == report["num_samples"]
    assert "accuracy" in result.stdout


def test_help_documents_every_flag():
    text = run_script("train_accelerate.py", "--help").stdout
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert "--no-pretrained" in text


def test_bad_flag_value_is_one_line(tmp_path):
    result = run_script("train_accelerate.py", "--dataset", "imagefolder", "--output-dir", str(tmp_path), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--data-dir" in result.stderr


@pytest.mark.parametrize("colour", ["rgb", "grey"])
def test_eval_preprocess_equals_the_loaders_eval_transform(colour):
    """The demo's fast path gives the very numbers validation gives for a face at the model's size, in either colour
    rule; other sizes are resized and centre-cropped first."""
    from emotion.data.transforms import eval_preprocess

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (5, 80, 80, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    expected = build_transform(mean, std, train=False, colour=colour)({"pixels": torch.from_numpy(faces)}).numpy()
    got = eval_preprocess(list(faces), 80, mean, std, colour=colour)
    assert got.shape == (5, 3, 80, 80) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(eval_preprocess([face[:, :, ::-1] for face in faces], 80, mean, std, bgr=True, colour=colour),
                                  expected)
    if colour == "grey":
        assert (got[:, 0] * std[0] + mean[0] == pytest.approx(got[:, 1] * std[1] + mean[1], abs=1e-6))
    wide = rng.integers(0, 256, (100, 140, 3), dtype=np.uint8)
    assert eval_preprocess([wide], 80, mean, std, colour=colour).shape == (1, 3, 80, 80)


def test_nan_skip_under_fp16_keeps_the_grad_scaler_and_batchnorm_statistics(tmp_path, cache_dir, monkeypatch):
    """A NaN born in the forward pass (step 3) under fp16's grad scaler: the step is skipped, training goes on."""
    import itertools

    from accelerate import Accelerator
    from accelerate.utils import AutocastKwargs
    from safetensors.torch import load_file

    from emotion import training
    from emotion.cli import train_main

    def fp16_accelerator(**kwargs):
        kwargs.pop("mixed_precision", None)  # the run's own choice (auto), replaced by fp16 here
        # Accelerate gives fp16 a grad scaler on GPUs only; torch's CPU scaler runs the same unscale/step/update protocol.
        # (fp16 autocast itself is left off: emulated on a CPU it is slow, and the scaler is what this test is about.)
        accelerator = Accelerator(mixed_precision="fp16", kwargs_handlers=[AutocastKwargs(enabled=False)], **kwargs)
        accelerator.scaler, accelerator.native_amp = torch.amp.GradScaler("cpu"), True
        return accelerator

    build_model = training.build_model
    seen = {}

    def model_with_a_nan_image(config, *rules):
        model = build_model(config, *rules)
        forwards = itertools.count(1)

        def poison_third_training_batch(module, args):
            if not module.training:
                return None
            call = next(forwards)
            if call == 3:  # the statistics of the last good step, then a NaN image in the batch
                seen["before"] = {k: v.clone() for k, v in module.named_buffers()}
                pixels = args[0].clone()
                pixels[0] = float("nan")
                return (pixels,)
            if call == 4:
                seen["after"] = {k: v.clone() for k, v in module.named_buffers()}
            return None

        model.register_forward_pre_hook(poison_third_training_batch)
        return model

    monkeypatch.setattr(training, "make_accelerator", fp16_accelerator)
    monkeypatch.setattr(training, "build_model", model_with_a_nan_image)
    run = tmp_path / "run"
    code = train_main(["--preset", "tiny", "--synthetic-train", "48", "--synthetic-val", "16", "--batch-size", "8",
                       "--nan-policy", "skip", "--output-dir", str(run), "--cache-dir", str(cache_dir)])
    assert code == 0
    bad = [json.loads(line) for line in (run / "nan_diagnostics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in bad] == [3]
    running = [k for k in seen["before"] if k.endswith(("running_mean", "running_var"))]
    assert running and all(torch.equal(seen["before"][k], seen["after"][k]) for k in seen["before"])
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["val_loss"]) and record["global_step"] == 6
    weights = load_file(run / "best_model" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_cpu_threads_take_the_cores_the_loader_does_not_need(monkeypatch):
    from emotion import runtime

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    try:
        runtime.leave_cores_free(1)
        assert torch.get_num_threads() == 3
        runtime.leave_cores_free(0)  # --loader-cores 0: a light loader leaves every core to PyTorch
        assert torch.get_num_threads() == 4
        runtime.leave_cores_free(2, processes=2)
        assert torch.get_num_threads() == 1  # never below one thread
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        runtime.leave_cores_free(0)
        assert torch.get_num_threads() == 1  # the user's OMP_NUM_THREADS wins: left as it was
    finally:
        torch.set_num_threads(before)

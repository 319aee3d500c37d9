"""DDP correctness on CPU: 2 processes x batch b train the same model as 1 process x batch 2b.

The comparison uses a batch-independent backbone (`test_efficientnet_gn`, GroupNorm) and --dropout 0: the loop
reseeds dropout per rank, and BatchNorm statistics of b and 2b samples differ (SyncBatchNorm needs GPUs).
Class weights are off because a weighted loss is normalised per process. docs/distributed.md has the BN figures.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import load_file

from emotion.config import PRESETS, TrainConfig
from emotion.data import load_splits
from emotion.training import sync_batchnorm
from conftest import ROOT

# float32 summation order only (all-reduce of two half-batch gradients vs one full batch). Measured: losses 1e-7
# relative; weights 6e-6 after 4 AdamW steps at lr 3e-3 without the auxiliary head and 1.4e-4 with it (Adam divides
# near-zero gradients of early backbone convolutions by their own tiny norm, so summation noise there becomes a step);
# the same runs with BatchNorm differ by 1.2e-2.
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 5e-4
# fp32 on both sides (the launcher's --mixed_precision no, and the flag for the single process, whose auto could pick
# bf16): the tolerances above are float32 summation order.
COMMON = ["--preset", "tiny", "--backbone", "test_efficientnet_gn", "--dropout", "0", "--class-weights", "none",
          "--epochs", "2", "--mixed-precision", "no"]  # two epochs: the second checks the augmentation epoch reaches every rank


def _start(command: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, f"{process.args} exited {process.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    return out


def test_two_processes_match_one_process_with_double_batch(tmp_path, cache_dir):
    load_splits(TrainConfig(**{**PRESETS["tiny"], "cache_dir": str(cache_dir)}))  # build the cache once, not twice in parallel
    common = COMMON + ["--cache-dir", str(cache_dir)]
    launcher = Path(sys.executable).with_name("accelerate")
    # No ACCELERATE_USE_CPU: emotion.runtime must form real gloo ranks by itself on a GPU-less machine.
    ddp = _start([str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no", "train_accelerate.py", *common,
                  "--batch-size", "16", "--output-dir", str(tmp_path / "ddp")], {})
    single = _start([sys.executable, "train_accelerate.py", *common, "--batch-size", "32",
                     "--output-dir", str(tmp_path / "single")], {})
    ddp_out, _ = _finish(ddp), _finish(single)

    runs = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("ddp", "single")}
    assert [r["global_step"] for r in runs["ddp"]] == [r["global_step"] for r in runs["single"]] == [2, 4]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert [r[key] for r in runs["ddp"]] == pytest.approx([r[key] for r in runs["single"]], rel=LOSS_TOLERANCE, abs=LOSS_TOLERANCE), key
    ddp_weights = load_file(tmp_path / "ddp" / "best_model" / "model.safetensors")
    single_weights = load_file(tmp_path / "single" / "best_model" / "model.safetensors")
    assert ddp_weights.keys() == single_weights.keys()
    worst, key = max((float((ddp_weights[k].float() - single_weights[k].float()).abs().max()), k) for k in ddp_weights)
    assert worst < WEIGHT_TOLERANCE, f"largest weight difference {worst} in {key}"

    # Only the main process writes and prints.
    assert ddp_out.count("final validation accuracy") == 1
    assert ddp_out.count("epoch 2/2: train_loss") == 1
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())


def test_sync_bn_converts_timm_batchnorm():
    model = timm.create_model("test_efficientnet", num_classes=0)
    gpus = SimpleNamespace(num_processes=2, device=torch.device("cuda"))
    converted = sync_batchnorm(model, TrainConfig(sync_bn=True), gpus)
    kinds = {type(m).__name__ for m in converted.modules()}
    assert "SyncBatchNormAct" in kinds and "BatchNormAct2d" not in kinds  # the fused activation is kept
    one = SimpleNamespace(num_processes=1, device=torch.device("cpu"))
    assert sync_batchnorm(model, TrainConfig(sync_bn=True), one) is model

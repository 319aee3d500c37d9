"""ONNX export checked against PyTorch (with the face pipeline's ONNX Runtime runner, `emotion.faces.OnnxRunner`),
a PyTorch-vs-ONNX Runtime speed comparison, and the Hub push. The model card itself lives in `emotion.card`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, HTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from torch import nn

from emotion import card
from emotion.checkpoint import find_saved_model
from emotion.config import PRESETS, TrainConfig
from emotion.errors import EmotionError
from emotion.faces.predict import ONNX_INPUT as INPUT_NAME, ONNX_OUTPUTS as OUTPUT_NAMES, OnnxRunner
from emotion.io import read_json
from emotion.model import EmotionNet, build_model, load_model

ONNX_FILE = "model.onnx"
OPSET = 18
OPSET_MIN, OPSET_MAX = 7, 23  # the opsets torch.onnx writes (torch 2.9+); the exporter may still refuse one for an op
TOLERANCE = 1e-4
PARITY_BATCHES = (1, 3)  # two sizes, so the dynamic batch axis is checked too
# Files a saved model folder may hold; only these go to the Hub.
MODEL_FILES = ("README.md", "config.json", "model.safetensors", "metrics.json", ONNX_FILE)


class _LogitsAndAttention(nn.Module):
    """The graph ONNX sees: both outputs, always (EmotionNet's flag is a Python bool, not a graph input)."""

    def __init__(self, model: EmotionNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(pixel_values, return_attention=True)


def _export_graph(model: EmotionNet, path: Path, opset: int) -> None:
    example = torch.randn(2, 3, model.image_size, model.image_size)
    try:
        with warnings.catch_warnings():  # the exporter's internal deprecation notes are not the user's to act on
            warnings.simplefilter("ignore")
            torch.onnx.export(_LogitsAndAttention(model).eval(), (example,), str(path), dynamo=True, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), external_data=False,
                              dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}}, verbose=False)
    except Exception as err:  # the exporter fails in many ways (unsupported op, opset); all mean: no file
        raise EmotionError(f"ONNX export of backbone {model.config['backbone']!r} at --opset {opset} failed "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:160]}): try another --opset (17-20)") from None


@torch.no_grad()
def parity_gap(model: EmotionNet, runner: OnnxRunner, batches=PARITY_BATCHES, seed: int = 0) -> dict[str, float]:
    """Max |PyTorch - ONNX Runtime| per output over seeded random batches."""
    generator = torch.Generator().manual_seed(seed)
    gaps = {name: 0.0 for name in OUTPUT_NAMES}
    for size in batches:
        x = torch.randn(size, 3, model.image_size, model.image_size, generator=generator)
        for name, ours, theirs in zip(OUTPUT_NAMES, model(x, return_attention=True), runner.outputs(x.numpy())):
            gaps[name] = max(gaps[name], float(np.abs(ours.numpy() - theirs).max()))
    return gaps


def export_onnx(model_dir: Path, output_dir: Path | None = None, opset: int = OPSET, tolerance: float = TOLERANCE,
                command: str | None = None) -> dict[str, Any]:
    """Write `model.onnx` (+ config.json and the card) into `output_dir` (default: beside the weights) if it matches
    PyTorch within `tolerance`; otherwise raise naming the gap and leave nothing behind."""
    model_dir = Path(model_dir)
    model = load_model(model_dir).eval()
    output_dir = Path(output_dir or model_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".tmp-onnx-") as tmp:
        staged = Path(tmp)
        _export_graph(model, staged / ONNX_FILE, opset)
        # The resolved preprocessing: a saved config.json leaves mean/std as None (meaning the backbone's defaults).
        (staged / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")
        gaps = parity_gap(model, OnnxRunner(staged / ONNX_FILE))
        gap = max(gaps.values())
        if not gap <= tolerance:  # also catches NaN
            detail = ", ".join(f"{k} {v:.2e}" for k, v in gaps.items())
            raise EmotionError(f"ONNX Runtime and PyTorch disagree on {model_dir}: max |diff| {gap:.2e} > {tolerance:.0e} "
                               f"({detail}); model.onnx not written: try another --opset")
        if output_dir.resolve() != model_dir.resolve():
            for name in ("metrics.json", card.CARD):
                if (model_dir / name).is_file():
                    shutil.copy2(model_dir / name, staged / name)
        for path in staged.iterdir():
            os.replace(path, output_dir / path.name)
    report = {"file": ONNX_FILE, "opset": opset, "max_abs_diff": gap, "gaps": gaps, "tolerance": tolerance,
              "batches": list(PARITY_BATCHES), "command": command or card.current_command()}
    card.write_model_card(output_dir, run_config=read_json(model_dir.parent / "config.json"), export=report)
    return report


def _images_per_second(call, batch: Any, batch_size: int, seconds: float) -> float:
    call(batch)  # warm-up: first-call allocation and graph setup are not throughput
    done, started = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - started < seconds:
        call(batch)
        done += batch_size
    return done / (time.perf_counter() - started)


@torch.no_grad()
def compare_runtimes(preset: str, batch_size: int = 8, seconds: float = 5.0, threads: int = 1, opset: int = OPSET) -> dict[str, Any]:
    """CPU images/s of PyTorch vs ONNX Runtime for a preset's architecture (random weights: speed only), both on
    `threads` threads (on a shared machine, PyTorch's OpenMP pool collapses when oversubscribed: 1 is the fair default)."""
    if preset not in PRESETS:
        raise EmotionError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    config = TrainConfig(**PRESETS[preset], pretrained=False)
    model = build_model(config).eval()
    previous_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        started = time.perf_counter()
        export = export_onnx(Path(tmp), opset=opset, command=f"compare_runtimes({preset!r})")
        export_seconds = time.perf_counter() - started
        runner = OnnxRunner(Path(tmp) / ONNX_FILE, threads=threads)
        x = torch.randn(batch_size, 3, model.image_size, model.image_size)
        torch.set_num_threads(threads)
        try:
            torch_ips = _images_per_second(model, x, batch_size, seconds)
        finally:
            torch.set_num_threads(previous_threads)
        onnx_ips = _images_per_second(runner.outputs, x.numpy(), batch_size, seconds)
    return {"preset": preset, "backbone": config.backbone, "image_size": config.image_size, "batch_size": batch_size,
            "threads": threads, "torch_images_per_second": torch_ips, "onnxruntime_images_per_second": onnx_ips,
            "speedup": onnx_ips / torch_ips, "max_abs_diff": export["max_abs_diff"], "export_seconds": export_seconds}


def hub_files(model_dir: Path) -> list[str]:
    """The files of a model folder that belong on the Hub (weights, configs, card, ONNX), card written if missing."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise EmotionError(f"{model_dir} is not a saved model (no config.json): pass a best_model/ or export folder")
    if not (model_dir / card.CARD).is_file():
        card.write_model_card(model_dir)
    return [name for name in MODEL_FILES if (model_dir / name).is_file()]


def push_to_hub(model_dir: Path, repo_id: str, private: bool = False, token: str | None = None) -> tuple[str, list[str]]:
    """Upload the model folder's files to a Hub model repo (created if missing); returns the commit URL and the files."""
    model_dir = find_saved_model(Path(model_dir))  # a kill mid-replacement leaves the complete previous version
    files = hub_files(model_dir)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(model_dir), repo_id=repo_id, repo_type="model", allow_patterns=files,
                                   commit_message=f"Upload {', '.join(files)}")
    except OfflineModeIsEnabled:
        raise EmotionError("cannot push: HF_HUB_OFFLINE is set; unset it on a machine that reaches huggingface.co") from None
    except LocalTokenNotFoundError:
        raise EmotionError("cannot push: no Hugging Face token; run `hf auth login`, set HF_TOKEN or pass --token") from None
    except HfHubHTTPError as err:  # the Hub answered, and refused
        status = getattr(err.response, "status_code", "?")
        advice = ("check the token (`hf auth login`, HF_TOKEN or --token) and that it may write to "
                  f"{repo_id}") if status in (401, 403) else "check --repo-id and try again"
        raise EmotionError(f"cannot push to {repo_id}: the Hub answered HTTP {status}; {advice}") from None
    except (HTTPError, OSError) as err:  # no answer at all
        raise EmotionError(f"cannot push: huggingface.co is unreachable ({type(err).__name__}); check the network "
                           "connection (or proxy) and run again") from None
    return str(getattr(commit, "commit_url", commit)), files

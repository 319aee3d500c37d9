"""Training DataLoader images/s from a prepared cache vs the model's training images/s, for one preset.

    python benchmarks/data_loader.py --preset cpu [--images 2000] [--steps 20]

Builds a folder-per-class set of random 160 x 160 JPEGs in a temporary folder, prepares it at the preset's size,
then times a full epoch of the training loader (the preset's workers and augmentation) and optimizer steps of the
preset's model (forward + backward + AdamW) on CPU.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emotion.config import PRESETS, TrainConfig
from emotion.data import build_dataloader, build_transform, load_splits
from emotion.labels import CLASS_NAMES
from emotion.losses import build_criterion
from emotion.model import build_model


def make_set(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / CLASS_NAMES[i % len(CLASS_NAMES)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)


def loader_rate(config: TrainConfig, split) -> float:
    transform = build_transform(config.image_size, (0.5,) * 3, (0.5,) * 3, train=True)
    loader = build_dataloader(split, transform, config.batch_size, train=True, num_workers=config.num_workers)
    started, seen = time.perf_counter(), 0
    for batch in loader:
        seen += batch["pixel_values"].shape[0]
    return seen / (time.perf_counter() - started)


def model_rate(config: TrainConfig, steps: int) -> float:
    model = build_model(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    criterion = build_criterion(torch.ones(len(CLASS_NAMES)))
    batch = {"pixel_values": torch.randn(config.batch_size, 3, config.image_size, config.image_size),
             "labels": torch.arange(config.batch_size) % len(CLASS_NAMES)}
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            started = time.perf_counter()
        loss = criterion(model(batch["pixel_values"]), batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * config.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=list(PRESETS))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the model (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        make_set(Path(tmp) / "set", args.images)
        config = TrainConfig(**{**PRESETS[args.preset], "dataset": "imagefolder", "data_dir": str(Path(tmp) / "set"),
                                "cache_dir": str(Path(tmp) / "cache"), "pretrained": False, "preset": args.preset})
        started = time.perf_counter()
        splits = load_splits(config)
        prepare_seconds = time.perf_counter() - started
        data = loader_rate(config, splits["train"])
        compute = model_rate(config, args.steps)
    print(f"preset {args.preset}: {args.images} images prepared at {config.image_size} px in {prepare_seconds:.1f} s; "
          f"loader {data:.0f} img/s ({config.num_workers} worker(s)), model training {compute:.0f} img/s "
          f"(batch {config.batch_size}, {torch.get_num_threads()} threads): ratio {data / compute:.1f}x")


if __name__ == "__main__":
    main()

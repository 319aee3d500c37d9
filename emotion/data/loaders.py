"""Split loading, class statistics and DataLoaders with per-sample seeded augmentation."""
from __future__ import annotations

import os
import signal
from typing import Callable

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from emotion.data.affectnet import read_affectnet
from emotion.data.affectnet_plus import read_affectnet_plus
from emotion.data.fer2013 import read_fer2013
from emotion.data.ferplus import read_ferplus
from emotion.data.imagefolder import read_imagefolder
from emotion.data.prepare import prepared_splits
from emotion.data.rafdb import read_rafdb
from emotion.errors import EmotionError

# Real sources: each reader lists records; emotion.data.prepare turns them into the cached Arrow splits.
READERS = {"imagefolder": read_imagefolder, "affectnet": read_affectnet, "affectnet_plus": read_affectnet_plus,
           "ferplus": read_ferplus, "rafdb": read_rafdb, "fer2013": read_fer2013}


def load_splits(config) -> datasets.DatasetDict:
    """The 'train' and 'validation' splits of the source a TrainConfig names, plus 'test' when the source has one."""
    if config.dataset == "synthetic":
        from emotion.synthetic import load_synthetic

        # Rendering is CPU-bound: use every core once the set is big enough to repay the process start-up.
        num_proc = config.num_proc or ((os.cpu_count() or 1) if config.synthetic_train >= 1000 else None)
        return load_synthetic(config.synthetic_train, config.synthetic_val, image_size=config.image_size,
                              seed=config.data_seed, cache_dir=config.cache_dir, num_proc=num_proc, classes=config.classes)
    if config.dataset not in READERS:
        raise EmotionError(f"unknown --dataset {config.dataset!r}: choose synthetic, {', '.join(READERS)}")
    return prepared_splits(config, READERS[config.dataset])


def class_counts(split: datasets.Dataset) -> np.ndarray:
    """Images per class of the split's own class list (8, or 7 with --classes 7)."""
    return np.bincount(np.asarray(split["label"], dtype=np.int64), minlength=split.features["label"].num_classes)


def class_weights(counts: np.ndarray, scheme: str = "inverse", beta: float = 0.999) -> np.ndarray:
    """Loss weights from training counts, normalised to mean 1 over present classes; absent classes get 0.

    inverse: n_total / n_c. effective: (1 - beta) / (1 - beta^n_c) (Cui et al. 2019). none: all ones.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if scheme == "none":
        return np.ones_like(counts)
    weights = np.zeros_like(counts)
    if scheme == "inverse":
        weights[present] = counts.sum() / counts[present]
    elif scheme == "effective":
        weights[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    else:
        raise EmotionError(f"unknown class-weight scheme {scheme!r}: choose inverse, effective or none")
    return weights / weights[present].mean()


class TransformedSplit(Dataset):
    """A split with a transform whose randomness depends only on (seed, epoch, index).

    That makes augmentation independent of worker count and of where a resumed epoch starts.
    """

    def __init__(self, split: datasets.Dataset, transform: Callable, seed: int = 0) -> None:
        self.split = split
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        row = self.split[int(index)]
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(hash((self.seed, self.epoch, int(index))) & 0x7FFF_FFFF)
        pixels = self.transform(row["image"])
        torch.random.set_rng_state(generator_state)
        item = {"pixel_values": pixels, "labels": int(row["label"]), "index": int(index)}
        if "soft_label" in row:
            item["soft_labels"] = torch.tensor(row["soft_label"], dtype=torch.float32)
        return item


def leave_signals_to_main_process(worker_id: int) -> None:
    """DataLoader worker start: ignore SIGINT / SIGTERM, which a shutdown sends to the whole process group.

    The main process decides (finish the step, save interrupted/); a worker that died of the signal would crash the run.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_dataloader(split: datasets.Dataset, transform: Callable, batch_size: int, train: bool,
                     num_workers: int = 0, seed: int = 0) -> DataLoader:
    dataset = TransformedSplit(split, transform, seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        # Train workers must restart each epoch: they hold a copy of TransformedSplit.epoch (the augmentation seed).
        persistent_workers=num_workers > 0 and not train,
        worker_init_fn=leave_signals_to_main_process,
        # Own generator: creating an iterator must not consume the global RNG (exact resume).
        generator=torch.Generator().manual_seed(seed),
    )

"""Split loading, class statistics and DataLoaders of decoded uint8 pixels with per-sample seeded augmentation parameters."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from emotion.data.affectnet import read_affectnet
from emotion.data.affectnet_plus import read_affectnet_plus
from emotion.data.augment import EvalTransform
from emotion.data.fer2013 import read_fer2013
from emotion.data.ferplus import read_ferplus
from emotion.data.imagefolder import read_imagefolder
from emotion.data.prepare import prepared_splits
from emotion.data.rafdb import read_rafdb
from emotion.errors import EmotionError
from emotion.synthetic import load_synthetic

# Real sources: each reader lists records; emotion.data.prepare turns them into the cached Arrow splits.
READERS = {"imagefolder": read_imagefolder, "affectnet": read_affectnet, "affectnet_plus": read_affectnet_plus,
           "ferplus": read_ferplus, "rafdb": read_rafdb, "fer2013": read_fer2013}


# A face counts as grey when no channel strays further than this from the pixel's mean (JPEG adds a little colour).
GREY_TOLERANCE = 6
# The training set is grey, and so is the model's input, when this share of its faces is.
GREY_RULE_SHARE = 0.99


def load_splits(config) -> datasets.DatasetDict:
    """The 'train' and 'validation' splits of the source a TrainConfig names, plus 'test' when the source has one."""
    if config.dataset == "synthetic":
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


def class_weights(counts: np.ndarray, scheme: str = "inverse") -> np.ndarray:
    """Loss weights from training counts, normalised to mean 1 over present classes; absent classes get 0.

    inverse: n_total / n_c. none: all ones.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if scheme == "none":
        return np.ones_like(counts)
    weights = np.zeros_like(counts)
    if scheme == "inverse":
        weights[present] = counts.sum() / counts[present]
    else:
        raise EmotionError(f"unknown class-weight scheme {scheme!r}: choose inverse or none")
    return weights / weights[present].mean()


def decoded_pixels(split: datasets.Dataset) -> np.ndarray:
    """(N, H, W, 3) uint8: the split's images decoded once, so no step decodes anything.

    Kept beside the split's Arrow cache as `pixels-<fingerprint>.npy` and memory-mapped from then on (forked loader
    workers share the pages); a split held only in memory, or a cache folder that cannot be written, is decoded in memory.
    """
    folder = Path(split.cache_files[0]["filename"]).parent if split.cache_files else None
    path = folder / f"pixels-{split._fingerprint}.npy" if folder else None
    if path is not None and path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):  # a damaged sidecar is decoded again
            pass
    images = [np.asarray(image.convert("RGB")) for image in split.with_format(None)["image"]]
    sizes = {image.shape for image in images}
    if len(sizes) > 1:
        raise EmotionError(f"the prepared split holds images of {len(sizes)} sizes ({', '.join(map(str, sorted(sizes)[:3]))}, ...): "
                           "prepare it again with one --image-size")
    pixels = np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
    if path is not None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as handle:
                np.save(handle, pixels)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
    return pixels


def grey_share(pixels: np.ndarray, sample: int = 4096) -> float:
    """Share of faces (up to `sample`, evenly spread) whose channels agree: grey faces, up to JPEG's colour noise."""
    if len(pixels) == 0:
        return 0.0
    picked = np.asarray(pixels[np.linspace(0, len(pixels) - 1, min(sample, len(pixels))).astype(np.int64)], np.int16)
    spread = np.abs(picked - picked.mean(axis=-1, keepdims=True)).max(axis=(1, 2, 3))
    return float((spread <= GREY_TOLERANCE).mean())


def choose_input_colour(requested: str, pixels: np.ndarray) -> tuple[str, str]:
    """The colour rule of a run ('grey' or 'rgb') and why: `auto` picks grey when the training faces are grey."""
    if requested != "auto":
        return requested, "--input-colour"
    share = grey_share(pixels)
    if share >= GREY_RULE_SHARE:
        return "grey", f"auto: {100 * share:.1f}% of the training faces are grey, so every face is shown grey"
    return "rgb", f"auto: {100 * share:.1f}% of the training faces are grey"


class TransformedSplit(Dataset):
    """A split as uint8 pixels, labels and, for a random transform, each sample's augmentation parameters.

    The parameters depend only on (seed, epoch, index), which makes augmentation independent of worker count, process
    count and of where a resumed epoch starts. The transform itself runs on whole batches (`transform(batch)`), on the
    training device.
    """

    def __init__(self, split: datasets.Dataset, transform: EvalTransform, seed: int = 0) -> None:
        self.pixels = decoded_pixels(split)
        self.labels = np.asarray(split["label"], dtype=np.int64)
        self.soft_labels = np.asarray(split["soft_label"], dtype=np.float32) if "soft_label" in split.column_names else None
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        item = {"pixels": torch.from_numpy(np.array(self.pixels[index])), "labels": int(self.labels[index]), "index": index}
        if self.transform.random:
            item["augment"] = torch.from_numpy(self.transform.draw(self.seed, self.epoch, index))
        if self.soft_labels is not None:
            item["soft_labels"] = torch.from_numpy(self.soft_labels[index])
        return item


def leave_signals_to_main_process(worker_id: int) -> None:
    """DataLoader worker start: ignore SIGINT / SIGTERM, which a shutdown sends to the whole process group.

    The main process decides (finish the step, save interrupted/); a worker that died of the signal would crash the run.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_dataloader(split: datasets.Dataset, transform: EvalTransform, batch_size: int, train: bool,
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

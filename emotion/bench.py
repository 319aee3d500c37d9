"""Throughput and memory on the current device, in one run: our full model vs the plain timm classifier with the
same backbone (training images/s), inference (batch 32 images/s, batch 1 latency), data loading from a prepared
Arrow dataset and from a raw image folder (images/s vs training), and peak memory. Prints a markdown table and
writes JSON.

Timings are the fastest of `repeats` timed windows, each after warm-up steps: on a shared machine the fastest
window is the one least disturbed by other processes.
"""
from __future__ import annotations

import contextlib
import platform
import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import datasets
import timm
import torch
from torch.utils.data import DataLoader

from emotion.checkpoint import write_json_atomic
from emotion.config import PRESETS, TrainConfig
from emotion.data import build_dataloader, build_transform
from emotion.errors import EmotionError
from emotion.labels import NUM_CLASSES
from emotion.model import build_model, speed_up

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGET_TRAIN_RATIO = 0.85  # full model vs plain timm classifier, training images/s
TARGET_LOADER_RATIO = 3.0  # loader images/s vs full-model training images/s


@dataclass
class BenchSettings:
    preset: str = "cpu"
    backbone: str | None = None
    image_size: int | None = None
    batch_size: int | None = None
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    steps: int = 5
    warmup: int = 2
    repeats: int = 3
    inference_batch: int = 32
    latency_runs: int = 10
    data_dir: str | None = None
    loader_samples: int = 256
    num_workers: int | None = None
    threads: int | None = None
    cache_dir: str | None = None
    output: str | None = None


def current_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_config(settings: BenchSettings) -> TrainConfig:
    if settings.preset not in PRESETS:
        raise EmotionError(f"unknown --preset {settings.preset!r}: choose one of {', '.join(PRESETS)}")
    overrides = {k: getattr(settings, k) for k in ("backbone", "image_size", "batch_size", "num_workers", "cache_dir")
                 if getattr(settings, k) is not None}
    return TrainConfig(**{**PRESETS[settings.preset], **overrides, "pretrained": False})


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise EmotionError(f"unknown --precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise EmotionError(f"--precision fp16 needs a CUDA GPU (this device is {device.type}): use bf16 or fp32")


def autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def fastest(window: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of `window`."""
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        window()
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def plain_classifier(config: TrainConfig) -> torch.nn.Module:
    """timm's own classifier on the same backbone and output stride: the speed reference."""
    kwargs = {"output_stride": config.output_stride} if config.output_stride != 32 else {}
    return timm.create_model(config.backbone, pretrained=False, num_classes=NUM_CLASSES, **kwargs)


def train_speed(model: torch.nn.Module, config: TrainConfig, settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Training images/s (forward, loss, backward, AdamW step) on random images; CUDA peak memory."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    images = torch.randn(config.batch_size, 3, config.image_size, config.image_size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (config.batch_size,), device=device)
    criterion = torch.nn.CrossEntropyLoss()

    def step() -> None:
        with autocast(device, settings.precision):
            loss = criterion(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(settings.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = fastest(lambda: [step() for _ in range(settings.steps)], device, settings.repeats)
    return {"images_per_second": settings.steps * config.batch_size / seconds,
            "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


def inference_speed(model: torch.nn.Module, config: TrainConfig, settings: BenchSettings, device: torch.device) -> dict[str, float]:
    model.to(device).eval()
    batch = torch.randn(settings.inference_batch, 3, config.image_size, config.image_size, device=device)
    single = batch[:1].clone()
    with torch.inference_mode(), autocast(device, settings.precision):
        for _ in range(settings.warmup):
            model(batch)
            model(single)
        seconds = fastest(lambda: [model(batch) for _ in range(settings.steps)], device, settings.repeats)
        latencies = []
        for _ in range(settings.latency_runs):
            latencies.append(fastest(lambda: model(single), device, 1))
    return {"images_per_second": settings.steps * settings.inference_batch / seconds,
            "latency_ms": 1000 * statistics.median(latencies)}


def arrow_split(config: TrainConfig, settings: BenchSettings) -> datasets.Dataset:
    """`--data-dir`: any prepared dataset directory (`save_to_disk`); default: the synthetic set's Arrow cache."""
    if settings.data_dir:
        try:
            loaded = datasets.load_from_disk(settings.data_dir)
        except FileNotFoundError:
            raise EmotionError(f"--data-dir {settings.data_dir} is not a prepared dataset (no save_to_disk layout): "
                               "prepare it first, or leave --data-dir out to use synthetic faces") from None
        split = loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        from emotion.synthetic import load_synthetic

        split = load_synthetic(settings.loader_samples, 0, image_size=config.image_size, seed=config.seed,
                               cache_dir=config.cache_dir)["train"]
    if "image" not in split.column_names or "label" not in split.column_names:
        raise EmotionError(f"--data-dir {settings.data_dir}: the split has no 'image' and 'label' columns "
                           f"(found {', '.join(split.column_names)})")
    return split.select(range(min(settings.loader_samples, len(split))))


def write_image_folder(split: datasets.Dataset, root: Path) -> Path:
    """The split as `root/<label>/<n>.jpg`: the raw layout a folder-per-class data set arrives in."""
    for index, row in enumerate(split):
        folder = root / str(row["label"])
        folder.mkdir(parents=True, exist_ok=True)
        row["image"].convert("RGB").save(folder / f"{index:06d}.jpg", quality=95)
    return root


def loader_speed(loader: DataLoader, repeats: int) -> float:
    """Images/s over whole passes, worker start-up included (train workers restart every epoch)."""
    count = sum(len(b["labels"] if isinstance(b, dict) else b[1]) for b in loader)  # one pass warms the page cache
    return count / fastest(lambda: [None for _ in loader], torch.device("cpu"), repeats)


def data_speed(split: datasets.Dataset, config: TrainConfig, settings: BenchSettings, mean, std) -> dict[str, float]:
    from torchvision.datasets import ImageFolder

    transform = build_transform(config.image_size, mean, std, train=True)
    arrow = build_dataloader(split, transform, config.batch_size, train=True, num_workers=config.num_workers, seed=config.seed)
    result = {"samples": len(split), "num_workers": config.num_workers, "arrow_images_per_second": loader_speed(arrow, settings.repeats)}
    folder = Path(tempfile.mkdtemp(prefix="emotion-bench-"))
    try:
        images = ImageFolder(str(write_image_folder(split, folder)), transform=transform)
        raw = DataLoader(images, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers,
                         pin_memory=torch.cuda.is_available())
        result["folder_images_per_second"] = loader_speed(raw, settings.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def run_benchmark(settings: BenchSettings) -> dict[str, Any]:
    device = current_device()
    check_precision(settings.precision, device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    config = resolve_config(settings)
    split = arrow_split(config, settings)  # bad --data-dir fails before minutes of timing
    torch.manual_seed(config.seed)
    full = speed_up(build_model(config), settings.channels_last, settings.compile)
    plain = speed_up(plain_classifier(config), settings.channels_last, settings.compile)
    train_full = train_speed(full, config, settings, device)
    train_plain = train_speed(plain, config, settings, device)
    inference = inference_speed(full, config, settings, device)
    data = data_speed(split, config, settings, full.mean, full.std)
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "timm": timm.__version__,
        "preset": settings.preset, "backbone": config.backbone, "image_size": config.image_size,
        "batch_size": config.batch_size, "precision": settings.precision, "channels_last": settings.channels_last,
        "compile": settings.compile, "steps": settings.steps, "repeats": settings.repeats,
        "train_images_per_second": train_full["images_per_second"],
        "timm_train_images_per_second": train_plain["images_per_second"],
        "train_ratio": train_full["images_per_second"] / train_plain["images_per_second"],
        "inference_batch": settings.inference_batch,
        "inference_images_per_second": inference["images_per_second"],
        "latency_ms_batch1": inference["latency_ms"],
        "loader_samples": data["samples"], "loader_num_workers": data["num_workers"],
        "loader_arrow_images_per_second": data["arrow_images_per_second"],
        "loader_folder_images_per_second": data["folder_images_per_second"],
        "loader_arrow_ratio": data["arrow_images_per_second"] / train_full["images_per_second"],
        "loader_folder_ratio": data["folder_images_per_second"] / train_full["images_per_second"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_max_allocated_mb": train_full["cuda_max_allocated_mb"],
        "timm_cuda_max_allocated_mb": train_plain["cuda_max_allocated_mb"],
        "targets": {"train_ratio": TARGET_TRAIN_RATIO, "loader_ratio": TARGET_LOADER_RATIO},
    }
    output = Path(settings.output or Path("results") / "bench" / f"{device.type}-{settings.preset}-{settings.precision}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, result)
    result["output"] = str(output)
    return result


def markdown_table(result: dict[str, Any]) -> str:
    def number(value, digits=1):
        return "n/a" if value is None else f"{value:,.{digits}f}"

    def verdict(value, target):
        return "meets" if value >= target else "below"

    rows = [
        ("training images/s, full model", number(result["train_images_per_second"]), ""),
        (f"training images/s, timm {result['backbone']} classifier", number(result["timm_train_images_per_second"]), ""),
        ("full / timm training ratio", number(result["train_ratio"], 3),
         f"{verdict(result['train_ratio'], TARGET_TRAIN_RATIO)} target {TARGET_TRAIN_RATIO}"),
        (f"inference images/s, batch {result['inference_batch']}", number(result["inference_images_per_second"]), ""),
        ("inference latency ms, batch 1 (median)", number(result["latency_ms_batch1"], 2), ""),
        (f"loader images/s, Arrow ({result['loader_num_workers']} workers)", number(result["loader_arrow_images_per_second"]),
         f"{number(result['loader_arrow_ratio'], 2)}x training: {verdict(result['loader_arrow_ratio'], TARGET_LOADER_RATIO)} target {TARGET_LOADER_RATIO:g}x"),
        (f"loader images/s, raw JPEG folder ({result['loader_num_workers']} workers)", number(result["loader_folder_images_per_second"]),
         f"{number(result['loader_folder_ratio'], 2)}x training: {verdict(result['loader_folder_ratio'], TARGET_LOADER_RATIO)} target {TARGET_LOADER_RATIO:g}x"),
        ("peak CPU RSS MB (process)", number(result["peak_rss_mb"], 0), ""),
        ("CUDA max allocated MB, full / timm", f"{number(result['cuda_max_allocated_mb'], 0)} / {number(result['timm_cuda_max_allocated_mb'], 0)}", ""),
    ]
    header = (f"{result['device']}; {result['backbone']} {result['image_size']} px, batch {result['batch_size']}, "
              f"{result['precision']}, channels_last={result['channels_last']}, compile={result['compile']}")
    lines = [header, "", "| measure | value | note |", "|---|---:|---|"]
    lines += [f"| {name} | {value} | {note} |" for name, value, note in rows]
    return "\n".join(lines)

"""Throughput and memory on the current device, in one run: the training step of our full model twice, as a bare
step (one in-memory batch: forward with the training heads, fp32 loss, backward, clipping, AdamW) and end to end
(prepared data through the real loader and the batched augmentation), each at fp32 and at the precision and memory
format training picks here (`--mixed-precision auto`), with their ratios; the plain timm classifier with the same
backbone; inference (batch 32 images/s, batch 1 latency); data loading from a prepared Arrow dataset and from a raw
image folder; peak memory; and the CPU's matrix instructions. Prints a markdown table and writes JSON.

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
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2

from emotion.checkpoint import write_json_atomic
from emotion.config import PRESETS, REAL_DATA_OVERRIDES, TrainConfig
from emotion.data import build_dataloader, build_transform, choose_input_colour, decoded_pixels, recipe_for
from emotion.errors import EmotionError
from emotion.labels import NUM_CLASSES
from emotion.model import build_model, speed_up
from emotion.runtime import choose_mixed_precision, cpu_isa, use_channels_last
from emotion.synthetic import load_synthetic

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
TRAINING_PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}  # --mixed-precision value -> bench name
TARGET_TRAIN_RATIO = 0.85  # full model vs plain timm classifier, training images/s
TARGET_END_TO_END_RATIO = 0.85  # end-to-end training vs the bare step, images/s
TARGET_LOADER_RATIO = 3.0  # loader images/s vs full-model training images/s


@dataclass
class BenchSettings:
    preset: str = "cpu"
    backbone: str | None = None
    image_size: int | None = None
    batch_size: int | None = None
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool = False
    steps: int = 5
    warmup: int = 2
    repeats: int = 3
    inference_batch: int = 32
    latency_runs: int = 10
    data_dir: str | None = None
    loader_samples: int = 1024
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
    """The preset as training resolves it: with its real-data settings when --data-dir names a prepared real set."""
    if settings.preset not in PRESETS:
        raise EmotionError(f"unknown --preset {settings.preset!r}: choose one of {', '.join(PRESETS)}")
    real = REAL_DATA_OVERRIDES.get(settings.preset, {}) if settings.data_dir else {}
    overrides = {k: getattr(settings, k) for k in ("backbone", "image_size", "batch_size", "num_workers", "cache_dir")
                 if getattr(settings, k) is not None}
    return TrainConfig(**{**PRESETS[settings.preset], **real, **overrides, "pretrained": False})


def resolve_precision(precision: str) -> tuple[str, str]:
    """--precision as a bench name (fp32, bf16, fp16) and why; `auto` is training's own choice for this machine."""
    if precision != "auto":
        return precision, "--precision"
    chosen, reason = choose_mixed_precision("auto")
    return TRAINING_PRECISION[chosen], reason


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise EmotionError(f"unknown --precision {precision!r}: choose one of auto, {', '.join(PRECISIONS)}")
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


def training_step(model: torch.nn.Module, optimizer, config: TrainConfig, precision: str, device: torch.device,
                  scaler) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One optimizer step as training takes it: forward (with the training heads of our model), fp32 loss, backward,
    gradient clipping, AdamW."""
    criterion = torch.nn.CrossEntropyLoss()
    ours = hasattr(model, "attention_head")

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast(device, precision):
            if ours:
                logits, heads = model(images, training_heads=True)
                loss = criterion(logits.float(), labels) + sum(
                    weight * criterion(head.float(), labels)
                    for weight, head in zip((config.aux_loss_weight, config.attention_loss_weight), heads) if head is not None)
            else:
                loss = criterion(model(images).float(), labels)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_speed(model: torch.nn.Module, config: TrainConfig, settings: BenchSettings, device: torch.device,
                precision: str, channels_last: bool, split: datasets.Dataset | None = None) -> dict[str, Any]:
    """Training images/s: the bare step on one in-memory batch, or with `split` end to end (the real loader and the
    batched augmentation of the preset's recipe, on this device); CUDA peak memory."""
    model = speed_up(model.to(device), channels_last, settings.compile).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step = training_step(model, optimizer, config, precision, device, scaler)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if split is None:
        images = torch.randn(config.batch_size, 3, config.image_size, config.image_size, device=device)
        images = images.contiguous(memory_format=memory_format)
        labels = torch.randint(0, NUM_CLASSES, (config.batch_size,), device=device)

        def window() -> None:
            for _ in range(settings.steps):
                step(images, labels)
    else:
        colour, _ = choose_input_colour(config.input_colour, decoded_pixels(split))
        augment = build_transform((0.5,) * 3, (0.5,) * 3, True, recipe_for(config.augment), colour, channels_last)
        loader = build_dataloader(split, augment, config.batch_size, train=True, num_workers=config.num_workers, seed=config.seed)
        batches = endless(loader)

        def window() -> None:
            for _ in range(settings.steps):
                batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
                step(augment(batch), batch["labels"])

    for _ in range(settings.warmup):
        window() if split is not None else step(images, labels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = fastest(window, device, settings.repeats)
    return {"images_per_second": settings.steps * config.batch_size / seconds,
            "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


def endless(loader: DataLoader):
    """Batches of `loader` epoch after epoch, as training draws them (a new epoch restarts the workers)."""
    epoch = 0
    while True:
        loader.dataset.set_epoch(epoch)
        yield from loader
        epoch += 1


def inference_speed(model: torch.nn.Module, config: TrainConfig, settings: BenchSettings, device: torch.device,
                    precision: str) -> dict[str, float]:
    model.to(device).eval()
    batch = torch.randn(settings.inference_batch, 3, config.image_size, config.image_size, device=device)
    single = batch[:1].clone()
    with torch.inference_mode(), autocast(device, precision):
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
        split = load_synthetic(settings.loader_samples, 0, image_size=config.image_size, seed=config.seed,
                               cache_dir=config.cache_dir)["train"]
    if "image" not in split.column_names or "label" not in split.column_names:
        raise EmotionError(f"--data-dir {settings.data_dir}: the split has no 'image' and 'label' columns "
                           f"(found {', '.join(split.column_names)})")
    split = split.select(range(min(settings.loader_samples, len(split))))
    side = decoded_pixels(split).shape[1]
    if side != config.image_size:
        raise EmotionError(f"--data-dir {settings.data_dir} holds {side}-px faces, the preset trains at {config.image_size} px: "
                           f"pass --image-size {side}, or prepare the set at {config.image_size} px")
    return split


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
    """Images/s of the training loader alone (uint8 pixels and augmentation parameters, before the batched augmentation)
    and of torchvision's ImageFolder decoding and augmenting JPEGs one by one, the layout a raw set arrives in."""
    arrow = build_dataloader(split, build_transform(mean, std, True, recipe_for(config.augment)), config.batch_size, train=True,
                             num_workers=config.num_workers, seed=config.seed)
    result = {"samples": len(split), "num_workers": config.num_workers, "arrow_images_per_second": loader_speed(arrow, settings.repeats)}
    folder = Path(tempfile.mkdtemp(prefix="emotion-bench-"))
    per_image = v2.Compose([v2.RGB(), v2.RandomResizedCrop(config.image_size, scale=(0.8, 1.0), antialias=True),
                            v2.RandomHorizontalFlip(), v2.ColorJitter(0.3, 0.3, 0.2), v2.ToImage(),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    try:
        images = ImageFolder(str(write_image_folder(split, folder)), transform=per_image)
        raw = DataLoader(images, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers,
                         pin_memory=torch.cuda.is_available())
        result["folder_images_per_second"] = loader_speed(raw, settings.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def run_benchmark(settings: BenchSettings) -> dict[str, Any]:
    device = current_device()
    precision, precision_reason = resolve_precision(settings.precision)
    check_precision(precision, device)
    channels_last = use_channels_last(settings.channels_last)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    config = resolve_config(settings)
    split = arrow_split(config, settings)  # bad --data-dir fails before minutes of timing
    torch.manual_seed(config.seed)
    # fp32 NCHW (training before --mixed-precision auto) beside the chosen precision and format, bare and end to end.
    variants = {"fp32": ("fp32", False), "chosen": (precision, channels_last)}
    train = {}
    for name, (variant_precision, variant_format) in variants.items():
        for kind, data in (("bare", None), ("end_to_end", split)):
            torch.manual_seed(config.seed)
            train[name, kind] = train_speed(build_model(config), config, settings, device, variant_precision, variant_format, data)
    plain = train_speed(plain_classifier(config), config, settings, device, precision, channels_last)
    full = speed_up(build_model(config), channels_last, settings.compile)
    inference = inference_speed(full, config, settings, device, precision)
    data = data_speed(split, config, settings, full.mean, full.std)
    chosen_bare, chosen_e2e = train["chosen", "bare"], train["chosen", "end_to_end"]
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "cpu_isa": cpu_isa(), "torch": torch.__version__, "timm": timm.__version__,
        "preset": settings.preset, "data": settings.data_dir or "synthetic", "backbone": config.backbone,
        "image_size": config.image_size, "batch_size": config.batch_size, "augment": config.augment,
        "precision": precision, "precision_reason": precision_reason, "channels_last": channels_last,
        "compile": settings.compile, "steps": settings.steps, "repeats": settings.repeats,
        "fp32_bare_images_per_second": train["fp32", "bare"]["images_per_second"],
        "fp32_end_to_end_images_per_second": train["fp32", "end_to_end"]["images_per_second"],
        "train_images_per_second": chosen_bare["images_per_second"],
        "end_to_end_images_per_second": chosen_e2e["images_per_second"],
        "end_to_end_ratio": chosen_e2e["images_per_second"] / chosen_bare["images_per_second"],
        "fp32_end_to_end_ratio": train["fp32", "end_to_end"]["images_per_second"] / train["fp32", "bare"]["images_per_second"],
        "speedup_over_fp32": chosen_e2e["images_per_second"] / train["fp32", "end_to_end"]["images_per_second"],
        "timm_train_images_per_second": plain["images_per_second"],
        "train_ratio": chosen_bare["images_per_second"] / plain["images_per_second"],
        "inference_batch": settings.inference_batch,
        "inference_images_per_second": inference["images_per_second"],
        "latency_ms_batch1": inference["latency_ms"],
        "loader_samples": data["samples"], "loader_num_workers": data["num_workers"],
        "loader_arrow_images_per_second": data["arrow_images_per_second"],
        "loader_folder_images_per_second": data["folder_images_per_second"],
        "loader_arrow_ratio": data["arrow_images_per_second"] / chosen_bare["images_per_second"],
        "loader_folder_ratio": data["folder_images_per_second"] / chosen_bare["images_per_second"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_max_allocated_mb": chosen_bare["cuda_max_allocated_mb"],
        "timm_cuda_max_allocated_mb": plain["cuda_max_allocated_mb"],
        "targets": {"train_ratio": TARGET_TRAIN_RATIO, "end_to_end_ratio": TARGET_END_TO_END_RATIO,
                    "loader_ratio": TARGET_LOADER_RATIO},
    }
    output = Path(settings.output or Path("results") / "bench" / f"{device.type}-{settings.preset}-{precision}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output, result)
    result["output"] = str(output)
    return result


def markdown_table(result: dict[str, Any]) -> str:
    def number(value, digits=1):
        return "n/a" if value is None else f"{value:,.{digits}f}"

    def verdict(value, target):
        return "meets" if value >= target else "below"

    fmt = "channels-last" if result["channels_last"] else "NCHW"
    rows = [
        ("bare training step images/s, fp32 NCHW", number(result["fp32_bare_images_per_second"]), ""),
        ("end-to-end training images/s, fp32 NCHW", number(result["fp32_end_to_end_images_per_second"]),
         f"{number(result['fp32_end_to_end_ratio'], 2)}x the bare step"),
        (f"bare training step images/s, {result['precision']} {fmt}", number(result["train_images_per_second"]),
         result["precision_reason"]),
        (f"end-to-end training images/s, {result['precision']} {fmt}", number(result["end_to_end_images_per_second"]),
         f"{number(result['end_to_end_ratio'], 2)}x the bare step: {verdict(result['end_to_end_ratio'], TARGET_END_TO_END_RATIO)} "
         f"target {TARGET_END_TO_END_RATIO}; {number(result['speedup_over_fp32'], 2)}x fp32 end to end"),
        (f"bare training step images/s, timm {result['backbone']} classifier", number(result["timm_train_images_per_second"]), ""),
        ("full / timm training ratio", number(result["train_ratio"], 3),
         f"{verdict(result['train_ratio'], TARGET_TRAIN_RATIO)} target {TARGET_TRAIN_RATIO}"),
        (f"inference images/s, batch {result['inference_batch']}", number(result["inference_images_per_second"]), ""),
        ("inference latency ms, batch 1 (median)", number(result["latency_ms_batch1"], 2), ""),
        (f"loader images/s, Arrow ({result['loader_num_workers']} workers)", number(result["loader_arrow_images_per_second"]),
         f"{number(result['loader_arrow_ratio'], 2)}x training: {verdict(result['loader_arrow_ratio'], TARGET_LOADER_RATIO)} target {TARGET_LOADER_RATIO:g}x"),
        (f"loader images/s, raw JPEG folder, per-image PIL augmentation ({result['loader_num_workers']} workers)",
         number(result["loader_folder_images_per_second"]),
         f"{number(result['loader_folder_ratio'], 2)}x training: {verdict(result['loader_folder_ratio'], TARGET_LOADER_RATIO)} target {TARGET_LOADER_RATIO:g}x"),
        ("peak CPU RSS MB (process)", number(result["peak_rss_mb"], 0), ""),
        ("CUDA max allocated MB, full / timm", f"{number(result['cuda_max_allocated_mb'], 0)} / {number(result['timm_cuda_max_allocated_mb'], 0)}", ""),
    ]
    header = (f"{result['device']}, {result['cpu_isa']}; {result['backbone']} {result['image_size']} px, batch "
              f"{result['batch_size']}, data {result['data']}, augment {result['augment']}, compile={result['compile']}")
    lines = [header, "", "| measure | value | note |", "|---|---:|---|"]
    lines += [f"| {name} | {value} | {note} |" for name, value, note in rows]
    return "\n".join(lines)

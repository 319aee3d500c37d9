"""Run configuration: one dataclass shared by the CLI, the presets and saved runs. Only this file holds defaults."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from emotion.errors import EmotionError
from emotion.io import check_weights_file
from emotion.labels import PUBLISHED_AFFECTNET7_BEST, PUBLISHED_AFFECTNET8_BEST, label_order
from emotion.runtime import launch_number

# Arrow caches: <cache-dir>/prepared/ for real data sets, <cache-dir>/synthetic/ for the synthetic faces.
DEFAULT_CACHE_DIR = Path("~/.cache/emotion")

DATASETS = ("synthetic", "imagefolder", "affectnet", "affectnet_plus", "ferplus", "rafdb", "fer2013")
LABEL_MODES = ("majority", "soft")
LR_SCHEDULES = ("plateau", "cosine", "wsd")
INPUT_COLOURS = ("auto", "grey", "rgb")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")
# Training augmentation recipes (emotion.data.augment.AugmentRecipe fields over its defaults, which are "light").
# light: a small random crop, mirror and colour jitter. domain: the variation faces from other sources bring, as a
# face detector's boxes (scale, offset, tilt), cameras (blur, noise, gamma) and the scene (occlusion) vary.
AUGMENT_RECIPES: dict[str, dict[str, Any]] = {
    "light": {},
    "domain": dict(area=(0.5, 1.1), ratio=(0.85, 1.18), rotate=15.0, translate=0.06, brightness=0.4, contrast=0.4,
                   saturation=0.3, gamma=0.35, blur_prob=0.3, blur_sigma=1.2, noise_prob=0.3, noise_std=0.06,
                   erase_prob=0.3, erase_area=(0.02, 0.15)),
}
# Keys that define a run: resuming with any of them changed would silently train a different model.
RUN_DEFINING_KEYS = ("dataset", "data_dir", "synthetic_train", "synthetic_val", "backbone", "backbone_width", "image_size",
                     "output_stride", "proj_dim", "lstm_hidden", "attention", "batch_size", "grad_accum_steps",
                     "seed", "data_seed", "soft_labels", "label_mode", "subset", "face_margin", "val_fraction", "aux_loss_weight", "attention_loss_weight",
                     "augment", "input_colour", "logit_adjustment", "mixed_precision",
                     "classes", "label_order", "rafdb_images", "detect_faces", "select_metric")
WSD_DECAY_FRACTION = 0.2  # wsd: the share of the steps over which the lr falls (0.3 was worse on the synthetic set)
# Settings older runs could change and this version fixes, with the value it always uses: a run saved with another
# value would resume as a different model, so it is refused. No preset used them and none showed a measured gain.
REMOVED_SETTINGS: dict[str, Any] = {"attention_head_input": "log-map", "warmup_steps": 0, "decay_fraction": WSD_DECAY_FRACTION,
                                    "grey_prob": 0.0, "lstm_layers": 1}
OUTPUT_STRIDES = (8, 16, 32)  # what timm's dilated backbones accept
SEED_MAX = 2**32 - 1  # numpy's seed range


@dataclass(frozen=True)
class Range:
    """The values a numeric flag accepts (ends included unless open); also the argparse `type` that checks them."""

    low: float
    high: float
    kind: type = int
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.kind is float else int):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below  # NaN fails both

    def describe(self) -> str:
        low, high = (str(int(v)) if self.kind is int else f"{v:g}" for v in (self.low, self.high))
        low = f"above {low}" if self.low_open else f"from {low}"
        high = f"below {high}" if self.high_open else (f"at most {high}" if self.low_open else f"to {high}")
        return f"{'a whole number' if self.kind is int else 'a number'} {low}{',' if self.low_open or self.high_open else ''} {high}"

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number: use {self.describe()}") from None
        if value not in self:
            raise argparse.ArgumentTypeError(f"{text} is out of range: use {self.describe()}")
        return value


def number(low: float, high: float, **open_ends: bool) -> Range:
    return Range(low, high, float, **open_ends)


CLASS_COUNTS = (8, 7)
SELECT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
RAFDB_IMAGES = ("aligned", "original")
DETECT_FACES_DATASETS = ("imagefolder", "rafdb")


@dataclass
class TrainConfig:
    # data
    dataset: str = field(default="synthetic", metadata={"help": f"data source: one of {', '.join(DATASETS)}"})
    data_dir: str | None = field(default=None, metadata={"help": "root of a real data set (not needed for synthetic)"})
    data_seed: int = field(default=42, metadata={"help": "seed that draws the synthetic set and a held-out validation share; "
                                                       "fixed so a sweep over --seed changes training only"})
    synthetic_train: int = field(default=4000, metadata={"help": "synthetic faces in the train split"})
    synthetic_val: int = field(default=800, metadata={"help": "synthetic faces in the validation split"})
    cache_dir: str | None = field(default=None, metadata={"help": f"where Arrow caches live: prepared/ (real data sets) and synthetic/ under it (default: {DEFAULT_CACHE_DIR})"})
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes (0 = load in the main process)"})
    loader_cores: int | None = field(default=None, metadata={"help": "CPU training: cores left to the loader workers, PyTorch "
                                                                 "threads take the rest (default: one per worker; 0 when "
                                                                 "loading is light, e.g. FER+'s 48 px faces)"})
    class_weights: str = field(default="inverse", metadata={"help": "loss class weights: inverse | none"})
    soft_labels: bool = field(default=False, metadata={"help": "affectnet_plus: train against the soft-label distribution (class-weighted soft-target CE)"})
    label_mode: str = field(default="majority", metadata={"help": "ferplus: majority (the paper's majority vote; no-majority, "
                                                        "unknown and not-a-face faces excluded) | soft (train on the vote distribution)"})
    subset: str = field(default="all", metadata={"help": "affectnet_plus: train on easy | challenging | difficult | all (needs a "
                                                  "release that marks subsets); validation always keeps the full set"})
    classes: int = field(default=8, metadata={"help": "8 (AffectNet-8) | 7 (AffectNet-7: contempt dropped from every split, 7 outputs)"})
    label_order: str | None = field(default=None, metadata={"help": "imagefolder with bare-number class folders: whose numbering "
                                                             "they use: affectnet | rafdb | fer2013 | a comma list of class names numbered from 0"})
    rafdb_images: str = field(default="aligned", metadata={"help": "rafdb: aligned (Image/aligned, 100 x 100 face crops) | "
                                                          "original (Image/original, full photos)"})
    detect_faces: bool = field(default=False, metadata={"help": "imagefolder, rafdb: crop the largest face of each photo (the demo's "
                                                         "face detector, grown by --face-margin); photos without a face are skipped as no_face"})
    face_margin: float = field(default=0.2, metadata={"help": "affectnet, --detect-faces: face box grown by this fraction of its side on each side before cropping"})
    val_fraction: float = field(default=0.1, metadata={"help": "imagefolder without a val folder: share of each class held out (seeded, stratified)"})
    drop_unknown_classes: bool = field(default=False, metadata={"help": "imagefolder: skip class folders that map to none of the 8 classes instead of failing"})
    num_proc: int | None = field(default=None, metadata={"help": "processes decoding images while preparing a real data set's cache (default: all CPU cores)"})
    # model
    backbone: str = field(default="efficientnet_b4", metadata={"help": "any timm model name"})
    backbone_width: float = field(default=1.0, metadata={"help": "channel-width multiplier of EfficientNet-family backbones "
                                                          "(timm's channel_multiplier; 1 = the published width)"})
    pretrained: bool | None = field(default=None, metadata={"help": "pretrained backbone weights from the hub; --no-pretrained trains the backbone from scratch (default: on for real data, off for synthetic)"})
    pretrained_path: str | None = field(default=None, metadata={"help": "local backbone weights file (.safetensors/.pth) instead of the hub (default: none)"})
    image_size: int = field(default=224, metadata={"help": "input side in pixels"})
    output_stride: int = field(default=32, metadata={"help": "backbone output stride (16 keeps a 7x7 grid at 112 px)"})
    proj_dim: int = field(default=0, metadata={"help": "linear projection of tokens before the LSTM (0 = none)"})
    lstm_hidden: int = field(default=512, metadata={"help": "Bi-LSTM hidden size per direction"})
    dropout: float = field(default=0.3, metadata={"help": "dropout before the classifier"})
    attention: bool = field(default=True, metadata={"help": "channel + spatial attention; --no-attention feeds plain tokens to the Bi-LSTM, for ablations"})
    aux_loss_weight: float = field(default=0.5, metadata={"help": "weight of the training-only auxiliary classifier on the "
                                                              "pooled backbone features (0 = none); it keeps early training "
                                                              "from stalling at chance"})
    attention_loss_weight: float = field(default=0.5, metadata={"help": "weight of the training-only classifier on the "
                                                                    "spatial attention map (0 = none); it makes the map "
                                                                    "look where expressions differ, what explanations name"})
    input_colour: str = field(default="auto", metadata={"help": "how faces are shown to the model, in training and every inference "
                                                           "path (kept in config.json): grey | rgb | auto (grey when the training faces are grey)"})
    # augmentation
    augment: str = field(default="light", metadata={"help": "training augmentation: light (small crop, mirror, colour jitter) | "
                                                   "domain (also scale, offset, tilt, blur, noise, gamma and occlusion, for faces from other sources)"})
    # optimisation
    epochs: int = field(default=30, metadata={"help": "training epochs"})
    batch_size: int = field(default=32, metadata={"help": "batch size per process"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    logit_adjustment: float = field(default=0.0, metadata={"help": "logit-adjusted loss (Menon et al. 2021): tau x log(training "
                                                                   "class share) added to the logits in training only, so the "
                                                                   "model's own scores are not pulled to the majority class (0 = off)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    grad_accum_steps: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    lr_schedule: str = field(default="plateau", metadata={"help": "plateau: ReduceLROnPlateau on --select-metric | cosine: "
                                                                "from --lr down to lr/100 over --epochs, step by step | "
                                                                "wsd: --lr held, then a cosine down to lr/100 over the last "
                                                                "20%% of the steps"})
    lr_patience: int = field(default=5, metadata={"help": "ReduceLROnPlateau patience (epochs without a gain of --select-metric)"})
    lr_factor: float = field(default=0.5, metadata={"help": "ReduceLROnPlateau factor"})
    seed: int = field(default=42, metadata={"help": "training seed: initialisation, data order, augmentation, dropout "
                                             "(the data itself is drawn by --data-seed)"})
    # speed and scale
    sync_bn: bool = field(default=False, metadata={"help": "synchronise BatchNorm statistics across processes (GPUs only; no effect with 1 process)"})
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 autocast on a GPU or a CPU with AMX or AVX512-BF16, "
                                                              "fp32 elsewhere) | no | bf16 | fp16 (CUDA); `accelerate launch "
                                                              "--mixed_precision` wins over auto. Weights, loss and metrics stay fp32"})
    channels_last: bool | None = field(default=None, metadata={"help": "channels-last memory format for the convolutions (default: "
                                                                      "on, except on Apple GPUs)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (first steps slower while it compiles)"})
    # checkpoints and fault tolerance
    output_dir: str | None = field(default=None, metadata={"help": "run directory; it holds one run (default: results/<run-name>)"})
    run_name: str | None = field(default=None, metadata={"help": "run name (default: <preset>-<dataset>[-<data dir name>]-seed<seed>)"})
    resume: str | None = field(default=None, metadata={"help": "'latest' (the newest complete checkpoint of --output-dir) or a checkpoint directory (default: start fresh)"})
    overwrite: bool = field(default=False, metadata={"help": "replace the run already in --output-dir (deletes its checkpoints and "
                                                      "best model) instead of refusing"})
    checkpoint_every_steps: int = field(default=0, metadata={"help": "also checkpoint every N optimizer steps (0 = per epoch only)"})
    keep_checkpoints: int = field(default=3, metadata={"help": "how many recent checkpoints to keep (0 = all; the best model is kept apart)"})
    nan_policy: str = field(default="stop", metadata={"help": "on a non-finite loss/grad: stop | skip"})
    max_bad_steps: int = field(default=10, metadata={"help": "with --nan-policy skip: give up after this many bad steps (0 = at the first)"})
    # tracking
    report_to: str = field(default="none", metadata={"help": "experiment trackers: wandb | tensorboard | all | none (wandb needs `wandb login` or WANDB_MODE=offline; TensorBoard logs go to <run>/tensorboard)"})
    select_metric: str = field(default="accuracy", metadata={"help": "validation metric that picks the best model and drives the "
                                                            "plateau scheduler: accuracy (the AffectNet protocol) | balanced_accuracy | macro_f1"})
    baseline_accuracy: float | None = field(default=None, metadata={"help": "reference accuracy in %% logged beside ours (default: the "
                                                                     f"published AffectNet-8 figure {PUBLISHED_AFFECTNET8_BEST}, or "
                                                                     f"AffectNet-7 {PUBLISHED_AFFECTNET7_BEST} with --classes 7)"})
    preset: str | None = field(default=None, metadata={"help": "tiny | cpu | b4, see the table below; explicit flags override it (default: cpu for the synthetic set or a machine without a GPU, b4 for real data on a GPU)"})

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or Path("results") / self.resolved_run_name())

    def resolved_run_name(self) -> str:
        """The default names what tells runs apart most often (data, seed); any other difference is refused, not mixed."""
        if self.run_name:
            return self.run_name
        data = f"-{Path(self.data_dir).name}" if self.data_dir else ""
        return f"{self.preset or 'custom'}-{self.dataset}{data}-seed{self.seed}"

    def run_differences(self, saved: dict[str, Any]) -> list[str]:
        """Run-defining keys on which a saved run config differs from this one ('key: old -> new'), removed settings too."""
        changed = [f"{k}: {saved[k]!r} -> {getattr(self, k)!r}" for k in RUN_DEFINING_KEYS if k in saved and saved[k] != getattr(self, k)]
        return changed + [f"{k}: {saved[k]!r} -> {now!r} (no longer a setting)" for k, now in REMOVED_SETTINGS.items()
                          if k in saved and saved[k] != now]

    def resolved_baseline(self) -> float:
        """The published figure our validation accuracy is compared with: the table of the class count trained."""
        if self.baseline_accuracy is not None:
            return self.baseline_accuracy
        return PUBLISHED_AFFECTNET7_BEST if self.classes == 7 else PUBLISHED_AFFECTNET8_BEST

    def trains_on_soft_labels(self) -> bool:
        return self.soft_labels or (self.dataset == "ferplus" and self.label_mode == "soft")

    def use_pretrained(self) -> bool:
        return self.dataset != "synthetic" if self.pretrained is None else self.pretrained

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        try:
            saved = json.loads(Path(path).read_text())
        except ValueError as err:
            raise EmotionError(f"run configuration {path} is damaged ({type(err).__name__}): copy the run folder again") from None
        return cls(**{k: v for k, v in saved.items() if k in known})



# The values each numeric setting accepts: checked on the command line (shown in --help) and by validate().
# image_size from 32: at least one cell of the backbone's grid at the coarsest output stride.
RANGES: dict[str, Range] = {
    "data_seed": Range(0, SEED_MAX), "seed": Range(0, SEED_MAX),
    "synthetic_train": Range(1, 10**7), "synthetic_val": Range(1, 10**7),
    "num_workers": Range(0, 256), "loader_cores": Range(0, 256), "num_proc": Range(1, 1024),
    "face_margin": number(0, 2), "val_fraction": number(0, 1, low_open=True, high_open=True),
    "backbone_width": number(0, 8, low_open=True), "image_size": Range(32, 2048), "output_stride": Range(8, 32),
    "proj_dim": Range(0, 65536), "lstm_hidden": Range(1, 65536),
    "dropout": number(0, 1, high_open=True), "aux_loss_weight": number(0, 100), "attention_loss_weight": number(0, 100),
    "epochs": Range(1, 100_000), "batch_size": Range(1, 65536), "lr": number(0, 10, low_open=True),
    "weight_decay": number(0, 10), "label_smoothing": number(0, 1, high_open=True), "max_grad_norm": number(0, 1e6),
    "grad_accum_steps": Range(1, 65536), "lr_patience": Range(0, 10**6),
    "lr_factor": number(0, 1, low_open=True, high_open=True),
    "checkpoint_every_steps": Range(0, 10**9), "keep_checkpoints": Range(0, 10**6), "max_bad_steps": Range(0, 10**9),
    "baseline_accuracy": number(0, 100), "logit_adjustment": number(0, 10),
}


PRESETS: dict[str, dict[str, Any]] = {
    # Tests: a tiny EfficientNet on tiny images, a few steps.
    "tiny": dict(backbone="test_efficientnet", image_size=64, output_stride=16, lstm_hidden=32, proj_dim=32,
                 batch_size=16, epochs=1, lr=3e-3, synthetic_train=64, synthetic_val=32, num_workers=0),
    # The synthetic default: trains and evaluates in minutes on 2 CPU cores (a 14-epoch budget).
    # 64 px (4 x 4 cells) trains 1.4x faster than 80 px and its features come sooner; dropout 0.1 (not 0.3) lets the
    # slowest seeds pass 60% in 3 epochs. wsd: slow starters keep the full lr, and every run ends at a low one.
    "cpu": dict(backbone="test_efficientnet", image_size=64, output_stride=16, lstm_hidden=64, proj_dim=64, dropout=0.1,
                batch_size=16, epochs=14, lr=3e-3, lr_schedule="wsd", synthetic_train=4000, synthetic_val=800, num_workers=1),
    # The full recipe for real data on a GPU.
    "b4": dict(backbone="efficientnet_b4", image_size=224, output_stride=32, lstm_hidden=512, proj_dim=0,
               batch_size=32, epochs=30, lr=1e-4, num_workers=8),
}


# Where real faces need other settings than the synthetic set, per preset (applied over the preset for any real data set).
# cpu on real faces (FER+ from scratch on 2 cores): a 2x wider test_efficientnet at 64 px (4 x 4 cells), ~146 img/s;
# unweighted loss and lr 1e-3 (the synthetic recipe's inverse weights and 3e-3 sat at the majority class on FER+);
# PyTorch threads on every core beside the one loader worker (FER+ on 2 cores: 94 img/s, against 75 img/s with 1 thread);
# 11 epochs with a cosine lr fit the hour (51 min) and end at a low lr, where the plateau rule never lowered it in time.
# dropout 0.3, the value FER+ was measured with (the synthetic preset's 0.1 is untried on real faces).
REAL_DATA_OVERRIDES: dict[str, dict[str, Any]] = {
    "cpu": dict(backbone_width=2.0, image_size=64, lstm_hidden=128, proj_dim=128, dropout=0.3, batch_size=32, epochs=30,
                lr=1e-3, lr_schedule="cosine", class_weights="none", loader_cores=0, num_workers=0, augment="domain",
                logit_adjustment=0.5),
}


def has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


def choose_preset(dataset: str) -> tuple[str, str]:
    """The preset a run without --preset gets, and why: never a days-long B4 run on a CPU."""
    if dataset == "synthetic":
        return "cpu", "the built-in synthetic set"
    if not has_accelerator():
        return "cpu", f"{dataset} on a machine without a GPU"
    return "b4", f"{dataset} on a GPU"


# What decides a prepared data cache: `emotion-prepare` takes these flags (and --preset); training takes them all.
DATA_FIELDS = ("dataset", "data_dir", "data_seed", "synthetic_train", "synthetic_val", "cache_dir", "num_proc",
               "soft_labels", "label_mode", "subset", "face_margin", "val_fraction", "drop_unknown_classes",
               "classes", "label_order", "rafdb_images", "detect_faces", "image_size", "preset")


def show_value(value: Any) -> str:
    """A setting as --help prints it: on / off for switches, - for none (the flag's own default rule), the value otherwise."""
    if value is None:
        return "-"
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One --flag per TrainConfig field (`only`: these fields); defaults stay None so presets can tell what the user set.

    Switches are --x / --no-x. Each default is printed once: the field's own, unless its help already words it.
    """
    for f in fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        valid = RANGES.get(f.name)
        help_text = f.metadata.get("help", "")
        notes = [valid.describe()] if valid else []
        if "default" not in help_text and f.default is not None:
            notes.append(f"default: {show_value(f.default)}")
        if notes:
            help_text += f" ({'; '.join(notes)})"
        if f.type in ("bool", "bool | None"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = valid or {"int": int, "int | None": int, "float": float, "float | None": float}.get(f.type, str)
            parser.add_argument(flag, type=kind, default=None, help=help_text)


def config_from_args(args: argparse.Namespace, choose: bool = False) -> TrainConfig:
    """Defaults <- preset (<- its real-data overrides) <- explicit flags.

    With `choose`, a run without --preset gets one picked from the data set and the machine, said in one line.
    Every process of a multi-process launch checks the same flags here, before any of them starts work: a bad
    value is said once, by the main process, and every process exits 2.
    """
    try:
        return _config_from_args(args, choose)
    except EmotionError as err:
        err.quiet = os.environ.get("RANK", "0") != "0"
        raise


def _config_from_args(args: argparse.Namespace, choose: bool) -> TrainConfig:
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    preset = given.get("preset")
    if preset is None and choose:
        preset, reason = choose_preset(given.get("dataset", TrainConfig.dataset))
        given["preset"] = preset
        print(f"preset: {preset} ({reason}); pass --preset to choose another")
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise EmotionError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        if given.get("dataset", TrainConfig.dataset) != "synthetic":
            values.update(REAL_DATA_OVERRIDES.get(preset, {}))
    values.update(given)
    config = TrainConfig(**values)
    validate(config)
    if launch_number("WORLD_SIZE", 1) > 1 and config.sync_bn and not has_accelerator():
        raise EmotionError("--sync-bn needs GPUs: torch's SyncBatchNorm does not run on CPU (gloo) processes; "
                           "drop --sync-bn, or pick a batch-independent backbone (e.g. GroupNorm) for CPU DDP")
    return config


def validate(config: TrainConfig) -> None:
    """Every value checked before any work starts: a refusal is one line naming the flag and what it accepts."""
    for f in fields(TrainConfig):
        value, valid = getattr(config, f.name), RANGES.get(f.name)
        if valid is not None and value is not None and value not in valid:
            raise EmotionError(f"--{f.name.replace('_', '-')} {value!r} is out of range: use {valid.describe()}")
    if config.output_stride not in OUTPUT_STRIDES:
        raise EmotionError(f"--output-stride {config.output_stride} is not one timm backbones offer: use 8, 16 or 32")
    if config.dataset not in DATASETS:
        raise EmotionError(f"unknown --dataset {config.dataset!r}: choose one of {', '.join(DATASETS)}")
    if config.dataset != "synthetic" and not config.data_dir:
        raise EmotionError(f"--dataset {config.dataset} needs --data-dir pointing at the data set's root")
    if config.class_weights not in ("inverse", "none"):
        raise EmotionError(f"unknown --class-weights {config.class_weights!r}: choose inverse or none")
    if config.soft_labels and config.dataset != "affectnet_plus":
        raise EmotionError(f"--soft-labels needs --dataset affectnet_plus (got {config.dataset}): drop --soft-labels")
    if config.label_mode not in LABEL_MODES:
        raise EmotionError(f"unknown --label-mode {config.label_mode!r}: choose majority or soft")
    if config.label_mode != "majority" and config.dataset != "ferplus":
        raise EmotionError(f"--label-mode {config.label_mode} needs --dataset ferplus (got {config.dataset}): "
                           "use --soft-labels for affectnet_plus")
    if config.subset not in ("easy", "challenging", "difficult", "all"):
        raise EmotionError(f"unknown --subset {config.subset!r}: choose easy, challenging, difficult or all")
    if config.overwrite and config.resume:
        raise EmotionError("--overwrite starts the run again and --resume continues it: pass one of them")
    if config.classes not in CLASS_COUNTS:
        raise EmotionError(f"--classes {config.classes} is not supported: use 8 (AffectNet-8) or 7 (AffectNet-7, no contempt)")
    if config.label_order is not None:
        if config.dataset != "imagefolder":
            raise EmotionError(f"--label-order needs --dataset imagefolder (got {config.dataset}): drop --label-order")
        try:
            label_order(config.label_order)
        except ValueError as err:
            raise EmotionError(f"--label-order {config.label_order!r}: {err}; use affectnet, rafdb, fer2013 or a comma "
                               "list of class names numbered from 0") from None
    if config.rafdb_images not in RAFDB_IMAGES:
        raise EmotionError(f"unknown --rafdb-images {config.rafdb_images!r}: choose aligned or original")
    if config.rafdb_images != "aligned" and config.dataset != "rafdb":
        raise EmotionError(f"--rafdb-images needs --dataset rafdb (got {config.dataset}): drop --rafdb-images")
    if config.detect_faces and config.dataset not in DETECT_FACES_DATASETS:
        raise EmotionError(f"--detect-faces needs a set of photos (--dataset {' or '.join(DETECT_FACES_DATASETS)}), not "
                           f"{config.dataset}: drop --detect-faces")
    if config.select_metric not in SELECT_METRICS:
        raise EmotionError(f"unknown --select-metric {config.select_metric!r}: choose {', '.join(SELECT_METRICS)}")
    if config.lr_schedule not in LR_SCHEDULES:
        raise EmotionError(f"unknown --lr-schedule {config.lr_schedule!r}: choose {', '.join(LR_SCHEDULES[:-1])} or {LR_SCHEDULES[-1]}")
    for flag, value, allowed in (("--augment", config.augment, tuple(AUGMENT_RECIPES)), ("--input-colour", config.input_colour, INPUT_COLOURS),
                                 ("--mixed-precision", config.mixed_precision, MIXED_PRECISIONS)):
        if value not in allowed:
            raise EmotionError(f"unknown {flag} {value!r}: choose {', '.join(allowed)}")
    if config.nan_policy not in ("stop", "skip"):
        raise EmotionError(f"unknown --nan-policy {config.nan_policy!r}: choose stop or skip")
    if config.report_to not in ("wandb", "tensorboard", "all", "none"):
        raise EmotionError(f"unknown --report-to {config.report_to!r}: choose wandb, tensorboard, all or none")


def check_inputs(config: TrainConfig) -> None:
    """The backbone name and the paths a run reads or writes, before anything is read or written (the data set's readers
    check --data-dir themselves, naming the layout they expect)."""
    import timm  # 1.5 s of import, paid by the runs that check a backbone, not by the scripts' --help

    if not timm.is_model(config.backbone):
        raise EmotionError(f"unknown --backbone {config.backbone!r}: give a timm model name such as efficientnet_b4 "
                           "(python -c 'import timm; print(timm.list_models())' lists them)")
    if config.resume not in (None, "latest") and not Path(config.resume).is_dir():
        raise EmotionError(f"--resume {config.resume}: no such checkpoint folder; give one, or --resume latest")
    for flag, path in (("--output-dir", config.output_dir), ("--cache-dir", config.cache_dir)):
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            raise EmotionError(f"{flag} {path} is a file: give a folder")
    if config.pretrained_path:
        check_weights_file(config.pretrained_path, "--pretrained-path")

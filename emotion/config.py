"""Run configuration: one dataclass shared by the CLI, the presets and saved runs. Only this file holds defaults."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from emotion.errors import EmotionError

# The reference runs log beside their own figure: DDAMFN's supervised AffectNet-8 validation accuracy (docs/datasets.md).
PUBLISHED_AFFECTNET8_BEST = 64.25

# Arrow caches: <cache-dir>/prepared/ for real data sets, <cache-dir>/synthetic/ for the synthetic faces.
DEFAULT_CACHE_DIR = Path("~/.cache/emotion")

DATASETS = ("synthetic", "imagefolder", "affectnet", "affectnet_plus", "ferplus")
LABEL_MODES = ("majority", "soft")


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
    num_workers: int = field(default=2, metadata={"help": "DataLoader worker processes"})
    class_weights: str = field(default="inverse", metadata={"help": "loss class weights: inverse | effective | none"})
    soft_labels: bool = field(default=False, metadata={"help": "affectnet_plus: train against the soft-label distribution (class-weighted soft-target CE)"})
    label_mode: str = field(default="majority", metadata={"help": "ferplus: majority (the paper's majority vote; no-majority, "
                                                        "unknown and not-a-face faces excluded) | soft (train on the vote distribution)"})
    subset: str = field(default="all", metadata={"help": "affectnet_plus: easy | challenging | difficult | all (needs a release that marks subsets)"})
    face_margin: float = field(default=0.2, metadata={"help": "affectnet: face box grown by this fraction of its side on each side before cropping"})
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
    lstm_layers: int = field(default=1, metadata={"help": "Bi-LSTM layers"})
    dropout: float = field(default=0.3, metadata={"help": "dropout before the classifier"})
    attention: bool = field(default=True, metadata={"help": "channel + spatial attention; --no-attention feeds plain tokens to the Bi-LSTM, for ablations"})
    aux_loss_weight: float = field(default=0.5, metadata={"help": "weight of the training-only auxiliary classifier on the "
                                                              "pooled backbone features (0 = none); it keeps early training "
                                                              "from stalling at chance"})
    # optimisation
    epochs: int = field(default=30, metadata={"help": "training epochs"})
    batch_size: int = field(default=32, metadata={"help": "batch size per process"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    grad_accum_steps: int = field(default=1, metadata={"help": "gradient accumulation steps"})
    warmup_steps: int = field(default=0, metadata={"help": "optimizer steps of linear learning-rate warm-up from lr/10"})
    lr_patience: int = field(default=5, metadata={"help": "ReduceLROnPlateau patience (epochs without val accuracy gain)"})
    lr_factor: float = field(default=0.5, metadata={"help": "ReduceLROnPlateau factor"})
    seed: int = field(default=42, metadata={"help": "training seed: initialisation, data order, augmentation, dropout "
                                             "(the data itself is drawn by --data-seed)"})
    # speed and scale
    sync_bn: bool = field(default=False, metadata={"help": "synchronise BatchNorm statistics across processes (GPUs only; no effect with 1 process)"})
    channels_last: bool = field(default=False, metadata={"help": "channels-last memory format for the convolutions (faster on tensor-core GPUs)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (first steps slower while it compiles)"})
    # checkpoints and fault tolerance
    output_dir: str | None = field(default=None, metadata={"help": "run directory (default: results/<run-name>)"})
    run_name: str | None = field(default=None, metadata={"help": "run name (default: <preset>-<dataset>)"})
    resume: str | None = field(default=None, metadata={"help": "'latest' (the newest complete checkpoint of --output-dir) or a checkpoint directory (default: start fresh)"})
    checkpoint_every_steps: int = field(default=0, metadata={"help": "also checkpoint every N optimizer steps (0 = per epoch only)"})
    keep_checkpoints: int = field(default=3, metadata={"help": "how many recent checkpoints to keep (best model kept apart)"})
    nan_policy: str = field(default="stop", metadata={"help": "on a non-finite loss/grad: stop | skip"})
    max_bad_steps: int = field(default=10, metadata={"help": "with --nan-policy skip: give up after this many bad steps"})
    inject_nan_at_step: int | None = field(default=None, metadata={"help": "(testing) make the loss NaN at this optimizer step"})
    # tracking
    report_to: str = field(default="none", metadata={"help": "experiment trackers: wandb | tensorboard | all | none (wandb needs `wandb login` or WANDB_MODE=offline; TensorBoard logs go to <run>/tensorboard)"})
    baseline_accuracy: float = field(default=PUBLISHED_AFFECTNET8_BEST, metadata={"help": "reference accuracy in %% logged beside ours"})
    preset: str | None = field(default=None, metadata={"help": "tiny | cpu | b4, see the table below; explicit flags override it (default: cpu for the synthetic set or a machine without a GPU, b4 for real data on a GPU)"})

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or Path("results") / self.resolved_run_name())

    def resolved_run_name(self) -> str:
        return self.run_name or f"{self.preset or 'custom'}-{self.dataset}"

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
        return cls(**{k: v for k, v in json.loads(Path(path).read_text()).items() if k in known})


PRESETS: dict[str, dict[str, Any]] = {
    # Tests: a tiny EfficientNet on tiny images, a few steps.
    "tiny": dict(backbone="test_efficientnet", image_size=64, output_stride=16, lstm_hidden=32, proj_dim=32,
                 batch_size=16, epochs=1, lr=3e-3, synthetic_train=64, synthetic_val=32, num_workers=0),
    # The synthetic default: trains and evaluates in minutes on 2 CPU cores (a 14-epoch budget).
    # 80 px (5 x 5 cells) trains 1.5x faster than 96 px and learned faster per epoch too (91% vs 86% after 10).
    "cpu": dict(backbone="test_efficientnet", image_size=80, output_stride=16, lstm_hidden=64, proj_dim=64,
                batch_size=16, epochs=14, lr=3e-3, lr_patience=1, synthetic_train=4000, synthetic_val=800, num_workers=1),
    # The full recipe for real data on a GPU.
    "b4": dict(backbone="efficientnet_b4", image_size=224, output_stride=32, lstm_hidden=512, proj_dim=0,
               batch_size=32, epochs=30, lr=1e-4, num_workers=8),
}


# Where real faces need other settings than the synthetic set, per preset (applied over the preset for any real data set).
# cpu on real faces (FER+ from scratch on 2 cores): a 2x wider test_efficientnet at 64 px (4 x 4 cells), ~146 img/s;
# unweighted loss and lr 1e-3 (the synthetic recipe's inverse weights and 3e-3 sat at the majority class on FER+).
REAL_DATA_OVERRIDES: dict[str, dict[str, Any]] = {
    "cpu": dict(backbone_width=2.0, image_size=64, lstm_hidden=128, proj_dim=128, batch_size=32, epochs=12, lr=1e-3,
                lr_patience=2, class_weights="none"),
}


def has_accelerator() -> bool:
    import torch

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
               "image_size", "preset")


def show_value(value: Any) -> str:
    """A setting as --help prints it: on / off for switches, the value otherwise."""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """One --flag per TrainConfig field (`only`: these fields); defaults stay None so presets can tell what the user set.

    Switches are --x / --no-x. Each default is printed once: the field's own, unless its help already words it.
    """
    for f in fields(TrainConfig):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if "default" not in help_text and f.default is not None:
            help_text += f" (default: {show_value(f.default)})"
        if f.type in ("bool", "bool | None"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "int | None": int, "float": float}.get(f.type, str)
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
    if config.sync_bn and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_accelerator():
        raise EmotionError("--sync-bn needs GPUs: torch's SyncBatchNorm does not run on CPU (gloo) processes; "
                           "drop --sync-bn, or pick a batch-independent backbone (e.g. GroupNorm) for CPU DDP")
    return config


def validate(config: TrainConfig) -> None:
    if config.dataset not in DATASETS:
        raise EmotionError(f"unknown --dataset {config.dataset!r}: choose one of {', '.join(DATASETS)}")
    if config.dataset != "synthetic" and not config.data_dir:
        raise EmotionError(f"--dataset {config.dataset} needs --data-dir pointing at the data set's root")
    if config.class_weights not in ("inverse", "effective", "none"):
        raise EmotionError(f"unknown --class-weights {config.class_weights!r}: choose inverse, effective or none")
    if config.soft_labels and config.dataset != "affectnet_plus":
        raise EmotionError(f"--soft-labels needs --dataset affectnet_plus (got {config.dataset}): drop --soft-labels")
    if config.label_mode not in LABEL_MODES:
        raise EmotionError(f"unknown --label-mode {config.label_mode!r}: choose majority or soft")
    if config.label_mode != "majority" and config.dataset != "ferplus":
        raise EmotionError(f"--label-mode {config.label_mode} needs --dataset ferplus (got {config.dataset}): "
                           "use --soft-labels true for affectnet_plus")
    if config.subset not in ("easy", "challenging", "difficult", "all"):
        raise EmotionError(f"unknown --subset {config.subset!r}: choose easy, challenging, difficult or all")
    if not 0 <= config.face_margin <= 2:
        raise EmotionError(f"--face-margin {config.face_margin} is out of range: use a fraction of the face box such as 0.2")
    if not 0 < config.val_fraction < 1:
        raise EmotionError(f"--val-fraction {config.val_fraction} is out of range: use a share such as 0.1")
    if config.nan_policy not in ("stop", "skip"):
        raise EmotionError(f"unknown --nan-policy {config.nan_policy!r}: choose stop or skip")
    if config.report_to not in ("wandb", "tensorboard", "all", "none"):
        raise EmotionError(f"unknown --report-to {config.report_to!r}: choose wandb, tensorboard, all or none")

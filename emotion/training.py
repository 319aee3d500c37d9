"""The Accelerate training loop: one readable loop, every Accelerate feature visible.

Exact resume: every micro-batch reseeds the RNG from (seed, epoch, batch, rank), augmentation is seeded per
sample, the sampler per epoch, and checkpoints are taken at optimizer-step boundaries, so a run killed at any
point and resumed from its latest checkpoint ends with the same weights as one that was never stopped.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import timm
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from emotion import card, checkpoint, tracking
from emotion.config import WSD_DECAY_FRACTION, TrainConfig
from emotion.data import (build_dataloader, build_transform, choose_input_colour, class_counts, class_weights,
                          decoded_pixels, load_splits, recipe_for)
from emotion.errors import EmotionError
from emotion.data.prepare import faces_come_cropped
from emotion.evaluation import Predictions, compute_metrics, predict
from emotion.faces.detect import build_detector, estimate_crop_rule
from emotion.losses import build_criterion, logit_offsets
from emotion.model import build_model, speed_up
from emotion.runtime import choose_mixed_precision, launch_rank, make_accelerator, share_cpu_cores, use_channels_last

NAN_EXIT_CODE = 3
# After this many epochs a run whose balanced accuracy is below STALL_MARGIN x chance gets a one-line warning.
STALL_CHECK_EPOCH = 2
STALL_MARGIN = 1.25
# A validation set whose largest class has this many times the images of its smallest is called imbalanced.
IMBALANCE_RATIO = 3.0
# --lr-schedule cosine and wsd end at this share of --lr, not 0: the last steps still learn.
COSINE_FLOOR = 0.01


class TrainingDiverged(EmotionError):
    """A non-finite loss or gradient norm stopped the run."""

    exit_code = NAN_EXIT_CODE


def build_accelerator(config: TrainConfig, output_dir: Path):
    log_with = {"none": None, "all": ["wandb", "tensorboard"]}.get(config.report_to, [config.report_to])
    return make_accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "tensorboard")),
        # Non-blocking host-to-device copies pair with the pinned memory the loaders use on CUDA.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed,
                                                  non_blocking=torch.cuda.is_available()),
    )


def sync_batchnorm(model: torch.nn.Module, config: TrainConfig, accelerator: Accelerator) -> torch.nn.Module:
    """--sync-bn: BatchNorm statistics over the global batch, so N processes x batch b normalise like one x N*b."""
    if not config.sync_bn or accelerator.num_processes == 1:
        return model  # CPU processes were refused --sync-bn with the flags (config_from_args)
    # timm's converter keeps the fused activation of BatchNormAct2d, which torch's own would drop.
    return timm.layers.convert_sync_batchnorm(model)


def crop_rule(config: TrainConfig, pixels: np.ndarray) -> dict[str, Any]:
    """How the face pipeline must cut a detected face to frame it as the training faces are framed (config.json keeps
    it): measured with the demo's detector when the data set's faces come cropped, else the configured margin."""
    configured = {"face_margin": config.face_margin, "face_shift": [0.0, 0.0],
                  "crop_rule": "the face box grown by --face-margin, as the training crops were cut"}
    if not faces_come_cropped(config):
        return configured
    measured = estimate_crop_rule(pixels, build_detector())
    if measured is None:
        return {**configured, "crop_rule": "--face-margin: the detector found too few of the training faces to measure a rule"}
    return measured


def resume_command(config: TrainConfig) -> str:
    """The command line that continues this run (the current one with --resume latest, without --overwrite)."""
    argv = list(sys.argv)
    for i, arg in enumerate(argv):
        if arg == "--resume" and i + 1 < len(argv):
            del argv[i:i + 2]
            break
        if arg.startswith("--resume="):
            del argv[i]
            break
    argv = [arg for arg in argv if arg != "--overwrite"]
    if "--output-dir" not in argv and not any(a.startswith("--output-dir=") for a in argv):
        argv += ["--output-dir", str(config.resolved_output_dir())]
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *argv, "--resume", "latest"])


@dataclass
class TrainerState:
    """Everything the loop needs beyond the model, optimizer, scheduler and RNG state; saved as trainer_state.json."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps of `epoch` done
    global_step: int = 0
    epoch_complete: bool = False
    best_score: float = -1.0  # the best validation --select-metric so far
    bad_steps: int = 0  # non-finite steps skipped (--nan-policy skip)
    epoch_loss_sum: float = 0.0  # over this epoch's good steps: the mean train loss and accuracy of the epoch
    epoch_loss_steps: int = 0
    epoch_correct: float = 0.0
    epoch_seen: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch (metrics.jsonl)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> "TrainerState":
        """The state a trainer_state.json holds; keys added since that checkpoint was written take their defaults."""
        saved = dict(saved)
        if "best_accuracy" in saved:  # written before --select-metric, when the score was the accuracy
            saved["best_score"] = saved.pop("best_accuracy")
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})

    def first_epoch(self) -> int:
        """The epoch the loop starts at: the next one after a finished epoch, else the one a run was stopped in."""
        return self.epoch + 1 if self.epoch_complete else self.epoch

    def start_epoch(self, epoch: int) -> int:
        """Enter `epoch`; returns its optimizer steps already done (a run resumed inside the epoch skips them)."""
        skip_steps = self.step_in_epoch if (epoch == self.epoch and not self.epoch_complete) else 0
        if not skip_steps:
            self.epoch_loss_sum, self.epoch_loss_steps, self.epoch_correct, self.epoch_seen = 0.0, 0, 0.0, 0.0
        self.epoch, self.step_in_epoch, self.epoch_complete = epoch, skip_steps, False
        return skip_steps


@dataclass
class TrainingRun:
    """What every epoch of a run works with: the prepared objects, the run's settings and its folder."""

    accelerator: Accelerator
    model: torch.nn.Module  # prepared: wrapped for DDP when several processes train
    optimizer: torch.optim.Optimizer
    criterion: Callable[..., torch.Tensor]
    train_loader: DataLoader
    val_loader: DataLoader
    class_names: list[str]
    config: TrainConfig
    output_dir: Path
    resumable: checkpoint.TrainingObjects  # what a checkpoint restores: the unwrapped model, optimizer, scheduler, scaler
    stop: checkpoint.StopRequest = field(default_factory=checkpoint.StopRequest)
    resumed_from: Path | None = None  # the checkpoint the run continues from: never pruned

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_loader) / self.config.grad_accum_steps)


@dataclass
class StepWindow:
    """The micro-batches of one optimizer step so far (gradient accumulation)."""

    bad: bool = False  # a non-finite loss in any of them
    loss: Any = 0.0  # their summed loss: a tensor from the first on
    batches: int = 0
    indices: list[int] = field(default_factory=list)  # data set indices, for the diagnostics of a bad step
    correct: float = 0.0
    good_stats: list[torch.Tensor] = field(default_factory=list)  # BatchNorm statistics before the step: a skip restores them

    def add(self, loss: torch.Tensor, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self.correct += float((logits.detach().argmax(dim=1) == batch["labels"]).sum())
        self.bad |= not bool(torch.isfinite(loss.detach()))
        self.loss += loss.detach().float()
        self.batches += 1
        self.indices += batch["index"].tolist()


def train(config: TrainConfig) -> dict[str, Any]:
    """Train, validate each epoch, checkpoint, keep the best model. Returns the final summary.

    The launch's first process holds the run folder's lock for the whole run, from before anything is read."""
    output_dir = config.resolved_output_dir()
    if launch_rank() != 0:
        return run_training(config, output_dir)
    with checkpoint.RunLock(output_dir):
        return run_training(config, output_dir)


def run_training(config: TrainConfig, output_dir: Path) -> dict[str, Any]:
    accelerator, channels_last = start_accelerator(config, output_dir)
    run = build_run(accelerator, config, output_dir, channels_last)
    state, run.resumed_from = resume_or_start(run)
    open_run_folder(accelerator, config, output_dir)
    tracking.start(accelerator, config, run_id=state.run_id, output_dir=output_dir)
    run.stop.install()
    predictions = None
    try:
        for epoch in range(state.first_epoch(), config.epochs):
            train_loss, images, seconds = train_one_epoch(run, state, state.start_epoch(epoch))
            predictions = predict(run.model, run.val_loader, accelerator)
            end_epoch(run, state, predictions, train_loss, images, seconds)
        if predictions is not None:
            tracking.log_final(accelerator, predictions, run.class_names)
    except Interrupted as interrupt:
        checkpoint.save_checkpoint(accelerator, output_dir, checkpoint.INTERRUPTED, state.to_dict(), run.resumable)
        accelerator.print(f"saved {output_dir / checkpoint.INTERRUPTED}; resume with:\n  {resume_command(config)}")
        accelerator.end_training()
        raise SystemExit(checkpoint.StopRequest.exit_code(interrupt.signum)) from None
    finally:
        run.stop.uninstall()
    accelerator.end_training()
    return summarise(run, state)


def start_accelerator(config: TrainConfig, output_dir: Path) -> tuple[Accelerator, bool]:
    """The Accelerator once the run folder accepts the run, with the precision, the seed and the CPU cores set; and
    whether the model trains channels-last."""
    # The machine's choice is part of the run: resuming it at another precision is refused with the other settings.
    config.mixed_precision, precision_reason = choose_mixed_precision(config.mixed_precision)
    checkpoint.accept_run(output_dir, config)  # before anything is built, loaded or written
    accelerator = build_accelerator(config, output_dir)
    channels_last = use_channels_last(config.channels_last)
    accelerator.print(f"precision: {'fp32' if config.mixed_precision == 'no' else config.mixed_precision + ' autocast'} "
                      f"({precision_reason}); {'channels-last' if channels_last else 'NCHW'} memory format")
    set_seed(config.seed)
    share_cpu_cores(accelerator, config.num_workers if config.loader_cores is None else config.loader_cores)
    return accelerator, channels_last


def load_data(accelerator: Accelerator, config: TrainConfig) -> tuple[Any, str, dict[str, Any]]:
    """The splits, the colour rule and the crop rule the model will keep in its config.json."""
    # The main process builds the Arrow cache (and its decoded pixels) first, the others reuse it.
    with accelerator.main_process_first():
        splits = load_splits(config)
        train_pixels = decoded_pixels(splits["train"])
        colour, colour_reason = choose_input_colour(config.input_colour, train_pixels)
    accelerator.print(f"input colour: {colour} ({colour_reason})")
    crop = crop_rule(config, train_pixels)
    accelerator.print(f"crop rule: a detected face is cut {crop['face_margin']:g} of its side wider on each side, "
                      f"centre moved by {tuple(crop['face_shift'])} sides ({crop['crop_rule']})")
    return splits, colour, crop


def build_run(accelerator: Accelerator, config: TrainConfig, output_dir: Path, channels_last: bool) -> TrainingRun:
    """Data, model, loaders, optimizer, scheduler and loss, prepared by Accelerate; the class counts and weights and
    the model-selection rule printed."""
    splits, colour, crop = load_data(accelerator, config)
    model = speed_up(sync_batchnorm(build_model(config, colour, crop), config, accelerator), channels_last, config.compile)
    recipe = recipe_for(config.augment)
    train_loader = build_dataloader(splits["train"], build_transform(model.mean, model.std, True, recipe, colour, channels_last),
                                    config.batch_size, train=True, num_workers=config.num_workers, seed=config.seed)
    val_loader = build_dataloader(splits["validation"], build_transform(model.mean, model.std, False, None, colour, channels_last),
                                  config.batch_size, train=False, num_workers=config.num_workers, seed=config.seed)
    class_names = splits["train"].features["label"].names
    counts = class_counts(splits["train"])
    weights = class_weights(counts, config.class_weights)
    accelerator.print("train counts: " + ", ".join(f"{n}={c}" for n, c in zip(class_names, counts)))
    accelerator.print(f"class weights ({config.class_weights}): " + ", ".join(f"{n}={w:.3f}" for n, w in zip(class_names, weights)))
    accelerator.print(selection_line(class_counts(splits["validation"]), config.select_metric, config.lr_schedule))

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=accelerator.device.type == "cuda")  # one kernel for all parameters
    # Not prepared: a prepared plateau scheduler would step once per process.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=config.lr_factor, patience=config.lr_patience)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    criterion = build_criterion(torch.tensor(weights, dtype=torch.float32, device=accelerator.device),
                                config.label_smoothing, soft=config.trains_on_soft_labels(),
                                offsets=logit_offsets(counts, config.logit_adjustment))
    return TrainingRun(accelerator, model, optimizer, criterion, train_loader, val_loader, class_names, config, output_dir,
                       checkpoint.TrainingObjects(accelerator.unwrap_model(model), optimizer, scheduler, accelerator.scaler))


def resume_or_start(run: TrainingRun) -> tuple[TrainerState, Path | None]:
    """The trainer state of the checkpoint --resume names (model, optimizer, scheduler and RNG restored with it) and
    that checkpoint's folder; a fresh state and None for a new run, or when the folder holds no checkpoint yet."""
    accelerator, config, output_dir = run.accelerator, run.config, run.output_dir
    if accelerator.is_main_process:
        checkpoint.recover_run(output_dir)
    accelerator.wait_for_everyone()
    fresh = TrainerState(config=config.to_dict())
    if not config.resume:
        return fresh, None
    found = checkpoint.resume(accelerator, run.resumable, output_dir, config.resume)
    if found is None:
        accelerator.print(f"no complete checkpoint in {output_dir} yet: starting a new run")
        return fresh, None
    loaded, resumed_from = found
    state = TrainerState.from_dict({**loaded, "config": config.to_dict()})
    accelerator.print(f"resumed from {resumed_from} (epoch {state.epoch + 1}, optimizer step {state.global_step})")
    return state, resumed_from


def open_run_folder(accelerator: Accelerator, config: TrainConfig, output_dir: Path) -> None:
    """The run is accepted: only now its folder changes (eval reads config.json for the data and split it was trained on)."""
    if accelerator.is_main_process:
        if config.overwrite:
            checkpoint.clear_run(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_json_atomic(output_dir / checkpoint.RUN_CONFIG, config.to_dict())
    accelerator.wait_for_everyone()


def end_epoch(run: TrainingRun, state: TrainerState, predictions: Predictions, train_loss: float, images: int,
              seconds: float) -> None:
    """After an epoch's validation: the plateau scheduler's step, the epoch's record logged and printed, the best model
    kept, metrics.jsonl and the epoch's checkpoint written."""
    accelerator, config = run.accelerator, run.config
    metrics = compute_metrics(predictions.labels, predictions.predicted, run.class_names)
    epoch_lr = run.optimizer.param_groups[0]["lr"]  # the lr of the epoch's last step, before the plateau moves it
    if config.lr_schedule == "plateau":
        run.resumable.scheduler.step(metrics[config.select_metric])
    record = {
        "epoch": state.epoch + 1, "global_step": state.global_step, "train_loss": train_loss,
        "train_accuracy": state.epoch_correct / max(state.epoch_seen, 1.0),
        "val_loss": predictions.loss, "val_accuracy": metrics["accuracy"],
        "val_balanced_accuracy": metrics["balanced_accuracy"], "val_macro_f1": metrics["macro_f1"],
        "val_attention_entropy": predictions.attention_entropy, "val_attention_corner_share": predictions.corner_share,
        "lr": epoch_lr, "epoch_seconds": seconds,
        "train_images_per_second": images / seconds if seconds > 0 else 0.0,
    }
    state.history.append(record)
    tracking.log_epoch(accelerator, record, metrics, config)
    accelerator.print(f"epoch {state.epoch + 1}/{config.epochs}: train_loss {train_loss:.4f} "
                      f"train_acc {100 * record['train_accuracy']:.2f}% val_loss {predictions.loss:.4f} "
                      f"val_acc {100 * metrics['accuracy']:.2f}% bal_acc {100 * metrics['balanced_accuracy']:.2f}% "
                      f"attn_entropy {predictions.attention_entropy:.2f} ({record['train_images_per_second']:.0f} img/s)")
    if state.epoch + 1 == STALL_CHECK_EPOCH:
        warn_if_at_chance(accelerator, metrics, config)
    if metrics[config.select_metric] > state.best_score:
        state.best_score = metrics[config.select_metric]
        save_best_model(accelerator, run.model, run.output_dir, config, record, metrics, predictions.neutral_attention)
    state.step_in_epoch, state.epoch_complete = run.steps_per_epoch, True
    write_metrics(accelerator, run.output_dir, state.history)
    save_and_prune(run, state, f"epoch_{state.epoch + 1}")


def save_and_prune(run: TrainingRun, state: TrainerState, name: str) -> None:
    """A regular checkpoint, then all but the --keep-checkpoints newest removed (never the one the run resumed from)."""
    checkpoint.save_checkpoint(run.accelerator, run.output_dir, name, state.to_dict(), run.resumable)
    if run.accelerator.is_main_process:
        checkpoint.prune_checkpoints(run.output_dir, run.config.keep_checkpoints, protect=run.resumed_from)


def summarise(run: TrainingRun, state: TrainerState) -> dict[str, Any]:
    """The run's summary, and its last line printed: the final and the best validation figures."""
    config, history = run.config, state.history
    summary = {"select_metric": config.select_metric, "best_score": state.best_score, "epochs": len(history),
               "output_dir": str(run.output_dir), "final": history[-1] if history else None}
    if history:
        run.accelerator.print(f"final validation accuracy: {100 * history[-1]['val_accuracy']:.2f}% (best "
                              f"{config.select_metric} {100 * state.best_score:.2f}%); best model in {run.output_dir / 'best_model'}")
    return summary


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def train_one_epoch(run: TrainingRun, state: TrainerState, skip_steps: int) -> tuple[float, int, float]:
    """Train the epoch `state` is in from optimizer step `skip_steps` on; returns its mean train loss, the images it
    read (all processes) and its seconds."""
    accelerator, model, config = run.accelerator, run.model, run.config
    model.train()
    run.train_loader.set_epoch(state.epoch)  # sampler order and augmentation seed for this epoch
    # Accelerate skips the dataset's set_epoch when the sampler is sharded (several processes): set it directly.
    run.train_loader.dataset.set_epoch(state.epoch)
    skip_batches = skip_steps * config.grad_accum_steps
    loader = accelerator.skip_first_batches(run.train_loader, skip_batches) if skip_batches else run.train_loader
    augment = run.train_loader.dataset.transform  # on whole batches, on the training device
    progress = tqdm(total=run.steps_per_epoch, initial=skip_steps, desc=f"epoch {state.epoch + 1}/{config.epochs}",
                    disable=not accelerator.is_local_main_process, mininterval=1 if sys.stderr.isatty() else 30)
    images = 0
    window = StepWindow()
    running_stats = list(model.buffers())  # BatchNorm running means, variances and counts
    started = time.perf_counter()
    try:
        for batch_in_epoch, batch in enumerate(loader, start=skip_batches):
            # Seed from the position, not the history, so a resumed run draws the same dropout masks.
            torch.manual_seed(hash((config.seed, state.epoch, batch_in_epoch, accelerator.process_index)) & 0x7FFF_FFFF)
            with accelerator.accumulate(model):
                if config.nan_policy == "skip" and window.batches == 0:  # what a skipped step restores
                    window.good_stats = [buffer.detach().clone() for buffer in running_stats]
                logits, aux_logits = model(augment(batch), training_heads=True)
                loss = total_loss(run, logits, aux_logits, batch)
                window.add(loss, logits, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    step_loss, stop_asked = optimizer_step(run, state, window, running_stats)
                    window = StepWindow()
                    progress.update(1)
                    if state.global_step % 10 == 0:
                        tracking.log_step(accelerator, state.global_step, step_loss, run.optimizer.param_groups[0]["lr"])
                    if stop_asked:
                        raise Interrupted(int(run.stop.signum) or 15)
                    if config.checkpoint_every_steps and state.global_step % config.checkpoint_every_steps == 0 \
                            and state.step_in_epoch < run.steps_per_epoch:
                        save_and_prune(run, state, f"step_{state.global_step}")
            images += batch["labels"].shape[0] * accelerator.num_processes
    finally:
        progress.close()  # ends the bar's line before any message that follows
    seconds = time.perf_counter() - started
    return state.epoch_loss_sum / max(state.epoch_loss_steps, 1), images, seconds


def total_loss(run: TrainingRun, logits: torch.Tensor, aux_logits: tuple, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The classifier's loss plus each training-only head's (pooled features, attention map) at its weight."""
    loss = run.criterion(logits, batch)
    for weight, head_logits in zip((run.config.aux_loss_weight, run.config.attention_loss_weight), aux_logits):
        if head_logits is not None:
            loss = loss + weight * run.criterion(head_logits, batch)
    return loss


def optimizer_step(run: TrainingRun, state: TrainerState, window: StepWindow,
                   running_stats: list[torch.Tensor]) -> tuple[float, bool]:
    """End the step the window's micro-batches make: clip, agree over the ranks, then step, or skip a non-finite one;
    returns the step's loss (mean over ranks) and whether a signal asked the run to stop."""
    accelerator, config, optimizer = run.accelerator, run.config, run.optimizer
    grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), config.max_grad_norm if config.max_grad_norm > 0 else float("inf"))
    # fp16: an inf gradient with a finite loss is overflow the grad scaler skips, not a failure.
    grad_bad = grad_norm is not None and not bool(torch.isfinite(grad_norm)) and accelerator.mixed_precision != "fp16"
    # One collective per step: any rank bad, any rank signalled, and the mean loss over ranks.
    flags = torch.stack([torch.tensor(float(window.bad or grad_bad)), torch.tensor(float(run.stop.signum)),
                         (window.loss / window.batches).cpu(), torch.tensor(window.correct),
                         torch.tensor(float(len(window.indices)))]).to(accelerator.device)
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    step_loss = flags[2].item() / accelerator.num_processes
    if flags[0] > 0:
        handle_bad_step(run, state, step_loss, grad_norm, window.indices)
        undo_bad_step(accelerator, running_stats, window.good_stats)
    else:
        set_step_lr(optimizer, config, state.global_step, run.steps_per_epoch * config.epochs)
        optimizer.step()
        state.epoch_loss_sum += step_loss
        state.epoch_loss_steps += 1
        state.epoch_correct += flags[3].item()
        state.epoch_seen += flags[4].item()
    optimizer.zero_grad(set_to_none=True)
    state.global_step += 1
    state.step_in_epoch += 1
    return step_loss, bool(flags[1] > 0)


def scheduled_lr(config: TrainConfig, global_step: int, total_steps: int) -> float | None:
    """The lr of this optimizer step where a rule sets it (cosine, wsd); None leaves it to the plateau scheduler."""
    if config.lr_schedule == "plateau":
        return None
    # cosine falls over every step; wsd holds --lr, then falls over the last WSD_DECAY_FRACTION of the steps
    decay_steps = round(WSD_DECAY_FRACTION * total_steps) if config.lr_schedule == "wsd" else total_steps
    progress = min(1.0, max(0.0, (global_step - (total_steps - decay_steps)) / max(1, decay_steps)))
    return config.lr * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_step_lr(optimizer, config: TrainConfig, global_step: int, total_steps: int) -> None:
    """Write this step's scheduled lr into every parameter group; between rules the plateau scheduler's lr stays."""
    lr = scheduled_lr(config, global_step, total_steps)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr


def handle_bad_step(run: TrainingRun, state: TrainerState, loss: float, grad_norm, indices: list[int]) -> None:
    """Non-finite loss or gradient: write diagnostics, then stop (default) or skip up to --max-bad-steps."""
    accelerator, config, output_dir = run.accelerator, run.config, run.output_dir
    state.bad_steps += 1
    diagnostics = {
        "epoch": state.epoch + 1, "global_step": state.global_step + 1, "lr": run.optimizer.param_groups[0]["lr"],
        "loss": loss, "grad_norm": None if grad_norm is None else float(grad_norm),
        "batch_indices": indices, "bad_steps": state.bad_steps, "policy": config.nan_policy,
    }
    if accelerator.is_main_process:
        with (output_dir / "nan_diagnostics.jsonl").open("a") as handle:
            handle.write(json.dumps(diagnostics) + "\n")
    if config.nan_policy == "skip" and state.bad_steps <= config.max_bad_steps:
        accelerator.print(f"warning: non-finite loss/gradient at step {diagnostics['global_step']}: step skipped "
                          f"({state.bad_steps}/{config.max_bad_steps})")
        return
    raise TrainingDiverged(
        f"non-finite loss ({diagnostics['loss']}) or gradient norm at epoch {diagnostics['epoch']}, optimizer step "
        f"{diagnostics['global_step']}: stopped; details in {output_dir / 'nan_diagnostics.jsonl'}, last good checkpoint "
        f"kept (lower --lr, or --nan-policy skip)")


def undo_bad_step(accelerator, running_stats: list[torch.Tensor], good_stats: list[torch.Tensor]) -> None:
    """A skipped step leaves no trace: BatchNorm statistics of the last good step back, the fp16 grad scaler ready."""
    with torch.no_grad():
        for buffer, good in zip(running_stats, good_stats):
            buffer.copy_(good)  # a non-finite forward pass poisoned the running statistics
    if accelerator.scaler is not None:
        # clip_grad_norm_ unscaled this step's gradients: without update() the next step's unscale_ raises.
        accelerator.scaler.update()


def selection_line(counts: np.ndarray, select_metric: str, lr_schedule: str = "plateau") -> str:
    """The start-up line saying what picks the best model; on an imbalanced validation set it says so too, and with
    plain accuracy it suggests balanced accuracy."""
    drives = {"plateau": "drives the lr schedule", "cosine": "the lr follows a cosine over --epochs",
              "wsd": "the lr is held, then falls in the last epochs"}[lr_schedule]
    line = f"model selection: validation {select_metric} picks the best model and {drives}"
    present = counts[counts > 0]
    if len(present) > 1 and present.max() >= IMBALANCE_RATIO * present.min():
        line += f"; the validation set is imbalanced ({present.max()} vs {present.min()} images per class)"
        if select_metric == "accuracy":
            line += ": accuracy mostly rewards the large classes, --select-metric balanced_accuracy weighs every class alike"
    return line


def warn_if_at_chance(accelerator, metrics: dict, config: TrainConfig) -> None:
    """One line when validation is still at chance: the run keeps training, the user learns early what to change."""
    present = sum(1 for row in metrics["per_class"].values() if row["support"] > 0)
    chance = 1.0 / max(present, 1)
    if metrics["balanced_accuracy"] < STALL_MARGIN * chance:
        accelerator.print(
            f"warning: after epoch {STALL_CHECK_EPOCH} validation balanced accuracy is {100 * metrics['balanced_accuracy']:.1f}%, "
            f"chance level ({100 * chance:.1f}%): the model still predicts about one class; training goes on, but try "
            f"a lower --lr (now {config.lr:g}), --aux-loss-weight (now {config.aux_loss_weight:g}) "
            f"and check the labels")


def save_best_model(accelerator, model, output_dir: Path, config: TrainConfig, record: dict, metrics: dict,
                    neutral_attention=None) -> None:
    """`best_model/` (config.json + model.safetensors + metrics.json + README.md card), written to a temp folder then renamed.

    config.json keeps this epoch's mean attention on neutral validation faces: the baseline of the explanations.
    """
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.set_attention_prior(neutral_attention)

        def write(folder: Path) -> None:
            unwrapped.save_pretrained(folder)
            checkpoint.write_json_atomic(folder / "metrics.json", {"epoch": record["epoch"], "val_accuracy": metrics["accuracy"],
                                                                   "val_balanced_accuracy": metrics["balanced_accuracy"],
                                                                   "val_macro_f1": metrics["macro_f1"], "dataset": config.dataset,
                                                                   "select_metric": config.select_metric,
                                                                   "baseline_accuracy": config.resolved_baseline()})
            card.write_model_card(folder, card.current_command(), config.to_dict())

        checkpoint.write_directory(output_dir / checkpoint.BEST_MODEL, write)
    accelerator.wait_for_everyone()


def write_metrics(accelerator, output_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl rewritten whole from the run's history, so a resumed run never repeats or loses a line."""
    if accelerator.is_main_process:
        tmp = output_dir / ".metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
        os.replace(tmp, output_dir / "metrics.jsonl")

"""Experiment tracking through Accelerate's trackers (wandb, tensorboard): curves, per-class F1, the baseline."""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any



def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def uses_wandb(accelerator) -> bool:
    return any(t.name == "wandb" for t in accelerator.trackers)


def start(accelerator, config, run_id: str, output_dir: Path) -> None:
    """Open the trackers; the wandb run id is kept in the checkpoint so a resumed run continues the same run."""
    if config.report_to == "none":
        return
    wandb_kwargs: dict[str, Any] = {"name": config.resolved_run_name(), "id": run_id, "resume": "allow", "dir": str(output_dir)}
    if config.report_to in ("wandb", "all") and not wandb_logged_in() and "WANDB_MODE" not in os.environ:
        wandb_kwargs["mode"] = "offline"
        accelerator.print(f"wandb: not logged in, logging offline under {output_dir / 'wandb'}; "
                          f"upload later with `wandb sync {output_dir / 'wandb'}/offline-run-*`")
    accelerator.init_trackers("emotion", config=config.to_dict(), init_kwargs={"wandb": wandb_kwargs})


def log_step(accelerator, step: int, loss: float, lr: float) -> None:
    accelerator.log({"train/loss_step": loss, "lr": lr}, step=step)


def log_epoch(accelerator, record: dict[str, Any], metrics: dict[str, Any], config) -> None:
    values = {
        "epoch": record["epoch"], "train/loss": record["train_loss"], "val/loss": record["val_loss"],
        "val/accuracy": record["val_accuracy"], "val/balanced_accuracy": record["val_balanced_accuracy"],
        "val/macro_f1": record["val_macro_f1"], "lr": record["lr"], "train/accuracy": record["train_accuracy"],
        "val/attention_entropy": record["val_attention_entropy"], "val/attention_corner_share": record["val_attention_corner_share"], "train/images_per_second": record["train_images_per_second"],
        # The dashboard compares in percent: our accuracy beside the reference and the gap to it.
        "val/accuracy_percent": 100 * record["val_accuracy"], "baseline/accuracy": config.resolved_baseline(),
        "baseline/gap": 100 * record["val_accuracy"] - config.resolved_baseline(),
    }
    values.update({f"val/f1_{name}": row["f1"] for name, row in metrics["per_class"].items()})
    accelerator.log(values, step=record["global_step"])


def log_final(accelerator, predictions, class_names) -> None:
    """The last validation confusion matrix as a wandb plot."""
    if not accelerator.is_main_process or not uses_wandb(accelerator):
        return
    import wandb  # 0.2 s of import, paid by the runs that report to wandb alone

    run = accelerator.get_tracker("wandb", unwrap=True)
    run.log({"val/confusion_matrix": wandb.plot.confusion_matrix(
        y_true=predictions.labels.tolist(), preds=predictions.predicted.tolist(), class_names=list(class_names))})

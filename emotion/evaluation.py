"""One prediction and metric path for training-time validation and `eval_accelerate.py`.

Predictions are gathered with `gather_for_metrics`, so under several processes every sample counts once.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from emotion.config import TrainConfig, validate
from emotion.csv_cells import cell
from emotion.data import build_dataloader, build_transform, load_splits
from emotion.errors import EmotionError
from emotion.labels import CLASS_TO_ID
from emotion.metrics import EXPRESSION_METRICS
from emotion.model import load_model
from emotion.runtime import make_accelerator


@dataclass
class Predictions:
    indices: np.ndarray  # row index of each sample in its split
    labels: np.ndarray
    probabilities: np.ndarray  # (N, number of classes of the model)
    loss: float  # mean cross-entropy (unweighted)
    neutral_attention: np.ndarray | None = None  # mean spatial attention (H, W) over the faces labelled neutral
    attention_entropy: float = float("nan")  # mean entropy of the attention maps / log(H*W): 1 = uniform, 0 = one cell
    corner_share: float = float("nan")  # share of faces whose attention peaks on one of the grid's 4 corner cells
    corner_chance: float = float("nan")  # the share a peak on a random cell would give: 4 / (H*W)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


@torch.no_grad()
def predict(model, loader, accelerator, tta: str | None = None) -> Predictions:
    """Run a prepared loader through the model; `tta='hflip'` averages with the mirrored image."""
    model.eval()
    indices, labels, probabilities, losses = [], [], [], []
    attention_sum, neutral_count, entropies, corners = None, 0, [], []
    neutral = CLASS_TO_ID["neutral"]
    for batch in loader:
        inputs = loader.dataset.transform(batch)  # uint8 pixels -> the model's colour rule and normalisation
        logits, attention = model(inputs, return_attention=True)
        probs = logits.float().softmax(dim=1)
        if tta == "hflip":
            probs = (probs + model(inputs.flip(dims=[3])).float().softmax(dim=1)) / 2
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), batch["labels"], reduction="none")
        gathered = accelerator.gather_for_metrics((batch["index"], batch["labels"], probs, loss, attention.float()))
        for store, value in zip((indices, labels, probabilities, losses), gathered[:4]):
            store.append(value.cpu())
        entropy, corner = attention_statistics(gathered[4])
        entropies.append(entropy.cpu())
        corners.append(corner.cpu())
        is_neutral = gathered[1] == neutral
        batch_sum = gathered[4][is_neutral].sum(dim=0).cpu()
        attention_sum = batch_sum if attention_sum is None else attention_sum + batch_sum
        neutral_count += int(is_neutral.sum())
    if not indices:
        empty = np.zeros(0, dtype=np.int64)
        return Predictions(empty, empty, np.zeros((0, accelerator.unwrap_model(model).config["num_classes"])), float("nan"))
    return Predictions(
        indices=torch.cat(indices).numpy(),
        labels=torch.cat(labels).numpy(),
        probabilities=torch.cat(probabilities).numpy(),
        loss=float(torch.cat(losses).mean()),
        neutral_attention=(attention_sum / neutral_count).numpy() if neutral_count else None,
        attention_entropy=float(torch.cat(entropies).mean()),
        corner_share=float(torch.cat(corners).float().mean()),
        corner_chance=min(1.0, 4 / gathered[4][0].numel()),
    )


def attention_statistics(attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per map of a (B, H, W) batch: entropy / log(H*W), and whether the peak cell is a corner of the grid."""
    b, h, w = attention.shape
    flat = attention.reshape(b, h * w).float()
    entropy = -(flat * flat.clamp_min(1e-12).log()).sum(dim=1) / max(np.log(h * w), 1e-12)
    peak = flat.argmax(dim=1)
    corner_cells = torch.tensor([0, w - 1, (h - 1) * w, h * w - 1], device=peak.device)
    return entropy, torch.isin(peak, corner_cells)


def compute_metrics(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Metrics through the packaged `evaluate` module, reshaped with the class names of the model (or its data)."""
    metric = evaluate.load(str(EXPRESSION_METRICS))
    raw = metric.compute(predictions=predicted.tolist(), references=labels.tolist(), num_classes=len(class_names))
    per_class = {
        name: {"precision": raw["precision"][i], "recall": raw["recall"][i], "f1": raw["f1"][i], "support": raw["support"][i]}
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": raw["accuracy"],
        "balanced_accuracy": raw["balanced_accuracy"],
        "macro_f1": raw["macro_f1"],
        "weighted_f1": raw["weighted_f1"],
        "per_class": per_class,
        "confusion_matrix": raw["confusion_matrix"],
        "num_samples": int(len(labels)),
    }


def write_report(report: dict[str, Any], output_dir: Path) -> None:
    """report.json, report.md and confusion_matrix.png in `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "report.md").write_text(report_markdown(report))
    plot_confusion_matrix(np.asarray(report["confusion_matrix"]), output_dir / "confusion_matrix.png", list(report["per_class"]))


def report_markdown(report: dict[str, Any]) -> str:
    lines = ["# Evaluation report", ""]
    for key in ("model", "dataset", "split"):
        if key in report:
            lines.append(f"- {key}: `{report[key]}`")
    if "attention_corner_share" in report:
        lines.append(f"- attention: entropy {report['attention_entropy']:.2f} of uniform; peak on a grid corner for "
                     f"{100 * report['attention_corner_share']:.1f}% of faces (chance {100 * report['attention_corner_chance']:.1f}%)")
    lines += [
        f"- samples: {report['num_samples']}", "",
        "| metric | value |", "|---|---|",
        *(f"| {key} | {100 * report[key]:.2f}% |" for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1")),
        "", "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|",
    ]
    for name, row in report["per_class"].items():
        lines.append(f"| {name} | {100 * row['precision']:.1f}% | {100 * row['recall']:.1f}% | {100 * row['f1']:.1f}% | {row['support']} |")
    names = list(report["per_class"])
    lines += ["", "## Confusion matrix (rows = true class, columns = predicted)", "",
              "| true \\ pred | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot_confusion_matrix(matrix: np.ndarray, path: Path, class_names: list[str]) -> None:
    """Counts and row-normalised recall side by side, class names on both axes."""
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    fig = Figure(figsize=(15, 6.5))  # no pyplot: no GUI backend, no global figure to close
    axes = fig.subplots(1, 2)
    for ax, values, title, fmt in ((axes[0], matrix, "Counts", "d"), (axes[1], normalised, "Row-normalised (recall)", ".2f")):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=values.max() if values.max() > 0 else 1)
        ax.set_title(title)
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        ax.set_yticks(range(len(class_names)), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        threshold = values.max() / 2 if values.max() > 0 else 0.5
        for i in range(len(class_names)):
            for j in range(len(class_names)):
                ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] > threshold else "black")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_predictions_csv(predictions: Predictions, ids: list[str], path: Path, class_names: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "true", "predicted", *(f"p_{name}" for name in class_names)])
        for sample_id, true, pred, probs in zip(ids, predictions.labels, predictions.predicted, predictions.probabilities):
            writer.writerow([cell(sample_id), class_names[true], class_names[pred], *(f"{p:.6f}" for p in probs)])


def run_config_for(model_dir: Path):
    """The training run's config when the model sits in a run folder (best_model/ beside config.json).

    Evaluation then rebuilds (or reuses) the very cache training read: the options that shape rows (label mode,
    data seed, validation share, subset, ...) come from there."""
    run_config = model_dir.parent / "config.json"
    return TrainConfig.load(run_config) if run_config.is_file() else TrainConfig()


def split_of(splits, split: str, config):
    """One split of the loaded data set, or a one-line refusal naming the splits it has."""
    if split not in splits:
        raise EmotionError(f"--split {split}: the {config.dataset} data set"
                           + (f" at {config.data_dir}" if config.data_dir else "")
                           + f" has no {split} split (it has {', '.join(splits)}); choose one of those")
    return splits[split]


def evaluate_saved_model(model_dir: Path, dataset: str | None = None, data_dir: str | None = None, split: str = "validation",
                         output_dir: Path | None = None, batch_size: int = 64, num_workers: int | None = None,
                         tta: str | None = None, save_predictions: bool = False,
                         detect_faces: bool | None = None, colour: str | None = None) -> dict[str, Any]:
    """Evaluate a saved model on a split of its data set (or another) and write the report files.

    `colour` ('grey' or 'rgb') overrides the model's colour rule, to measure what the rule buys."""
    model = load_model(model_dir)
    config = run_config_for(model_dir)
    if dataset is not None and dataset != config.dataset:
        config.dataset, config.data_dir = dataset, data_dir
        # Label options belong to the run's data set; another set is read with its defaults.
        config.soft_labels, config.label_mode, config.subset = False, "majority", "all"
        config.label_order, config.rafdb_images, config.detect_faces = None, "aligned", False
    elif data_dir is not None:
        config.data_dir = data_dir
    if detect_faces is not None:
        config.detect_faces = detect_faces
    config.image_size = model.image_size
    # The classes the model was trained on decide which rows count (a 7-class model is scored without contempt).
    class_names = model.config["class_names"]
    config.classes = len(class_names)
    validate(config)
    accelerator = make_accelerator()
    with accelerator.main_process_first():
        splits = load_splits(config)
    data = split_of(splits, split, config)
    colour = colour or model.input_colour
    loader = build_dataloader(data, build_transform(model.mean, model.std, train=False, colour=colour), batch_size,
                              train=False, num_workers=config.num_workers if num_workers is None else num_workers)
    model, loader = accelerator.prepare(model, loader)
    predictions = predict(model, loader, accelerator, tta=tta)
    report = compute_metrics(predictions.labels, predictions.predicted, class_names)
    report.update(model=str(model_dir), dataset=config.dataset, data_dir=config.data_dir, split=split, tta=tta or "none",
                  input_colour=colour,
                  loss=predictions.loss, attention_entropy=predictions.attention_entropy,
                  attention_corner_share=predictions.corner_share,
                  attention_corner_chance=predictions.corner_chance)
    # A test-split report must not overwrite the validation report of the same run.
    output_dir = output_dir or model_dir.parent / ("eval" if split == "validation" else f"eval-{split}")
    if accelerator.is_main_process:
        write_report(report, output_dir)
        if save_predictions:
            ids = data["id"] if "id" in data.column_names else [str(i) for i in range(len(data))]
            write_predictions_csv(predictions, [ids[i] for i in predictions.indices], output_dir / "predictions.csv", class_names)
        accelerator.print(report_markdown(report))
        accelerator.print(f"report written to {output_dir}")
    return report

"""The model card: a Hub-format README.md (YAML header + prose) written into every saved model and export.

Everything in it is read from files the run wrote (config.json, metrics.json, the run's config.json), so the
card states measured numbers only.
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from emotion.io import read_json
from emotion.labels import PUBLISHED_AFFECTNET7_BEST, PUBLISHED_AFFECTNET8_BEST

CARD = "README.md"
# Hub names for the data sets a run can read; the synthetic set lives in this package, not on the Hub.
DATASET_IDS = {"synthetic": "emotion-synthetic-faces", "affectnet": "affectnet", "affectnet_plus": "affectnet-plus"}
DATASET_TEXT = {
    "synthetic": "the built-in procedural synthetic faces (`emotion.synthetic`): drawn cartoon faces whose expression is "
                 "set by facial-action prototypes. They test the pipeline; they say nothing about real faces.",
    "affectnet": "AffectNet (Mollahosseini et al. 2017), manually annotated images, 8 classes, face boxes cropped.",
    "affectnet_plus": "AffectNet+ (arXiv 2410.22506), human-annotated split with soft labels.",
    "imagefolder": "a folder-per-class data set (such as FER2013, RAF-DB, CK+, ExpW exports).",
    "ferplus": "FER+ (Barsoum et al. 2016): the FER2013 faces relabelled by 10 annotators each.",
    "rafdb": "RAF-DB basic (Li et al. 2017), its published train / test partition.",
    "fer2013": "FER2013 (Kaggle, 2013), 48 x 48 grey faces from fer2013.csv.",
}
LIMITS = """\
- A classifier of **facial expressions**, not of emotions: a smile is not happiness and a neutral face is not calm.
  People show what they feel differently across cultures, ages and situations, and often show nothing.
- The public expression sets are skewed: AffectNet is mostly web photos of adults, light-skinned faces are
  over-represented, posed and exaggerated expressions dominate, and classes are imbalanced (happy vs. contempt is
  35:1 in AffectNet's train split). Expect lower accuracy for children, older people, darker skin, profile views,
  occlusion (masks, glasses) and low light, and for fear, disgust and contempt.
- **Not for decisions about people**: no hiring, grading, admission, credit, insurance, policing, border control or
  surveillance, and no inferring someone's feelings without their knowledge and consent.
- The attention map and the explanation phrase show where the model looked, not why a person feels anything."""


def shareable(argument: str) -> str:
    """A command-line argument with any path cut to its base name: a card travels (emotion-push), local paths stay."""
    if argument.startswith("--") and "=" in argument:
        flag, value = argument.split("=", 1)
        return f"{flag}={shareable(value)}"
    return Path(argument).name or argument if os.sep in argument else argument


def current_command(argv: Sequence[str] | None = None) -> str:
    """The command line of this process, as a user would paste it (`python x.py ...` or `emotion-export ...`), every
    path cut to its base name."""
    program, *rest = list(sys.argv if argv is None else argv)
    head = ["python", Path(program).name] if program.endswith(".py") else [Path(program).name]
    return " ".join(shlex.quote(a) for a in [*head, *map(shareable, rest)])


def training_command(model_dir: Path) -> str | None:
    """The command recorded in an existing card's YAML header (kept when an export rewrites the card)."""
    path = Path(model_dir) / CARD
    return ModelCard.load(path).data.to_dict().get("training_command") if path.is_file() else None


def write_model_card(model_dir: Path, command: str | None = None, run_config: dict[str, Any] | None = None,
                     export: dict[str, Any] | None = None) -> Path:
    """Write `model_dir/README.md` from its config.json and metrics.json; `export` adds the ONNX section."""
    model_dir = Path(model_dir)
    model_config = read_json(model_dir / "config.json")
    metrics = read_json(model_dir / "metrics.json")
    run = run_config if run_config is not None else read_json(model_dir.parent / "config.json")
    dataset = metrics.get("dataset") or run.get("dataset") or "unknown"
    command = command or training_command(model_dir) or "unknown (the model was saved outside `train_accelerate.py`)"
    classes = model_config["class_names"]

    results = []
    if "val_accuracy" in metrics:
        for key, kind in (("val_accuracy", "accuracy"), ("val_balanced_accuracy", "balanced_accuracy"), ("val_macro_f1", "f1")):
            if key in metrics:
                results.append(EvalResult(task_type="image-classification", dataset_type=DATASET_IDS.get(dataset, dataset),
                                          dataset_name=dataset, dataset_split="validation", metric_type=kind,
                                          metric_value=round(float(metrics[key]), 4),
                                          metric_name=f"{kind} (validation)"))
    data = ModelCardData(
        license="apache-2.0", library_name="emotion", pipeline_tag="image-classification",
        tags=["facial-expression-recognition", "affectnet", "emotion", "timm", "bi-lstm", "attention"] + (["onnx"] if export else []),
        datasets=[DATASET_IDS.get(dataset, dataset)], metrics=["accuracy", "f1"],
        model_name=f"emotion-{model_config.get('backbone', 'model')}-{dataset}", eval_results=results or None,
        training_command=command,
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(model_config, metrics, dataset, classes, command, export)}")
    tmp = model_dir / f".{CARD}.tmp"
    card.save(tmp)
    os.replace(tmp, model_dir / CARD)
    return model_dir / CARD


def _body(model_config: dict, metrics: dict, dataset: str, classes: list[str], command: str, export: dict | None) -> str:
    backbone = model_config.get("backbone", "?")
    lines = [
        f"# Facial-expression recognizer ({backbone} + dual attention + Bi-LSTM)",
        "",
        f"A [timm](https://github.com/huggingface/pytorch-image-models) `{backbone}` backbone, channel and spatial "
        f"attention on its last feature map, the grid cells as tokens through a Bi-LSTM (hidden "
        f"{model_config.get('lstm_hidden', '?')}), and a classifier over {len(classes)} expression classes. "
        f"Input: RGB face crops resized to {model_config.get('image_size', '?')} px, normalised with "
        + (f"mean {model_config['mean']} and std {model_config['std']}." if model_config.get("mean")
           else f"the `{backbone}` timm defaults (resolved into `config.json` by `emotion-export`)."),
        "",
        "## Training data",
        "",
        DATASET_TEXT.get(dataset, f"`{dataset}`"),
        "",
        "## Classes, in output order",
        "",
        *(f"{i}. {name}" for i, name in enumerate(classes)),
        "",
        "## How it was made",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Measured results (validation split)",
        "",
    ]
    if "val_accuracy" in metrics:
        accuracy = 100 * metrics["val_accuracy"]
        baseline = metrics.get("baseline_accuracy")
        lines += [
            "| metric | value |", "|---|---|",
            f"| accuracy | {accuracy:.2f}% |",
            f"| balanced accuracy | {100 * metrics.get('val_balanced_accuracy', float('nan')):.2f}% |",
            f"| macro F1 | {100 * metrics.get('val_macro_f1', float('nan')):.2f}% |",
            f"| epoch of the best model | {metrics.get('epoch', '?')} |",
            "",
        ]
        if baseline is not None:
            gap = accuracy - baseline
            protocol = f"AffectNet-{len(classes)}"
            what = {PUBLISHED_AFFECTNET8_BEST: "the best published supervised AffectNet-8 validation accuracy, DDAMFN",
                    PUBLISHED_AFFECTNET7_BEST: "the best published AffectNet-7 validation accuracy, QCS"}.get(
                        baseline, "given with --baseline-accuracy")
            lines.append(f"Gap to the baseline ({baseline:.2f}%, {what}): **{gap:+.2f} points**.")
            if dataset != "affectnet":
                lines.append(f"This model was validated on `{dataset}`, not {protocol}, so the gap compares different "
                             "data and is not a claim about AffectNet.")
    else:
        lines.append("No metrics.json beside the weights: no measured results to report.")
    if export:
        lines += [
            "", "## ONNX export", "",
            f"`{export['file']}` (opset {export['opset']}, dynamic batch), inputs `pixel_values` (B, 3, "
            f"{model_config.get('image_size', '?')}, {model_config.get('image_size', '?')}) float32, outputs `logits` (B, "
            f"{len(classes)}) and `attention` (B, H, W, sums to 1). Checked against PyTorch with ONNX Runtime: max "
            f"|diff| {export['max_abs_diff']:.2e} (limit {export['tolerance']:.0e}) on batches of {export['batches']}.",
            "", "```bash", export["command"], "```",
        ]
    lines += [
        "", "## Intended use", "",
        "Research, teaching and demos of facial-expression recognition: trying the model on your own photos or webcam "
        "(`emotion-app`), comparing architectures, and as a starting point for fine-tuning on consented data.",
        "", "## Limits", "", LIMITS, "",
    ]
    return "\n".join(lines)

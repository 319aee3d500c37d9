"""How a saved model holds up on faces from other sources: accuracy, balanced accuracy, per-class recall and the share
of faces it calls each class beside the true share, per set.

    python benchmarks/cross_dataset.py --model results/RUN/best_model --set sfew=/data/SFEW/Train --set ferplus-test=/data/ferplus

A set is a folder per class (`DIR/<class name>/*.jpg`, the reader's own class names and aliases), scored whole, or a
FER+ root (its FER2013Test split, majority vote). Each face is decoded, centre-cropped to a square and resized as the
prepared training cache does (`emotion.data.prepare.prepare_image`), then shown to the model by its colour rule
(`--grey` / `--no-grey` override it, to measure what the rule buys). Prints a markdown table, writes JSON.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from emotion.data.augment import EvalTransform
from emotion.data.ferplus import read_ferplus
from emotion.data.imagefolder import _read_classes
from emotion.data.prepare import Issues, Record, SkipImage, prepare_image
from emotion.errors import EmotionError, cli_main
from emotion.labels import CLASS_NAMES
from emotion.model import load_model

BATCH = 128


def read_set(spec: str) -> tuple[str, list[Record], Issues]:
    """`NAME=DIR` -> (name, records, skipped): a FER+ root gives its test split, any other folder its class folders."""
    name, sep, folder = spec.partition("=")
    if not sep or not name or not folder:
        raise EmotionError(f"--set {spec!r}: give NAME=DIR, e.g. sfew=/data/SFEW/Train")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise EmotionError(f"--set {name}: {root} is not a folder")
    skipped, excluded = Issues(), Issues()
    if (root / "FER2013Test" / "label.csv").is_file():
        source = read_ferplus(argparse.Namespace(data_dir=str(root), label_mode="majority"))
        return name, source.splits["test"], source.skipped["test"]
    records = _read_classes(root, "validation", False, None, skipped, excluded)
    if not records:
        raise EmotionError(f"--set {name}: no images in class folders under {root} (expected DIR/<class name>/*.jpg)")
    return name, records, skipped


def faces_of(records: list[Record], image_size: int, skipped: Issues) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, S, S, 3) faces as the training cache would hold them, and their labels; unreadable files counted."""
    pixels, labels = [], []
    for record in records:
        try:
            data, _, _ = prepare_image(record, image_size, margin=0.0)
        except SkipImage as reason:
            skipped.add(str(reason), record.path)
            continue
        pixels.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        labels.append(record.label)
    return np.stack(pixels), np.asarray(labels, np.int64)


@torch.no_grad()
def probabilities(model, transform: EvalTransform, pixels: np.ndarray) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(pixels), BATCH):
        batch = {"pixels": torch.from_numpy(pixels[start:start + BATCH])}
        out.append(model(transform(batch)).float().softmax(dim=1).numpy())
    return np.concatenate(out)


def score(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy (mean recall over the classes the set has) and, per class, recall and shares."""
    present = sorted(set(labels.tolist()))
    per_class = {}
    for i, name in enumerate(class_names):
        mask = labels == i
        per_class[name] = {"support": int(mask.sum()), "true_share": float(mask.mean()),
                           "predicted_share": float((predicted == i).mean()),
                           "recall": float((predicted[mask] == i).mean()) if mask.any() else None}
    return {"faces": int(len(labels)), "accuracy": float((labels == predicted).mean()),
            "balanced_accuracy": float(np.mean([per_class[class_names[i]]["recall"] for i in present])),
            "per_class": per_class}


def run(model_dir: str, sets: list[str], grey: bool | None = None) -> dict:
    model = load_model(model_dir)
    colour = model.input_colour if grey is None else ("grey" if grey else "rgb")
    transform = EvalTransform(model.mean, model.std, colour)
    class_names = model.config["class_names"]
    result = {"model": str(model_dir), "input_colour": colour, "model_input_colour": model.input_colour,
              "date": time.strftime("%Y-%m-%d"), "sets": {}}
    for spec in sets:
        name, records, skipped = read_set(spec)
        for record in records:  # the class ids of the reader are canonical; a 7-class model has no contempt
            if record.label >= len(class_names):
                raise EmotionError(f"--set {name}: class {CLASS_NAMES[record.label]} is not one of the model's classes")
        pixels, labels = faces_of(records, model.image_size, skipped)
        predicted = probabilities(model, transform, pixels).argmax(axis=1)
        result["sets"][name] = {"root": spec.partition("=")[2], **score(labels, predicted, class_names),
                                "skipped": skipped.to_dict()}
    return result


def markdown(result: dict) -> str:
    lines = [f"model `{result['model']}`, faces shown {result['input_colour']} (the model's rule: {result['model_input_colour']})",
             "", "| set | faces | accuracy | balanced accuracy | called neutral (true share) |", "|---|---:|---:|---:|---:|"]
    for name, s in result["sets"].items():
        neutral = s["per_class"]["neutral"]
        lines.append(f"| {name} | {s['faces']} | {100 * s['accuracy']:.1f}% | {100 * s['balanced_accuracy']:.1f}% | "
                     f"{100 * neutral['predicted_share']:.1f}% ({100 * neutral['true_share']:.1f}%) |")
    for name, s in result["sets"].items():
        lines += ["", f"{name}: per class", "", "| class | true share | predicted share | recall |", "|---|---:|---:|---:|"]
        for cls, row in s["per_class"].items():
            recall = "-" if row["recall"] is None else f"{100 * row['recall']:.1f}%"
            lines.append(f"| {cls} | {100 * row['true_share']:.1f}% | {100 * row['predicted_share']:.1f}% | {recall} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a saved model folder (best_model/)")
    p.add_argument("--set", action="append", required=True, metavar="NAME=DIR",
                   help="a folder per class, or a FER+ root (its test split); repeat for more sets")
    p.add_argument("--grey", action=argparse.BooleanOptionalAction, default=None,
                   help="show the faces grey (--grey) or in colour (--no-grey) whatever the model's rule says")
    p.add_argument("--output", default=None, help="JSON path (default: results/cross_dataset/<run>-<colour>.json)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.model, args.set, args.grey)
    print(markdown(result))
    run_name = Path(args.model).resolve().parent.name
    output = Path(args.output or Path("results") / "cross_dataset" / f"{run_name}-{result['input_colour']}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Argument parsing for the console scripts and the top-level scripts (which call these same functions)."""
from __future__ import annotations

import argparse
from pathlib import Path

from emotion.config import DATASETS, TrainConfig, add_config_arguments, config_from_args
from emotion.errors import cli_main


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_accelerate.py",
        description="Train the facial-expression model (backbone -> dual attention -> Bi-LSTM) with Accelerate. "
                    "Run under `accelerate launch [--config_file accelerate_configs/X.yaml]` for GPUs, several "
                    "processes or mixed precision. Defaults <- --preset <- explicit flags.",
    )
    add_config_arguments(parser)
    return parser


@cli_main
def train_main(argv: list[str] | None = None) -> int:
    from emotion.training import train

    config = config_from_args(train_parser().parse_args(argv))
    train(config)
    return 0


def eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eval_accelerate.py",
        description="Evaluate a saved model (a best_model/ folder) on a data split: report.json, report.md, confusion_matrix.png.",
    )
    parser.add_argument("--model", required=True, help="saved model folder (config.json + model.safetensors), e.g. results/RUN/best_model")
    parser.add_argument("--dataset", choices=DATASETS, default=None, help="data source (default: the one the model was trained on)")
    parser.add_argument("--data-dir", default=None, help="root of a real data set")
    parser.add_argument("--split", default="validation", choices=("train", "validation", "val"), help="which split to evaluate")
    parser.add_argument("--output-dir", default=None, help="where the report goes (default: <model>/../eval)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size per process")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the run's)")
    parser.add_argument("--tta", choices=("none", "hflip"), default="none", help="test-time augmentation: average with the mirrored image")
    parser.add_argument("--save-predictions", action="store_true", help="also write predictions.csv (id, true, predicted, probabilities)")
    return parser


@cli_main
def eval_main(argv: list[str] | None = None) -> int:
    from emotion.evaluation import evaluate_saved_model

    args = eval_parser().parse_args(argv)
    evaluate_saved_model(
        model_dir=Path(args.model), dataset=args.dataset, data_dir=args.data_dir,
        split="validation" if args.split == "val" else args.split,
        output_dir=Path(args.output_dir) if args.output_dir else None, batch_size=args.batch_size,
        num_workers=args.num_workers, tta=None if args.tta == "none" else args.tta, save_predictions=args.save_predictions,
    )
    return 0


def demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webcam_demo.py",
        description="Live facial-expression demo with attention heatmaps and facial-region explanations. "
                    "Keys: q quits, a toggles the attention heatmap.",
    )
    parser.add_argument("--source", default="0", help="camera index (0), a video file, an image file or a folder of images")
    parser.add_argument("--model", required=True, help="saved model folder (config.json + model.safetensors), e.g. results/RUN/best_model")
    parser.add_argument("--output", default=None, help="annotated video (.mp4/.avi) for camera/video sources, a folder for images")
    parser.add_argument("--json", default=None, help="JSON Lines file: one record per face per frame (box, label, probabilities, explanation)")
    parser.add_argument("--no-display", dest="display", action="store_false", help="headless: do not open a window")
    parser.add_argument("--detector-model", default=None, help="OpenCV YuNet face detector .onnx (default: the Haar cascade)")
    parser.add_argument("--detect-every", type=int, default=3, help="run the face detector every N frames, track in between")
    parser.add_argument("--smoothing", type=float, default=0.5, help="weight of the newest frame in the smoothed probabilities (1 = none)")
    parser.add_argument("--no-attention", dest="attention", action="store_false", help="start with the attention heatmap off")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    return parser


@cli_main
def demo_main(argv: list[str] | None = None) -> int:
    from emotion.demo import run

    args = demo_parser().parse_args(argv)
    stats = run(args.source, args.model, output=args.output, json_path=args.json, display=args.display,
                detector_model=args.detector_model, detect_every=args.detect_every, show_attention=args.attention,
                smoothing=args.smoothing, max_frames=args.max_frames)
    print(f"{stats.frames} frames, {stats.faces} faces, {stats.fps:.1f} FPS (detect + classify + overlay)"
          + (f", annotated output in {args.output}" if args.output else "") + (f", records in {args.json}" if args.json else ""))
    return 0

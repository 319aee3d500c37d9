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


def prepare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emotion-prepare",
        description="Decode, crop and resize a real data set once (in parallel) into the Arrow cache training reads. "
                    "Pass the same --preset / --image-size / data flags you will train with: the cache is keyed by them.",
    )
    add_config_arguments(parser)
    return parser


@cli_main
def prepare_main(argv: list[str] | None = None) -> int:
    from emotion.data import load_splits

    load_splits(config_from_args(prepare_parser().parse_args(argv)))
    return 0

"""Argument parsing for the console scripts and the top-level scripts (which call these same functions)."""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from emotion.config import (DATA_FIELDS, DATASETS, DEFAULT_CACHE_DIR, PRESETS, RANGES, REAL_DATA_OVERRIDES, Range, TrainConfig,
                            add_config_arguments, check_inputs, config_from_args, number, show_value)
from emotion.errors import EmotionError, cli_main
from emotion.explain import EXPLAIN_BY


class Parser(argparse.ArgumentParser):
    """argparse that refuses a bad flag in one line naming it (argparse prints the whole usage first), exit 2."""

    def error(self, message: str):
        raise EmotionError(f"{message} (see {self.prog} --help)")


def add_number(parser: argparse.ArgumentParser, flag: str, valid: Range, default, help: str) -> None:
    """A numeric flag checked by its range as it is parsed; the range shows in --help."""
    shown = "" if default is None or "default" in help else f"; default: {default}"
    text, _, note = help.rpartition(" (") if help.endswith(")") else (help, "", "")
    note = f"; {note[:-1]}" if note else ""  # the help's own parenthesis joins the range's: one pair, range first
    parser.add_argument(flag, type=valid, default=default, help=f"{text} ({valid.describe()}{shown}{note})")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default, printed once: argparse's value, unless the help words it already or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {show_value(action.default)})"


def program_name(console: str, script: str | None = None) -> str:
    """The name the user typed, for the usage line: `emotion-train`, `train_accelerate.py` or `python -m emotion.X`."""
    invoked = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path(console)
    if invoked.stem == console or invoked.name == script:
        return invoked.name
    if invoked.suffix == ".py" and invoked.parent.name == "emotion":
        return f"python -m emotion.{invoked.stem}"
    return console


def parser_for(console: str, script: str | None = None, description: str = "", **kwargs) -> argparse.ArgumentParser:
    return Parser(prog=program_name(console, script), description=textwrap.fill(description, 100),
                                   formatter_class=HelpFormatter, **kwargs)


def train_parser() -> argparse.ArgumentParser:
    parser = parser_for(
        "emotion-train", "train_accelerate.py",
        description="Train the facial-expression model (backbone -> dual attention -> Bi-LSTM) with Accelerate. "
                    "Run under `accelerate launch [--config_file accelerate_configs/X.yaml]` for GPUs, several "
                    "processes or mixed precision. Settings: the defaults below <- the --preset (table at the end) "
                    "<- explicit flags.",
        epilog=presets_help(),
    )
    add_config_arguments(parser)
    return parser


def presets_help(only: tuple[str, ...] | None = None) -> str:
    """A table of the values each preset sets (and, on real data, sets instead; `only`: these fields): ends `--help`."""
    columns = {}
    for name, values in PRESETS.items():
        columns[name] = values
        if name in REAL_DATA_OVERRIDES:
            columns[f"{name} (real data)"] = {**values, **REAL_DATA_OVERRIDES[name]}
    keys = [f.name for f in TrainConfig.__dataclass_fields__.values()
            if any(f.name in values for values in columns.values()) and (only is None or f.name in only)]
    def preset_value(values: dict, key: str) -> str:
        schedule = values.get("lr_schedule", TrainConfig.lr_schedule)
        unused = key in ("lr_patience", "lr_factor") and schedule != "plateau"
        return "unused" if unused else show_value(values.get(key, getattr(TrainConfig, key)))

    rows = [["flag", *columns]] + [[f"--{k.replace('_', '-')}", *(preset_value(v, k) for v in columns.values())] for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([
        "presets: what each sets (explicit flags win; a flag a preset leaves alone keeps the default above). Without",
        "--preset: cpu for the synthetic set or a machine without a GPU, b4 for real data on a GPU. The cpu preset on a",
        "real data set (any --dataset but synthetic) sets the cpu (real data) column.", "", *table])


@cli_main
def train_main(argv: list[str] | None = None) -> int:
    from emotion.training import train  # timm, datasets, evaluate: ~3 s of import, paid by training alone

    config = config_from_args(train_parser().parse_args(argv), choose=True)
    check_inputs(config)
    train(config)
    return 0


def eval_parser() -> argparse.ArgumentParser:
    parser = parser_for(
        "emotion-eval", "eval_accelerate.py",
        description="Evaluate a saved model (a best_model/ folder) on a data split: report.json, report.md, confusion_matrix.png.",
    )
    parser.add_argument("--model", required=True, help="saved model folder (config.json + model.safetensors), e.g. results/RUN/best_model")
    parser.add_argument("--dataset", choices=DATASETS, default=None, help="data source (default: the one the model was trained on)")
    parser.add_argument("--data-dir", default=None, help="root of a real data set (default: the one the model was trained on)")
    parser.add_argument("--split", default="validation", choices=("train", "validation", "val", "test"),
                        help="which split to evaluate; test: the held-apart test split of sets that have one (FER+, a "
                             "folder-per-class set with a test/ folder)")
    parser.add_argument("--output-dir", default=None, help="where the report goes (default: <model>/../eval for the "
                                                             "validation split, <model>/../eval-<split> for another)")
    add_number(parser, "--batch-size", Range(1, 65536), 64, "batch size per process")
    add_number(parser, "--num-workers", Range(0, 256), None, "DataLoader workers (0 = the main process; default: the run's)")
    parser.add_argument("--tta", choices=("none", "hflip"), default="none", help="test-time augmentation: hflip averages each face's prediction with its mirror image's")
    parser.add_argument("--save-predictions", action=argparse.BooleanOptionalAction, default=False, help="also write predictions.csv (id, true, predicted, probabilities)")
    parser.add_argument("--detect-faces", action=argparse.BooleanOptionalAction, default=None,
                        help="crop the largest face of each photo of a folder set (imagefolder, rafdb) as training "
                             "with --detect-faces did (default: what the run used)")
    return parser


@cli_main
def eval_main(argv: list[str] | None = None) -> int:
    from emotion.evaluation import evaluate_saved_model  # timm, datasets, evaluate: ~2 s of import, paid by evaluation alone

    args = eval_parser().parse_args(argv)
    evaluate_saved_model(
        model_dir=Path(args.model), dataset=args.dataset, data_dir=args.data_dir,
        split="validation" if args.split == "val" else args.split,
        output_dir=Path(args.output_dir) if args.output_dir else None, batch_size=args.batch_size,
        num_workers=args.num_workers, tta=None if args.tta == "none" else args.tta, save_predictions=args.save_predictions,
        detect_faces=args.detect_faces,
    )
    return 0


def prepare_parser() -> argparse.ArgumentParser:
    parser = parser_for(
        "emotion-prepare",
        description="Decode, crop and resize a data set once (in parallel) into the Arrow cache training reads. "
                    "Pass the same --preset / --image-size / data flags you will train with: the cache is keyed by them.",
    )
    add_config_arguments(parser, only=DATA_FIELDS)
    parser.epilog = presets_help(only=DATA_FIELDS)
    return parser


@cli_main
def prepare_main(argv: list[str] | None = None) -> int:
    from emotion.data import load_splits  # datasets: 0.4 s of import, paid by preparing alone

    config = config_from_args(prepare_parser().parse_args(argv), choose=True)
    check_inputs(config)
    load_splits(config)
    return 0


def _export_module():
    """emotion.export, imported by the scripts that export or push a model."""
    from emotion import export  # timm: 1.5 s of import, paid by emotion-export and emotion-push alone

    return export


def _bench_module():
    """emotion.bench, imported by emotion-bench."""
    from emotion import bench  # timm and datasets: ~2 s of import, paid by emotion-bench alone

    return bench


def export_parser() -> argparse.ArgumentParser:
    export = _export_module()
    parser = parser_for(
        "emotion-export",
        description="Export a saved model to ONNX (logits + attention map, dynamic batch), check it against PyTorch "
                    "with ONNX Runtime, and write the model card.",
    )
    parser.add_argument("--model", required=True, help="saved model folder (config.json + model.safetensors), e.g. results/RUN/best_model")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format")
    add_number(parser, "--opset", Range(export.OPSET_MIN, export.OPSET_MAX), export.OPSET, "ONNX opset version")
    parser.add_argument("--output-dir", default=None, help="where model.onnx, config.json and README.md go (default: the model folder)")
    add_number(parser, "--tolerance", number(0, 1, low_open=True), export.TOLERANCE, "largest max |ONNX Runtime - PyTorch| accepted in fp32")
    return parser


def bench_parser() -> argparse.ArgumentParser:
    bench = _bench_module()
    defaults = bench.BenchSettings()
    parser = parser_for(
        "emotion-bench", "bench.py",
        description="Measure on the current device: training images/s of the full model as a bare step and end to end "
                    "(real loader and augmentation), at fp32 and at training's precision for this machine; timm's plain "
                    "classifier (same backbone, batch, precision); inference images/s and batch-1 latency; data-loader "
                    "images/s (prepared Arrow dataset and raw image folder); peak memory; the CPU's ISA. Prints a "
                    "markdown table, writes JSON.",
    )
    parser.add_argument("--preset", default=defaults.preset, help="model and batch settings from a training preset")
    parser.add_argument("--backbone", default=None, help="timm backbone (default: the preset's)")
    add_number(parser, "--image-size", RANGES["image_size"], None, "input side in pixels (default: the preset's)")
    add_number(parser, "--batch-size", RANGES["batch_size"], None, "training batch size (default: the preset's)")
    parser.add_argument("--precision", choices=("auto", *bench.PRECISIONS), default=defaults.precision,
                        help="autocast precision beside fp32: auto (training's choice for this machine) | fp32 | bf16 | fp16 (CUDA)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=defaults.channels_last,
                        help="channels-last memory format beside fp32 NCHW (the training flag of the same name; default: on, except on Apple GPUs)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=defaults.compile, help="torch.compile both models (warm-up steps absorb the compile)")
    add_number(parser, "--steps", Range(1, 10**6), defaults.steps, "steps per timed window")
    add_number(parser, "--warmup", Range(0, 10**6), defaults.warmup, "untimed steps first")
    add_number(parser, "--repeats", Range(1, 10**4), defaults.repeats, "timed windows; the fastest counts")
    add_number(parser, "--latency-runs", Range(1, 10**6), defaults.latency_runs, "batch-1 forwards; the median counts")
    parser.add_argument("--data-dir", default=None, help="a prepared dataset directory (datasets save_to_disk; e.g. ~/.cache/emotion/prepared/ferplus-KEY) for the end-to-end step and the loader test, with the preset's real-data settings (default: synthetic faces)")
    add_number(parser, "--loader-samples", Range(1, 10**7), defaults.loader_samples, "images per loader pass")
    add_number(parser, "--num-workers", RANGES["num_workers"], None, "DataLoader workers (default: the preset's)")
    add_number(parser, "--threads", Range(1, 1024), None,
               "CPU threads for torch (default: one per core; 1 is far faster on a machine shared with other jobs)")
    parser.add_argument("--cache-dir", default=None, help=f"where Arrow caches live, as in training (default: {DEFAULT_CACHE_DIR})")
    parser.add_argument("--output", default=None, help="JSON path (default: results/bench/<device>-<preset>-<precision>.json)")
    return parser


@cli_main
def export_main(argv: list[str] | None = None) -> int:
    from emotion.card import current_command  # huggingface_hub's card classes: 0.05 s of import, paid by emotion-export alone

    args = export_parser().parse_args(argv)
    command = current_command(["emotion-export", *argv] if argv is not None else None)
    report = _export_module().export_onnx(Path(args.model), Path(args.output_dir) if args.output_dir else None,
                                          opset=args.opset, tolerance=args.tolerance, command=command)
    where = Path(args.output_dir or args.model) / report["file"]
    print(f"wrote {where} (opset {report['opset']}); ONNX Runtime vs PyTorch max |diff| {report['max_abs_diff']:.2e} "
          f"<= {report['tolerance']:.0e} on batches {report['batches']}")
    return 0


def push_parser() -> argparse.ArgumentParser:
    parser = parser_for("emotion-push", description="Upload a saved model folder (weights, config, "
                                     "card, ONNX if exported) to a Hugging Face Hub model repo.")
    parser.add_argument("--model", required=True, help="saved model or export folder, e.g. results/RUN/best_model")
    parser.add_argument("--repo-id", required=True, help="Hub repo, e.g. USER/emotion-b4-affectnet (created if missing)")
    parser.add_argument("--private", action=argparse.BooleanOptionalAction, default=False, help="create the repo private")
    parser.add_argument("--token", default=None, help="Hub token (default: `hf auth login` / HF_TOKEN)")
    return parser


@cli_main
def push_main(argv: list[str] | None = None) -> int:
    args = push_parser().parse_args(argv)
    url, files = _export_module().push_to_hub(Path(args.model), args.repo_id, private=args.private, token=args.token)
    print(f"uploaded {', '.join(files)} to {args.repo_id}: {url}")
    return 0


def app_parser() -> argparse.ArgumentParser:
    parser = parser_for("emotion-app", description="Gradio page: photo, webcam and batch tabs with "
                                     "boxes, probabilities, attention heatmaps and explanations.")
    parser.add_argument("--model", default=None, help="saved model folder (results/RUN/best_model) or an exported model.onnx (required; without it the command says how to make one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for other machines and Spaces: "
                                                               "add --auth, or anyone who reaches it can use the model)")
    parser.add_argument("--auth", default=None, metavar="USER:PASS",
                        help="ask for this login before the page opens (or set EMOTION_APP_AUTH, which others cannot read "
                             "from the process list)")
    add_number(parser, "--port", Range(1, 65535), 7860, "port to serve on")
    parser.add_argument("--share", action=argparse.BooleanOptionalAction, default=False, help="also open a temporary public gradio.live link")
    parser.add_argument("--detector-model", default=None, help="OpenCV YuNet face detector .onnx (default: the Haar cascade)")
    return parser


@cli_main
def app_main(argv: list[str] | None = None) -> int:
    args = app_parser().parse_args(argv)
    from emotion.app import NO_MODEL, launch  # the face pipeline (cv2, onnxruntime): 0.1 s of import, paid by emotion-app alone

    if not args.model:
        raise EmotionError(NO_MODEL)
    launch(args.model, host=args.host, port=args.port, share=args.share, detector_model=args.detector_model, auth=args.auth)
    return 0


def demo_parser() -> argparse.ArgumentParser:
    parser = parser_for(
        "emotion-demo", "webcam_demo.py",
        description="Live facial-expression demo with attention heatmaps and facial-region explanations. "
                    "Keys: q quits, a toggles the attention heatmap.",
    )
    parser.add_argument("--source", default="0", help="camera index, a video file, an image file or a folder of images")
    parser.add_argument("--model", required=True, help="saved model folder (config.json + model.safetensors), e.g. results/RUN/best_model, or an exported model.onnx")
    parser.add_argument("--output", default=None, help="annotated video (.mp4/.avi) for camera and video sources; for photos a folder of PNGs, or for one "
                             "photo an image file (annotated.png) (default: none)")
    parser.add_argument("--json", default=None, help="JSON Lines file: one record per face per frame (box, label, probabilities, explanation) (default: none)")
    parser.add_argument("--display", action=argparse.BooleanOptionalAction, default=True,
                        help="show the annotated frames in a window; --no-display runs headless")
    parser.add_argument("--detector-model", default=None, help="OpenCV YuNet face detector .onnx (default: the Haar cascade)")
    add_number(parser, "--detect-every", Range(1, 10**6), 3, "run the face detector every N frames, track in between")
    parser.add_argument("--background-detection", action=argparse.BooleanOptionalAction, default=None,
                        help="run the face detector on its own thread and core, off the frame loop "
                             "(default: on for a camera, off for files, whose output then repeats exactly)")
    add_number(parser, "--smoothing", number(0, 1, low_open=True), 0.5, "weight of the newest frame in the smoothed probabilities (1 = no smoothing)")
    parser.add_argument("--heatmap", action=argparse.BooleanOptionalAction, default=True,
                        help="draw the spatial-attention heatmap on each face (the `a` key toggles it)")
    parser.add_argument("--explain-by", choices=EXPLAIN_BY, default="occlusion",
                        help="occlusion: the regions whose hiding lowers the predicted class (6 extra model passes per "
                             "face) | attention: the attention map's lift (no extra pass, but only as faithful as "
                             "training made the map; docs/learning.md)")
    add_number(parser, "--max-frames", Range(1, 10**9), None, "stop after N frames (default: the end of the source)")
    parser.add_argument("--boxes", default=None, metavar="FILE.csv",
                        help="face boxes from another detector instead of running one: a CSV with columns file (a "
                             "folder's photo names) or frame (a video's frame numbers, from 0), x, y, w, h")
    parser.add_argument("--frames-csv", default=None, metavar="FILE.csv",
                        help="one row per face per frame: frame, source, time, face_id, x, y, w, h, label, confidence "
                             "and a probability per class")
    parser.add_argument("--summary", default=None, metavar="PATH",
                        help="per face id: frames seen, dominant expression, share of frames per class; written as "
                             "PATH.json and PATH.csv (for a folder, the JSON also counts photos without a face and "
                             "unreadable files)")
    return parser


@cli_main
def demo_main(argv: list[str] | None = None) -> int:
    from emotion.demo import DemoOptions, run  # the face pipeline (cv2, onnxruntime): 0.1 s of import, paid by the demo alone

    args = demo_parser().parse_args(argv)
    stats = run(args.source, DemoOptions(
        args.model, output=args.output, json_path=args.json, display=args.display, detector_model=args.detector_model,
        detect_every=args.detect_every, show_attention=args.heatmap, smoothing=args.smoothing, max_frames=args.max_frames,
        background_detection=args.background_detection, boxes_path=args.boxes, frames_csv=args.frames_csv,
        summary_path=args.summary, explain_by=args.explain_by))
    files = (f" (photos without a face: {len(stats.no_face)}, unreadable files: {len(stats.unreadable)}, over the pixel "
             f"limit: {len(stats.too_large)})" if stats.no_face or stats.unreadable or stats.too_large else "")
    print(f"{stats.frames} frames, {stats.faces} faces{files}, {stats.fps:.1f} FPS (detect + classify + overlay)"
          + (f", annotated output in {args.output}" if args.output else "") + (f", records in {args.json}" if args.json else "")
          + (f", per-frame rows in {args.frames_csv}" if args.frames_csv else "")
          + (f", summary in {Path(args.summary).with_suffix('.json')} and .csv" if args.summary else ""))
    return 0


@cli_main
def bench_main(argv: list[str] | None = None) -> int:
    bench = _bench_module()
    result = bench.run_benchmark(bench.BenchSettings(**vars(bench_parser().parse_args(argv))))
    print(bench.markdown_table(result))
    print(f"\nJSON: {result['output']}")
    return 0

"""Demo speed and explanation agreement.

    python benchmarks/demo_bench.py fps --model results/RUN/best_model      # or --preset b4 (random weights)
    python benchmarks/demo_bench.py agreement --model results/RUN/best_model
    python benchmarks/demo_bench.py corners --model results/RUN/best_model --split test   # real faces: attention on a corner?
    python benchmarks/demo_bench.py regions --model results/RUN/best_model --split test   # real faces: what occlusion names

fps: end-to-end frames per second (detect every --detect-every frames + crop + preprocess + model + explain + track +
overlay) on 640x480 frames of skimage's astronaut photo, and the share the pipeline adds on top of the model.
--background-detection runs the detector on its own thread, as the live demo does for a camera (give the model
--threads 1 on a 2-core machine); its time is then reported apart, as it is off the frame loop.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from emotion.errors import cli_main
from emotion.explain import EXPLAIN_BY


def fps(args) -> dict:
    import torch

    from emotion.config import PRESETS
    from emotion.faces import BackgroundDetector, HaarDetector, Predictor, TorchRunner, process_frame
    from emotion.model import EmotionNet
    import skimage.data

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    if args.model:
        runner = TorchRunner.from_dir(args.model)
    else:
        keys = ("backbone", "image_size", "output_stride", "proj_dim", "lstm_hidden")
        runner = TorchRunner(EmotionNet(**{k: PRESETS[args.preset][k] for k in keys}))
    predictor = Predictor(runner, HaarDetector(), explain_by=args.explain_by)
    base = cv2.resize(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR), (480, 480))
    frame = cv2.copyMakeBorder(base, 0, 0, 80, 80, cv2.BORDER_REPLICATE)  # 640 x 480
    tracker = predictor.new_tracker()
    background = BackgroundDetector(predictor.detector) if args.background_detection else None
    for i in range(args.warmup):
        process_frame(predictor, tracker, frame.copy(), detect=i % args.detect_every == 0, background=background)
    predictor.timings.clear()
    if background:
        background.seconds = 0.0
    faces, total = 0, 0.0
    cpu_start = time.process_time()  # CPU seconds of every thread (the background detector's too)
    for i in range(args.frames):
        fresh = frame.copy()  # a camera hands over a new buffer every frame, which the demo draws on
        start = time.perf_counter()
        faces += len(process_frame(predictor, tracker, fresh, detect=i % args.detect_every == 0, background=background)[0])
        total += time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    t = dict(predictor.timings)
    if background:
        background.close()
        t["detect (background thread)"] = background.seconds
    return {"source": args.model or f"{args.preset} (random weights)", "frames": args.frames, "threads": args.threads,
            "background_detection": args.background_detection, "detect_every": args.detect_every,
            "faces_per_frame": faces / args.frames, "fps": args.frames / total, "cpu_ms_per_frame": 1000 * cpu / args.frames,
            "model_ms": 1000 * t["model"] / args.frames,
            "per_frame_ms": {k: round(1000 * v / args.frames, 3) for k, v in t.items()},
            "pipeline_overhead_vs_model": (total - t["model"]) / t["model"]}


def agreement(args) -> dict:
    from emotion.agreement import synthetic_agreement
    from emotion.faces import Predictor

    predictor = Predictor.from_model_dir(args.model, explain_by=args.explain_by)
    if not args.neutral_prior:
        predictor.baseline = None  # plain attention lift, as if training had recorded no neutral-face prior
    return synthetic_agreement(predictor, per_class=args.per_class)


def corners(args) -> dict:
    """Does the attention look at faces? Share of faces whose attention peaks on a corner cell of the grid, vs chance."""
    from emotion.evaluation import evaluate_saved_model

    report = evaluate_saved_model(Path(args.model), split=args.split, output_dir=Path(args.output_dir) if args.output_dir else None)
    return {"model": args.model, "dataset": report["dataset"], "split": args.split, "faces": report["num_samples"],
            "accuracy": report["accuracy"], "attention_entropy": report["attention_entropy"],
            "corner_peak_share": report["attention_corner_share"], "corner_peak_chance": report["attention_corner_chance"]}


def regions(args) -> dict:
    """Real faces: per class, how often the top region of a correctly labelled face's explanation is one where the
    class's FACS prototype actions show (chance: that share of the six regions), and which regions top them."""
    from emotion.data import load_splits
    from emotion.evaluation import run_config_for, split_of
    from emotion.agreement import prototype_agreement
    from emotion.faces import Predictor

    predictor = Predictor.from_model_dir(args.model, explain_by=args.explain_by)
    config = run_config_for(Path(args.model))
    config.image_size = predictor.preprocess.image_size
    data = split_of(load_splits(config), args.split, config)
    if args.limit and args.limit < len(data):
        data = data.shuffle(seed=0).select(range(args.limit))
    crops = [np.asarray(image.convert("RGB"))[:, :, ::-1] for image in data["image"]]
    table, tops = prototype_agreement(predictor, crops, list(data["label"]))
    return {"model": args.model, "split": args.split, "faces": len(crops), "explain_by": args.explain_by,
            "prototype_agreement": table, "top_regions": tops}


def parser() -> argparse.ArgumentParser:
    from emotion.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog="demo_bench.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("what", choices=("fps", "agreement", "corners", "regions"),
                        help="fps: demo speed; agreement: explanation vs the synthetic generator; corners: attention on "
                             "corners; regions: on real faces, the regions the explanation names vs the FACS prototypes")
    parser.add_argument("--model", default=None, help="saved model folder (default: none; fps then times --preset)")
    parser.add_argument("--preset", default="b4", help="fps without --model: time this preset's architecture, random weights")
    parser.add_argument("--frames", type=int, default=60, help="fps: timed frames")
    parser.add_argument("--warmup", type=int, default=5, help="fps: untimed frames first")
    parser.add_argument("--detect-every", type=int, default=3, help="fps: run the face detector every N frames")
    parser.add_argument("--threads", type=int, default=2, help="fps: torch CPU threads for the model")
    parser.add_argument("--background-detection", action=argparse.BooleanOptionalAction, default=False,
                        help="fps: detector on its own thread (the live demo's camera mode)")
    parser.add_argument("--per-class", type=int, default=25, help="agreement: synthetic faces per class")
    parser.add_argument("--explain-by", choices=EXPLAIN_BY, default="occlusion",
                        help="fps, agreement, regions: region weights from occlusion (the default, 6 extra model passes per face) "
                             "or from the attention map's lift")
    parser.add_argument("--neutral-prior", action=argparse.BooleanOptionalAction, default=True,
                        help="agreement: read attention lift over the model's neutral-face prior; --no-neutral-prior: "
                             "plain lift over uniform attention")
    parser.add_argument("--split", default="test", help="corners, regions: the split of the model's data set to read")
    parser.add_argument("--limit", type=int, default=0, help="regions: at most this many faces, drawn at random (0 = all)")
    parser.add_argument("--output-dir", default=None, help="corners: where the evaluation report goes (default: beside the run)")
    return parser


@cli_main
def main() -> None:
    args = parser().parse_args()
    print(json.dumps({"fps": fps, "agreement": agreement, "corners": corners, "regions": regions}[args.what](args), indent=2))


if __name__ == "__main__":
    raise SystemExit(main())

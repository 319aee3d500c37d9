"""Demo speed and explanation agreement.

    python benchmarks/demo_bench.py fps --model results/RUN/best_model      # or --preset b4 (random weights)
    python benchmarks/demo_bench.py agreement --model results/RUN/best_model

fps: end-to-end frames per second (detect every --detect-every frames + preprocess + model + explain + track +
overlay) on 640x480 frames of skimage's astronaut photo, and the share the pipeline adds on top of the model.
"""
from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np


def fps(args) -> dict:
    import torch

    from emotion.config import PRESETS
    from emotion.demo import FaceTracker, Predictor, TorchRunner, process_frame
    from emotion.model import EmotionNet
    import skimage.data

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    if args.model:
        runner = TorchRunner.from_dir(args.model)
    else:
        keys = ("backbone", "image_size", "output_stride", "proj_dim", "lstm_hidden")
        runner = TorchRunner(EmotionNet(**{k: PRESETS[args.preset][k] for k in keys}))
    predictor = Predictor(runner)
    base = cv2.resize(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR), (480, 480))
    frame = cv2.copyMakeBorder(base, 0, 0, 80, 80, cv2.BORDER_REPLICATE)  # 640 x 480
    tracker = FaceTracker()
    for i in range(args.warmup):
        process_frame(predictor, tracker, frame, detect=i % args.detect_every == 0)
    predictor.timings.clear()
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(args.frames):
        process_frame(predictor, tracker, frame, detect=i % args.detect_every == 0)
    total = time.perf_counter() - start
    cpu = time.process_time() - cpu_start  # CPU seconds: less sensitive than wall time to other jobs on the machine
    t = dict(predictor.timings)
    return {"source": args.model or f"{args.preset} (random weights)", "frames": args.frames, "threads": args.threads,
            "fps": args.frames / total, "cpu_ms_per_frame": 1000 * cpu / args.frames, "model_ms": 1000 * t["model"] / args.frames,
            "per_frame_ms": {k: round(1000 * v / args.frames, 2) for k, v in t.items()},
            "pipeline_overhead_vs_model": (total - t["model"]) / t["model"]}


def agreement(args) -> dict:
    from emotion.demo import Predictor, synthetic_agreement

    return synthetic_agreement(Predictor.from_model_dir(args.model), per_class=args.per_class)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("fps", "agreement"))
    parser.add_argument("--model", default=None, help="saved model folder")
    parser.add_argument("--preset", default="b4", help="without --model: time this preset's architecture, random weights")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--detect-every", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=25)
    args = parser.parse_args()
    print(json.dumps(fps(args) if args.what == "fps" else agreement(args), indent=2))


if __name__ == "__main__":
    main()

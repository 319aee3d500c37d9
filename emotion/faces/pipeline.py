"""One frame through the face pipeline: detect (or follow), classify, smooth and explain, draw."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from emotion.faces.detect import BackgroundDetector, Box
from emotion.faces.overlay import draw_overlay
from emotion.faces.predict import FaceResult, FaceTracker, Predictor


def process_frame(predictor: Predictor, tracker: FaceTracker, frame: np.ndarray, detect: bool,
                  show_attention: bool = True, fps: float | None = None, background: BackgroundDetector | None = None,
                  boxes: Sequence[Box] | None = None) -> tuple[list[FaceResult], np.ndarray]:
    """One frame through the pipeline: detect (or re-run the faces the last detection confirmed), classify, smooth,
    draw on the frame.

    With `background`, detection runs beside the loop: this frame uses the newest finished detection's boxes, or
    the tracked ones, and `detect` only says whether to start a new detection; with no face tracked there is
    nothing to classify, so the loop waits for the detector. `boxes` (another detector's) replace detection.
    """
    if boxes is not None:
        fresh = list(boxes)
    elif background is not None:
        fresh = background.latest(frame, start=detect or not tracker.boxes(), wait=not tracker.boxes())
    else:
        fresh = predictor.detect(frame) if detect or not tracker.boxes() else None
    faces = predictor.classify(frame, tracker.boxes() if fresh is None else fresh, explained=False)
    start = time.perf_counter()
    faces = tracker.update(faces, detected=fresh is not None)  # smooths, then explains each face once
    predictor.timings["explain + track"] += time.perf_counter() - start
    start = time.perf_counter()
    annotated = draw_overlay(frame, faces, predictor.class_names, show_attention=show_attention, fps=fps, in_place=True)
    predictor.timings["overlay"] += time.perf_counter() - start
    return faces, annotated

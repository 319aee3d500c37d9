"""Live demo: capture -> detect -> track -> classify -> smooth -> overlay / JSON.

Reusable pieces (the Gradio app and the ONNX Runtime path build on these, never on copies):
- detectors: `HaarDetector` (cascade shipped in opencv-python<5), `DnnDetector` (OpenCV YuNet ONNX file),
  `build_detector(model_path)`; each has `detect(image_bgr) -> [(x, y, w, h), ...]`.
- runners: `TorchRunner(model)`; `runner(batch)` takes a preprocessed float32 batch (N, 3, S, S) and returns
  (probabilities (N, C), attention (N, H, W)) as numpy; `runner.config` is the saved model config.
- `Predictor(runner, detector)`: `predict(image_bgr)`, `classify(image_bgr, boxes)`, `classify_crops(crops)`
  -> [`FaceResult`] (box, probabilities, label, confidence, attention, explanation).
- `FaceTracker`: IoU matching + exponential smoothing of probabilities and attention across frames.
- `draw_overlay(frame, faces)`: box, label + confidence, per-class bars, attention heatmap, phrase, FPS.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import cv2
import numpy as np

from emotion.errors import EmotionError
from emotion.explain import MIN_CONFIDENCE, Explanation, baseline_weights, explain

Box = tuple[int, int, int, int]  # x, y, width, height in frame pixels

# A Haar box spans mid-forehead to chin; 12 % more on each side puts brows, eyes, mouth and jaw where the
# canonical crop layout (emotion/explain.py, the synthetic faces) has them.
DEFAULT_MARGIN = 0.12
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


# ------------------------------------------------------------------------------------------------
# Detection
# ------------------------------------------------------------------------------------------------
class FaceDetector(Protocol):
    def detect(self, image: np.ndarray) -> list[Box]: ...


class HaarDetector:
    """OpenCV's frontal-face Haar cascade, run on a downscaled grey frame (full-size frames cost more than the model)."""

    def __init__(self, cascade_path: str | None = None, detect_width: int = 320, scale_factor: float = 1.2,
                 min_neighbors: int = 5, min_face: float = 0.12) -> None:
        path = cascade_path or os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""),
                                            "haarcascade_frontalface_default.xml")
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise EmotionError(f"no Haar cascade at {path!r}: install opencv-python<5 (5.x ships none) "
                               "or give a DNN face model with --detector-model")
        self.detect_width, self.scale_factor, self.min_neighbors, self.min_face = detect_width, scale_factor, min_neighbors, min_face

    def detect(self, image: np.ndarray) -> list[Box]:
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        scale = min(1.0, self.detect_width / grey.shape[1])
        if scale < 1.0:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        side = max(12, int(self.min_face * min(grey.shape)))
        found = self.cascade.detectMultiScale(cv2.equalizeHist(grey), scaleFactor=self.scale_factor,
                                              minNeighbors=self.min_neighbors, minSize=(side, side))
        return [tuple(int(round(v / scale)) for v in box) for box in np.asarray(found).reshape(-1, 4)]


class DnnDetector:
    """OpenCV's YuNet face detector (a `face_detection_yunet_*.onnx` file), for profile and small faces."""

    def __init__(self, model_path: str, score_threshold: float = 0.6) -> None:
        if not Path(model_path).is_file():
            raise EmotionError(f"face detector model {model_path!r} not found: give an OpenCV YuNet .onnx file, "
                               "or leave --detector-model out to use the Haar cascade")
        try:
            self.net = cv2.FaceDetectorYN.create(str(model_path), "", (320, 320), score_threshold)
        except cv2.error as err:
            raise EmotionError(f"cannot load face detector {model_path!r} (needs an OpenCV YuNet .onnx): {err.msg}") from None

    def detect(self, image: np.ndarray) -> list[Box]:
        self.net.setInputSize((image.shape[1], image.shape[0]))
        _, faces = self.net.detect(image)
        return [] if faces is None else [tuple(int(round(v)) for v in face[:4]) for face in faces]


def build_detector(model_path: str | None = None) -> FaceDetector:
    return DnnDetector(model_path) if model_path else HaarDetector()


class BackgroundDetector:
    """A detector on its own thread, so the frame loop never waits for it (OpenCV releases the GIL while it detects).

    Each frame, `latest(frame, start)` returns the boxes of a detection that finished since the last call (None
    when none did) and, when `start` and the detector is idle, hands it this frame. The boxes lag the frame by
    one detection (a Haar pass: ~15 ms); the tracker carries the faces in between. It needs a free core: on two
    cores the model gets one thread (see `run`).
    """

    def __init__(self, detector: FaceDetector) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.detector = detector
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="face-detector")
        self.pending = None
        self.seconds = 0.0  # detector time spent off the frame loop (real CPU time, just not on the critical path)

    def _detect(self, frame: np.ndarray) -> list[Box]:
        start = time.perf_counter()
        boxes = self.detector.detect(frame)
        self.seconds += time.perf_counter() - start
        return boxes

    def latest(self, frame: np.ndarray, start: bool = True, wait: bool = False) -> list[Box] | None:
        """Boxes of a detection finished since the last call (or None); `wait` blocks for one (nothing is tracked)."""
        fresh = None
        if self.pending is not None and (wait or self.pending.done()):
            fresh, self.pending = self.pending.result(), None
        if start and self.pending is None:
            self.pending = self.pool.submit(self._detect, frame.copy())  # the loop draws on its frame meanwhile
            if wait and fresh is None:
                fresh, self.pending = self.pending.result(), None
        return fresh

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def crop_box(box: Box, margin: float = DEFAULT_MARGIN) -> Box:
    """The square crop around a face box, `margin` of its side added on every side."""
    x, y, w, h = box
    side = int(round(max(w, h) * (1 + 2 * margin)))
    return (int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2)), side, side)


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    """Pixels of `box`; parts outside the frame repeat the border (a face at the edge keeps its layout)."""
    x, y, w, h = box
    H, W = image.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box} lies outside the {W}x{H} image")
    return cv2.copyMakeBorder(image[y0:y1, x0:x1], y0 - y, y + h - y1, x0 - x, x + w - x1, cv2.BORDER_REPLICATE)


# ------------------------------------------------------------------------------------------------
# Running the model
# ------------------------------------------------------------------------------------------------
class TorchRunner:
    """PyTorch forward pass: preprocessed batch in, (probabilities, attention) out, both numpy."""

    def __init__(self, model) -> None:
        import torch

        self.torch = torch
        self.model = model.eval()
        self.config = dict(model.config)

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> "TorchRunner":
        from emotion.model import load_model

        return cls(load_model(model_dir))

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            logits, attention = self.model(self.torch.from_numpy(np.ascontiguousarray(batch)), return_attention=True)
            return logits.float().softmax(dim=1).numpy(), attention.float().numpy()


def load_runner(model: str | os.PathLike):
    """A saved model folder runs in PyTorch; an exported `.onnx` file in ONNX Runtime (same call, same config)."""
    if str(model).lower().endswith(".onnx"):
        from emotion.export import OnnxRunner

        return OnnxRunner(Path(model))
    return TorchRunner.from_dir(model)


class Preprocessor:
    """BGR face crops -> the normalised float batch the model was trained on (training's eval transform)."""

    def __init__(self, config: dict) -> None:
        self.image_size = int(config["image_size"])
        self.mean, self.std = config["mean"], config["std"]

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        from emotion.data.transforms import eval_preprocess

        return eval_preprocess([cv2.cvtColor(c, cv2.COLOR_BGR2RGB) for c in crops], self.image_size, self.mean, self.std)


@dataclass
class FaceResult:
    box: Box                   # the detected face, frame pixels
    crop_box: Box              # the square the model saw (box + margin); the attention map covers it
    probabilities: np.ndarray  # (C,), class order of the model config
    label: str
    confidence: float
    attention: np.ndarray      # (H, W), sums to 1
    explanation: Explanation | None  # None from classify(explained=False): the tracker explains the smoothed result
    track_id: int | None = None

    def to_dict(self) -> dict:
        """JSON-ready record (class names as keys)."""
        from emotion.labels import CLASS_NAMES

        return {
            "track_id": self.track_id, "box": [int(v) for v in self.box], "label": self.label,
            "confidence": round(float(self.confidence), 4),
            "probabilities": {n: round(float(p), 4) for n, p in zip(CLASS_NAMES, self.probabilities)},
            "explanation": {"phrase": self.explanation.phrase, "status": self.explanation.status,
                            "top_region": self.explanation.top_region, "actions": self.explanation.actions,
                            "region_weights": {r: round(w, 3) for r, w in self.explanation.region_weights.items()}},
        }


def make_result(box: Box, box_crop: Box, probabilities: np.ndarray, attention: np.ndarray,
                min_confidence: float = MIN_CONFIDENCE, track_id: int | None = None,
                baseline: dict[str, float] | None = None) -> FaceResult:
    why = explain(probabilities, attention, min_confidence=min_confidence, baseline=baseline)
    return FaceResult(box, box_crop, np.asarray(probabilities, np.float32), why.label, why.confidence,
                      np.asarray(attention, np.float32), why, track_id)


class Predictor:
    """Image in, one `FaceResult` per face out. Preprocessing comes from the runner's saved model config, and so
    does the explanations' baseline (the model's attention on neutral faces, when training recorded it)."""

    def __init__(self, runner, detector: FaceDetector | None = None, margin: float = DEFAULT_MARGIN,
                 min_confidence: float = MIN_CONFIDENCE) -> None:
        self.runner = runner
        self.detector = detector if detector is not None else HaarDetector()
        self.preprocess = Preprocessor(runner.config)
        self.baseline = baseline_weights(runner.config.get("attention_prior"))
        self.margin = margin
        self.min_confidence = min_confidence
        self.timings: dict[str, float] = defaultdict(float)  # seconds per stage, summed over calls

    def new_tracker(self, **kwargs) -> "FaceTracker":
        """A tracker whose smoothed results are explained the way this predictor explains them."""
        return FaceTracker(min_confidence=self.min_confidence, baseline=self.baseline, **kwargs)

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, detector_model: str | None = None, **kwargs) -> "Predictor":
        return cls(load_runner(model_dir), build_detector(detector_model), **kwargs)

    def _timed(self, stage: str, func, *args):
        start = time.perf_counter()
        value = func(*args)
        self.timings[stage] += time.perf_counter() - start
        return value

    def detect(self, image: np.ndarray) -> list[Box]:
        return self._timed("detect", self.detector.detect, image)

    def predict(self, image: np.ndarray) -> list[FaceResult]:
        """Detect every face in a BGR image and classify each."""
        return self.classify(image, self.detect(image))

    def classify(self, image: np.ndarray, boxes: Sequence[Box], explained: bool = True) -> list[FaceResult]:
        """Classify given face boxes of a BGR image (each cropped square with the margin)."""
        squares = [crop_box(b, self.margin) for b in boxes]
        return self._run(list(boxes), squares, [crop(image, s) for s in squares], explained)

    def classify_crops(self, crops: Sequence[np.ndarray]) -> list[FaceResult]:
        """Classify BGR images that already are face crops in the canonical layout (e.g. synthetic faces)."""
        boxes = [(0, 0, c.shape[1], c.shape[0]) for c in crops]
        return self._run(boxes, boxes, list(crops))

    def _run(self, boxes: list[Box], squares: list[Box], crops: list[np.ndarray], explained: bool = True) -> list[FaceResult]:
        if not crops:
            return []
        batch = self._timed("preprocess", self.preprocess, crops)
        probabilities, attention = self._timed("model", self.runner, batch)
        if not explained:
            names = self.runner.config["class_names"]
            return [FaceResult(b, s, p, names[int(p.argmax())], float(p.max()), a, None)
                    for b, s, p, a in zip(boxes, squares, probabilities, attention)]
        return self._timed("explain", lambda: [make_result(b, s, p, a, self.min_confidence, baseline=self.baseline)
                                               for b, s, p, a in zip(boxes, squares, probabilities, attention)])


# ------------------------------------------------------------------------------------------------
# Tracking and smoothing
# ------------------------------------------------------------------------------------------------
def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class _Track:
    id: int
    face: FaceResult
    missed: int = 0


@dataclass
class FaceTracker:
    """Greedy IoU matching of faces across frames; probabilities and attention are smoothed exponentially.

    `smoothing` is the weight of the newest frame (1.0 = no smoothing). A track survives `max_missed` frames
    without a matching face.
    """
    iou_threshold: float = 0.3
    smoothing: float = 0.5
    max_missed: int = 5
    min_confidence: float = MIN_CONFIDENCE
    baseline: dict[str, float] | None = None  # explanations' baseline (Predictor.baseline)
    tracks: list[_Track] = field(default_factory=list)
    next_id: int = 1

    def reset(self) -> None:
        self.tracks.clear()

    def boxes(self) -> list[Box]:
        return [t.face.box for t in self.tracks]

    def update(self, faces: Sequence[FaceResult]) -> list[FaceResult]:
        """The smoothed and explained result of each face, in input order, each with its track id."""
        pairs = sorted(((iou(t.face.box, f.box), ti, fi) for ti, t in enumerate(self.tracks) for fi, f in enumerate(faces)),
                       reverse=True)
        matched: dict[int, int] = {}
        used_tracks: set[int] = set()
        for score, ti, fi in pairs:
            if score >= self.iou_threshold and ti not in used_tracks and fi not in matched:
                matched[fi] = ti
                used_tracks.add(ti)
        for ti, track in enumerate(self.tracks):
            if ti not in used_tracks:
                track.missed += 1
        out = []
        for fi, face in enumerate(faces):
            probs, attention = face.probabilities, face.attention
            if fi in matched:
                track = self.tracks[matched[fi]]
                a = self.smoothing
                probs = a * probs + (1 - a) * track.face.probabilities
                if attention.shape == track.face.attention.shape:
                    attention = a * attention + (1 - a) * track.face.attention
                track.missed = 0
            else:
                track = _Track(self.next_id, face)
                self.next_id += 1
                self.tracks.append(track)
            track.face = make_result(face.box, face.crop_box, probs, attention, self.min_confidence, track.id, self.baseline)
            out.append(track.face)
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return out


# ------------------------------------------------------------------------------------------------
# Overlay
# ------------------------------------------------------------------------------------------------
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_JET = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None, :], cv2.COLORMAP_JET)  # (1, 256, 3) lookup table


@lru_cache(maxsize=1024)
def _text_sprite(lines: tuple[str, ...], scale: float, colour: tuple[int, int, int], step: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Rendered text with a dark outline, one line per `step` pixels: (BGR patch, mask, ascent).

    Text is drawn once and copied through its mask thereafter: anti-aliased putText costs ~0.06 ms a call,
    and the overlay draws 11 of them per face, more than a small model's whole budget beyond its forward pass.
    """
    sizes = [cv2.getTextSize(line, _FONT, scale, 3) for line in lines]
    ascent = max(size[0][1] for size in sizes) + 2
    width = max(size[0][0] for size in sizes) + 4
    height = ascent + step * (len(lines) - 1) + max(size[1] for size in sizes) + 2
    patch = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.uint8)
    for i, line in enumerate(lines):
        org = (2, ascent + i * step)
        cv2.putText(patch, line, org, _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)  # dark outline: readable on any background
        cv2.putText(patch, line, org, _FONT, scale, colour, 1, cv2.LINE_AA)
        cv2.putText(mask, line, org, _FONT, scale, 255, 3, cv2.LINE_AA)
    return patch, (mask >= 64).astype(np.uint8), ascent


def _blit(img: np.ndarray, patch: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """Copy the `mask`ed pixels of `patch` into `img` with its top-left corner at (x, y), clipped to the image."""
    H, W = img.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + patch.shape[1], W), min(y + patch.shape[0], H)
    if x1 <= x0 or y1 <= y0:
        return
    if (x0, y0, x1, y1) != (x, y, x + patch.shape[1], y + patch.shape[0]):
        patch, mask = (np.ascontiguousarray(a[y0 - y:y1 - y, x0 - x:x1 - x]) for a in (patch, mask))
    cv2.copyTo(patch, mask, img[y0:y1, x0:x1])


def _text(img: np.ndarray, text: str | Sequence[str], org: tuple[int, int], scale: float, colour=(255, 255, 255),
          step: int = 0) -> None:
    """Text with its first baseline at `org` (as cv2.putText); several lines go `step` pixels apart."""
    lines = (text,) if isinstance(text, str) else tuple(text)
    patch, mask, ascent = _text_sprite(lines, round(scale, 3), tuple(int(c) for c in colour), step)
    _blit(img, patch, mask, org[0] - 2, org[1] - ascent)


def draw_attention(frame: np.ndarray, face: FaceResult, alpha: float = 0.45) -> None:
    """Blend the attention map (JET colours, red = most attended) over the crop the model saw, in place."""
    x, y, w, h = face.crop_box
    H, W = frame.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 <= x0 or y1 <= y0:
        return
    att = (face.attention * (255 / max(float(face.attention.max()), 1e-12))).astype(np.uint8)
    colours = cv2.LUT(cv2.cvtColor(att, cv2.COLOR_GRAY2BGR), _JET)  # JET at grid size, then smoothly enlarged
    heat = cv2.resize(colours, (w, h), interpolation=cv2.INTER_CUBIC)[y0 - y:y1 - y, x0 - x:x1 - x]
    roi = frame[y0:y1, x0:x1]
    cv2.addWeighted(heat, alpha, roi, 1 - alpha, 0, dst=roi)


def draw_overlay(frame: np.ndarray, faces: Sequence[FaceResult], show_attention: bool = True,
                 fps: float | None = None, class_names: Sequence[str] | None = None, in_place: bool = False) -> np.ndarray:
    """An annotated copy of a BGR frame (or the frame itself, `in_place`): per face its box, label + confidence,
    per-class bars and the phrase."""
    from emotion.labels import CLASS_NAMES

    names = class_names or CLASS_NAMES
    out = frame if in_place else frame.copy()
    H, W = out.shape[:2]
    scale = max(0.4, min(0.8, W / 1000))
    line = int(22 * scale / 0.5)
    for face in faces:
        if show_attention:
            draw_attention(out, face)
        x, y, w, h = face.box
        colour = (0, 200, 0) if face.explanation.supported else (0, 165, 255)
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, 2)
        _text(out, f"{face.label} {face.confidence:.0%}", (x, max(line, y - 8)), scale * 1.2, colour)
        bar_x, step = (x + w + 8 if x + w + 8 + 140 < W else max(0, x - 148)), int(line * 0.8)
        for i, p in enumerate(face.probabilities):
            by = y + i * step
            cv2.rectangle(out, (bar_x + 62, by + 2), (bar_x + 62 + int(76 * float(p)), by + int(line * 0.6)), colour, -1)
        _text(out, [name[:8] for name in names], (bar_x, y + int(line * 0.6)), scale * 0.75, step=step)
        # below the box and the bars, which the phrase is often wider than
        _text(out, face.explanation.phrase, (x, min(H - 4, max(y + h, y + len(names) * step) + line)), scale)
    if fps is not None:
        _text(out, f"{fps:.0f} FPS", (8, line), scale * 1.2, (0, 255, 255))
    return out


# ------------------------------------------------------------------------------------------------
# Sources and sinks
# ------------------------------------------------------------------------------------------------
@dataclass
class FrameSource:
    kind: str  # camera | video | images
    fps: float
    frames: Iterator[tuple[str, np.ndarray]]  # (name, BGR frame)


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise EmotionError(f"cannot read image {path}: not an image OpenCV can decode (use jpg/png/bmp/webp)")
    return image


def _capture_frames(capture: cv2.VideoCapture, stem: str) -> Iterator[tuple[str, np.ndarray]]:
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield f"{stem}:{index}", frame
            index += 1
    finally:
        capture.release()


def open_source(source: str) -> FrameSource:
    """A camera index ('0'), a video file, an image file or a folder of images."""
    if source.isdigit():
        previous = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # its camera warnings would bury our one line
        capture = cv2.VideoCapture(int(source))
        cv2.utils.logging.setLogLevel(previous)
        if not capture.isOpened():
            raise EmotionError(f"no camera at index {source}: connect one, or pass --source video.mp4, image.jpg or a folder")
        return FrameSource("camera", capture.get(cv2.CAP_PROP_FPS) or 30.0, _capture_frames(capture, f"camera{source}"))
    path = Path(source)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise EmotionError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return FrameSource("images", 0.0, ((p.name, _read_image(p)) for p in images))
    if not path.is_file():
        raise EmotionError(f"source {source!r} not found: give a camera index (0), a video, an image or a folder")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return FrameSource("images", 0.0, iter([(path.name, _read_image(path))]))
    capture = cv2.VideoCapture(str(path))
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise EmotionError(f"cannot read video {path}: not a video OpenCV can decode (try mp4/avi, or convert with ffmpeg)")
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return FrameSource("video", capture.get(cv2.CAP_PROP_FPS) or 25.0, _capture_frames(capture, path.stem))


def _partial(path: Path) -> Path:
    """Temp name beside `path` keeping its suffix (OpenCV picks the container from it)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


class _VideoSink:
    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self.writer, self.frames = path, fps, None, 0

    def write(self, name: str, frame: np.ndarray) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            self.writer = cv2.VideoWriter(str(_partial(self.path)), fourcc, self.fps, (frame.shape[1], frame.shape[0]))
            if not self.writer.isOpened():
                raise EmotionError(f"cannot write video {self.path}: use an .mp4 or .avi name in a writable folder")
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            os.replace(_partial(self.path), self.path)


class _ImageSink:
    """Annotated photos: one PNG per photo in a folder, or, for a single photo, the image file `--output` names."""

    def __init__(self, output: Path, source: str) -> None:
        self.frames = 0
        if output.suffix.lower() not in IMAGE_SUFFIXES:
            self.folder, self.file_name = output, None
        elif Path(source).is_file():
            self.folder, self.file_name = output.parent, output.name
        else:
            raise EmotionError(f"--output {output} names one image, but {source} holds several photos: "
                               "give a folder (e.g. annotated/)")

    def write(self, name: str, frame: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / (self.file_name or Path(name.replace(":", "_")).stem + ".png")
        if not cv2.imwrite(str(_partial(final)), frame):
            raise EmotionError(f"cannot write {final}: is the folder writable?")
        os.replace(_partial(final), final)
        self.frames += 1

    def close(self) -> None:
        pass


class _JsonLinesSink:
    """One JSON record per face per frame, streamed to a temp file and renamed when the run ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(_partial(path), "w")
        self.records = 0

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.records += 1

    def close(self) -> None:
        self.file.close()
        os.replace(_partial(self.path), self.path)


def _has_display() -> bool:
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------
@dataclass
class RunStats:
    frames: int = 0
    faces: int = 0
    records: int = 0
    seconds: float = 0.0  # detect + preprocess + model + explain + track + overlay, summed over frames
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def process_frame(predictor: Predictor, tracker: FaceTracker, frame: np.ndarray, detect: bool,
                  show_attention: bool = True, fps: float | None = None,
                  background: BackgroundDetector | None = None) -> tuple[list[FaceResult], np.ndarray]:
    """One frame through the pipeline: detect (or reuse the tracked boxes), classify, smooth, draw on the frame.

    With `background`, detection runs beside the loop: this frame uses the newest finished detection's boxes, or
    the tracked ones, and `detect` only says whether to start a new detection; with no face tracked there is
    nothing to classify, so the loop waits for the detector.
    """
    if background is not None:
        fresh = background.latest(frame, start=detect or not tracker.tracks, wait=not tracker.tracks)
        boxes = fresh if fresh is not None else tracker.boxes()
    else:
        boxes = predictor.detect(frame) if detect or not tracker.tracks else tracker.boxes()
    faces = predictor.classify(frame, boxes, explained=False)
    start = time.perf_counter()
    faces = tracker.update(faces)  # smooths, then explains each face once
    predictor.timings["explain + track"] += time.perf_counter() - start
    start = time.perf_counter()
    annotated = draw_overlay(frame, faces, show_attention=show_attention, fps=fps, in_place=True)
    predictor.timings["overlay"] += time.perf_counter() - start
    return faces, annotated


def run(source: str, model_dir: str, output: str | None = None, json_path: str | None = None, display: bool = True,
        detector_model: str | None = None, detect_every: int = 3, show_attention: bool = True,
        smoothing: float = 0.5, max_frames: int | None = None, background_detection: bool | None = None) -> RunStats:
    """The demo: read `source`, annotate every frame, optionally show, save and log it. Keys: q quits, a toggles attention.

    `background_detection` (default: on for a camera, off for files, whose output then repeats exactly) runs the
    face detector on its own thread and core, off the frame loop.
    """
    if display and not _has_display():
        raise EmotionError("no display to show the demo on (DISPLAY is not set): add --no-display, "
                           "with --output and/or --json to keep the results")
    if detect_every < 1:
        raise EmotionError(f"--detect-every must be >= 1, got {detect_every}")
    predictor = Predictor.from_model_dir(model_dir, detector_model)
    frames = open_source(source)
    stream = frames.kind != "images"
    tracker = predictor.new_tracker(smoothing=smoothing if stream else 1.0)
    background = None
    if stream and (frames.kind == "camera" if background_detection is None else background_detection):
        from emotion.runtime import leave_cores_free

        leave_cores_free(1)  # the detector's core
        background = BackgroundDetector(predictor.detector)
    sink = None
    if output and not stream and Path(output).suffix.lower() in VIDEO_SUFFIXES:
        raise EmotionError(f"--output {output} names a video, but {source} is a photo source: give a folder "
                           "(annotated/) or, for one photo, an image file (annotated.png)")
    if output:
        sink = _VideoSink(Path(output), frames.fps) if stream else _ImageSink(Path(output), source)
    log = _JsonLinesSink(Path(json_path)) if json_path else None
    stats = RunStats()
    window = "emotion demo (q quits, a toggles attention)"
    fps = None
    try:
        for index, (name, frame) in enumerate(frames.frames):
            if max_frames is not None and index >= max_frames:
                break
            if not stream:
                tracker.reset()  # separate photos share no faces
            start = time.perf_counter()
            faces, annotated = process_frame(predictor, tracker, frame, detect=index % detect_every == 0,
                                             show_attention=show_attention, fps=fps, background=background)
            elapsed = time.perf_counter() - start
            stats.seconds += elapsed
            fps = 1.0 / elapsed if fps is None else 0.9 * fps + 0.1 / max(elapsed, 1e-6)
            stats.frames += 1
            stats.faces += len(faces)
            if log:
                for face in faces:
                    log.write({"frame": index, "source": name, **face.to_dict()})
            if sink:
                sink.write(name, annotated)
            if display:
                cv2.imshow(window, annotated)
                key = cv2.waitKey(0 if frames.kind == "images" else 1) & 0xFF
                if key == ord("q"):
                    break
                if key == ord("a"):
                    show_attention = not show_attention
    finally:
        if background:
            background.close()
            predictor.timings["detect (background thread)"] += background.seconds
        if sink:
            sink.close()
        if log:
            log.close()
            stats.records = log.records
        if display:
            cv2.destroyAllWindows()
    stats.timings = dict(predictor.timings)
    return stats


def synthetic_agreement(predictor: Predictor, per_class: int = 25, seed: int = 0) -> dict[str, dict[str, float] | None]:
    """Per class, how well the attention points at the regions the synthetic generator changed (explain.agreement_by_class)."""
    from emotion.explain import agreement_by_class
    from emotion.synthetic import render_face

    size = int(predictor.runner.config["image_size"])
    weights, labels, truth = [], [], []
    for label in range(len(predictor.runner.config["class_names"])):
        for i in range(per_class):
            rgb, regions, _ = render_face(label, np.random.default_rng([seed, 99, label, i]), size)
            weights.append(predictor.classify_crops([rgb[:, :, ::-1]])[0].explanation.region_weights)
            labels.append(label)
            truth.append(regions)
    return agreement_by_class(weights, labels, truth)

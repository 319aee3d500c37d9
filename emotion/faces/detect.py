"""Where the faces are: detectors, the background detector, boxes from another detector's CSV, and the crop rule
training and inference share.

Each detector has `detect(image_bgr) -> [(x, y, w, h), ...]`. The crop rule (`crop_region` + `crop_face`) is the one
`emotion.data.prepare` builds the training cache with; the margin travels in the saved model's config.json.
"""
from __future__ import annotations

import csv
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Protocol

import cv2
import numpy as np
from PIL import Image

from emotion.config import TrainConfig
from emotion.errors import EmotionError

Box = tuple[int, int, int, int]  # x, y, width, height in frame pixels
Region = tuple[int, int, int, int]  # x0, y0, x1, y1: a crop inside the image


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
            reason = " ".join(err.msg.split()).split("error: ")[-1]  # OpenCV's text spans lines and names its own source
            raise EmotionError(f"cannot load face detector {model_path!r} (needs an OpenCV YuNet .onnx): {reason}") from None

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
    cores the model gets one thread (the demo does so for a camera).
    """

    def __init__(self, detector: FaceDetector) -> None:
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


# A face box coordinate beyond this lies outside any image under the pixel limit (emotion.faces.images).
MAX_BOX_COORDINATE = 1e6


def coordinates_in_range(values) -> bool:
    """Every box coordinate finite and within MAX_BOX_COORDINATE (abs(nan) <= x is False)."""
    return all(abs(v) <= MAX_BOX_COORDINATE for v in values)


class ListedBoxes:
    """Face boxes from another detector, read from a CSV with a `file` or `frame` column and `x, y, w, h`.

    `boxes(frame_index, name)` gives a frame's boxes: a video's rows by frame number (from 0), a folder's by file name.
    """

    KEYS = ("file", "frame")

    def __init__(self, by_key: Mapping[str, list[Box]], key: str) -> None:
        self.by_key, self.key = dict(by_key), key

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ListedBoxes":
        path = Path(path)
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                return cls._parse(path, csv.DictReader(handle))
        except OSError as err:
            raise EmotionError(f"cannot read boxes file {path}: {err.strerror}; give a CSV with columns file or frame, x, y, w, h") from None
        except UnicodeDecodeError:
            raise EmotionError(f"boxes file {path} is not UTF-8 text: save it as UTF-8 CSV (file or frame, x, y, w, h)") from None
        except csv.Error as err:
            raise EmotionError(f"boxes file {path} is not a usable CSV ({err}): one row per face, columns file or frame, x, y, w, h") from None

    @classmethod
    def _parse(cls, path: Path, rows: csv.DictReader) -> "ListedBoxes":
        columns = [c.strip().lower() for c in rows.fieldnames or []]
        key = next((k for k in cls.KEYS if k in columns), None)
        if key is None or not {"x", "y", "w", "h"} <= set(columns):
            raise EmotionError(f"boxes file {path} has columns {columns}: it needs file (or frame), x, y, w, h")
        rows.fieldnames = columns
        by_key: dict[str, list[Box]] = {}
        for line, row in enumerate(rows, start=2):
            try:
                values = [float(row[c]) for c in ("x", "y", "w", "h")]
                if not coordinates_in_range(values):
                    raise ValueError
                box = tuple(int(round(v)) for v in values)
                name = str(int(row[key])) if key == "frame" else Path(row[key].strip()).name
            except (TypeError, ValueError, AttributeError):
                raise EmotionError(f"boxes file {path}, line {line}: {key}, x, y, w, h must be numbers within "
                                   f"+-{MAX_BOX_COORDINATE:g} (a name for file), got "
                                   f"{[str(row.get(c))[:40] for c in (key, 'x', 'y', 'w', 'h')]}") from None
            if box[2] > 0 and box[3] > 0:
                by_key.setdefault(name, []).append(box)
        return cls(by_key, key)

    def boxes(self, frame_index: int, name: str) -> list[Box]:
        return list(self.by_key.get(str(frame_index) if self.key == "frame" else Path(name).name, []))


# ------------------------------------------------------------------------------------------------
# The crop rule, shared with training's prepared cache
# ------------------------------------------------------------------------------------------------
class NoCrop(ValueError):
    """A face box that gives no crop; the message is the reason (bad_box, box_outside_image)."""


def face_margin(config: Mapping) -> float:
    """The margin a model's crops were made with (its config.json); training's default for models saved before it was kept."""
    margin = config.get("face_margin")
    return float(TrainConfig.face_margin if margin is None else margin)


def face_shift(config: Mapping) -> tuple[float, float]:
    """How far a model's crops sit from the detector's box centre, in box sides (x, y); (0, 0) unless measured."""
    shift = config.get("face_shift") or (0.0, 0.0)
    return float(shift[0]), float(shift[1])


def crop_region(width: int, height: int, box: tuple[float, float, float, float] | None, margin: float,
                shift: tuple[float, float] = (0.0, 0.0)) -> Region:
    """The face crop (x0, y0, x1, y1): a square of the box's longer side grown by `margin` per side, centred on the
    box (moved by `shift` x the longer side) and clipped to the image (so a face at the edge gives a narrower crop);
    no box: the centre square."""
    if box is None:
        side = min(width, height)
        x0, y0 = (width - side) // 2, (height - side) // 2
        return x0, y0, x0 + side, y0 + side
    x, y, w, h = box
    if not all(math.isfinite(v) for v in box) or w <= 0 or h <= 0:
        raise NoCrop("bad_box")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise NoCrop("box_outside_image")
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2 + shift[0] * max(w, h), y + h / 2 + shift[1] * max(w, h)
    wanted = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2))
    region = (max(0, wanted[0]), max(0, wanted[1]), min(width, wanted[2]), min(height, wanted[3]))
    if region[2] - region[0] < 2 or region[3] - region[1] < 2:
        raise NoCrop("box_outside_image")
    return region


def crop_face(image: np.ndarray, region: Region, size: int) -> np.ndarray:
    """The pixels of `region` resized to size x size, as the prepared training cache holds them (PIL bicubic);
    any channel order, since each channel is resized alone."""
    x0, y0, x1, y1 = region
    pixels = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
    return np.asarray(pixels.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0))


# Training faces are upscaled to this side for the detector (Haar needs faces well above its 24-px window).
RULE_DETECT_SIDE = 192
# Context added around each training face before detection: a detector rarely fires on a face that fills the image.
RULE_PAD = 0.25
RULE_SAMPLE = 400
RULE_MIN_FOUND = 0.3  # below this share of faces found, the rule is not measured and the configured margin stays


def estimate_crop_rule(pixels: np.ndarray, detector: FaceDetector, sample: int = RULE_SAMPLE) -> dict | None:
    """The crop rule that frames a detected face as a set of already-cropped training faces is framed.

    The detector runs on up to `sample` training faces (uint8 (N, S, S, 3) RGB, evenly spread, upscaled, edges
    replicated around them). For each face it finds, the training crop is expressed in units of the box: the margin
    ((crop side / box side - 1) / 2) and the shift of the crop's centre from the box's. The medians are the rule the
    face pipeline applies to a detected box; None when it finds too few faces to tell.
    """
    if len(pixels) == 0:
        return None
    picked = np.linspace(0, len(pixels) - 1, min(sample, len(pixels))).astype(np.int64)
    pad = int(round(RULE_PAD * RULE_DETECT_SIDE))
    margins, shifts = [], []
    for i in picked:
        face = cv2.resize(np.ascontiguousarray(pixels[i][:, :, ::-1]), (RULE_DETECT_SIDE, RULE_DETECT_SIDE),
                          interpolation=cv2.INTER_CUBIC)
        framed = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        boxes = detector.detect(framed)
        if not boxes:
            continue
        x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
        side = max(w, h)
        margins.append((RULE_DETECT_SIDE / side - 1) / 2)
        centre = pad + RULE_DETECT_SIDE / 2
        shifts.append(((centre - (x + w / 2)) / side, (centre - (y + h / 2)) / side))
    found = len(margins) / len(picked)
    if found < RULE_MIN_FOUND:
        return None
    shift = np.median(np.asarray(shifts), axis=0)
    return {"face_margin": round(float(np.median(margins)), 4), "face_shift": [round(float(v), 4) for v in shift],
            "crop_rule": f"measured: the detector's box on {len(margins)} of {len(picked)} training faces"}

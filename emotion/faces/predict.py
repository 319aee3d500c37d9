"""From face boxes to smoothed, explained results: model runners, preprocessing, the predictor and the tracker.

- runners: `TorchRunner(model)` (a saved model folder) and `OnnxRunner(path)` (an exported `model.onnx`), chosen by
  `load_runner`; `runner(batch)` takes a preprocessed float32 batch (N, 3, S, S) and returns (probabilities (N, C),
  attention (N, H, W)) as numpy; `runner.config` is the saved model config (class names, preprocessing, face margin).
- `Predictor(runner, detector)`: `predict(image_bgr)`, `classify(image_bgr, boxes)`, `classify_crops(crops)`
  -> [`FaceResult`] (box, probabilities, label, confidence, attention, explanation, occlusion evidence).
- `FaceTracker`: faces followed across frames by IoU at each detection; probabilities, attention and evidence smoothed.
"""
from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort
import torch

from emotion.errors import EmotionError
from emotion.explain import (EXPLAIN_BY, MIN_CONFIDENCE, Explanation, baseline_weights, explain, occluded_copies,
                             occlusion_weights)
from emotion.io import read_json
from emotion.labels import CLASS_NAMES
from emotion.faces.detect import (Box, FaceDetector, NoCrop, build_detector, crop_face, crop_region, face_margin,
                                  face_shift)

ONNX_INPUT = "pixel_values"
ONNX_OUTPUTS = ("logits", "attention")


# ------------------------------------------------------------------------------------------------
# Running the model
# ------------------------------------------------------------------------------------------------
class TorchRunner:
    """PyTorch forward pass: preprocessed batch in, (probabilities, attention) out, both numpy."""

    def __init__(self, model) -> None:
        self.model = model.eval()
        self.config = dict(model.config)

    @classmethod
    def from_dir(cls, model_dir: str | os.PathLike) -> "TorchRunner":
        from emotion.model import load_model  # timm, 1.5 s of import: the ONNX runner and the app's start go without it

        return cls(load_model(model_dir))

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, attention = self.model(torch.from_numpy(np.ascontiguousarray(batch)), return_attention=True)
            return logits.float().softmax(dim=1).numpy(), attention.float().numpy()


class OnnxRunner:
    """A `model.onnx` in ONNX Runtime with the torch runner's call: preprocessed float32 batch (N, 3, S, S) in,
    (probabilities (N, C), attention (N, H, W)) out; `config` is the config.json beside it."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        path = Path(path)
        config_path = path.parent / "config.json"
        if not path.is_file() or not config_path.is_file():
            raise EmotionError(f"{path} is not an exported model (needs {path.name} with config.json beside it): "
                               "make one with `emotion-export --model DIR --format onnx`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for every unreadable graph
            raise EmotionError(f"onnxruntime cannot load {path} ({type(err).__name__}): re-export it with emotion-export") from None
        self.config = read_json(config_path)

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw graph outputs: logits (N, C), attention (N, H, W)."""
        logits, attention = self.session.run(list(ONNX_OUTPUTS), {ONNX_INPUT: np.ascontiguousarray(batch, dtype=np.float32)})
        return logits, attention

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, attention = self.outputs(batch)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))  # max-shifted: no overflow in exp
        return shifted / shifted.sum(axis=1, keepdims=True), attention


def load_runner(model: str | os.PathLike):
    """A saved model folder runs in PyTorch; an exported `.onnx` file in ONNX Runtime (same call, same config)."""
    if str(model).lower().endswith(".onnx"):
        return OnnxRunner(Path(model))
    return TorchRunner.from_dir(model)


class Preprocessor:
    """BGR face crops -> the normalised float batch the model was trained on (training's eval transform, with the
    model's colour rule: a model trained on grey faces is shown grey ones)."""

    def __init__(self, config: dict) -> None:
        self.image_size = int(config["image_size"])
        self.mean, self.std = config["mean"], config["std"]
        self.colour = config.get("input_colour") or "rgb"  # models saved before the rule was kept were shown colour

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        from emotion.data.transforms import eval_preprocess  # emotion.data: datasets (0.4 s), and it imports emotion.faces

        return eval_preprocess(crops, self.image_size, self.mean, self.std, bgr=True, colour=self.colour)


# ------------------------------------------------------------------------------------------------
# Results and the predictor
# ------------------------------------------------------------------------------------------------
@dataclass
class FaceResult:
    box: Box                   # the detected face, frame pixels
    crop_box: Box              # the crop the model saw (crop_region as x, y, w, h); the attention map covers it
    probabilities: np.ndarray  # (C,), class order of the model config
    label: str
    confidence: float
    attention: np.ndarray      # (H, W), sums to 1
    explanation: Explanation | None  # None from classify(explained=False): the tracker explains the smoothed result
    track_id: int | None = None
    evidence: dict[str, float] | None = None  # occlusion weights per region (explain.occlusion_weights); None: attention

    def to_dict(self, class_names: Sequence[str]) -> dict:
        """JSON-ready record (the model config's class names as keys)."""
        return {
            "track_id": self.track_id, "box": [int(v) for v in self.box], "label": self.label,
            "confidence": round(float(self.confidence), 4),
            "probabilities": {n: round(float(p), 4) for n, p in zip(class_names, self.probabilities)},
            "explanation": {"phrase": self.explanation.phrase, "status": self.explanation.status,
                            "source": self.explanation.source,
                            "top_region": self.explanation.top_region, "actions": self.explanation.actions,
                            "region_weights": {r: round(w, 3) for r, w in self.explanation.region_weights.items()}},
        }


def make_result(box: Box, box_crop: Box, probabilities: np.ndarray, attention: np.ndarray,
                min_confidence: float = MIN_CONFIDENCE, track_id: int | None = None,
                baseline: dict[str, float] | None = None, class_names: Sequence[str] = CLASS_NAMES,
                evidence: dict[str, float] | None = None) -> FaceResult:
    why = explain(probabilities, attention, min_confidence=min_confidence, baseline=baseline, class_names=class_names,
                  evidence=evidence)
    return FaceResult(box, box_crop, np.asarray(probabilities, np.float32), why.label, why.confidence,
                      np.asarray(attention, np.float32), why, track_id, evidence)


class Predictor:
    """Image in, one `FaceResult` per face out. Preprocessing and the face crop come from the runner's saved model
    config, and so does the explanations' baseline (the model's attention on neutral faces, when training recorded it).

    `explain_by`: occlusion (the default) weighs each facial region by how much hiding it lowers the predicted class,
    one extra model pass per region (6 x the model time); attention reads the attention map's lift, free but only as
    faithful as the training seed made the map (docs/learning.md)."""

    def __init__(self, runner, detector: FaceDetector | None = None, min_confidence: float = MIN_CONFIDENCE,
                 explain_by: str = "occlusion") -> None:
        if explain_by not in EXPLAIN_BY:
            raise ValueError(f"unknown explain_by {explain_by!r}: choose {' or '.join(EXPLAIN_BY)}")
        self.explain_by = explain_by
        self.runner = runner
        self.detector = detector  # None: the boxes come from elsewhere (classify), predict() cannot find faces
        self.preprocess = Preprocessor(runner.config)
        self.class_names = list(runner.config["class_names"])
        self.baseline = baseline_weights(runner.config.get("attention_prior"))
        self.margin, self.shift = face_margin(runner.config), face_shift(runner.config)
        self.min_confidence = min_confidence
        self.lock = threading.RLock()  # for callers on several threads (the app): OpenCV's detectors are not thread-safe
        self.timings: dict[str, float] = defaultdict(float)  # seconds per stage, summed over calls

    def new_tracker(self, **kwargs) -> "FaceTracker":
        """A tracker whose smoothed results are explained the way this predictor explains them."""
        return FaceTracker(min_confidence=self.min_confidence, baseline=self.baseline, class_names=self.class_names, **kwargs)

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike, detector_model: str | None = None, with_detector: bool = True,
                       **kwargs) -> "Predictor":
        return cls(load_runner(model_dir), build_detector(detector_model) if with_detector else None, **kwargs)

    def _timed(self, stage: str, func, *args):
        start = time.perf_counter()
        value = func(*args)
        self.timings[stage] += time.perf_counter() - start
        return value

    def detect(self, image: np.ndarray) -> list[Box]:
        return self._timed("detect", self.detector.detect, image)

    def as_shown(self, image: np.ndarray) -> np.ndarray:
        """A BGR image as the model is shown it: grey for a grey-rule model (the same grey its crops get), else a copy."""
        from emotion.data.augment import grey_uint8  # emotion.data: datasets (0.4 s), and it imports emotion.faces

        return grey_uint8(image[:, :, ::-1]) if self.preprocess.colour == "grey" else image.copy()

    def predict(self, image: np.ndarray) -> list[FaceResult]:
        """Detect every face in a BGR image and classify each."""
        return self.classify(image, self.detect(image))

    def crops(self, image: np.ndarray, boxes: Sequence[Box]) -> tuple[list[Box], list[Box], list[np.ndarray]]:
        """(boxes, crop boxes, crops at the model's size) by training's crop rule; a box wholly outside the image is dropped."""
        height, width = image.shape[:2]
        kept, squares, crops = [], [], []
        for box in boxes:
            try:
                x0, y0, x1, y1 = crop_region(width, height, box, self.margin, self.shift)
            except NoCrop:
                continue
            kept.append(tuple(box))
            squares.append((x0, y0, x1 - x0, y1 - y0))
            crops.append(crop_face(image, (x0, y0, x1, y1), self.preprocess.image_size))
        return kept, squares, crops

    def classify(self, image: np.ndarray, boxes: Sequence[Box], explained: bool = True) -> list[FaceResult]:
        """Classify given face boxes of a BGR image (each cropped as training cropped its faces)."""
        return self._run(*self._timed("crop", self.crops, image, boxes), explained)

    def classify_crops(self, crops: Sequence[np.ndarray]) -> list[FaceResult]:
        """Classify BGR images that already are face crops in the canonical layout (e.g. synthetic faces)."""
        boxes = [(0, 0, c.shape[1], c.shape[0]) for c in crops]
        return self._run(boxes, boxes, list(crops))

    def _run(self, boxes: list[Box], squares: list[Box], crops: list[np.ndarray], explained: bool = True) -> list[FaceResult]:
        if not crops:
            return []
        batch = self._timed("preprocess", self.preprocess, crops)
        probabilities, attention = self._timed("model", self.runner, batch)
        evidence = self._timed("occlusion", self.occlusion, crops, probabilities) if self.explain_by == "occlusion" \
            else [None] * len(crops)
        if not explained:
            return [FaceResult(b, s, p, self.class_names[int(p.argmax())], float(p.max()), a, None, evidence=e)
                    for b, s, p, a, e in zip(boxes, squares, probabilities, attention, evidence)]
        return self._timed("explain", lambda: [make_result(b, s, p, a, self.min_confidence, baseline=self.baseline,
                                                           class_names=self.class_names, evidence=e)
                                               for b, s, p, a, e in zip(boxes, squares, probabilities, attention, evidence)])

    def occlusion(self, crops: Sequence[np.ndarray], probabilities: np.ndarray) -> list[dict[str, float]]:
        """Occlusion weights of each crop: the model run again on its copies with one facial region hidden each."""
        copies = [copy for crop in crops for copy in occluded_copies(crop)]
        occluded, _ = self.runner(self.preprocess(copies))
        per_face = occluded.reshape(len(crops), -1, occluded.shape[-1])  # (faces, regions, classes)
        return [occlusion_weights(p, o) for p, o in zip(probabilities, per_face)]


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
    missed: int = 0  # detection rounds in a row that found no face here


@dataclass
class FaceTracker:
    """Faces followed across frames: greedy IoU matching at each detection, exponential smoothing of probabilities
    and attention.

    `smoothing` is the weight of the newest frame (1.0 = no smoothing). Frames between detections re-run only the
    tracks the last detection confirmed (`boxes()`), so a face that left is gone from the next detection on; its
    track (id and smoothed state) is kept for `max_missed` detection rounds, in case the detector only blinked.
    """
    iou_threshold: float = 0.3
    smoothing: float = 0.5
    max_missed: int = 2
    min_confidence: float = MIN_CONFIDENCE
    baseline: dict[str, float] | None = None  # explanations' baseline (Predictor.baseline)
    class_names: Sequence[str] = CLASS_NAMES  # the model's classes (Predictor.class_names)
    tracks: list[_Track] = field(default_factory=list)
    next_id: int = 1

    def reset(self) -> None:
        self.tracks.clear()

    def confirmed(self) -> list[_Track]:
        return [t for t in self.tracks if t.missed == 0]

    def boxes(self) -> list[Box]:
        """Boxes of the faces the last detection found: what frames between detections classify again."""
        return [t.face.box for t in self.confirmed()]

    def update(self, faces: Sequence[FaceResult], detected: bool = True) -> list[FaceResult]:
        """The smoothed and explained result of each face, in input order, each with its track id.

        `detected`: the faces come from a detection (matched to tracks by IoU); otherwise they are the faces of
        `boxes()` run again, and each stays with its own track."""
        if detected:
            matched = self._match(faces)
        else:
            by_box = {t.face.box: t for t in self.confirmed()}
            matched = {fi: by_box[f.box] for fi, f in enumerate(faces) if f.box in by_box}
        out = []
        for fi, face in enumerate(faces):
            probs, attention, evidence = face.probabilities, face.attention, face.evidence
            track = matched.get(fi)
            if track is not None:
                a = self.smoothing
                probs = a * probs + (1 - a) * track.face.probabilities
                if attention.shape == track.face.attention.shape:
                    attention = a * attention + (1 - a) * track.face.attention
                if evidence is not None and track.face.evidence is not None:
                    evidence = self._evidence(face, probs, track.face)
            else:
                track = _Track(self.next_id, face)
                self.next_id += 1
                self.tracks.append(track)
            track.face = make_result(face.box, face.crop_box, probs, attention, self.min_confidence, track.id, self.baseline,
                                     self.class_names, evidence)
            out.append(track.face)
        return out

    def _evidence(self, face: FaceResult, probs: np.ndarray, previous: FaceResult) -> dict[str, float]:
        """The occlusion weights for the class the smoothed result shows: each frame's weights are for its own class.

        Frames that weigh the shown class are averaged; a frame that weighs another class keeps the track's weights when
        those were for the shown class (a change of expression takes effect once the smoothed label follows it)."""
        shown = int(probs.argmax())
        own, before = int(face.probabilities.argmax()), int(previous.probabilities.argmax())
        if own == shown == before:
            a = self.smoothing
            return {r: a * w + (1 - a) * previous.evidence[r] for r, w in face.evidence.items()}
        return previous.evidence if own != shown and before == shown else face.evidence

    def _match(self, faces: Sequence[FaceResult]) -> dict[int, _Track]:
        """Face index -> its track; unmatched tracks count a missed round and end after `max_missed` of them."""
        pairs = sorted(((iou(t.face.box, f.box), ti, fi) for ti, t in enumerate(self.tracks) for fi, f in enumerate(faces)),
                       reverse=True)
        matched: dict[int, _Track] = {}
        used: set[int] = set()  # track indices
        for score, ti, fi in pairs:
            if score >= self.iou_threshold and ti not in used and fi not in matched:
                matched[fi] = self.tracks[ti]
                used.add(ti)
        for ti, track in enumerate(self.tracks):
            track.missed = 0 if ti in used else track.missed + 1
        self.tracks = [t for t in self.tracks if t.missed < self.max_missed]
        return matched

"""The demo around the face pipeline (emotion.faces): sources (camera, video, image, folder), sinks (annotated video or
images, JSON Lines, a per-frame CSV, a per-video summary) and the loop capture -> detect -> track -> classify ->
smooth -> overlay.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from emotion.csv_cells import cell
from emotion.errors import EmotionError
from emotion.faces import BackgroundDetector, FaceResult, FaceTracker, ListedBoxes, Predictor, process_frame
from emotion.faces.images import ImageRefused, read_bgr
from emotion.runtime import leave_cores_free

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
WINDOW_TITLE = "emotion demo (q quits, a toggles attention)"


# ------------------------------------------------------------------------------------------------
# Sources and sinks
# ------------------------------------------------------------------------------------------------
@dataclass
class FrameSource:
    kind: str  # camera | video | images
    fps: float
    # (name, BGR frame), or (name, reason) for a file of a folder that is not read: unreadable or too_large
    frames: Iterator[tuple[str, np.ndarray | str]]


def _folder_images(images: Sequence[Path]) -> Iterator[tuple[str, np.ndarray | str]]:
    for path in images:
        try:
            yield path.name, read_bgr(path)
        except ImageRefused as refused:
            yield path.name, refused.reason


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
        # one unreadable photo is counted (RunStats.unreadable), never the end of the batch
        return FrameSource("images", 0.0, _folder_images(images))
    if not path.is_file():
        raise EmotionError(f"source {source!r} not found: give a camera index (0), a video, an image or a folder")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return FrameSource("images", 0.0, iter([(path.name, read_bgr(path))]))
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
        self.written: set[str] = set()
        if output.suffix.lower() not in IMAGE_SUFFIXES:
            self.folder, self.file_name = output, None
        elif Path(source).is_file():
            self.folder, self.file_name = output.parent, output.name
        else:
            raise EmotionError(f"--output {output} names one image, but {source} holds several photos: "
                               "give a folder (e.g. annotated/)")

    def write(self, name: str, frame: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / (self.file_name or self._png_name(name))
        if not cv2.imwrite(str(_partial(final)), frame):
            raise EmotionError(f"cannot write {final}: is the folder writable?")
        os.replace(_partial(final), final)
        self.frames += 1

    def _png_name(self, name: str) -> str:
        """`a.jpg` -> `a.png`; a second photo of the same stem (`a.png` beside `a.jpg`) -> `a_png.png`, never over it."""
        source = Path(name.replace(":", "_"))
        png = source.stem + ".png"
        if png in self.written:
            png = f"{source.stem}_{source.suffix.lstrip('.')}.png"
        self.written.add(png)
        return png

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


class _FramesCsvSink:
    """The per-frame CSV: one row per face per frame (frame, time, face id, box, label, confidence, a probability
    per class of the model config), streamed to a temp file and renamed when the run ends."""

    def __init__(self, path: Path, class_names: Sequence[str]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(_partial(path), "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["frame", "source", "time", "face_id", "x", "y", "w", "h", "label", "confidence", *class_names])

    def write(self, index: int, name: str, seconds: float | None, faces: Sequence[FaceResult]) -> None:
        when = "" if seconds is None else f"{seconds:.3f}"
        for face in faces:
            self.writer.writerow([index, cell(name), when, face.track_id, *face.box, face.label, f"{face.confidence:.4f}",
                                  *(f"{p:.4f}" for p in face.probabilities)])

    def close(self) -> None:
        self.file.close()
        os.replace(_partial(self.path), self.path)


class FaceSummary:
    """Per face id over a run: frames seen, first and last frame, the dominant expression and the share of its
    frames per class; for a folder, also the files without a face, the unreadable ones and those over the pixel limit."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        self.faces: dict[int, dict] = {}
        self.no_face: list[str] = []
        self.unreadable: list[str] = []
        self.too_large: list[str] = []

    def add(self, index: int, faces: Sequence[FaceResult]) -> None:
        for face in faces:
            seen = self.faces.setdefault(face.track_id, {"frames": 0, "first_frame": index, "labels": Counter()})
            seen["frames"] += 1
            seen["last_frame"] = index
            seen["labels"][face.label] += 1

    def rows(self, fps: float) -> list[dict]:
        rows = []
        for face_id, seen in sorted(self.faces.items()):
            share = {n: round(seen["labels"][n] / seen["frames"], 4) for n in self.class_names}
            rows.append({"face_id": face_id, "frames": seen["frames"], "first_frame": seen["first_frame"],
                         "last_frame": seen["last_frame"], "seconds": round(seen["frames"] / fps, 3) if fps else None,
                         "dominant": max(self.class_names, key=lambda n: seen["labels"][n]), "share": share})
        return rows

    def write(self, path: Path, source: str, kind: str, frames: int, fps: float) -> tuple[Path, Path]:
        """`path` with .json and with .csv (one row per face id), each written to a temp name and renamed."""
        rows = self.rows(fps)
        record = {"source": source, "kind": kind, "frames": frames, "fps": fps or None, "class_names": self.class_names,
                  "faces": rows}
        if kind == "images":
            record["files"] = {"read": frames, "no_face": {"count": len(self.no_face), "files": self.no_face},
                               "unreadable": {"count": len(self.unreadable), "files": self.unreadable},
                               "too_large": {"count": len(self.too_large), "files": self.too_large}}
        json_path, csv_path = path.with_suffix(".json"), path.with_suffix(".csv")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        _partial(json_path).write_text(json.dumps(record, indent=2) + "\n")
        os.replace(_partial(json_path), json_path)
        with open(_partial(csv_path), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["face_id", "frames", "first_frame", "last_frame", "seconds", "dominant", *self.class_names])
            for row in rows:
                writer.writerow([row["face_id"], row["frames"], row["first_frame"], row["last_frame"],
                                 "" if row["seconds"] is None else row["seconds"], row["dominant"],
                                 *(row["share"][n] for n in self.class_names)])
        os.replace(_partial(csv_path), csv_path)
        return json_path, csv_path


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
    seconds: float = 0.0  # detect + crop + preprocess + model + explain + track + overlay, summed over frames
    timings: dict[str, float] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)     # photos of a folder in which no face was found
    unreadable: list[str] = field(default_factory=list)  # files of a folder OpenCV cannot decode
    too_large: list[str] = field(default_factory=list)  # files of a folder over the pixel limit (never decoded)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


@dataclass
class DemoOptions:
    """How the demo runs: the flags of webcam_demo.py beside --source."""

    model_dir: str  # a saved model folder, or an exported model.onnx
    output: str | None = None  # annotated video, or for photos a folder of PNGs or (one photo) an image file
    json_path: str | None = None  # JSON Lines: one record per face per frame
    display: bool = True
    detector_model: str | None = None
    detect_every: int = 3
    show_attention: bool = True
    smoothing: float = 0.5
    max_frames: int | None = None
    # The face detector on its own thread and core, off the frame loop (default: on for a camera, off for files, whose
    # output then repeats exactly).
    background_detection: bool | None = None
    boxes_path: str | None = None  # a CSV of face boxes from another detector (emotion.faces.ListedBoxes), used instead of one
    frames_csv: str | None = None  # one row per face per frame
    summary_path: str | None = None  # per face id, as .json and .csv
    explain_by: str = "occlusion"  # occlusion or attention (emotion.faces.Predictor)


class _Outputs:
    """Where a run's results go: annotated frames, JSON Lines, the per-frame CSV and the per-face summary."""

    def __init__(self, options: DemoOptions, source: str, frames: FrameSource, class_names: Sequence[str]) -> None:
        stream, output = frames.kind != "images", options.output
        if output and not stream and Path(output).suffix.lower() in VIDEO_SUFFIXES:
            raise EmotionError(f"--output {output} names a video, but {source} is a photo source: give a folder "
                               "(annotated/) or, for one photo, an image file (annotated.png)")
        self.class_names = class_names
        self.sink = None
        if output:
            self.sink = _VideoSink(Path(output), frames.fps) if stream else _ImageSink(Path(output), source)
        self.log = _JsonLinesSink(Path(options.json_path)) if options.json_path else None
        self.table = _FramesCsvSink(Path(options.frames_csv), class_names) if options.frames_csv else None
        self.summary = FaceSummary(class_names)

    def write(self, index: int, name: str, seconds: float | None, faces: Sequence[FaceResult], annotated: np.ndarray) -> None:
        self.summary.add(index, faces)
        if self.log:
            for face in faces:
                self.log.write({"frame": index, "source": name, **face.to_dict(self.class_names)})
        if self.table:
            self.table.write(index, name, seconds, faces)
        if self.sink:
            self.sink.write(name, annotated)

    def close(self, stats: RunStats) -> None:
        if self.sink:
            self.sink.close()
        if self.log:
            self.log.close()
            stats.records = self.log.records
        if self.table:
            self.table.close()


@dataclass
class _Session:
    """One run's working parts, from the opened source to the outputs."""

    options: DemoOptions
    predictor: Predictor
    frames: FrameSource
    tracker: FaceTracker
    outputs: _Outputs
    listed: ListedBoxes | None
    background: BackgroundDetector | None
    stats: RunStats = field(default_factory=RunStats)


def run(source: str, options: DemoOptions) -> RunStats:
    """The demo: read `source`, annotate every frame, optionally show, save and log it. Keys: q quits, a toggles attention."""
    session = _open_session(source, options)
    try:
        _annotate_frames(session)
    finally:
        _close_session(session)
    stats, frames = session.stats, session.frames
    if options.summary_path:
        summary = session.outputs.summary
        summary.no_face, summary.unreadable, summary.too_large = stats.no_face, stats.unreadable, stats.too_large
        summary.write(Path(options.summary_path), source, frames.kind, stats.frames, frames.fps)
    stats.timings = dict(session.predictor.timings)
    return stats


def _open_session(source: str, options: DemoOptions) -> _Session:
    """The model, the source, the tracker, the background detector and the outputs of a run, the refusals first."""
    if options.display and not _has_display():
        raise EmotionError("no display to show the demo on (DISPLAY is not set): add --no-display, "
                           "with --output and/or --json to keep the results")
    if options.detect_every < 1:
        raise EmotionError(f"--detect-every must be >= 1, got {options.detect_every}")
    listed = ListedBoxes.read(options.boxes_path) if options.boxes_path else None
    predictor = Predictor.from_model_dir(options.model_dir, options.detector_model, with_detector=listed is None,
                                         explain_by=options.explain_by)
    frames = open_source(source)
    stream = frames.kind != "images"
    tracker = predictor.new_tracker(smoothing=options.smoothing if stream else 1.0)
    background = None
    in_background = frames.kind == "camera" if options.background_detection is None else options.background_detection
    if stream and listed is None and in_background:
        leave_cores_free(1)  # the detector's core
        background = BackgroundDetector(predictor.detector)
    outputs = _Outputs(options, source, frames, predictor.class_names)
    return _Session(options, predictor, frames, tracker, outputs, listed, background)


def _annotate_frames(session: _Session) -> None:
    """The frame loop: detect (every --detect-every frames), track, classify, smooth, overlay, write and show."""
    options, frames, stats = session.options, session.frames, session.stats
    stream = frames.kind != "images"
    show_attention = options.show_attention
    fps = None
    started = time.perf_counter()
    for index, (name, frame) in enumerate(frames.frames):
        if options.max_frames is not None and index >= options.max_frames:
            break
        if isinstance(frame, str):  # a file of a folder that was not read: counted, the run goes on
            (stats.too_large if frame == "too_large" else stats.unreadable).append(name)
            continue
        if not stream:
            session.tracker.reset()  # separate photos share no faces
        start = time.perf_counter()
        faces, annotated = process_frame(session.predictor, session.tracker, frame, detect=index % options.detect_every == 0,
                                         show_attention=show_attention, fps=fps, background=session.background,
                                         boxes=session.listed.boxes(index, name) if session.listed else None)
        elapsed = time.perf_counter() - start
        stats.seconds += elapsed
        fps = 1.0 / elapsed if fps is None else 0.9 * fps + 0.1 / max(elapsed, 1e-6)
        stats.frames += 1
        stats.faces += len(faces)
        if not faces and not stream:
            stats.no_face.append(name)
        when = {"video": index / frames.fps if frames.fps else None, "camera": start - started}.get(frames.kind)
        session.outputs.write(index, name, when, faces, annotated)
        if options.display:
            cv2.imshow(WINDOW_TITLE, annotated)
            key = cv2.waitKey(0 if frames.kind == "images" else 1) & 0xFF
            if key == ord("q"):
                break
            if key == ord("a"):
                show_attention = not show_attention


def _close_session(session: _Session) -> None:
    """Stop the background detector (its time counted), finish every output file, close the window."""
    if session.background:
        session.background.close()
        session.predictor.timings["detect (background thread)"] += session.background.seconds
    session.outputs.close(session.stats)
    if session.options.display:
        cv2.destroyAllWindows()

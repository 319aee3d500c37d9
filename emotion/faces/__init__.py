"""The face pipeline every front end shares (the demo, the app, the ONNX path, the benchmarks).

detect: detectors, the background detector, boxes from another detector, the crop rule training also uses;
predict: PyTorch and ONNX Runtime runners, preprocessing, the predictor and the tracker; overlay: drawing;
pipeline: one frame through all of them (the demo's loop and the app's webcam tab).
"""
from emotion.faces.detect import (BackgroundDetector, Box, DnnDetector, FaceDetector, HaarDetector, ListedBoxes,
                                  build_detector, crop_face, crop_region, face_margin)
from emotion.faces.overlay import draw_attention, draw_overlay
from emotion.faces.pipeline import process_frame
from emotion.faces.predict import FaceResult, FaceTracker, OnnxRunner, Predictor, Preprocessor, TorchRunner, load_runner

__all__ = ["BackgroundDetector", "Box", "DnnDetector", "FaceDetector", "FaceResult", "FaceTracker", "HaarDetector",
           "ListedBoxes", "OnnxRunner", "Predictor", "Preprocessor", "TorchRunner", "build_detector", "crop_face",
           "crop_region", "draw_attention", "draw_overlay", "face_margin", "load_runner", "process_frame"]

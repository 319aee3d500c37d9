"""Gradio page over the face pipeline: Photo, Webcam and Batch tabs (`emotion-app --model DIR`).

Detection, preprocessing, the model call, smoothing, the overlay and the explanation all come from `emotion.faces`;
this module only turns its `FaceResult`s into page components. The page loads nothing from the internet:
analytics off and system fonts instead of the theme's Google Fonts. Safe to share: every session's call to the one
predictor holds its lock (OpenCV's detector is not thread-safe), uploads are bounded in bytes and pixels and deleted
once answered, errors on the page name no server path, and `--auth` puts a login in front.
"""
from __future__ import annotations

import csv
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from emotion.csv_cells import cell
from emotion.errors import EmotionError
from emotion.faces import FaceResult, ListedBoxes, Predictor, draw_attention, draw_overlay, process_frame
from emotion.faces.images import ImageRefused, read_bgr
from emotion.labels import FACE_REGIONS

NO_MODEL = ("no model given: make one with `make quickstart` (writes results/quickstart/best_model), "
            "then run `emotion-app --model results/quickstart/best_model`")
NO_FACE = "No face found in this photo: try a frontal, well-lit face that fills more of the picture."
NO_IMAGE = "Upload a photo."
TABLE_HEADERS = ["file", "face", "label", "confidence", "explanation", *FACE_REGIONS]
WEBCAM_DETECT_EVERY = 3  # as the demo: detect every few frames, track in between
WEBCAM_INTERVAL_S = 0.25
MAX_UPLOAD = "25mb"  # per file; the pixel limit (emotion.faces.images) bounds what a small file may claim
AUTH_ENV = "EMOTION_APP_AUTH"  # USER:PASS, as --auth takes it, for a command line others can read


def _rgb(image_bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image_bgr[:, :, ::-1])


def _pixels(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    return image[y:y + h, x:x + w]


def face_row(file: str, index: int, face: FaceResult) -> list[Any]:
    weights = face.explanation.region_weights
    return [file, index, face.label, round(float(face.confidence), 4), face.explanation.phrase,
            *(round(float(weights[r]), 3) for r in FACE_REGIONS)]


def describe(faces: Sequence[FaceResult]) -> str:
    """One line per face: label, confidence, the phrase and the region weights behind it."""
    return "\n".join(
        f"Face {i}: {f.label} {f.confidence:.0%} | {f.explanation.phrase} | region weights: "
        + ", ".join(f"{r} {f.explanation.region_weights[r]:.2f}" for r in FACE_REGIONS)
        for i, f in enumerate(faces, start=1))


def refusal(path: str | os.PathLike, refused: ImageRefused) -> str:
    """The reason a file was not read, naming only its base name: the page never shows a server path."""
    return str(refused).replace(str(path), Path(path).name)


def analyse_photo(predictor: Predictor, photo: np.ndarray | str | None):
    """Photo tab: (annotated image, class probabilities of face 1, heatmaps, summary, table rows). `photo`: an RGB
    array, or the path of an uploaded file (read under the pixel limit)."""
    if photo is None:
        return None, None, [], NO_IMAGE, []
    if isinstance(photo, (str, os.PathLike)):
        try:
            image = read_bgr(photo)
        except ImageRefused as refused:
            return None, None, [], refusal(photo, refused), []
    else:
        image = np.ascontiguousarray(photo[:, :, :3][:, :, ::-1])  # drop alpha; the demo works in BGR
    with predictor.lock:
        faces = sorted(predictor.predict(image), key=lambda f: -f.box[2] * f.box[3])  # largest face first
        heat = predictor.as_shown(image)  # the crops as the model saw them (its colour rule), under their attention
    if not faces:
        return _rgb(image), None, [], NO_FACE, []
    for face in faces:
        draw_attention(heat, face)
    heatmaps = [(_rgb(_pixels(heat, f.crop_box)), f"face {i}: {f.label}") for i, f in enumerate(faces, start=1)]
    probabilities = {name: float(p) for name, p in zip(predictor.class_names, faces[0].probabilities)}
    rows = [face_row("photo", i, f) for i, f in enumerate(faces, start=1)]
    return _rgb(draw_overlay(image, faces, predictor.class_names)), probabilities, heatmaps, describe(faces), rows


def analyse_frame(predictor: Predictor, frame_rgb: np.ndarray | None, state: dict | None):
    """Webcam tab, one streamed frame: the demo's detect-or-track, classify, smooth and draw."""
    state = state or {"tracker": predictor.new_tracker(), "index": 0}
    if frame_rgb is None:
        return None, "", state
    frame = np.ascontiguousarray(frame_rgb[:, :, :3][:, :, ::-1])
    with predictor.lock:
        faces, annotated = process_frame(predictor, state["tracker"], frame, detect=state["index"] % WEBCAM_DETECT_EVERY == 0)
    state["index"] += 1
    return _rgb(annotated), describe(faces) or "No face in view.", state


def analyse_files(predictor: Predictor, paths: Sequence[str] | None, out_dir: Path | None = None,
                  boxes_csv: str | None = None):
    """Batch tab: (table rows, CSV path, status line); an unreadable file or a photo without faces is a row and a count,
    not an error. `boxes_csv`: face boxes from another detector (file, x, y, w, h), used instead of detecting."""
    try:
        listed = ListedBoxes.read(boxes_csv) if boxes_csv else None
    except EmotionError as err:
        return [], None, f"Face boxes not used: {err}"
    rows: list[list[Any]] = []
    unreadable = too_large = no_face = 0
    for path in paths or []:
        name = Path(path).name
        try:
            image = read_bgr(path)
        except ImageRefused as refused:  # a row and a count; the batch goes on
            unreadable += refused.reason == "unreadable"
            too_large += refused.reason == "too_large"
            rows.append([name, 0, refused.reason.replace("_", " "), None, refusal(path, refused), *[None] * len(FACE_REGIONS)])
            continue
        with predictor.lock:
            faces = predictor.classify(image, listed.boxes(0, name)) if listed else predictor.predict(image)
        if not faces:
            no_face += 1
            rows.append([name, 0, "no face", None, NO_FACE, *[None] * len(FACE_REGIONS)])
        rows += [face_row(name, i, f) for i, f in enumerate(faces, start=1)]
    if not rows:
        return [], None, "Upload one or more photos."
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="emotion-batch-"))
    final = out_dir / "predictions.csv"
    tmp = out_dir / ".predictions.csv.tmp"
    with tmp.open("w", newline="") as handle:
        csv.writer(handle).writerows([TABLE_HEADERS, *([cell(row[0]), *row[1:]] for row in rows)])
    os.replace(tmp, final)
    faces = sum(1 for r in rows if r[1])
    return rows, str(final), (f"{len(paths)} files, {faces} faces; {no_face} without a face, {unreadable} unreadable, "
                              f"{too_large} over the pixel limit" + (" (boxes from the CSV)." if listed else "."))


def _gradio():
    """gradio, imported when a page is built."""
    import gradio  # 2 s of import that the analysis functions (and their tests) go without

    return gradio


def forget_uploads(answer: Callable) -> Callable:
    """A page handler that deletes the files uploaded to it once it has answered (only files in Gradio's upload folder)."""
    gr = _gradio()
    uploads = Path(gr.utils.get_upload_folder()).resolve()

    def handler(*inputs):
        try:
            return answer(*inputs)
        finally:
            for value in inputs:
                for path in value if isinstance(value, list) else [value]:
                    if isinstance(path, str) and Path(path).resolve().is_relative_to(uploads):
                        Path(path).unlink(missing_ok=True)

    return handler


def build_app(predictor: Predictor, model_name: str = ""):
    gr = _gradio()
    # delete_cache: what a session left (webcam frames, outputs) goes within the hour
    with gr.Blocks(title="emotion: facial-expression recognizer", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(f"# Facial-expression recognizer\nModel: `{model_name}`. It reads facial **expressions**, not "
                    "felt emotions; not for decisions about people.")
        with gr.Tab("Photo"):
            with gr.Row():
                # A file, not gr.Image: Gradio would decode the upload itself, before the pixel limit is checked.
                photo = gr.File(label="Photo", file_types=["image"], type="filepath", elem_id="photo-input")
                annotated = gr.Image(label="Faces", type="numpy", interactive=False, elem_id="photo-output")
            summary = gr.Textbox(label="Result", lines=3, interactive=False, elem_id="photo-summary")
            with gr.Row():
                probabilities = gr.Label(label="Probabilities (face 1)", num_top_classes=len(predictor.class_names),
                                         elem_id="photo-probabilities")
                heatmaps = gr.Gallery(label="Attention (red: most attended)", columns=3, height=260, elem_id="photo-heatmaps")
            regions = gr.Dataframe(headers=TABLE_HEADERS, label="Per face: explanation and region weights", interactive=False)
            photo.change(forget_uploads(lambda image: analyse_photo(predictor, image)), inputs=photo,
                         outputs=[annotated, probabilities, heatmaps, summary, regions])
        with gr.Tab("Webcam"):
            state = gr.State(None)
            with gr.Row():
                camera = gr.Image(label="Camera", sources=["webcam"], streaming=True, type="numpy", elem_id="webcam-input")
                live = gr.Image(label="Faces (smoothed across frames)", type="numpy", interactive=False, elem_id="webcam-output")
            live_summary = gr.Textbox(label="Result", lines=2, interactive=False, elem_id="webcam-summary")
            camera.stream(lambda frame, s: analyse_frame(predictor, frame, s), inputs=[camera, state],
                          outputs=[live, live_summary, state], stream_every=WEBCAM_INTERVAL_S)
        with gr.Tab("Batch"):
            with gr.Row():
                files = gr.File(label="Photos", file_count="multiple", file_types=["image"], type="filepath")
                boxes = gr.File(label="Face boxes from another detector (optional CSV: file, x, y, w, h)",
                                file_types=[".csv"], type="filepath", elem_id="batch-boxes")
            status = gr.Textbox(label="Status", interactive=False, elem_id="batch-status")
            table = gr.Dataframe(headers=TABLE_HEADERS, label="Results", interactive=False, elem_id="batch-table")
            download = gr.File(label="CSV", interactive=False)
            for changed in (files, boxes):
                changed.change(forget_uploads(lambda paths, csv_path: analyse_files(predictor, paths, boxes_csv=csv_path)),
                               inputs=[files, boxes], outputs=[table, download, status])
    return app


def offline_theme():
    """The default theme with system fonts: the stock one fetches Google Fonts, which the page must not load."""
    gr = _gradio()
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """`--auth USER:PASS`, else the EMOTION_APP_AUTH variable, else no login."""
    auth = auth or os.environ.get(AUTH_ENV)
    if not auth:
        return None
    user, colon, password = auth.partition(":")
    if not (user and colon and password):
        raise EmotionError(f"--auth (or {AUTH_ENV}) must be USER:PASS, both non-empty")
    return user, password


def launch(model: str, host: str = "127.0.0.1", port: int = 7860, share: bool = False, detector_model: str | None = None,
           block: bool = True, auth: str | None = None):
    """Serve the page; with block=False return (app, url) and leave the server running in a thread."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    login = parse_auth(auth)
    if login is None and (share or host not in ("127.0.0.1", "localhost", "::1")):
        print(f"warning: serving on {'a public gradio.live link' if share else host} without a login: anyone who can reach "
              f"it can use the model; add --auth USER:PASS (or set {AUTH_ENV})", file=sys.stderr)
    app = build_app(Predictor.from_model_dir(model, detector_model), model_name=Path(model).name)
    # show_error off: an unexpected error shows as "Error" on the page, never a server path or traceback.
    _, url, _ = app.launch(server_name=host, server_port=port, share=share, theme=offline_theme(), show_error=False,
                           auth=login, max_file_size=MAX_UPLOAD, prevent_thread_lock=not block, quiet=not block)
    return app, url

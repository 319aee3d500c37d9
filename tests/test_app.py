"""The Gradio app: its tab functions on a real photo, the ONNX path, and the page (photo upload, webcam through a fake
camera) driven in a real headless Chromium."""
import csv
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest
from skimage import data

from emotion import app
from emotion.cli import app_main, demo_main
from emotion.faces import Predictor
from emotion.labels import CLASS_NAMES, FACE_REGIONS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

LABEL_LINE = re.compile(rf"Face 1: ({'|'.join(CLASS_NAMES)}) (\d+)% \| (.+?) \| region weights: brows \d")


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_model_dir(tiny_run / "best_model")


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    cv2.imwrite(str(path), data.astronaut()[:, :, ::-1])
    return path


def test_without_a_model_the_app_names_the_command(capsys):
    assert app_main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "make quickstart" in err and "emotion-app --model results/quickstart/best_model" in err


def test_photo_tab_boxes_labels_and_explains_the_face(predictor):
    annotated, probabilities, heatmaps, summary, rows = app.analyse_photo(predictor, data.astronaut())
    assert annotated.shape == data.astronaut().shape and not np.array_equal(annotated, data.astronaut())  # drawn on
    assert LABEL_LINE.search(summary)
    assert list(probabilities) == list(CLASS_NAMES) and sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert len(heatmaps) == len(rows) >= 1
    assert rows[0][2] == max(probabilities, key=probabilities.get) and len(rows[0]) == len(app.TABLE_HEADERS)


def test_photo_without_a_face_or_without_an_image_says_so(predictor):
    assert app.analyse_photo(predictor, np.full((120, 160, 3), 128, np.uint8))[3] == app.NO_FACE
    assert app.analyse_photo(predictor, None)[3] == app.NO_IMAGE


def test_batch_table_and_csv_cover_faces_blank_and_unreadable_files(predictor, astronaut_png, tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((100, 100, 3), 255, np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    rows, csv_path, status = app.analyse_files(predictor, [str(astronaut_png), str(blank), str(broken)], out_dir=tmp_path)
    by_file = {r[0]: r for r in rows}
    assert by_file["astronaut.png"][2] in CLASS_NAMES and by_file["blank.png"][2] == "no face"
    assert by_file["broken.jpg"][2] == "unreadable"
    with open(csv_path, newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["file", "face", "label", "confidence", "explanation", *FACE_REGIONS] and len(table) == len(rows) + 1
    assert status == "3 files, 1 faces; 1 without a face, 1 unreadable, 0 over the pixel limit."


def test_batch_takes_face_boxes_from_another_detector(predictor, astronaut_png, tmp_path):
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((100, 100, 3), 255, np.uint8))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x,y,w,h\nastronaut.png,170,40,110,130\nastronaut.png,300,300,80,80\nblank.png,10,10,50,50\n")
    rows, _, status = app.analyse_files(predictor, [str(astronaut_png), str(blank)], out_dir=tmp_path, boxes_csv=str(boxes))
    assert [(r[0], r[1]) for r in rows] == [("astronaut.png", 1), ("astronaut.png", 2), ("blank.png", 1)]
    assert all(r[2] in CLASS_NAMES for r in rows)
    assert status == "2 files, 3 faces; 0 without a face, 0 unreadable, 0 over the pixel limit (boxes from the CSV)."
    boxes.write_text("x,y\n1,2\n")
    assert app.analyse_files(predictor, [str(blank)], boxes_csv=str(boxes))[2].startswith("Face boxes not used: boxes file")


def test_webcam_frames_keep_one_smoothed_track(predictor):
    state = None
    for _ in range(3):
        frame, text, state = app.analyse_frame(predictor, data.astronaut(), state)
    assert state["index"] == 3 and [t.id for t in state["tracker"].tracks] == [1]
    assert frame.shape == data.astronaut().shape and LABEL_LINE.search(text)


def test_onnx_model_gives_the_app_and_the_demo_the_same_answer(predictor, tiny_onnx, astronaut_png, tmp_path):
    onnx_predictor = Predictor.from_model_dir(tiny_onnx / "model.onnx")
    ours, theirs = predictor.predict(data.astronaut()[:, :, ::-1].copy()), onnx_predictor.predict(data.astronaut()[:, :, ::-1].copy())
    assert [f.label for f in ours] == [f.label for f in theirs]
    assert np.abs(ours[0].probabilities - theirs[0].probabilities).max() <= 1e-4
    records = tmp_path / "faces.jsonl"
    assert demo_main(["--model", str(tiny_onnx / "model.onnx"), "--source", str(astronaut_png), "--no-display",
                      "--json", str(records)]) == 0
    assert json.loads(records.read_text().splitlines()[0])["label"] == theirs[0].label


def _fake_camera_video(path: Path, frames: int = 10) -> Path:
    """A Y4M clip of the astronaut for Chromium's fake camera (planar 4:2:0, as OpenCV's I420 conversion lays it out)."""
    frame = cv2.resize(data.astronaut()[:, :, ::-1], (320, 320))
    with open(path, "wb") as handle:
        handle.write(b"YUV4MPEG2 W320 H320 F10:1 Ip A1:1 C420jpeg\n")
        for _ in range(frames):
            handle.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (apt-get install -y chromium; .ci/run installs it)")
def test_photo_upload_and_webcam_in_a_real_browser(tiny_run, astronaut_png, tmp_path):
    """A photo uploaded, an unreadable one, then Chromium's fake camera playing a generated clip into the Webcam tab."""
    from playwright.sync_api import sync_playwright

    camera = _fake_camera_video(tmp_path / "camera.y4m")
    server, url = app.launch(str(tiny_run / "best_model"), port=_free_port(), block=False)
    shots = Path(os.environ.get("EMOTION_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    requested: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={camera}"])
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.on("request", lambda request: requested.append(request.url))
            page.goto(url)
            page.locator("#photo-input input[type=file]").wait_for(state="attached", timeout=60_000)
            summary = page.locator("#photo-summary textarea")
            started = time.perf_counter()
            page.locator("#photo-input input[type=file]").set_input_files(str(astronaut_png))
            deadline = started + 60
            while not summary.input_value() and time.perf_counter() < deadline:
                page.wait_for_timeout(50)
            latency = time.perf_counter() - started
            text = summary.input_value()
            page.locator("#photo-probabilities").get_by_text(CLASS_NAMES[0]).first.wait_for(timeout=10_000)
            bars = page.locator("#photo-probabilities").inner_text()
            page.screenshot(path=str(shots / "app_photo.png"), full_page=True)
            broken = tmp_path / "broken.png"
            broken.write_bytes(b"not a png")
            page.reload()
            page.locator("#photo-input input[type=file]").set_input_files(str(broken))
            page.wait_for_function("document.querySelector('#photo-summary textarea').value.includes('cannot read image broken.png')",
                                   timeout=30_000)
            assert "/tmp" not in summary.input_value()  # the reason, without the server's upload path
            assert "Traceback" not in page.content()
            page.screenshot(path=str(shots / "app_unreadable.png"))
            page.reload()  # the error toast would cover the webcam overlay
            page.get_by_role("tab", name="Webcam").click()
            page.locator("#webcam-input").get_by_text("Click to Access Webcam").click(timeout=30_000)
            started = time.perf_counter()
            page.locator("#webcam-input").get_by_text("Record").click(timeout=30_000)
            live = page.locator("#webcam-summary textarea")
            while not LABEL_LINE.search(live.input_value()) and time.perf_counter() - started < 60:
                page.wait_for_timeout(100)
            webcam_latency = time.perf_counter() - started
            live_text = live.input_value()
            overlay = cv2.imdecode(np.frombuffer(page.locator("#webcam-output img").screenshot(), np.uint8), cv2.IMREAD_COLOR)
            page.screenshot(path=str(shots / "app_webcam.png"))
            browser.close()
    finally:
        server.close()
    found = LABEL_LINE.search(text)
    assert found, f"no label line in {text!r}"
    label, confidence, phrase = found.groups()
    assert 0 <= int(confidence) <= 100 and phrase.strip()
    assert all(name in bars for name in CLASS_NAMES)  # all 8 probability bars on the page
    outside = [u for u in requested if not u.startswith(("data:", "blob:")) and urlparse(u).hostname not in ("127.0.0.1", "localhost")]
    assert not outside, f"the page loaded assets from the internet: {outside[:5]}"
    assert LABEL_LINE.search(live_text), f"no label line within 60 s of pressing Record: {live_text!r}"
    blue, green, red = (overlay[:, :, c].astype(int) for c in range(3))
    boxed = (green > 150) & (blue < 60) & ((red < 60) | (red > 200))  # the box: green when explained, orange when not
    assert boxed.sum() > 100, "no face box in the webcam overlay"
    print(f"\nupload-to-result latency {latency:.2f} s, webcam Record-to-label {webcam_latency:.2f} s; "
          f"screenshots {shots / 'app_photo.png'}, {shots / 'app_webcam.png'}")


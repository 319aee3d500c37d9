"""The face pipeline over time and against training: the crop training made, tracks that end, another detector's
boxes, the per-frame CSV and per-face summary, and batches that go on past a bad file."""
import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from emotion.cli import demo_main
from emotion.config import TrainConfig
from emotion.data.prepare import JPEG_QUALITY, Record, prepare_image
from emotion.demo import DemoOptions, run
from emotion.faces import Predictor, load_runner

# A `cpu` preset model kept in the repo (tests/fixtures/README.md); its config.json predates `face_margin`.
CPU_MODEL = Path(__file__).parent / "fixtures" / "cpu_model"
FPS = 10


class _ConfigOnly:
    """A runner that is only its saved config: enough for the crop, which never calls the model."""

    def __init__(self, **config) -> None:
        self.config = {**load_runner(CPU_MODEL).config, **config}


@pytest.fixture(scope="module")
def astronaut():
    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


def _write_video(path: Path, frames) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("margin", [None, 0.35])
@pytest.mark.parametrize("box", [(170, 40, 110, 130), (-30, 420, 120, 110)], ids=["inside", "clipped-at-the-edge"])
def test_the_demo_crops_a_face_exactly_as_training_did(astronaut, tmp_path, box, margin):
    """One photo and box through the prepared training cache and through the live predictor: the same pixels."""
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), astronaut)
    predictor = Predictor(_ConfigOnly() if margin is None else _ConfigOnly(face_margin=margin))
    trained_with = TrainConfig().face_margin if margin is None else margin  # no face_margin kept: training's default
    size = predictor.preprocess.image_size
    prepared, region, _ = prepare_image(Record(str(photo), 0, "photo", box), size, trained_with)
    _, crop_boxes, crops = predictor.crops(astronaut, [box])
    x, y, w, h = crop_boxes[0]
    assert region == (x, y, x + w, y + h)
    demo = io.BytesIO()
    Image.fromarray(cv2.cvtColor(crops[0], cv2.COLOR_BGR2RGB)).save(demo, format="JPEG", quality=JPEG_QUALITY)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(prepared))), np.asarray(Image.open(demo)))


def test_a_face_that_leaves_loses_its_box_at_the_next_detection(astronaut, tmp_path):
    """A face seen for 8 frames, then gone (a blurred frame): no box on any frame once a detection round missed it."""
    frame = cv2.resize(astronaut, (320, 320))
    gone = cv2.GaussianBlur(frame, (0, 0), 12)
    video = _write_video(tmp_path / "leaves.avi", [frame] * 8 + [gone] * 8)
    log = tmp_path / "faces.jsonl"
    run(str(video), DemoOptions(str(CPU_MODEL), json_path=str(log), display=False, detect_every=2))
    frames = [json.loads(line)["frame"] for line in log.read_text().splitlines()]
    assert sorted(set(frames)) == list(range(8))  # frame 8 is a detection round: the face is gone from there on


def test_another_detectors_boxes_keep_their_face_ids_in_every_output(astronaut, tmp_path):
    """Two boxes per frame from a CSV, drifting: each keeps one id in the per-frame CSV, the JSON and the summary."""
    frame = cv2.resize(astronaut, (320, 320))
    video = _write_video(tmp_path / "clip.avi", [frame] * 6)
    boxes = tmp_path / "boxes.csv"
    lines = ["frame,x,y,w,h"]
    for i in range(6):
        lines += [f"{i},{110 + 2 * i},25,80,90", f"{i},{10 + i},200,70,70"]
    lines += ["6,0,0,50,50"]  # a frame the video does not have: ignored
    boxes.write_text("\n".join(lines) + "\n")
    table, summary, log = tmp_path / "frames.csv", tmp_path / "summary", tmp_path / "faces.jsonl"
    assert demo_main(["--source", str(video), "--model", str(CPU_MODEL), "--no-display", "--boxes", str(boxes),
                      "--frames-csv", str(table), "--summary", str(summary), "--json", str(log)]) == 0
    rows = _rows(table)
    class_names = load_runner(CPU_MODEL).config["class_names"]
    assert list(rows[0]) == ["frame", "source", "time", "face_id", "x", "y", "w", "h", "label", "confidence", *class_names]
    assert len(rows) == 12
    ids_by_row = {}
    for row in rows:
        ids_by_row.setdefault(int(row["y"]), set()).add(row["face_id"])
        assert float(row["time"]) == pytest.approx(int(row["frame"]) / FPS, abs=1e-3)
        assert sum(float(row[n]) for n in class_names) == pytest.approx(1, abs=1e-3)
        assert row["label"] == max(class_names, key=lambda n: float(row[n]))
    assert ids_by_row == {25: {"1"}, 200: {"2"}}  # the detector's boxes, each with one id throughout
    assert {(json.loads(line)["track_id"], json.loads(line)["box"][1]) for line in log.read_text().splitlines()} == {(1, 25), (2, 200)}
    report = json.loads(summary.with_suffix(".json").read_text())
    assert report["kind"] == "video" and report["frames"] == 6 and report["class_names"] == class_names
    for face in report["faces"]:
        labels = [r["label"] for r in rows if int(r["face_id"]) == face["face_id"]]
        assert face["frames"] == len(labels) == 6 and face["seconds"] == pytest.approx(6 / FPS)
        assert face["share"] == {n: round(labels.count(n) / 6, 4) for n in class_names}
        assert face["dominant"] == max(class_names, key=labels.count)
    per_face = _rows(summary.with_suffix(".csv"))
    assert [(r["face_id"], r["frames"], r["dominant"]) for r in per_face] == [
        (str(f["face_id"]), str(f["frames"]), f["dominant"]) for f in report["faces"]]


def test_a_folder_batch_counts_bad_files_and_goes_on(astronaut, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_astronaut.jpg"), astronaut)
    cv2.imwrite(str(folder / "b_blank.png"), np.full((120, 160, 3), 128, np.uint8))
    (folder / "c_broken.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(folder / "d_astronaut.png"), astronaut)
    summary = tmp_path / "summary.json"
    assert demo_main(["--source", str(folder), "--model", str(CPU_MODEL), "--no-display", "--summary", str(summary),
                      "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "3 frames, 2 faces (photos without a face: 1, unreadable files: 1, over the pixel limit: 0)" in out
    files = json.loads(summary.read_text())["files"]
    assert files == {"read": 3, "no_face": {"count": 1, "files": ["b_blank.png"]},
                     "unreadable": {"count": 1, "files": ["c_broken.jpg"]}, "too_large": {"count": 0, "files": []}}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_astronaut.png", "b_blank.png", "d_astronaut.png"]
    # the same folder with a detector's boxes by file name: a photo without a row has no face
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x,y,w,h\nphotos/a_astronaut.jpg,170,40,110,130\nd_astronaut.png,170,40,110,130\n"
                     "d_astronaut.png,300,300,80,80\n")
    log = tmp_path / "faces.jsonl"
    assert demo_main(["--source", str(folder), "--model", str(CPU_MODEL), "--no-display", "--boxes", str(boxes),
                      "--json", str(log)]) == 0
    assert "3 frames, 3 faces (photos without a face: 1, unreadable files: 1, over the pixel limit: 0)" in capsys.readouterr().out
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["source"], r["box"]) for r in records] == [("a_astronaut.jpg", [170, 40, 110, 130]),
                                                          ("d_astronaut.png", [170, 40, 110, 130]),
                                                          ("d_astronaut.png", [300, 300, 80, 80])]


def test_a_bad_boxes_file_is_one_line(tmp_path, capsys):
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("name,left,top\nx.jpg,1,2\n")
    assert demo_main(["--source", str(tmp_path), "--model", str(CPU_MODEL), "--no-display", "--boxes", str(boxes)]) == 2
    err = capsys.readouterr().err
    assert "boxes file" in err and "file (or frame), x, y, w, h" in err and err.count("\n") == 1
    boxes.write_text("frame,x,y,w,h\n0,1,2,three,4\n")
    assert demo_main(["--source", str(tmp_path), "--model", str(CPU_MODEL), "--no-display", "--boxes", str(boxes)]) == 2
    assert "line 2" in capsys.readouterr().err


def test_a_track_survives_one_missed_detection_and_ends_after_max_missed():
    from emotion.explain import explain
    from emotion.faces import FaceResult, FaceTracker

    def face(box):
        probs, att = np.full(8, 1 / 8), np.full((4, 4), 1 / 16)
        why = explain(probs, att)
        return FaceResult(box, box, probs, why.label, why.confidence, att, why)

    tracker = FaceTracker(max_missed=2)
    assert [f.track_id for f in tracker.update([face((0, 0, 100, 100))])] == [1]
    assert tracker.update([], detected=True) == [] and tracker.boxes() == []  # missed once: not re-run, id kept
    assert [f.track_id for f in tracker.update([face((4, 2, 100, 100))])] == [1]  # back: same id
    assert [f.track_id for f in tracker.update([face((4, 2, 100, 100))], detected=False)] == [1]  # between detections
    tracker.update([], detected=True)
    tracker.update([], detected=True)
    assert tracker.tracks == []  # two detection rounds missed: the track ended
    assert [f.track_id for f in tracker.update([face((4, 2, 100, 100))])] == [2]

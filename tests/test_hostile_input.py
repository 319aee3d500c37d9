"""Crafted, damaged and oversized input through the public entry points: each case ends in a one-line error or a
counted skip, never a traceback, never code run from a file, never a write outside the run folder."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, run_script
from emotion import checkpoint, state_files
from emotion.cli import train_main
from emotion.errors import EmotionError

# 32 train images, batch 8: 4 steps per epoch, 2 epochs, a checkpoint every 2 steps.
ARGS = ["--preset", "tiny", "--epochs", "2", "--synthetic-train", "32", "--synthetic-val", "16", "--batch-size", "8",
        "--checkpoint-every-steps", "2", "--keep-checkpoints", "3"]


def train_argv(run: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [*ARGS, "--output-dir", str(run), "--cache-dir", str(cache_dir), *extra]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:") or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir) -> Path:
    run = tmp_path_factory.mktemp("hostile") / "run"
    run_script("train_accelerate.py", *train_argv(run, cache_dir))  # as a user runs it: the card records this command
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    return run


def checkpoint_dirs(run: Path) -> list[Path]:
    """The checkpoint folders as a user sees them (no helper of the code under test)."""
    return sorted((run / "checkpoints").iterdir())


class Payload:
    """Unpickling this writes a file: proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


# --- checkpoints ---------------------------------------------------------------------------------------------------

def test_a_planted_pickle_runs_nothing_on_resume(run_copy, cache_dir, tmp_path):
    proof = tmp_path / "proof"
    for folder in checkpoint_dirs(run_copy):  # where Accelerate's pickles were, and beside ours
        for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
            (folder / name).write_bytes(pickle.dumps(Payload(proof)))
    assert train_main(train_argv(run_copy, cache_dir, "--resume", "latest", "--epochs", "3")) == 0
    assert not proof.exists()
    assert not any(p.suffix in {".pkl", ".bin", ".pt"} for p in (run_copy / "checkpoints" / "epoch_3").iterdir())


def test_complete_lists_every_file_with_size_and_sha256(finished_run):
    for folder in checkpoint_dirs(finished_run):
        files = json.loads((folder / checkpoint.COMPLETE).read_text())["files"]
        on_disk = {p.name for p in folder.iterdir() if p.name != checkpoint.COMPLETE}
        assert set(files) == on_disk and {"model.safetensors", "optimizer.safetensors", "trainer_state.json"} <= on_disk
        for name, entry in files.items():
            data = (folder / name).read_bytes()
            assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_changed_byte_is_named_in_one_line(run_copy, cache_dir, capsys):
    newest = checkpoint.complete_checkpoints(run_copy)[-1]
    data = bytearray((newest / "optimizer.safetensors").read_bytes())
    data[-1] ^= 1  # same size, other content
    (newest / "optimizer.safetensors").write_bytes(bytes(data))
    assert train_main(train_argv(run_copy, cache_dir, "--resume", str(newest))) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "optimizer.safetensors" in line and "sha256" in line and str(newest) in line


def test_a_checkpoint_that_fails_to_read_changes_nothing(finished_run):
    """The files verify but one does not fit: the model and optimizer built now are left exactly as they were."""
    from accelerate import Accelerator

    from emotion.config import TrainConfig
    from emotion.model import build_model

    config = TrainConfig.load(finished_run / "config.json")
    model = build_model(config, "rgb", None)
    optimizer = torch.optim.AdamW(model.parameters())
    objects = state_files.TrainingObjects(model, optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = checkpoint.complete_checkpoints(finished_run)[-1]
    broken = finished_run.parent / "broken"
    shutil.copytree(path, broken)
    (broken / state_files.SCHEDULER_FILE).write_text('{"not": "a scheduler"}')
    marker = json.loads((broken / checkpoint.COMPLETE).read_text())
    marker["files"] = checkpoint.file_manifest(broken)
    (broken / checkpoint.COMPLETE).write_text(json.dumps(marker))
    with pytest.raises(checkpoint.CheckpointDamaged, match="lr_scheduler.json"):
        checkpoint.load_checkpoint(Accelerator(cpu=True), objects, broken)
    assert all(model.state_dict()[k].equal(v) for k, v in before.items()) and not optimizer.state


def test_a_resume_whose_checkpoints_all_fail_refuses_and_keeps_the_best_model(run_copy, cache_dir):
    folders = checkpoint_dirs(run_copy)
    assert len(folders) >= 2
    for folder in folders:
        for name in ("optimizer.safetensors", "optimizer.bin"):  # this format's file, or the one before it
            if (folder / name).is_file():
                with (folder / name).open("r+b") as handle:
                    handle.truncate(100)
    before = snapshot(run_copy)
    result = run_script("train_accelerate.py", *train_argv(run_copy, cache_dir, "--resume", "latest"), check=False)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    line = one_line_error(result.stderr)
    assert "--overwrite" in line and all(folder.name in line for folder in folders) and "size" in line
    assert "starting a new run" not in result.stdout and snapshot(run_copy) == before  # best_model/ byte-identical


def test_only_the_newest_damaged_resumes_from_an_older_one_and_says_so(run_copy, cache_dir, capsys):
    newest = checkpoint.complete_checkpoints(run_copy)[-1]
    (newest / "model.safetensors").write_bytes(b"")
    assert train_main(train_argv(run_copy, cache_dir, "--resume", "latest", "--epochs", "3")) == 0
    captured = capsys.readouterr()
    assert f"{newest} is damaged" in captured.err and "falling back" in captured.err and "resumed from" in captured.out


# --- one run per folder --------------------------------------------------------------------------------------------

def test_a_second_run_in_the_same_folder_is_refused_with_the_holders_pid(tmp_path, cache_dir):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "train_accelerate.py", *train_argv(run, cache_dir, "--epochs", "30")],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints").is_dir():  # well past data prep: the lock is held
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()[-2000:]
            time.sleep(0.05)
        second = run_script("train_accelerate.py", *train_argv(run, cache_dir, "--resume", "latest"), check=False)
        assert second.returncode == 2
        line = one_line_error(second.stderr)
        assert f"pid {first.pid}" in line and "in use" in line
        assert first.poll() is None  # the holder goes on
    finally:
        first.kill()
        first.wait()
    # The killed run's lock is free: the next start takes it over and resumes (or starts, had no checkpoint landed).
    assert train_main(train_argv(run, cache_dir, "--resume", "latest", "--epochs", "1")) == 0
    assert not (run / ".run.lock").exists()


def test_temporary_names_differ_per_process(tmp_path):
    final = tmp_path / "best_model"
    seen = []
    checkpoint.write_directory(final, lambda folder: (seen.append(folder.name), folder.mkdir()))
    assert seen == [f".tmp-best_model-{os.getpid()}"]


# --- disk full -----------------------------------------------------------------------------------------------------

def test_disk_full_while_saving_says_so_in_one_line_and_leaves_no_partial_folder(tmp_path, cache_dir, capsys, monkeypatch):
    run = tmp_path / "run"
    writes, save_file = [], state_files.save_file

    def filling(tensors, filename, metadata=None):
        writes.append(filename)
        if len(writes) == 5:  # epoch_1's model (rng, model, optimizer per checkpoint): step_2 landed
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(state_files, "save_file", filling)
    assert train_main(train_argv(run, cache_dir)) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "no space left on device while saving checkpoint" in line and "--resume latest" in line
    assert not list(run.rglob(".tmp-*")) and (run / "checkpoints" / "step_2" / checkpoint.COMPLETE).is_file()


def test_the_model_card_keeps_the_command_without_local_paths(finished_run):
    card = (finished_run / "best_model" / "README.md").read_text()
    assert "--cache-dir" in card and str(finished_run.parent) not in card and "--output-dir run" in card


# --- images: bounded before decoding ------------------------------------------------------------------------------

def png_claiming(path: Path, width: int, height: int, pixels: bool = True) -> Path:
    """A grey PNG of width x height px that compresses to little; without `pixels` only its header says so."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    data = b""
    if pixels:
        packer, row = zlib.compressobj(9), b"\0" * (width + 1)
        data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def big_pngs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("big")
    return {"large": png_claiming(folder / "large.png", 8000, 8000),  # 64 Mpx in ~60 kB
            "claims": png_claiming(folder / "claims.png", 100_000, 100_000, pixels=False)}


@pytest.mark.parametrize("kind", ["large", "claims"])
def test_the_demo_refuses_an_oversized_photo_in_one_line_before_decoding(tiny_run, big_pngs, kind, capsys):
    from emotion.cli import demo_main

    assert demo_main(["--source", str(big_pngs[kind]), "--model", str(tiny_run / "best_model"), "--no-display"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "Mpx limit" in line and big_pngs[kind].name in line and "EMOTION_MAX_PIXELS" in line


def test_a_folder_run_counts_oversized_photos_and_goes_on(tiny_run, big_pngs, tmp_path, capsys):
    import cv2
    from skimage import data

    from emotion.cli import demo_main

    folder = tmp_path / "photos"
    folder.mkdir()
    for path in big_pngs.values():
        shutil.copy(path, folder / path.name)
    cv2.imwrite(str(folder / "a.jpg"), data.astronaut()[:, :, ::-1])
    cv2.imwrite(str(folder / "a.png"), data.astronaut()[:, :, ::-1])
    out = tmp_path / "annotated"
    assert demo_main(["--source", str(folder), "--model", str(tiny_run / "best_model"), "--no-display",
                      "--output", str(out), "--summary", str(tmp_path / "summary")]) == 0
    assert "over the pixel limit: 2" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["files"]["too_large"] == {"count": 2, "files": ["claims.png", "large.png"]}
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_png.png"]  # two photos, two files: none overwritten


def test_the_app_batch_gives_oversized_files_a_row_and_goes_on(tiny_run, big_pngs, tmp_path):
    from emotion import app
    from emotion.faces import Predictor

    predictor = Predictor.from_model_dir(tiny_run / "best_model")
    rows, _, status = app.analyse_files(predictor, [str(big_pngs["large"]), str(big_pngs["claims"])], out_dir=tmp_path)
    assert [r[2] for r in rows] == ["too large", "too large"] and "2 over the pixel limit" in status
    assert all(str(big_pngs["large"].parent) not in str(r[4]) for r in rows)  # the page never sees a server path
    said = app.analyse_photo(predictor, str(big_pngs["claims"]))[3]
    assert said.startswith("claims.png claims 10000 Mpx") and "Mpx limit" in said


# --- the shared app ------------------------------------------------------------------------------------------------

def test_app_handlers_on_many_threads_give_the_serial_answers(tiny_run):
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    from skimage import data

    from emotion import app
    from emotion.faces import Predictor

    predictor = Predictor.from_model_dir(tiny_run / "best_model")
    photos = [cv2.resize(data.astronaut(), None, fx=scale, fy=scale) for scale in (0.6, 0.8, 1.0, 1.3)]

    def answer(photo):
        return [row[:4] for row in app.analyse_photo(predictor, photo)[4]]

    serial = [answer(photo) for photo in photos]
    assert all(serial)  # a face in each
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(answer, photos * 12))
    assert threaded == serial * 12


def test_app_login_and_the_warning_when_served_to_others(tiny_run, monkeypatch, capsys):
    import gradio as gr

    from emotion import app

    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: (launched.update(kwargs), (None, "url", None))[1])
    app.launch(str(tiny_run / "best_model"), host="0.0.0.0")
    assert "without a login" in capsys.readouterr().err and launched["auth"] is None
    assert launched["show_error"] is False and launched["max_file_size"] == app.MAX_UPLOAD
    app.launch(str(tiny_run / "best_model"), host="0.0.0.0", auth="ana:secret")
    assert "without a login" not in capsys.readouterr().err and launched["auth"] == ("ana", "secret")
    monkeypatch.setenv(app.AUTH_ENV, "ben:pw")
    app.launch(str(tiny_run / "best_model"))
    assert launched["auth"] == ("ben", "pw")
    with pytest.raises(EmotionError, match="USER:PASS"):
        app.launch(str(tiny_run / "best_model"), auth="nopassword")


def test_app_handlers_delete_the_uploads_they_answered(tiny_run, tmp_path, monkeypatch):
    import gradio as gr

    from emotion import app

    uploads = tmp_path / "uploads"
    (uploads / "x").mkdir(parents=True)
    monkeypatch.setattr(gr.utils, "get_upload_folder", lambda: str(uploads))
    uploaded, mine = uploads / "x" / "photo.png", tmp_path / "mine.png"
    for path in (uploaded, mine):
        path.write_bytes(b"not an image")
    handler = app.forget_uploads(lambda paths, boxes: len(paths))
    assert handler([str(uploaded), str(mine)], None) == 2
    assert not uploaded.exists() and mine.exists()  # only what was uploaded to the page goes


# --- CSV cells and other one-line refusals -------------------------------------------------------------------------

HOSTILE_NAMES = ["=HYPERLINK(x).png", "=2+5.png", "@SUM(1+1).png", "+1.png", "-1.png"]


def test_file_names_that_look_like_formulas_are_escaped_in_every_csv(tiny_run, tmp_path, capsys):
    import csv

    import cv2
    from skimage import data

    from emotion import app
    from emotion.cli import demo_main
    from emotion.faces import Predictor

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in HOSTILE_NAMES:
        cv2.imwrite(str(folder / name), data.astronaut()[:, :, ::-1])
    frames = tmp_path / "frames.csv"
    assert demo_main(["--source", str(folder), "--model", str(tiny_run / "best_model"), "--no-display",
                      "--frames-csv", str(frames)]) == 0
    _, predictions, _ = app.analyse_files(Predictor.from_model_dir(tiny_run / "best_model"),
                                          sorted(str(p) for p in folder.iterdir()), out_dir=tmp_path)
    for path, column in ((frames, 1), (Path(predictions), 0)):
        cells = [row[column] for row in list(csv.reader(path.open()))[1:]]
        assert cells and all(c.startswith("'") and c[1:] in HOSTILE_NAMES for c in cells), cells


def test_eval_predictions_csv_escapes_ids():
    import csv
    import tempfile

    import numpy as np

    from emotion.evaluation import Predictions, write_predictions_csv

    predictions = Predictions(indices=np.array([0, 1]), labels=np.array([0, 1]), probabilities=np.full((2, 2), 0.5), loss=0.0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "predictions.csv"
        write_predictions_csv(predictions, ["=cmd|' /C calc'!A0", "face.png"], path, ["neutral", "happy"])
        ids = [row[0] for row in list(csv.reader(path.open()))[1:]]
    assert ids == ["'=cmd|' /C calc'!A0", "face.png"]


@pytest.mark.parametrize("content,expected", [
    (b"file,x,y,w,h\n\xff\xfe.png,1,2,3,4\n", "not UTF-8"),
    (b"file,x,y,w,h\na.png,inf,2,3,4\n", "must be numbers"),
    (b"file,x,y,w,h\na.png,1,2,1e308,4\n", "must be numbers"),
    (b"file,x,y,w,h\na.png,1,2,3," + b"9" * 200_000 + b"\n", "not a usable CSV"),
])
def test_a_hostile_boxes_csv_is_refused_in_one_line(tiny_run, tmp_path, capsys, content, expected):
    from emotion.cli import demo_main

    boxes = tmp_path / "boxes.csv"
    boxes.write_bytes(content)
    photo = png_claiming(tmp_path / "a.png", 32, 32)
    assert demo_main(["--source", str(photo), "--model", str(tiny_run / "best_model"), "--no-display",
                      "--boxes", str(boxes)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert expected in line and "boxes" in line


def test_a_malformed_world_size_is_refused_in_one_line(tmp_path, cache_dir):
    result = run_script("train_accelerate.py", *train_argv(tmp_path / "run", cache_dir), env={"WORLD_SIZE": "abc"}, check=False)
    assert result.returncode == 2 and "WORLD_SIZE='abc'" in one_line_error(result.stderr)

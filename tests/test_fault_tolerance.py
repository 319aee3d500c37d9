"""Training that survives kill -9, Ctrl+C, SIGTERM, NaN and corrupt checkpoints, and resumes bit-identically."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import ROOT, run_script
from emotion.checkpoint import complete_checkpoints

# 48 train images, batch 8: 6 optimizer steps per epoch, 3 epochs, a checkpoint every 2 steps.
ARGS = ["--preset", "tiny", "--epochs", "3", "--synthetic-train", "48", "--synthetic-val", "16", "--batch-size", "8",
        "--checkpoint-every-steps", "2", "--keep-checkpoints", "2"]


def train_args(output: Path, cache_dir: Path, *extra: str) -> list[str]:
    return ["train_accelerate.py", *ARGS, "--output-dir", str(output), "--cache-dir", str(cache_dir), *extra]


def start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"run ended ({process.returncode}) before {path} appeared:\n{process.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.01)


def same_weights(a: Path, b: Path) -> bool:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return left.keys() == right.keys() and all(left[k].equal(right[k]) for k in left)


def history(run: Path, keys=("epoch", "global_step", "train_loss", "val_loss", "val_accuracy", "lr")) -> list[dict]:
    return [{k: r[k] for k in keys} for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache_dir) -> Path:
    output = tmp_path_factory.mktemp("reference") / "run"
    run_script(*train_args(output, cache_dir))
    return output


def test_sigkill_anywhere_then_resume_is_bit_identical(reference_run, tmp_path, cache_dir):
    run = tmp_path / "run"
    # 1) mid-epoch 1, right after the step-4 checkpoint; 2) in epoch 2, just after epoch_1; 3) while step_10 is written.
    kill_points = [(run / "checkpoints" / "step_4", {}),
                   (run / "checkpoints" / "epoch_1", {}),
                   (run / "checkpoints" / ".tmp-step_10", {"EMOTION_FAULT_SAVE_DELAY": "2"})]
    for i, (marker, env) in enumerate(kill_points):
        process = start(train_args(run, cache_dir, *(["--resume", "latest"] if i else [])), env)
        wait_for(marker, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
    # The half-written step_10 never counts as a checkpoint.
    assert not (run / "checkpoints" / "step_10").exists()
    result = run_script(*train_args(run, cache_dir, "--resume", "latest"))
    assert "resumed from" in result.stdout and "step_8" in result.stdout
    assert same_weights(reference_run / "checkpoints" / "epoch_3", run / "checkpoints" / "epoch_3")
    assert same_weights(reference_run / "best_model", run / "best_model")
    assert history(reference_run) == history(run)


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_interrupted_state_and_resume_finishes(signum, code, tmp_path, cache_dir, reference_run):
    run = tmp_path / "run"
    process = start(train_args(run, cache_dir))
    wait_for(run / "checkpoints" / "step_2", process)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == code, output[-2000:]
    assert (run / "interrupted" / "COMPLETE").is_file()
    assert "--resume latest" in output and str(run) in output
    if signum == signal.SIGINT:  # the printed command is the way back; resume and finish
        result = run_script(*train_args(run, cache_dir, "--resume", "latest"))
        assert "interrupted" in result.stdout
        assert same_weights(reference_run / "checkpoints" / "epoch_3", run / "checkpoints" / "epoch_3")
        assert complete_checkpoints(run)[-1].name == "epoch_3"  # interrupted/ is older now: latest skips it


def test_nan_stops_with_diagnostics_and_keeps_last_good_checkpoint(tmp_path, cache_dir):
    run = tmp_path / "run"
    result = run_script(*train_args(run, cache_dir, "--inject-nan-at-step", "8"), check=False)
    assert result.returncode == 3
    last_line = result.stderr.strip().splitlines()[-1]  # above it: the progress bar
    assert last_line.startswith("error: non-finite") and "nan_diagnostics.jsonl" in last_line
    record = json.loads((run / "nan_diagnostics.jsonl").read_text().splitlines()[0])
    assert record["global_step"] == 8 and record["epoch"] == 2 and len(record["batch_indices"]) == 8
    assert record["loss"] != record["loss"]  # NaN
    assert (run / "checkpoints" / "epoch_1" / "COMPLETE").is_file()
    assert not (run / "checkpoints" / "step_8").exists()


def test_nan_policy_skip_skips_the_bad_step(tmp_path, cache_dir):
    run = tmp_path / "run"
    result = run_script(*train_args(run, cache_dir, "--inject-nan-at-step", "3", "--nan-policy", "skip", "--epochs", "1"))
    assert "step skipped" in result.stdout
    assert len((run / "nan_diagnostics.jsonl").read_text().splitlines()) == 1
    assert (run / "checkpoints" / "epoch_1" / "COMPLETE").is_file()


def test_corrupt_checkpoint_fails_clearly_and_latest_falls_back(reference_run, tmp_path, cache_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    newest = run / "checkpoints" / "epoch_3"
    (newest / "model.safetensors").write_bytes(b"not a tensor file")
    given = run_script(*train_args(run, cache_dir, "--resume", str(newest)), check=False)
    assert given.returncode == 2 and str(newest) in given.stderr and given.stderr.strip().count("\n") == 0
    latest = run_script(*train_args(run, cache_dir, "--resume", "latest"))
    assert "falling back" in latest.stderr and "resumed from" in latest.stdout and "step_16" in latest.stdout
    assert latest.stderr.count("falling back") == 1 and "--resume latest" not in latest.stderr  # said once, no advice to do what it did


def test_pruning_keeps_the_last_k_plus_best(reference_run):
    kept = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    assert kept == ["epoch_3", "step_16"]  # K = 2 newest: the last epoch end and the step checkpoint before it
    assert (reference_run / "best_model" / "model.safetensors").is_file()


def test_resume_into_a_different_run_is_refused(reference_run, tmp_path, cache_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    result = run_script(*train_args(run, cache_dir, "--resume", "latest", "--image-size", "96"), check=False)
    assert result.returncode == 2 and "different run" in result.stderr and "image_size" in result.stderr


def test_two_processes_ctrl_c_saves_once_and_resume_loads_on_every_rank(tmp_path, cache_dir, reference_run):
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              *train_args(run, cache_dir, "--batch-size", "4")]
    # Ctrl+C in a terminal reaches the whole process group: the launcher and both ranks.
    process = subprocess.Popen(launch, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    wait_for(run / "checkpoints" / "step_2", process)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=240)
    assert process.returncode != 0
    assert (run / "interrupted" / "COMPLETE").is_file(), output[-3000:]
    assert output.count("resume with:") == 1  # only the main process speaks and writes
    assert len(list((run / "interrupted").glob("random_states_*.pkl"))) == 2  # each rank's RNG state
    result = subprocess.run([*launch, "--resume", "latest"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("resumed from") == 1 and (run / "checkpoints" / "epoch_3" / "COMPLETE").is_file()
    # 2 processes x batch 4 walk the same samples per step as 1 process x batch 8.
    assert json.loads((run / "checkpoints" / "epoch_3" / "trainer_state.json").read_text())["global_step"] == 18

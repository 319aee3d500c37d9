"""Training that survives kill -9, Ctrl+C, SIGTERM, NaN and corrupt checkpoints, resumes bit-identically, and never
mixes two runs in one folder. Faults are injected from here (monkeypatching, tests/chaos_driver.py), not by the product."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, run_script
from emotion import checkpoint
from emotion.checkpoint import complete_checkpoints
from emotion.cli import train_main
from emotion.config import TrainConfig

# 48 train images, batch 8: 6 optimizer steps per epoch, 3 epochs, a checkpoint every 2 steps; the cosine lr changes
# every step, so a resume that lost its place in the schedule would show in the weights.
ARGS = ["--preset", "tiny", "--epochs", "3", "--synthetic-train", "48", "--synthetic-val", "16", "--batch-size", "8",
        "--checkpoint-every-steps", "2", "--keep-checkpoints", "2", "--lr-schedule", "cosine"]


def train_args(output: Path, cache_dir: Path, *extra: str) -> list[str]:
    return ["train_accelerate.py", *ARGS, "--output-dir", str(output), "--cache-dir", str(cache_dir), *extra]


def start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """The run in a process group of its own, as a terminal, `timeout`, SLURM or `docker stop` would signal it."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


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


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_interrupted_state_and_resume_finishes(signum, code, tmp_path, cache_dir, reference_run):
    run = tmp_path / "run"
    # A DataLoader worker, and the signal sent to the whole group: the workers get it too and must leave it to the run.
    # As many threads as the reference run (which has no worker to leave a core to), so the weights can match bit for bit.
    process = start(train_args(run, cache_dir, "--num-workers", "1"), env={"OMP_NUM_THREADS": str(os.cpu_count())})
    wait_for(run / "checkpoints" / "step_2", process)
    os.killpg(process.pid, signum)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == code, output[-2000:]
    assert (run / "interrupted" / "COMPLETE").is_file()
    assert "--resume latest" in output and str(run) in output
    if signum == signal.SIGINT:  # the printed command is the way back; resume and finish
        result = run_script(*train_args(run, cache_dir, "--resume", "latest"))
        assert "interrupted" in result.stdout
        assert same_weights(reference_run / "checkpoints" / "epoch_3", run / "checkpoints" / "epoch_3")
        assert complete_checkpoints(run)[-1].name == "epoch_3"  # interrupted/ is older now: latest skips it


def poison(out):
    """NaN in every tensor of a forward's output (logits, attention, the auxiliary heads' logits or None)."""
    if isinstance(out, tuple):
        return tuple(poison(o) for o in out)
    return None if out is None else out * float("nan")


@pytest.fixture
def nan_at_step(monkeypatch):
    """Make the model's training forward pass return NaN at optimizer step N of a new run (no gradient accumulation)."""
    from emotion.model import EmotionNet

    def inject(step: int) -> None:
        forward, calls = EmotionNet.forward, []

        def poisoned(self, x, **kwargs):
            out = forward(self, x, **kwargs)
            if self.training:
                calls.append(1)
                if len(calls) == step:
                    return poison(out)
            return out

        monkeypatch.setattr(EmotionNet, "forward", poisoned)

    return inject


def test_nan_stops_with_diagnostics_and_keeps_last_good_checkpoint(tmp_path, cache_dir, capsys, nan_at_step):
    run = tmp_path / "run"
    nan_at_step(8)
    assert train_main([*ARGS, "--output-dir", str(run), "--cache-dir", str(cache_dir)]) == 3
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # above it: the progress bar
    assert last_line.startswith("error: non-finite") and "nan_diagnostics.jsonl" in last_line
    record = json.loads((run / "nan_diagnostics.jsonl").read_text().splitlines()[0])
    assert record["global_step"] == 8 and record["epoch"] == 2 and len(record["batch_indices"]) == 8
    assert record["loss"] != record["loss"]  # NaN
    assert (run / "checkpoints" / "epoch_1" / "COMPLETE").is_file()
    assert not (run / "checkpoints" / "step_8").exists()


def test_nan_policy_skip_skips_the_bad_step(tmp_path, cache_dir, capsys, nan_at_step):
    run = tmp_path / "run"
    nan_at_step(3)
    assert train_main([*ARGS, "--output-dir", str(run), "--cache-dir", str(cache_dir), "--nan-policy", "skip", "--epochs", "1"]) == 0
    assert "step skipped" in capsys.readouterr().out
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
    assert len(list((run / "interrupted").glob("rng_*.safetensors"))) == 2  # each rank's RNG state
    result = subprocess.run([*launch, "--resume", "latest"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("resumed from") == 1 and (run / "checkpoints" / "epoch_3" / "COMPLETE").is_file()
    # 2 processes x batch 4 walk the same samples per step as 1 process x batch 8.
    assert json.loads((run / "checkpoints" / "epoch_3" / "trainer_state.json").read_text())["global_step"] == 18


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes: what a refused run must leave exactly as it was."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def copied_run(reference_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    return run


@pytest.mark.parametrize("change,key", [(["--lstm-hidden", "64"], "lstm_hidden"), (["--backbone", "resnet18"], "backbone"),
                                        (["--no-attention"], "attention"), (["--image-size", "96"], "image_size")])
def test_resume_with_other_model_settings_is_refused_before_anything_loads(copied_run, cache_dir, capsys, change, key):
    before = snapshot(copied_run)
    code = train_main([*ARGS, "--output-dir", str(copied_run), "--cache-dir", str(cache_dir), "--resume", "latest", *change])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "different run" in err and key in err and "--output-dir" in err, err
    assert snapshot(copied_run) == before  # config.json, best_model/, checkpoints and metrics.jsonl untouched


def test_a_checkpoint_of_another_shape_is_refused_not_skipped_as_corrupt(copied_run, cache_dir, capsys):
    # Settings saved without the changed key (as an older version wrote them): only the weights tell the shape changed.
    for path in [copied_run / "config.json", *copied_run.glob("checkpoints/*/trainer_state.json")]:
        data = json.loads(path.read_text())
        data.get("config", data).pop("lstm_hidden")
        path.write_text(json.dumps(data))
        if path.name == checkpoint.TRAINER_STATE:  # as that version would have listed it in COMPLETE
            marker = json.loads((path.parent / checkpoint.COMPLETE).read_text())
            marker["files"] = checkpoint.file_manifest(path.parent)
            (path.parent / checkpoint.COMPLETE).write_text(json.dumps(marker))
    before = snapshot(copied_run)
    code = train_main([*ARGS, "--output-dir", str(copied_run), "--cache-dir", str(cache_dir), "--resume", "latest",
                       "--lstm-hidden", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "another shape" in err and "lstm" in err and "falling back" not in err, err
    assert snapshot(copied_run) == before


def test_a_new_run_in_a_folder_holding_a_run_is_refused_and_overwrite_replaces_it(copied_run, cache_dir, capsys):
    before = snapshot(copied_run)
    argv = [*ARGS, "--output-dir", str(copied_run), "--cache-dir", str(cache_dir), "--seed", "7"]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err, err
    assert "--resume latest" in err and "--output-dir" in err and "--overwrite" in err
    assert snapshot(copied_run) == before  # best_model/, checkpoints and config.json (eval reads it) unchanged
    assert train_main([*argv, "--epochs", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in (copied_run / "checkpoints").iterdir()) == ["epoch_1", "step_4"]  # none of the old run's
    assert len((copied_run / "metrics.jsonl").read_text().splitlines()) == 1
    saved = TrainConfig.load(copied_run / "config.json")
    assert saved.seed == 7 and saved.epochs == 1


def test_default_run_folders_differ_by_seed_and_data():
    runs = [dict(seed=1), dict(seed=2), dict(dataset="imagefolder", data_dir="/data/rafdb"),
            dict(dataset="imagefolder", data_dir="/data/fer2013")]
    assert len({TrainConfig(preset="cpu", **run).resolved_output_dir() for run in runs}) == len(runs)


def test_checkpoint_files_are_synced_before_complete_is_written(tmp_path, monkeypatch):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
    synced, fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd)))
    objects = checkpoint.TrainingObjects(model, optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer))
    final = checkpoint.save_checkpoint(accelerator, tmp_path, "step_1", {"global_step": 1, "epoch_complete": False}, objects)
    tmp = tmp_path / "checkpoints" / f".tmp-step_1-{os.getpid()}"
    marker = synced.index(str(tmp / f".COMPLETE.{os.getpid()}.tmp"))
    written = {str(tmp / p.name) for p in final.iterdir() if p.name != "COMPLETE"}
    assert len(written) >= 3 and written <= set(synced[:marker]) and str(tmp) in synced[:marker]
    assert str(tmp_path / "checkpoints") in synced[marker:]  # the rename into place is on disk too


def test_replacing_the_best_model_keeps_one_complete_copy_at_every_instant(tmp_path, monkeypatch):
    final = tmp_path / checkpoint.BEST_MODEL

    def write(folder: Path, text: str) -> None:
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_text(text)

    def findable() -> str:
        return (checkpoint.find_saved_model(final) / "model.safetensors").read_text()

    write(final, "old")
    seen, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda source, target: (replace(source, target), seen.append(findable())))
    checkpoint.write_directory(final, lambda folder: write(folder, "new"))
    assert seen == ["old", "new", "new"]  # old set aside, new renamed in, old dropped: never neither
    # A kill between the two renames: the old version is found, and the next run puts it back.
    monkeypatch.setattr(os, "replace", replace)
    write(tmp_path / f".tmp-{final.name}", "newer")
    os.replace(final, final.with_name(final.name + checkpoint.PREVIOUS))
    assert findable() == "new"
    checkpoint.recover_run(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [final.name] and findable() == "new"


# The chaos run: 6 optimizer steps per epoch, a checkpoint after each, and a validation set large enough for the
# best model to improve after epoch 1 (so best_model/ is replaced, not only written).
# fp32 and --seed 1: validation accuracy rises after epoch 1 (12.50 -> 16.67%), so a best model is replaced during the run
# and a kill can land inside that replacement; fp32 gives the same arithmetic on CPUs with and without AMX.
CHAOS_ARGS = ["--preset", "tiny", "--epochs", "3", "--synthetic-train", "48", "--synthetic-val", "48", "--batch-size", "8",
              "--checkpoint-every-steps", "1", "--keep-checkpoints", "2", "--seed", "1",
              "--mixed-precision", "no"]
CHAOS_STEPS = 18
# 20 kills: 5 at a random instant of the process's life, 3 at a random instant after a checkpoint or best model is
# renamed in, and 12 held inside a window: files written but not COMPLETE (write), the old best_model/ set aside and
# the new one not yet in (set-aside), just renamed in (commit), a pruned or dropped folder not yet deleted (remove).
CHAOS_KILLS = ["time"] * 5 + ["after-commit"] * 3 + ["write", "set-aside", "commit", "remove"] * 3


def chaos_kill(rng: random.Random, kind: str, latest_step: int, replacements: list[int], run_seconds: float) -> dict:
    """Where to kill the next run. Random instants scale with how long a whole run takes here. No kill may wait for
    what will not come: a set-aside needs a best-model replacement ahead (`replacements`: the steps whose epoch end
    replaces it), and within the last three steps only a kill at the next checkpoint (write, or commit: every step
    still renames one in) is drawn."""
    if (latest_step >= CHAOS_STEPS - 3 and kind != "commit") or (kind == "set-aside" and max(replacements) <= latest_step):
        kind = "write"
    if kind == "time":
        return {"after_seconds": rng.uniform(0.0, 0.15) * run_seconds}
    if kind == "after-commit":
        return {"event": "commit", "nth": 1, "delay": rng.uniform(0.0, 0.05) * run_seconds}
    return {"event": kind, "nth": 1, "delay": 0}


@pytest.fixture
def chaos_driver(tmp_path):
    """tests/chaos_driver.py: imports the trainer once, forks one child per run and SIGKILLs it when asked."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per child: the same arithmetic in every run
    process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "chaos_driver.py")], cwd=ROOT, env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    log = tmp_path / "chaos.log"

    def run(argv: list[str], kill: dict | None = None) -> dict:
        process.stdin.write(json.dumps({"argv": argv, "log": str(log), "kill": kill}) + "\n")
        process.stdin.flush()
        reply = process.stdout.readline()
        assert reply, f"the chaos driver died:\n{log.read_text()[-3000:] if log.exists() else ''}"
        return {**json.loads(reply), "log": log}

    yield run
    process.kill()  # it holds no state worth a clean exit
    process.wait()


def assert_every_complete_checkpoint_loads_and_the_best_model_is_found(run: Path, best_saved: bool) -> None:
    from emotion.model import load_model

    for path in complete_checkpoints(run):
        assert load_file(path / "model.safetensors") and json.loads((path / checkpoint.TRAINER_STATE).read_text())
        assert checkpoint.damage(path) is None and load_file(path / "optimizer.safetensors")
    if best_saved:
        load_model(run / checkpoint.BEST_MODEL)  # best_model/, or the complete previous one a kill left beside it


def test_chaos_twenty_sigkills_then_resume_match_an_uninterrupted_run(chaos_driver, tmp_path, cache_dir):
    common = [*CHAOS_ARGS, "--cache-dir", str(cache_dir)]
    reference, run = tmp_path / "reference", tmp_path / "run"
    # A first run builds the synthetic cache and its decoded pixels, so the reference times what every later run pays.
    assert chaos_driver([*common, "--output-dir", str(tmp_path / "warm-up")])["returncode"] == 0
    uninterrupted = chaos_driver([*common, "--output-dir", str(reference)])
    assert uninterrupted["returncode"] == 0
    accuracies = [r["val_accuracy"] for r in history(reference)]
    replacements = [r["global_step"] for i, r in enumerate(history(reference)) if i and accuracies[i] > max(accuracies[:i])]
    assert replacements, f"validation accuracy never improved after epoch 1 ({accuracies}): no best-model replacement to kill in"
    rng, kinds = random.Random(15), CHAOS_KILLS.copy()
    rng.shuffle(kinds)
    best_saved, latest_step, hit = False, 0, set()
    for i, kind in enumerate(kinds):
        kill = chaos_kill(rng, kind, latest_step, replacements, uninterrupted["seconds"])
        reply = chaos_driver([*common, "--output-dir", str(run), *(["--resume", "latest"] if i else [])], kill)
        assert reply["killed"] and reply["returncode"] == -signal.SIGKILL, f"kill {i} {kill}: {reply}"
        hit.add(kill.get("event", "time"))
        best_saved |= ["commit", checkpoint.BEST_MODEL] in reply["events"]
        assert_every_complete_checkpoint_loads_and_the_best_model_is_found(run, best_saved)
        latest_step = json.loads((complete_checkpoints(run)[-1] / checkpoint.TRAINER_STATE).read_text())["global_step"] \
            if complete_checkpoints(run) else 0
    assert hit == {"time", "write", "set-aside", "commit", "remove"}
    assert chaos_driver([*common, "--output-dir", str(run), "--resume", "latest"])["returncode"] == 0
    assert same_weights(reference / "checkpoints" / "epoch_3", run / "checkpoints" / "epoch_3")
    assert same_weights(reference / "best_model", run / "best_model")
    assert history(reference) == history(run)
    assert json.loads((reference / "best_model" / "metrics.json").read_text()) == \
        json.loads((run / "best_model" / "metrics.json").read_text())

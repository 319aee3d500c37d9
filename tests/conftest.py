"""Shared fixtures: offline, tracker-free, small thread count, and one tiny trained run reused by many tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_script(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run a top-level script as a user would (env values of None unset a variable); on failure show its output."""
    merged = {**os.environ, **(env or {})}
    result = subprocess.run([sys.executable, *args], cwd=cwd, env={k: v for k, v in merged.items() if v is not None},
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_dir) -> Path:
    """A 2-epoch `tiny` preset training run on synthetic faces (the layout every later test reads)."""
    output = tmp_path_factory.mktemp("runs") / "tiny"
    run_script("train_accelerate.py", "--preset", "tiny", "--epochs", "2", "--output-dir", str(output),
               "--cache-dir", str(cache_dir))
    return output


@pytest.fixture(scope="session")
def tiny_onnx(tiny_run, tmp_path_factory) -> Path:
    """The tiny run's best model exported by `emotion-export` into its own folder (model.onnx + config + card)."""
    from emotion.cli import export_main

    out = tmp_path_factory.mktemp("onnx") / "export"
    assert export_main(["--model", str(tiny_run / "best_model"), "--format", "onnx", "--output-dir", str(out)]) == 0
    return out


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Tests that build an Accelerator in-process must not inherit another test's singleton state."""
    yield
    from accelerate.state import AcceleratorState, PartialState

    AcceleratorState._reset_state(True)
    PartialState._reset_state()

"""Bad input as a new user types it, swept over the scripts' own parsers: every numeric flag at zero, below zero and
absurdly large, every input file missing, empty and truncated. Each is refused before any work in one line that names
it, exit 2, and nothing is written. In-process: the whole sweep costs seconds."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from emotion import cli
from emotion.config import Range

FIXTURE_MODEL = Path(__file__).parent / "fixtures" / "cpu_model"
# The scripts and the function where each one's work starts (never reached by bad input; stubbed for the sweep).
SCRIPTS = {
    "train_accelerate.py": (cli.train_parser, cli.train_main, "emotion.training", "train"),
    "eval_accelerate.py": (cli.eval_parser, cli.eval_main, "emotion.evaluation", "evaluate_saved_model"),
    "webcam_demo.py": (cli.demo_parser, cli.demo_main, "emotion.demo", "run"),
    "emotion-export": (cli.export_parser, cli.export_main, "emotion.export", "export_onnx"),
    "emotion-bench": (cli.bench_parser, cli.bench_main, "emotion.bench", "run_benchmark"),
}


class WorkStarted(Exception):
    """The stub where a script's work would begin: the value passed every check."""


def numeric_flags(parser: argparse.ArgumentParser) -> list[tuple[str, type, str]]:
    """(flag, int or float, help) of every numeric option: a flag added later is swept without editing this file."""
    found = []
    for action in parser._actions:
        kind = action.type.kind if isinstance(action.type, Range) else action.type
        if kind in (int, float):
            found.append((action.option_strings[-1], kind, action.help or ""))
    return found


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """An empty current folder (defaults such as results/ land here) holding a copy of a real saved model."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(FIXTURE_MODEL, tmp_path / "model")
    cv2.imwrite(str(tmp_path / "face.png"), np.full((48, 48, 3), 128, np.uint8))
    return tmp_path


def files_in(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def base_argv(script: str, workspace: Path) -> list[str]:
    """Valid arguments around the one under test; every output goes into the workspace."""
    out = workspace / "out"
    return {
        "train_accelerate.py": ["--preset", "tiny", "--output-dir", str(out), "--cache-dir", str(workspace / "cache")],
        "eval_accelerate.py": ["--model", str(workspace / "model"), "--output-dir", str(out)],
        "webcam_demo.py": ["--model", str(workspace / "model"), "--source", str(workspace / "face.png"), "--no-display",
                           "--output", str(out), "--json", str(workspace / "records.jsonl")],
        "emotion-export": ["--model", str(workspace / "model"), "--output-dir", str(out)],
        "emotion-bench": ["--preset", "tiny", "--output", str(out / "bench.json")],
    }[script]


def assert_refused(main, argv: list[str], names: str, workspace: Path, capsys) -> str:
    before = files_in(workspace)
    assert main(argv) == 2, f"{argv} was not refused"
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert names in err, f"{names!r} not named in: {err}"
    assert files_in(workspace) == before, f"{argv} wrote {files_in(workspace) - before}"
    return err


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_numeric_flag_refuses_zero_negative_and_absurd_values(script, workspace, monkeypatch, capsys):
    make_parser, main, module, function = SCRIPTS[script]

    def work_started(*args, **kwargs):
        raise WorkStarted

    monkeypatch.setattr(f"{module}.{function}", work_started)
    flags = numeric_flags(make_parser())
    assert len(flags) >= (30 if script == "train_accelerate.py" else 2)  # the sweep found the parser's flags
    for flag, kind, help_text in flags:
        absurd = ["1000000000000000"] + (["1e15", "nan", "inf"] if kind is float else [])
        for value in ["-1", *absurd]:
            err = assert_refused(main, [*base_argv(script, workspace), flag, value], flag, workspace, capsys)
            assert "use " in err  # and what would be accepted
        # Zero is a value only where --help says so (its range starts at 0, or "0 = ..." says what it means).
        if "from 0" in help_text:
            with pytest.raises(WorkStarted):
                main([*base_argv(script, workspace), flag, "0"])
            capsys.readouterr()
        else:
            assert_refused(main, [*base_argv(script, workspace), flag, "0"], flag, workspace, capsys)


def test_type_errors_and_backbone_limits_are_one_line(workspace, capsys):
    argv = base_argv("train_accelerate.py", workspace)
    assert_refused(cli.train_main, [*argv, "--batch-size", "eight"], "--batch-size", workspace, capsys)
    assert_refused(cli.train_main, [*argv, "--soft-labels=maybe"], "--soft-labels", workspace, capsys)
    assert_refused(cli.train_main, [*argv, "--image-size", "8"], "--image-size", workspace, capsys)  # below one grid cell
    assert_refused(cli.train_main, [*argv, "--output-stride", "12"], "--output-stride", workspace, capsys)
    assert_refused(cli.train_main, [*argv, "--backbone", "efficientnet_b99"], "--backbone", workspace, capsys)
    assert_refused(cli.eval_main, [], "--model", workspace, capsys)  # a missing required flag: one line, not the usage


def damaged_copies(workspace: Path, source: Path, name: str) -> dict[str, Path]:
    """`name` missing, empty and truncated to half, each in its own copy of the folder `source`."""
    copies = {}
    for damage in ("missing", "empty", "truncated"):
        folder = workspace / f"{source.name}-{name}-{damage}"
        shutil.copytree(source, folder)
        target = folder / name
        data = target.read_bytes()
        if damage == "missing":
            target.unlink()
        else:
            target.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
        copies[damage] = folder
    return copies


def onnx_model(path: Path) -> Path:
    """A small valid ONNX graph (damaged copies of it must be refused)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_every_file_argument_refuses_missing_empty_and_truncated_files(workspace, capsys):
    from safetensors.torch import save_file

    from emotion.config import PRESETS, TrainConfig
    from emotion.model import build_model

    model = workspace / "model"
    bad_models = {**damaged_copies(workspace, model, "model.safetensors"),
                  "config truncated": damaged_copies(workspace, model, "config.json")["truncated"],
                  "absent": workspace / "no-model"}
    onnx_dir = workspace / "exported"
    onnx_dir.mkdir()
    shutil.copy2(model / "config.json", onnx_dir / "config.json")
    onnx_model(onnx_dir / "model.onnx")
    bad_onnx = {damage: folder / "model.onnx" for damage, folder in damaged_copies(workspace, onnx_dir, "model.onnx").items()}
    weights = workspace / "backbone.safetensors"
    save_file(build_model(TrainConfig(**PRESETS["tiny"])).backbone.state_dict(), str(weights))
    png = (workspace / "face.png").read_bytes()
    (workspace / "empty.png").write_bytes(b"")
    (workspace / "half.png").write_bytes(png[: len(png) // 2])
    (workspace / "empty.file").write_bytes(b"")
    (workspace / "half.safetensors").write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    detector = onnx_model(workspace / "yunet.onnx")
    (workspace / "half.onnx").write_bytes(detector.read_bytes()[: detector.stat().st_size // 2])

    run = workspace / "run"  # a run folder whose run configuration (read by eval) is truncated
    shutil.copytree(model, run / "best_model")
    (run / "config.json").write_text('{"dataset": "synth')
    onnx_config = damaged_copies(workspace, onnx_dir, "config.json")["truncated"] / "model.onnx"

    train, evaluate, demo = (base_argv(s, workspace) for s in ("train_accelerate.py", "eval_accelerate.py", "webcam_demo.py"))
    cases = [
        (cli.train_main, train, "--pretrained-path", workspace / "none.safetensors"),
        (cli.train_main, train, "--pretrained-path", workspace / "empty.file"),
        (cli.train_main, train, "--pretrained-path", workspace / "half.safetensors"),
        (cli.train_main, train, "--resume", workspace / "no-checkpoint"),
        (cli.train_main, train, "--resume", workspace / "empty.file"),
        (cli.eval_main, [*evaluate, "--dataset", "imagefolder"], "--data-dir", workspace / "no-data"),
        (cli.eval_main, [*evaluate, "--dataset", "imagefolder"], "--data-dir", workspace / "empty.file"),
        (cli.demo_main, demo, "--source", workspace / "no-such.png"),
        (cli.demo_main, demo, "--source", workspace / "empty.png"),
        (cli.demo_main, demo, "--source", workspace / "half.png"),
        (cli.demo_main, demo, "--detector-model", workspace / "none.onnx"),
        (cli.demo_main, demo, "--detector-model", workspace / "empty.file"),
        (cli.demo_main, demo, "--detector-model", workspace / "half.onnx"),
        *[(main, argv, "--model", path) for main, argv in ((cli.eval_main, evaluate), (cli.demo_main, demo))
          for path in bad_models.values()],
        *[(cli.demo_main, demo, "--model", path) for path in (*bad_onnx.values(), onnx_config)],
        (cli.eval_main, evaluate, "--model", run / "best_model"),
    ]
    for main, argv, flag, path in cases:
        # The last value of a repeated flag wins: the base argument is replaced by the bad one.
        named = "config.json" if path in (run / "best_model", onnx_config) else path.name
        err = assert_refused(main, [*argv, flag, str(path)], named, workspace, capsys)
        assert "damaged" in err or "no such" in err or "not" in err, err


def test_a_damaged_saved_model_is_named_by_export_and_the_app(workspace, capsys):
    truncated = damaged_copies(workspace, workspace / "model", "model.safetensors")["truncated"]
    for main in (cli.export_main, cli.app_main):
        err = assert_refused(main, ["--model", str(truncated)], "model.safetensors", workspace, capsys)
        assert "damaged" in err


def test_push_without_the_hub_says_why_in_one_line(workspace, monkeypatch, capsys):
    from huggingface_hub import constants

    argv = ["--model", str(workspace / "model"), "--repo-id", "someone/emotion"]
    (workspace / "model" / "README.md").write_text("card\n")  # else the push writes the card first
    assert_refused(cli.push_main, argv, "HF_HUB_OFFLINE", workspace, capsys)  # the tests run offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: as without a network
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert_refused(cli.push_main, [*argv, "--token", "hf_none"], "unreachable", workspace, capsys)

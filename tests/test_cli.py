"""What every command's --help and flags promise: one switch convention, each default once, the presets table,
the name the user typed, emotion-prepare's data flags only; and the one-line refusals of flags that cannot work."""
from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import fields

import cv2
import pytest
import skimage.data

from conftest import ROOT
from emotion import cli
from emotion.config import DATA_FIELDS, PRESETS, REAL_DATA_OVERRIDES, TrainConfig

PARSERS = {"train": cli.train_parser, "eval": cli.eval_parser, "prepare": cli.prepare_parser, "export": cli.export_parser,
           "bench": cli.bench_parser, "push": cli.push_parser, "app": cli.app_parser, "demo": cli.demo_parser}


def benchmark_parsers() -> dict:
    import importlib.util

    found = {}
    for name in ("demo_bench", "seeds"):
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found[name] = module.parser
    return found


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def test_train_help_ends_with_the_presets_table_and_says_each_default_once():
    text = cli.train_parser().format_help()
    table = [re.split(r"\s{2,}", line.strip()) for line in text[text.index("presets:"):].splitlines()
             if line.startswith("  ")]
    header, rows = table[0], {cells[0]: dict(zip(table[0][1:], cells[1:])) for cells in table[1:]}
    assert header == ["flag", "tiny", "cpu", "cpu (real data)", "b4"]
    for column, values in {**PRESETS, "cpu (real data)": {**PRESETS["cpu"], **REAL_DATA_OVERRIDES["cpu"]}}.items():
        for key, value in values.items():
            unused = key in ("lr_patience", "lr_factor") and values.get("lr_schedule", "plateau") != "plateau"  # plateau-only
            assert rows[f"--{key.replace('_', '-')}"][column] == ("unused" if unused else str(value)), (column, key)
    assert rows["--lr-schedule"]["cpu"] == "wsd" and rows["--lr-schedule"]["cpu (real data)"] == "cosine"
    assert text.rstrip().endswith(" ".join(table[-1]).split()[-1])  # the table is the end of the help
    assert "(default: None)" not in text
    for option in re.split(r"\n  (?=-)", text[:text.index("presets:")]):
        assert option.count("default") <= 1, option


@pytest.mark.parametrize("name", [*PARSERS, "demo_bench", "seeds"])
def test_every_flag_has_help_and_shows_its_default(name):
    parser = PARSERS[name]() if name in PARSERS else benchmark_parsers()[name]()
    formatter = parser._get_formatter()
    for action in options(parser):
        assert action.help, f"{name}: {action.option_strings} has no help"
        shown = formatter._expand_help(action) if action.help else ""
        if action.default is not None and not action.required:
            assert "default" in shown, f"{name}: {action.option_strings} hides its default {action.default!r}"
        assert "(default: None)" not in shown and shown.count("default") <= 1, (name, shown)


@pytest.mark.parametrize("name", [*PARSERS, "demo_bench", "seeds"])
def test_switches_are_x_and_no_x(name):
    parser = PARSERS[name]() if name in PARSERS else benchmark_parsers()[name]()
    for action in options(parser):
        assert action.metavar != "BOOL", f"{name}: {action.option_strings} takes true/false"
        if isinstance(action.default, bool) or action.nargs == 0:
            assert isinstance(action, argparse.BooleanOptionalAction), f"{name}: {action.option_strings} is not --x/--no-x"


def test_one_name_means_one_thing():
    train = {s for a in options(cli.train_parser()) for s in a.option_strings}
    demo = {s for a in options(cli.demo_parser()) for s in a.option_strings}
    assert "--no-attention" in train and "--no-attention" not in demo and "--no-heatmap" in demo
    bench = {s for a in options(cli.bench_parser()) for s in a.option_strings}
    assert {"--channels-last", "--no-channels-last", "--compile"} <= train & bench  # the same switch in both


@pytest.mark.parametrize("argv0, usage", [
    ("/home/u/.venv/bin/emotion-train", "usage: emotion-train "),
    ("train_accelerate.py", "usage: train_accelerate.py "),
    (str(ROOT / "emotion" / "prepare.py"), "usage: python -m emotion.prepare "),
])
def test_usage_names_the_command_typed(monkeypatch, argv0, usage):
    monkeypatch.setattr(sys, "argv", [argv0])
    parser = cli.prepare_parser() if "prepare" in argv0 else cli.train_parser()
    assert parser.format_usage().startswith(usage)


def test_prepare_offers_the_data_flags_training_uses():
    prepare = {a.dest for a in options(cli.prepare_parser())}
    assert prepare == set(DATA_FIELDS)
    train = {a.dest: a.option_strings for a in options(cli.train_parser())}
    for action in options(cli.prepare_parser()):
        assert action.option_strings == train[action.dest]  # same names as training
    # every setting the data readers read is a prepare flag (a new reader option must be added to DATA_FIELDS)
    config_fields = {f.name for f in fields(TrainConfig)}
    read = set()
    for path in (ROOT / "emotion" / "data").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "config":
                read.add(node.attr)
    assert read & config_fields <= set(DATA_FIELDS), read & config_fields - set(DATA_FIELDS)


def test_sync_bn_on_cpu_processes_is_refused_once_before_work(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, lines in (("0", 1), ("1", 0)):
        monkeypatch.setenv("RANK", rank)
        assert cli.train_main(["--preset", "tiny", "--sync-bn", "--output-dir", "unused"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == lines and ("--sync-bn needs GPUs" in err) == bool(lines)


def test_demo_output_for_one_photo_is_that_image_file(tiny_run, tmp_path, capsys):
    photo = tmp_path / "photo.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    model = str(tiny_run / "best_model")
    assert cli.demo_main(["--model", model, "--source", str(photo), "--no-display", "--output", str(tmp_path / "out.png")]) == 0
    assert (tmp_path / "out.png").is_file() and cv2.imread(str(tmp_path / "out.png")).shape == (512, 512, 3)
    capsys.readouterr()
    assert cli.demo_main(["--model", model, "--source", str(photo), "--no-display", "--output", str(tmp_path / "out.mp4")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names a video" in err and not (tmp_path / "out.mp4").exists()

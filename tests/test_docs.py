"""Every code block of README.md and docs/*.md runs as a user would paste it, at tiny sizes.

How a fenced block is treated (its language tag, and an optional marker on the line just above the fence):
- ```bash: each command goes in-process through its entry point, in a workspace folder holding what the docs name:
  `results/quickstart/` (a copy of the shared tiny run, with the shared tiny ONNX export as best_model/model.onnx),
  `results/onnx/` (that export), `photo.jpg`, `photos/`, `clip.mp4`. Then, by command:
    * training on the synthetic set trains, rewritten to the tiny preset and tiny sizes (TINY_SIZES);
    * training on a real data set, with --resume, and emotion-prepare: the flags, preset and values are resolved
      (config_from_args, as the command does before it starts work);
    * emotion-bench runs at tiny sizes (TINY_BENCH);
    * evaluation and the headless demo (3 frames) run on the quickstart model;
    * everything else (export: tests/test_export.py runs it; the web app; Hub uploads; a model of a real-data run;
      benchmarks/seeds.py with the training flags after `--`; the windowed demo) is parsed by its own parser;
    * `make TARGET`: the target must exist in the Makefile; `accelerate launch [its flags] SCRIPT ...` runs SCRIPT
      (the launcher itself is tests/test_distributed.py's).
  A command that appears twice (or twice after the tiny rewrite) runs once.
- ```python: exec'd in the workspace.
- ```yaml: parsed; ```text (output, file listings): not run.
- `<!-- docs-test: skip REASON -->` on the line above a block skips it (GPUs, several machines, network); there are
  at most MAX_SKIPPED of them.
A block without a language tag fails: say what it is. A command no rule covers fails: add a rule or a marker.
"""
from __future__ import annotations

import re
import shlex
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import yaml

from conftest import ROOT

from emotion.errors import EmotionError

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)\s*$")
SKIP = re.compile(r"^<!-- docs-test: skip (?P<reason>.+?) -->$")
MAX_SKIPPED = 8
DONE: set = set()  # commands already run, across all the docs
OUTSIDE = re.compile(r"\.\./shared|/w" r"ork/")  # split so this file does not match itself

TINY_SIZES = ["--epochs", "1", "--synthetic-train", "16", "--synthetic-val", "8"]
TINY_BENCH = ["--preset", "tiny", "--steps", "1", "--warmup", "0", "--repeats", "1", "--loader-samples", "16",
              "--latency-runs", "1"]
DROPPED_WITH_VALUE = {"--preset", "--epochs", "--image-size", "--batch-size", "--synthetic-train", "--synthetic-val",
                      "--steps", "--warmup", "--repeats", "--loader-samples", "--latency-runs", "--num-workers"}
SCRIPTS = {  # what a command names -> the entry point it runs
    "train_accelerate.py": "train", "emotion-train": "train", "eval_accelerate.py": "eval", "emotion-eval": "eval",
    "webcam_demo.py": "demo", "emotion-demo": "demo", "emotion-prepare": "prepare", "emotion.prepare": "prepare",
    "emotion-export": "export", "emotion-push": "push", "emotion-app": "app", "emotion.app": "app",
    "emotion-bench": "bench", "benchmarks/bench.py": "bench", "benchmarks/seeds.py": "seeds",
    "benchmarks/demo_bench.py": "demo_bench", "benchmarks/cross_dataset.py": "cross_dataset",
}


def blocks(path: Path) -> list[dict]:
    """The fenced blocks of a markdown file: language, text, first line, skip reason."""
    found, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker = SKIP.match(lines[i - 1].strip()) if i else None
        found.append({"lang": opened.group(1), "text": "\n".join(lines[i + 1:end]), "line": i + 1,
                      "skip": marker.group("reason") if marker else None})
        i = end + 1
    return found


def commands(text: str) -> list[list[str]]:
    """Shell commands of a bash block: continuation lines joined, comments dropped, VAR="..." expanded later on."""
    variables, result = {}, []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if len(words) == 1 and re.match(r"^[A-Z_]+=", words[0]):
            name, value = words[0].split("=", 1)
            variables[name] = value
            result.append(shlex.split(value))  # the value is a command too: check it
            continue
        expanded = []
        for word in words:
            expanded += shlex.split(variables[word[1:]]) if word.startswith("$") and word[1:] in variables else [word]
        result.append(expanded)
    return result


def entry_point(words: list[str]) -> tuple[str, list[str]]:
    """('train', [flags]) for `python train_accelerate.py ...`, `emotion-train ...`, `accelerate launch ... X.py ...`."""
    while len(words) > 1 and re.match(r"^[A-Z_]+=\S*$", words[0]):  # OMP_NUM_THREADS=2 python ...: the environment
        words = words[1:]
    if words[0] == "accelerate" and words[1] == "launch":
        script = next(i for i, w in enumerate(words) if w.endswith(".py"))
        return SCRIPTS[words[script]], words[script + 1:]
    if words[0] == "make":
        return "make", words[1:]
    if Path(words[0]).name in ("python", "python3"):
        if words[1] == "-m":
            return SCRIPTS[words[2]], words[3:]
        return SCRIPTS[words[1]], words[2:]
    return SCRIPTS[Path(words[0]).name], words[1:]


def with_value_dropped(args: list[str], flags: set[str]) -> list[str]:
    kept, skip = [], False
    for word in args:
        if skip:
            skip = False
        elif word in flags:
            skip = True
        else:
            kept.append(word)
    return kept


def value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def run_command(name: str, args: list[str], cache_dir: Path, done: set) -> None:
    from emotion import cli

    model = value(args, "--model") or ""
    quickstart = model.startswith("results/quickstart") or model.startswith("results/onnx")
    synthetic_training = name == "train" and "--help" not in args and "--resume" not in args \
        and value(args, "--dataset") in (None, "synthetic")
    if synthetic_training:
        args = [*with_value_dropped(args, DROPPED_WITH_VALUE), "--preset", "tiny", *TINY_SIZES, "--cache-dir", str(cache_dir)]
    elif name == "bench":
        args = [*with_value_dropped(args, DROPPED_WITH_VALUE), *TINY_BENCH, "--cache-dir", str(cache_dir)]
    key = (name, tuple(with_value_dropped(args, {"--output-dir"})))
    if key in done:  # the same command in two places (or the same after the tiny rewrite) runs once
        return
    done.add(key)
    if name == "make":
        targets = re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), re.M)
        assert args and all(t in targets for t in args), f"make {args}: not a Makefile target"
    elif name == "train" and "--help" in args:
        with pytest.raises(SystemExit) as exited:
            cli.train_main(args)
        assert exited.value.code == 0
    elif synthetic_training:
        assert cli.train_main(args) == 0
    elif name in ("train", "prepare"):
        from emotion.config import config_from_args

        config_from_args((cli.train_parser() if name == "train" else cli.prepare_parser()).parse_args(args), choose=True)
    elif name == "bench":
        assert cli.bench_main(args) == 0
    elif name == "eval" and quickstart:
        assert cli.eval_main(args) == 0
    elif name == "demo" and quickstart and "--no-display" in args:
        assert cli.demo_main([*args, "--max-frames", "3"]) == 0
    elif name in ("seeds", "demo_bench", "cross_dataset"):  # benchmarks/X.py: its parser, and for seeds.py the training flags after --
        own, training = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
        benchmark(name).parser().parse_args(own)
        cli.train_parser().parse_args(training)
    else:
        getattr(cli, f"{name}_parser")().parse_args(args)


def benchmark(name: str):
    """A script of benchmarks/ as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workspace(tiny_run, tiny_onnx, tmp_path_factory) -> Path:
    """A folder holding what the docs name: the quickstart run and its ONNX export, a photo, photos/, a video."""
    root = tmp_path_factory.mktemp("docs")
    shutil.copytree(tiny_run, root / "results" / "quickstart")
    shutil.copytree(tiny_onnx, root / "results" / "onnx")
    shutil.copy(tiny_onnx / "model.onnx", root / "results" / "quickstart" / "best_model")
    face = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(root / "photo.jpg"), face)
    (root / "photos").mkdir()
    cv2.imwrite(str(root / "photos" / "astronaut.jpg"), face)
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (256, 256))
    for i in range(4):
        writer.write(cv2.warpAffine(cv2.resize(face, (256, 256)), np.float32([[1, 0, 2 * i], [0, 1, 0]]), (256, 256)))
    writer.release()
    return root


@pytest.mark.parametrize("doc", DOCS, ids=[p.relative_to(ROOT).as_posix() for p in DOCS])
def test_code_blocks_run(doc, workspace, cache_dir, monkeypatch):
    from accelerate.state import AcceleratorState, PartialState

    monkeypatch.chdir(workspace)
    done = DONE
    for block in blocks(doc):
        where = f"{doc.name}:{block['line']}"
        assert block["lang"] in ("bash", "python", "yaml", "text"), f"{where}: tag the block (bash, python, yaml, text)"
        if block["skip"] or block["lang"] == "text":
            continue
        if block["lang"] == "yaml":
            assert yaml.safe_load(block["text"].strip().strip("-")), where
        elif block["lang"] == "python":
            exec(compile(block["text"], where, "exec"), {"__name__": "__docs__"})
        else:
            for words in commands(block["text"]):
                try:
                    name, args = entry_point(words)
                except (KeyError, StopIteration):
                    raise AssertionError(f"{where}: no rule runs {shlex.join(words)!r}: add one or mark the block") from None
                try:
                    run_command(name, args, cache_dir, done)
                except SystemExit as exited:  # argparse refused a flag or a value
                    raise AssertionError(f"{where}: {shlex.join(words)!r} exited {exited.code}") from None
                AcceleratorState._reset_state(True)
                PartialState._reset_state()


def test_few_blocks_are_skipped_and_each_says_why():
    skipped = [(doc.name, b["line"], b["skip"]) for doc in DOCS for b in blocks(doc) if b["skip"]]
    assert len(skipped) <= MAX_SKIPPED, skipped
    assert all(len(reason.split()) >= 3 for _, _, reason in skipped), skipped


def test_no_file_points_outside_the_project():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        path = ROOT / name
        if path.suffix in (".png", ".safetensors", ".onnx") or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        assert not OUTSIDE.search(text), f"{name} refers to a path outside the project: {OUTSIDE.search(text).group()}"


def test_the_runner_catches_a_pasted_mistake(cache_dir):
    for text in ("python train_accelerate.py --preset b4 --dataset affectnet_plus --data-dir /d --soft-labels true",
                 "emotion-bench --preset cpu --channel-last", "emotion-app --model m --port eighty"):
        name, args = entry_point(commands(text)[0])
        with pytest.raises((SystemExit, EmotionError, AssertionError)):  # refused while parsing, or a non-zero exit code
            run_command(name, args, cache_dir, set())
    with pytest.raises(KeyError):
        entry_point(["hf", "auth", "login"])  # a command no rule covers: its block needs a marker


def test_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("\n## ", readme.index("## Layout") + 1)]
    package = ROOT / "emotion"
    modules = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert {m for m in modules if f"`{m}`" not in layout} == set()

"""Train one preset over several seeds and tabulate how reliably it learns.

    python benchmarks/seeds.py --preset cpu --seeds 0-9
    python benchmarks/seeds.py --preset cpu --seeds 0,1,2 --dataset ferplus --data-dir /data/FERPlus -- --no-pretrained
    python benchmarks/seeds.py --preset cpu --seeds 2-4 -- --epochs 3      # anything after -- goes to every training run
    python benchmarks/seeds.py --preset cpu --seeds 0 --dataset ferplus --data-dir /data/FERPlus --test-after 3,6,12 -- --no-pretrained --lr-schedule plateau

Each seed is a full `train_accelerate.py` run (only --seed differs: the data stay fixed by --data-seed; a run already
in its folder is replaced, so every row is measured now), then
`eval_accelerate.py --split test` on its best model when the data set has a test split. With `--test-after 3,6,12`
the run stops after 3, 6 and 12 epochs, each time testing the model validation selected so far, then resumes: one row
per stop, test accuracy against training minutes. Prints a markdown table (seed, epochs, best and final validation
accuracy, test accuracy, training minutes = the epochs' own time, minutes = wall time with start-up, validation and
testing) and writes it with the raw rows as JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_seeds(text: str) -> list[int]:
    """'0-9' or '0,1,2' or '2-4,42'."""
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            low, high = (int(v) for v in part.split("-", 1))
            if high < low:
                raise argparse.ArgumentTypeError(f"seed range {part!r} runs backwards: write LOW-HIGH")
            seeds.extend(range(low, high + 1))
        else:
            seeds.append(int(part))
    return seeds


def parse_epochs(text: str) -> list[int]:
    """'3,6,12': increasing epoch counts."""
    try:
        epochs = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"epoch list {text!r} is not like 3,6,12") from None
    if any(e < 1 for e in epochs) or epochs != sorted(set(epochs)):
        raise argparse.ArgumentTypeError(f"epoch list {text!r} must increase and start at 1 or more, like 3,6,12")
    return epochs


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)


def one_seed(seed: int, options: argparse.Namespace, extra: list[str]) -> list[dict]:
    """One row per test point: the run's own end, or each epoch count of --test-after (the run resumed between them)."""
    out = Path(options.output_root) / f"seed{seed}"
    train_args = [str(ROOT / "train_accelerate.py"), "--preset", options.preset, "--dataset", options.dataset, "--seed", str(seed),
                  "--output-dir", str(out), *extra]
    if options.data_dir:
        train_args += ["--data-dir", options.data_dir]
    rows, minutes = [], 0.0
    for stage, epochs in enumerate(options.test_after or [None]):
        # A later stage resumes the same run: a resumed run trains exactly as an uninterrupted one (tests/test_fault_tolerance.py).
        stage_args = train_args + (["--overwrite"] if stage == 0 else ["--resume", "latest"])
        stage_args += ["--epochs", str(epochs)] if epochs else []
        started = time.perf_counter()
        trained = run(stage_args)
        minutes += (time.perf_counter() - started) / 60
        if trained.returncode != 0:
            return rows + [{"seed": seed, "error": (trained.stderr.strip().splitlines() or ["?"])[-1], "minutes": minutes}]
        rows.append(test_row(seed, out, minutes))
    return rows


def test_row(seed: int, out: Path, minutes: float) -> dict:
    """The run's history so far, and the test accuracy of the model validation selected (best_model/)."""
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    row = {"seed": seed, "epochs": len(history), "best_val_accuracy": max(r["val_accuracy"] for r in history),
           "final_val_accuracy": history[-1]["val_accuracy"], "final_train_accuracy": history[-1].get("train_accuracy"),
           "test_accuracy": None, "train_minutes": sum(r.get("epoch_seconds", 0.0) for r in history) / 60,
           "minutes": minutes, "output_dir": str(out)}
    report_dir = out / f"eval-test-epoch{len(history)}"
    evaluated = run([str(ROOT / "eval_accelerate.py"), "--model", str(out / "best_model"), "--split", "test",
                     "--output-dir", str(report_dir)])
    if evaluated.returncode == 0:
        report = json.loads((report_dir / "report.json").read_text())
        row.update(test_accuracy=report["accuracy"], test_balanced_accuracy=report["balanced_accuracy"])
    elif "has no test split" not in evaluated.stderr:  # a data set without one is normal; any other failure is kept
        row["test_error"] = (evaluated.stderr.strip().splitlines() or ["?"])[-1]
    return row


def table(rows: list[dict]) -> str:
    def pct(value) -> str:
        return "-" if value is None else f"{100 * value:.2f}"

    lines = ["| seed | epochs | best val acc % | final val acc % | test acc % | training minutes | minutes |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['seed']} | failed: {r['error']} | | | | | {r['minutes']:.1f} |")
        else:
            lines.append(f"| {r['seed']} | {r['epochs']} | {pct(r['best_val_accuracy'])} | {pct(r['final_val_accuracy'])} | "
                         f"{pct(r['test_accuracy'])} | {r['train_minutes']:.1f} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def run_config(options: argparse.Namespace, extra: list[str]):
    """The configuration every seed's run resolves to (preset, data set, the flags after --)."""
    from emotion.cli import train_parser
    from emotion.config import config_from_args

    args = ["--preset", options.preset, "--dataset", options.dataset, *extra]
    return config_from_args(train_parser().parse_args(args + (["--data-dir", options.data_dir] if options.data_dir else [])))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seeds.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="training preset (default: cpu)")
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-4"), help="'0-9', '0,1,2' (default: 0-4)")
    parser.add_argument("--dataset", default="synthetic", help="data set (default: synthetic)")
    parser.add_argument("--data-dir", default=None, help="root of a real data set (default: none)")
    parser.add_argument("--test-after", type=parse_epochs, default=None,
                        help="'3,6,12': train to the last of these epochs and test the model selected on validation after "
                             "each, for a table of test accuracy against training minutes (default: once, at the run's end)")
    parser.add_argument("--output-root", default="results/seeds", help="one run folder per seed under it (default: results/seeds)")
    parser.add_argument("--output", default=None, help="JSON path (default: <output-root>/seeds.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    options = parser().parse_args(argv)
    if options.test_after and run_config(options, extra).lr_schedule != "plateau":
        # Each stop would end its own decay and the resumed run would stretch it: not the run that --epochs N makes.
        parser().error("--test-after stops and resumes the run with a new --epochs, which reshapes the cosine or wsd lr schedule: "
                       "add -- --lr-schedule plateau, or run once per budget (-- --epochs N)")
    rows = []
    for seed in options.seeds:
        seed_rows = one_seed(seed, options, extra)
        rows += seed_rows
        print("\n".join(table(seed_rows).splitlines()[2:]), flush=True)
    ok = [r for r in rows if "error" not in r]
    summary = {"preset": options.preset, "dataset": options.dataset, "extra_args": extra, "rows": rows}
    if ok:
        finals = [r["final_val_accuracy"] for r in ok]
        summary.update(min_final_val_accuracy=min(finals), max_final_val_accuracy=max(finals))
    output = Path(options.output or Path(options.output_root) / "seeds.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2) + "\n")
    print("\n" + table(rows) + f"\n\nJSON: {output}")
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

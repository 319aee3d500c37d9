"""Everything that touches checkpoint files: atomic save, find latest complete, load with fallback, prune,
the interrupted/ state, NaN diagnostics, and the signal handler that asks the loop to stop.

A checkpoint is an `accelerator.save_state` folder plus `trainer_state.json`, written into a temporary
folder and renamed into place after `COMPLETE` (written last) is on disk. Folders without it are ignored.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from emotion.errors import EmotionError

logger = logging.getLogger(__name__)
PICK_ANOTHER = ": pick another or use --resume latest"

COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
CHECKPOINTS = "checkpoints"
INTERRUPTED = "interrupted"
# Testing hook (documented in docs/fault-tolerance.md): seconds to pause before a checkpoint is marked complete.
SAVE_DELAY_SECONDS = float(os.environ.get("EMOTION_FAULT_SAVE_DELAY", "0"))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON next to `path`, fsync, then rename over it: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def replace_directory(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder to `final`, replacing an older one without a moment of neither."""
    trash = final.with_name(f".trash-{final.name}")
    shutil.rmtree(trash, ignore_errors=True)
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: Path, name: str, trainer_state: dict[str, Any]) -> Path:
    """Save the full training state as `checkpoints/<name>` (or `interrupted/`). Call on every process."""
    final = output_dir / INTERRUPTED if name == INTERRUPTED else output_dir / CHECKPOINTS / name
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if SAVE_DELAY_SECONDS:  # fault injection: widen the window in which a kill lands mid-save
        time.sleep(SAVE_DELAY_SECONDS)
    if accelerator.is_main_process:
        write_json_atomic(tmp / TRAINER_STATE, trainer_state)
        write_json_atomic(tmp / COMPLETE, {"global_step": trainer_state["global_step"], "epoch_complete": trainer_state["epoch_complete"]})
        replace_directory(tmp, final)
    accelerator.wait_for_everyone()
    return final


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file() and (path / TRAINER_STATE).is_file()


def _order(path: Path) -> tuple[int, int]:
    marker = json.loads((path / COMPLETE).read_text())
    return int(marker["global_step"]), int(bool(marker["epoch_complete"]))


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (by optimizer step; an epoch end after a step save)."""
    candidates = [p for p in (output_dir / CHECKPOINTS).glob("*") if p.is_dir() and not p.name.startswith(".")]
    candidates.append(output_dir / INTERRUPTED)
    found = []
    for path in candidates:
        if not path.is_dir():
            continue
        try:
            if is_complete(path):
                found.append((_order(path), path))
                continue
        except (OSError, ValueError, KeyError):
            pass
        logger.warning("ignoring incomplete checkpoint %s (no valid %s marker)", path, COMPLETE)
    return [path for _, path in sorted(found)]


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler, scaler, RNG and sampler state; return the trainer state."""
    if not path.is_dir():
        raise EmotionError(f"checkpoint {path} does not exist: pass a checkpoint folder or --resume latest")
    if not is_complete(path):
        raise EmotionError(f"checkpoint {path} is incomplete or corrupt (no {COMPLETE} marker){PICK_ANOTHER}")
    try:
        trainer_state = json.loads((path / TRAINER_STATE).read_text())
        accelerator.load_state(str(path))
    except Exception as err:  # any unreadable piece makes the whole checkpoint unusable
        raise EmotionError(f"checkpoint {path} is corrupt ({type(err).__name__}: {str(err)[:120]}){PICK_ANOTHER}") from None
    return trainer_state


def resume(accelerator, output_dir: Path, spec: str) -> tuple[dict[str, Any], Path] | None:
    """`--resume latest`: newest loadable checkpoint, falling back past corrupt ones; else a given path."""
    if spec != "latest":
        path = Path(spec)
        return load_checkpoint(accelerator, path), path
    for path in reversed(complete_checkpoints(output_dir)):
        try:
            return load_checkpoint(accelerator, path), path
        except EmotionError as err:  # the advice to pick another is what happens next: not repeated
            print(f"warning: {str(err).removesuffix(PICK_ANOTHER)}; falling back to the previous checkpoint", file=sys.stderr)
    return None


def prune_checkpoints(output_dir: Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the `keep` newest regular checkpoints, never `protect`; drop a superseded interrupted/."""
    ordered = complete_checkpoints(output_dir)
    regular = [p for p in ordered if p.name != INTERRUPTED]
    doomed = regular[:-keep] if keep > 0 else []
    interrupted = output_dir / INTERRUPTED
    if ordered and ordered[-1] != interrupted and interrupted in ordered:
        doomed.append(interrupted)
    removed = []
    for path in doomed:
        if protect is not None and path.resolve() == Path(protect).resolve():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class StopRequest:
    """SIGINT / SIGTERM set a flag the loop checks after each step; a second Ctrl+C exits at once."""

    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

    def __init__(self) -> None:
        self.signum = 0
        self._previous = {}

    def install(self) -> "StopRequest":
        for signum in self.EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            print("\nsecond Ctrl+C: exiting now without saving", file=sys.stderr, flush=True)
            os._exit(130)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing this step, then saving interrupted/ ...",
              file=sys.stderr, flush=True)

    @classmethod
    def exit_code(cls, signum: int) -> int:
        return cls.EXIT_CODES.get(signal.Signals(signum), 128 + signum)

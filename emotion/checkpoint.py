"""Everything that touches run files: the run folder's identity, atomic save, find latest complete, load with
fallback, prune, the interrupted/ state, the best model's replacement, and the signal handler that asks the loop to stop.

A checkpoint is the training state as safetensors and JSON (emotion.state_files: nothing pickled) plus
`trainer_state.json`, written into a temporary folder, fsynced, marked `COMPLETE` (written last: every file with its
size and sha256) and renamed into place. A folder whose files do not match its marker is never loaded.
One run per folder: the main process holds an OS lock on `<run>/.run.lock` for the whole run.
A folder that is replaced (best_model/, interrupted/) keeps its old version as `<name>.previous` until the new one
is renamed in: after a kill at any instant one of the two is complete, and the next run puts it back.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from accelerate.utils import broadcast_object_list
from safetensors import safe_open

from emotion import state_files
from emotion.errors import EmotionError
from emotion.state_files import TrainingObjects

logger = logging.getLogger(__name__)
PICK_ANOTHER = ": pick another or use --resume latest"

COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
CHECKPOINTS = "checkpoints"
INTERRUPTED = "interrupted"
BEST_MODEL = "best_model"
RUN_CONFIG = "config.json"
RUN_LOCK = ".run.lock"
PREVIOUS = ".previous"
CHECKPOINT_NAME = re.compile(r"(epoch|step)_\d+")
# What a training run writes into its folder: any of these present means the folder holds a run.
RUN_ENTRIES = (RUN_CONFIG, BEST_MODEL, BEST_MODEL + PREVIOUS, CHECKPOINTS, INTERRUPTED, INTERRUPTED + PREVIOUS,
               "metrics.jsonl", "nan_diagnostics.jsonl")


class RunMismatch(EmotionError):
    """The folder or checkpoint belongs to another run: refused, never treated as corrupt."""


class CheckpointDamaged(EmotionError):
    """A checkpoint whose files do not match its COMPLETE marker, or that does not load: --resume latest tries an older one."""


class DiskFull(EmotionError):
    """The disk filled while a checkpoint or model was written; the partial folder is removed."""


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC as Python raises it, or as safetensors / torch report it from their own writers."""
    text = str(err)
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in text or "StorageFull" in text


def sync_dir(path: Path) -> None:
    """fsync a folder, so the names created or renamed in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(path: Path) -> None:
    """fsync every file under `path`, then its folders, deepest first: the data is on disk before a marker says so."""
    for folder, _, files in sorted(os.walk(path), key=lambda entry: -entry[0].count(os.sep)):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_dir(Path(folder))


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON next to `path`, fsync, then rename over it: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    sync_dir(path.parent)


def remove_directory(path: Path) -> None:
    """Rename out of sight, then delete: a kill mid-delete never leaves a half folder under a name that is read."""
    if not path.exists():
        return
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    sync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def restore_previous(final: Path) -> None:
    """Finish a replacement a kill interrupted: put `<final>.previous` back when `final` is missing, else drop it."""
    previous = final.with_name(final.name + PREVIOUS)
    if not previous.exists():
        return
    if final.exists():
        remove_directory(previous)
    else:
        os.replace(previous, final)
        sync_dir(final.parent)


def replace_directory(tmp: Path, final: Path) -> None:
    """Move a finished, synced temporary folder to `final`; the old `final` stays as `<final>.previous` meanwhile."""
    restore_previous(final)
    if final.exists():
        os.replace(final, final.with_name(final.name + PREVIOUS))
    os.replace(tmp, final)
    sync_dir(final.parent)
    restore_previous(final)  # the new one is in place: drop the old


@contextlib.contextmanager
def removed_on_failure(tmp: Path, what: str) -> Iterator[None]:
    """A folder being written: any failure deletes it; a full disk is said in one line (`what` names the save)."""
    try:
        yield
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(err):
            raise DiskFull(f"no space left on device while saving {what}: free space and `--resume latest`") from None
        raise


def write_directory(final: Path, write: Callable[[Path], None]) -> None:
    """Build a folder with `write(tmp)` in a temporary place, sync it, then swap it in for `final` (main process only)."""
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    with removed_on_failure(tmp, str(final)):
        write(tmp)
        sync_tree(tmp)
    replace_directory(tmp, final)


def find_saved_model(path: Path) -> Path:
    """A saved model folder, or the complete previous version kept while a kill interrupted its replacement."""
    previous = path.with_name(path.name + PREVIOUS)
    if not path.exists() and (previous / "model.safetensors").is_file():
        return previous
    return path


def file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file in a checkpoint folder with its size and sha256: what COMPLETE promises."""
    manifest = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != COMPLETE:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            manifest[path.name] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    return manifest


def _temporary_name(accelerator, final: Path) -> Path:
    """`.tmp-<name>-<pid of the main process>`: the same folder for every rank, another for every run."""
    token = [os.getpid()]
    if accelerator.num_processes > 1:
        broadcast_object_list(token, from_process=0)
    return final.with_name(f".tmp-{final.name}-{token[0]}")


def save_checkpoint(accelerator, output_dir: Path, name: str, trainer_state: dict[str, Any], objects: TrainingObjects) -> Path:
    """Save the full training state as `checkpoints/<name>` (or `interrupted/`). Call on every process."""
    final = output_dir / INTERRUPTED if name == INTERRUPTED else output_dir / CHECKPOINTS / name
    tmp = _temporary_name(accelerator, final)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with removed_on_failure(tmp, f"checkpoint {name}"):
        state_files.write_rng_state(tmp, accelerator.process_index)
        if accelerator.is_main_process:
            state_files.write_main_state(objects, tmp)
            write_json_atomic(tmp / TRAINER_STATE, trainer_state)
            sync_tree(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / COMPLETE, {"global_step": trainer_state["global_step"],
                                           "epoch_complete": trainer_state["epoch_complete"], "files": file_manifest(tmp)})
        replace_directory(tmp, final)
    accelerator.wait_for_everyone()
    return final


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file() and (path / TRAINER_STATE).is_file()


def damage(path: Path) -> str | None:
    """Why a checkpoint folder cannot be trusted (a file missing, resized or changed since COMPLETE), or None."""
    try:
        marker = json.loads((path / COMPLETE).read_text())
    except (OSError, ValueError):
        return f"no readable {COMPLETE} marker"
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{COMPLETE} lists no files (written by an older version, whose state was pickled and is never read now)"
    actual = file_manifest(path)
    for name, expected in sorted(files.items()):
        if name not in actual:
            return f"{name} is missing"
        if actual[name] != expected:
            field = "size" if actual[name]["size"] != expected.get("size") else "sha256"
            return f"{name} does not match its {field} in {COMPLETE}"
    return None


def _order(path: Path) -> tuple[int, int]:
    marker = json.loads((path / COMPLETE).read_text())
    return int(marker["global_step"]), int(bool(marker["epoch_complete"]))


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """Every folder named as a checkpoint (`checkpoints/epoch_N`, `step_N`, `interrupted/`), complete or not."""
    candidates = [p for p in (output_dir / CHECKPOINTS).glob("*") if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name)]
    return sorted(candidates) + ([output_dir / INTERRUPTED] if (output_dir / INTERRUPTED).is_dir() else [])


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first (by optimizer step; an epoch end after a step save)."""
    found = []
    for path in checkpoint_folders(output_dir):
        try:
            if is_complete(path):
                found.append((_order(path), path))
                continue
        except (OSError, ValueError, KeyError, TypeError):
            pass
        logger.warning("ignoring incomplete checkpoint %s (no valid %s marker)", path, COMPLETE)
    return [path for _, path in sorted(found)]


def refuse_unusable(output_dir: Path, reasons: list[str]) -> EmotionError:
    return EmotionError(f"--resume latest: no checkpoint in {output_dir} can be used ({'; '.join(reasons)}); nothing was "
                        "changed: put a good checkpoint back, or start over in this folder with --overwrite")


def run_contents(output_dir: Path) -> list[str]:
    """The entries of a training run present in `output_dir` (empty: the folder holds no run)."""
    return [name for name in RUN_ENTRIES if (output_dir / name).exists()]


def saved_run_config(path: Path) -> dict[str, Any] | None:
    """The run config a checkpoint (its trainer state) or a run folder (its config.json) was written with."""
    try:
        if (path / TRAINER_STATE).is_file():
            return json.loads((path / TRAINER_STATE).read_text())["config"]
        return json.loads((path / RUN_CONFIG).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: a corrupt checkpoint, handled when it is loaded


def check_same_run(path: Path, config) -> None:
    """Refuse, before any weights load, a run folder or checkpoint saved with other run-defining settings."""
    saved = saved_run_config(path)
    changed = config.run_differences(saved) if isinstance(saved, dict) else []
    if changed:
        raise RunMismatch(f"{path} belongs to a different run ({', '.join(changed)}): resume with its settings, "
                          "or start this run in a new --output-dir")


def accept_run(output_dir: Path, config) -> None:
    """A run folder holds one run: refuse a fresh start over it (without --overwrite) and a resume with other settings.

    Only reads, so a refused run leaves the folder exactly as it was.
    """
    if not config.resume:
        held = run_contents(output_dir)
        if held and not config.overwrite:
            raise RunMismatch(f"{output_dir} already holds a run ({', '.join(held)}): continue it with --resume latest, "
                              "start this one in a new --output-dir, or pass --overwrite to replace it")
        return
    check_same_run(output_dir, config)
    paths = complete_checkpoints(output_dir) if config.resume == "latest" else [Path(config.resume)]
    for path in paths:
        check_same_run(path, config)
    folders = checkpoint_folders(output_dir) if config.resume == "latest" else []
    # Refused before any data is prepared or model built; hashing stops at the newest checkpoint that verifies.
    if folders and all(damage(path) for path in reversed(paths)):
        raise refuse_unusable(output_dir, [f"{path.name}: {damage(path)}" for path in folders])


def clear_run(output_dir: Path) -> None:
    """--overwrite: delete what the previous run wrote (other files in the folder are left alone)."""
    for name in RUN_ENTRIES:
        path = output_dir / name
        if path.is_dir():
            remove_directory(path)
        elif path.exists():
            path.unlink()


def recover_run(output_dir: Path) -> None:
    """Undo what a kill left half done: put back a folder set aside for a replacement, delete unfinished writes."""
    for final in [output_dir / BEST_MODEL, output_dir / INTERRUPTED, *(output_dir / CHECKPOINTS).glob("*" + PREVIOUS)]:
        restore_previous(final.with_name(final.name.removesuffix(PREVIOUS)))
    for folder in (output_dir, output_dir / CHECKPOINTS):
        for leftover in [*folder.glob(".tmp-*"), *folder.glob(".trash-*")]:
            shutil.rmtree(leftover, ignore_errors=True)


def shape_differences(model, path: Path) -> list[str]:
    """Weights whose name or shape in the checkpoint differs from the (unwrapped) model built now; reads the header only."""
    weights = path / "model.safetensors"
    if not weights.is_file():
        return []
    with safe_open(str(weights), framework="pt") as handle:  # names as unwrapped; no DDP prefix
        saved = {key.removeprefix("module."): list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    built = {key: list(value.shape) for key, value in model.state_dict().items()}
    return ([f"{k}: {saved.get(k, 'none')} saved, {built.get(k, 'none')} now" for k in sorted(saved.keys() ^ built.keys())]
            + [f"{k}: {saved[k]} saved, {built[k]} now" for k in sorted(saved.keys() & built.keys()) if saved[k] != built[k]])


def load_checkpoint(accelerator, objects: TrainingObjects, path: Path) -> dict[str, Any]:
    """Verify every file against COMPLETE, read and check the whole state, then restore model, optimizer, scheduler,
    scaler and RNG; return the trainer state. Nothing changes unless every piece was read and fits."""
    if not path.is_dir():
        raise EmotionError(f"checkpoint {path} does not exist: pass a checkpoint folder or --resume latest")
    problem = damage(path)
    if problem:
        raise CheckpointDamaged(f"checkpoint {path} is damaged ({problem}){PICK_ANOTHER}")
    try:
        trainer_state = json.loads((path / TRAINER_STATE).read_text())
        differences = shape_differences(objects.model, path)
    except Exception as err:  # an unreadable header or state makes the whole checkpoint unusable
        raise CheckpointDamaged(f"checkpoint {path} is corrupt ({type(err).__name__}: {str(err)[:120]}){PICK_ANOTHER}") from None
    if differences:  # a model of another shape is another run, never a corrupt checkpoint to skip
        raise RunMismatch(f"checkpoint {path} holds a model of another shape ({'; '.join(differences[:3])}"
                          f"{'; ...' if len(differences) > 3 else ''}): resume with the settings it was trained with, "
                          "or start this run in a new --output-dir")
    try:
        loaded = state_files.read_state(path, objects, accelerator.process_index)
    except Exception as err:  # any unreadable piece makes the whole checkpoint unusable; nothing was applied yet
        raise CheckpointDamaged(f"checkpoint {path} is corrupt ({type(err).__name__}: {str(err)[:120]}){PICK_ANOTHER}") from None
    state_files.apply_state(objects, loaded)
    return trainer_state


def resume(accelerator, objects: TrainingObjects, output_dir: Path, spec: str) -> tuple[dict[str, Any], Path] | None:
    """`--resume latest`: the newest checkpoint that verifies and loads, falling back past damaged ones (never past
    another run's). None when the folder holds no checkpoint; a refusal (exit 2) when it holds some and none is usable."""
    if spec != "latest":
        path = Path(spec)
        return load_checkpoint(accelerator, objects, path), path
    complete = complete_checkpoints(output_dir)
    reasons = [f"{path.name}: no {COMPLETE} marker" for path in checkpoint_folders(output_dir) if path not in complete]
    for position, path in enumerate(reversed(complete)):
        try:
            return load_checkpoint(accelerator, objects, path), path
        except CheckpointDamaged as err:
            reason = str(err).removesuffix(PICK_ANOTHER)
            reasons.append(f"{path.name}: {reason.removeprefix(f'checkpoint {path} ')}")
            if position + 1 < len(complete):  # the advice to pick another is what happens next: not repeated
                print(f"warning: {reason}; falling back to the previous checkpoint", file=sys.stderr)
    if reasons:
        raise refuse_unusable(output_dir, reasons)
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
        remove_directory(path)
        removed.append(path)
    return removed


class RunLocked(EmotionError):
    """Another process holds the run folder's lock."""


class RunLock:
    """One run per folder: an exclusive flock on `<run>/.run.lock`, taken before data prep and held until release.

    The OS drops the lock when its holder dies, so a killed run's lock is simply taken over. The file holds the pid
    for the refusal message and is removed on release.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / RUN_LOCK
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunLocked(f"{self.path.parent} is in use by another training run (pid {holder}): wait for it to "
                                "end, stop it, or start this one in another --output-dir") from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # still held: nobody else has it open under this name
        except FileNotFoundError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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

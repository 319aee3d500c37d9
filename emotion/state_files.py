"""The training state a checkpoint holds, written by the project as safetensors and JSON: nothing in a run folder is
ever unpickled, so a planted file cannot run code on resume.

Reading parses and checks every piece against the objects built now before any of them changes, so a checkpoint that
fails to load leaves the model, optimizer and scheduler exactly as they were.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"  # moments as tensors; param groups and scalars in its JSON metadata
SCHEDULER_FILE = "lr_scheduler.json"
SCALER_FILE = "grad_scaler.json"
RNG_FILE = "rng_{rank}.safetensors"  # per process: torch (and CUDA) generators as tensors, python and numpy in metadata


class StateUnreadable(ValueError):
    """A piece of the saved state is missing, malformed or does not fit the objects built now."""


@dataclass
class TrainingObjects:
    """What a checkpoint restores besides the trainer state (scaler: the fp16 grad scaler, when there is one)."""

    model: torch.nn.Module  # unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any = None


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().contiguous() for key, value in tensors.items()}


def write_main_state(objects: TrainingObjects, folder: Path) -> None:
    """Model, optimizer, scheduler and scaler (the main process: they are the same on every rank)."""
    save_file(_plain(objects.model.state_dict()), str(folder / MODEL_FILE))
    saved = objects.optimizer.state_dict()
    tensors, scalars = {}, {}
    for param_id, entries in saved["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{name}"] = value
            else:
                scalars[f"{param_id}.{name}"] = value
    save_file(_plain(tensors), str(folder / OPTIMIZER_FILE),
              metadata={"param_groups": json.dumps(saved["param_groups"]), "scalars": json.dumps(scalars)})
    (folder / SCHEDULER_FILE).write_text(json.dumps(objects.scheduler.state_dict()))
    if objects.scaler is not None:
        (folder / SCALER_FILE).write_text(json.dumps(objects.scaler.state_dict()))


def write_rng_state(folder: Path, rank: int) -> None:
    """This process's generators: python, numpy, torch and every CUDA device."""
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    metadata = {"python": json.dumps([version, list(words), gauss]),
                "numpy": json.dumps([kind, keys.tolist(), position, has_gauss, cached])}
    save_file(tensors, str(folder / RNG_FILE.format(rank=rank)), metadata=metadata)


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise StateUnreadable(f"{path.name} is missing")
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise StateUnreadable(f"{path.name} is missing")
    return json.loads(path.read_text())


def _optimizer_state(folder: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    tensors, metadata = _read_tensors(folder / OPTIMIZER_FILE)
    groups, scalars = json.loads(metadata["param_groups"]), json.loads(metadata["scalars"])
    current = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise StateUnreadable(f"{OPTIMIZER_FILE} holds {len(groups)} parameter groups of another size")
    for group, now in zip(groups, current):
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        if set(group) != set(now):
            raise StateUnreadable(f"{OPTIMIZER_FILE} holds another optimizer's settings ({sorted(set(group) ^ set(now))})")
    params = {pid: param for group, built in zip(groups, optimizer.param_groups) for pid, param in zip(group["params"], built["params"])}
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *scalars.items()]:
        param_id, name = key.split(".", 1)
        if int(param_id) not in params:
            raise StateUnreadable(f"{OPTIMIZER_FILE} names parameter {param_id}, which the model has not")
        param = params[int(param_id)]
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
            raise StateUnreadable(f"{OPTIMIZER_FILE}: {key} has shape {list(value.shape)}, its parameter {list(param.shape)}")
        state.setdefault(int(param_id), {})[name] = value
    return {"state": state, "param_groups": groups}


def _rng_state(folder: Path, rank: int) -> dict[str, Any] | None:
    path = folder / RNG_FILE.format(rank=rank)
    if not path.is_file():
        return None  # saved by fewer processes: every batch reseeds from its position, so the run stays exact
    tensors, metadata = _read_tensors(path)
    version, words, gauss = json.loads(metadata["python"])
    kind, keys, position, has_gauss, cached = json.loads(metadata["numpy"])
    return {"python": (version, tuple(words), gauss),
            "numpy": (kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached), "tensors": tensors}


def read_state(folder: Path, objects: TrainingObjects, rank: int) -> dict[str, Any]:
    """Parse and check every piece; change nothing. Raises StateUnreadable (or the reader's own error) on any fault."""
    model, _ = _read_tensors(folder / MODEL_FILE)
    built = objects.model.state_dict()
    if model.keys() != built.keys() or any(model[k].shape != built[k].shape for k in model):
        raise StateUnreadable(f"{MODEL_FILE} does not fit the model built now")
    scheduler = _read_json(folder / SCHEDULER_FILE)
    if not isinstance(scheduler, dict) or set(scheduler) != set(objects.scheduler.state_dict()):
        raise StateUnreadable(f"{SCHEDULER_FILE} is not this scheduler's state")
    scaler = _read_json(folder / SCALER_FILE) if objects.scaler is not None else None
    return {"model": model, "optimizer": _optimizer_state(folder, objects.optimizer), "scheduler": scheduler,
            "scaler": scaler, "rng": _rng_state(folder, rank)}


def apply_state(objects: TrainingObjects, loaded: dict[str, Any]) -> None:
    """Put a checked state in place (read_state first: nothing here is expected to fail)."""
    objects.model.load_state_dict(loaded["model"], strict=True)
    objects.optimizer.load_state_dict(loaded["optimizer"])
    objects.scheduler.load_state_dict(loaded["scheduler"])
    if loaded["scaler"] is not None:
        objects.scaler.load_state_dict(loaded["scaler"])
    rng = loaded["rng"]
    if rng is not None:
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["tensors"]["torch"])
        cuda = [rng["tensors"][f"cuda.{i}"] for i in range(torch.cuda.device_count()) if f"cuda.{i}" in rng["tensors"]]
        if cuda and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

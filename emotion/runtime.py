"""Where the code runs: the one place that decides how an Accelerator is built for this machine."""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator


def launched_without_gpu() -> bool:
    """Several processes (accelerate launch / torchrun) but no CUDA: Accelerate only picks gloo when told cpu=True."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def make_accelerator(**kwargs) -> Accelerator:
    """An Accelerator that also gives real ranks when `accelerate launch --multi_gpu` runs on a CPU-only machine."""
    if launched_without_gpu():
        kwargs.setdefault("cpu", True)
    return Accelerator(**kwargs)

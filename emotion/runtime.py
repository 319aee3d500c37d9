"""Where the code runs: the one place that decides how an Accelerator is built for this machine."""
from __future__ import annotations

import os

import torch
from accelerate import Accelerator

from emotion.errors import EmotionError


def launch_number(name: str, default: int) -> int:
    """WORLD_SIZE / RANK as a launcher sets them; anything else is refused in one line before Accelerate reads it."""
    value = os.environ.get(name, str(default))
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise EmotionError(f"{name}={value!r} is not a process count or rank: unset it, or start several processes "
                           "with `accelerate launch`")
    return number


def launch_rank() -> int:
    """This process's rank in the launch (0 when started alone)."""
    return launch_number("RANK", 0)


def launched_without_gpu() -> bool:
    """Several processes (accelerate launch / torchrun) but no CUDA: Accelerate only picks gloo when told cpu=True."""
    return launch_number("WORLD_SIZE", 1) > 1 and not torch.cuda.is_available()


def make_accelerator(**kwargs) -> Accelerator:
    """An Accelerator that also gives real ranks when `accelerate launch --multi_gpu` runs on a CPU-only machine."""
    if launched_without_gpu():
        kwargs.setdefault("cpu", True)
    return Accelerator(**kwargs)


def share_cpu_cores(accelerator, loader_cores: int) -> None:
    """On CPU, leave `loader_cores` to the DataLoader workers: oversubscribed OpenMP threads spin and slow training.

    Measured on 2 cores (cpu preset, 96 px): 2 threads + 1 worker 120 img/s, 1 thread + 1 worker 167 img/s. A light
    loader needs no core of its own: the real-face cpu recipe (FER+, 64 px, 2x width, batch 32, one worker) trains at
    75 img/s with 1 thread and at 94 img/s with 2 (docs/learning.md), so it sets --loader-cores 0. An explicit
    OMP_NUM_THREADS wins.
    """
    if accelerator.device.type == "cpu":
        leave_cores_free(loader_cores, processes=accelerator.num_processes)


def leave_cores_free(count: int, processes: int = 1) -> None:
    """PyTorch threads = this process's share of the cores less `count` (at least 1); an explicit OMP_NUM_THREADS wins."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cores_per_process = max(1, (os.cpu_count() or 1) // processes)
    torch.set_num_threads(max(1, cores_per_process - count))


def cpu_isa() -> str:
    """The CPU's best matrix instructions as torch sees them: AMX-BF16, AVX512-BF16, or torch's capability (AVX2, ...)."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX-BF16"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return torch.backends.cpu.get_cpu_capability()


def choose_mixed_precision(requested: str = "auto") -> tuple[str, str]:
    """The precision a run trains at ('no', 'bf16' or 'fp16') and why. `auto`: `accelerate launch --mixed_precision`
    when given, else bf16 autocast where the hardware computes it natively (a GPU that supports it, a CPU with AMX
    or AVX512-BF16), fp32 elsewhere (emulated bf16 on a CPU is slower than fp32)."""
    if requested != "auto":
        return requested, "--mixed-precision"
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched:
        return launched, "accelerate launch --mixed_precision"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name()} computes bf16"
        return "no", f"auto: {torch.cuda.get_device_name()} has no bf16"
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return "no", "auto: fp32 on an Apple GPU"
    isa = cpu_isa()
    if isa in ("AMX-BF16", "AVX512-BF16"):
        return "bf16", f"auto: the CPU has {isa}"
    return "no", f"auto: the CPU has no native bf16 ({isa})"


def use_channels_last(requested: bool | None) -> bool:
    """Channels-last convolutions unless told otherwise; off by default on Apple GPUs."""
    if requested is not None:
        return requested
    return not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())

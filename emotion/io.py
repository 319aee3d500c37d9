"""Reading the files a run or a saved model holds (JSON, weights), each refused in one line when damaged."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from emotion.errors import EmotionError


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's content ({} when absent); a damaged one is named in one line."""
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, OSError) as err:
        raise EmotionError(f"{path} is damaged ({type(err).__name__}): copy it again or retrain") from None


def check_weights_file(path, what: str) -> None:
    """A weights file (.safetensors, or a torch .pth/.bin) that exists and reads whole: one line naming it otherwise."""
    path = Path(path)
    if not path.is_file():
        raise EmotionError(f"{what} {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt"):  # opening checks the header against the file's length
                pass
        else:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # an empty, truncated or foreign file: each reader has its own error types
        raise EmotionError(f"{what} {path} is damaged or not a weights file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:120] if str(err) else 'unreadable'}): copy it again") from None

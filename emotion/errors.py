"""User-facing errors: the entry points print these as one line, without a traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class EmotionError(Exception):
    """Bad input or an unusable resource; the message names the thing and what to do."""

    exit_code = 2
    quiet = False  # said already by another process of the same launch: exit without a second copy of the line


def cli_main(func: Callable[[], int | None]) -> Callable[[], int]:
    """Wrap a console entry point: EmotionError -> one line on stderr and its exit code (2 unless it says)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> int:
        try:
            return func(*args, **kwargs) or 0
        except EmotionError as err:
            if not err.quiet:
                print(f"error: {err}", file=sys.stderr)
            return err.exit_code

    return wrapper

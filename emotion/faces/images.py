"""Image files read with a bound: the pixel count comes from the file's header and is checked before anything is
decoded, so a small file that claims a huge picture costs nothing (the demo, the app, training data alike)."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from emotion.errors import EmotionError

# Far above any real face photo (a 50 Mpx camera frame); EMOTION_MAX_PIXELS sets another limit.
DEFAULT_MAX_PIXELS = 50_000_000
LIMIT_ADVICE = "over the {limit:g} Mpx limit: make it smaller, or raise EMOTION_MAX_PIXELS"


class ImageRefused(EmotionError):
    """An image file that is not read: too many pixels, or not decodable. `reason`: too_large or unreadable."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def max_pixels() -> int:
    value = os.environ.get("EMOTION_MAX_PIXELS", str(DEFAULT_MAX_PIXELS))
    if not value.isdigit() or int(value) <= 0:
        raise EmotionError(f"EMOTION_MAX_PIXELS={value!r} is not a positive whole number of pixels: unset it or give one, e.g. 50000000")
    return int(value)


def header_size(source: str | os.PathLike | object) -> tuple[int, int] | None:
    """(width, height) as the header says, without decoding; None when Pillow does not know the format."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: the limit below is ours
            with Image.open(source) as opened:
                return opened.size
    except Image.DecompressionBombError as err:  # over Pillow's own ceiling: it names the count, not the sides
        claimed = re.search(r"\((\d+) pixels\)", str(err))
        count = f"{int(claimed.group(1)) / 1e6:g} Mpx" if claimed else "too many pixels"
        raise ImageRefused(f"{source} claims {count}, {LIMIT_ADVICE.format(limit=max_pixels() / 1e6)}", "too_large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def check_pixels(name: str, size: tuple[int, int] | None) -> None:
    limit = max_pixels()
    if size is not None and size[0] * size[1] > limit:
        raise ImageRefused(f"{name} is {size[0]} x {size[1]} px, {LIMIT_ADVICE.format(limit=limit / 1e6)}", "too_large")


def read_bgr(path: str | os.PathLike) -> np.ndarray:
    """An image file as a BGR array; ImageRefused (one line, with its reason) when too large or not decodable."""
    path = Path(path)
    check_pixels(str(path), header_size(path))
    try:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV's own limits, on a header Pillow could not read
        image = None
    if image is None:
        raise ImageRefused(f"cannot read image {path}: not an image OpenCV can decode (use jpg/png/bmp/webp)", "unreadable")
    return image

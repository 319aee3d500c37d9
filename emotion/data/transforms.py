"""Train and eval transforms of the loaders (batched, emotion.data.augment) and the same eval steps for single crops
of any size (the face pipeline); normalisation numbers and the colour rule come from the model config."""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image

from emotion.data.augment import Augment, AugmentRecipe, EvalTransform, grey_uint8


def build_transform(mean: Sequence[float], std: Sequence[float], train: bool, recipe: AugmentRecipe | None = None,
                    colour: str = "rgb", channels_last: bool = True) -> EvalTransform:
    """The batch transform of a loader: `Augment` with `recipe` (default: the light one) for training, else the eval
    steps; both apply the model's colour rule and normalisation."""
    if train:
        return Augment(recipe or AugmentRecipe(), mean, std, colour, channels_last)
    return EvalTransform(mean, std, colour, channels_last)


def eval_preprocess(images: Sequence[np.ndarray], image_size: int, mean: Sequence[float], std: Sequence[float],
                    bgr: bool = False, colour: str = "rgb") -> np.ndarray:
    """The eval transform for uint8 RGB arrays of any size (`bgr`: OpenCV's order, read without a conversion copy),
    batched: (N, 3, S, S) float32.

    A PIL bilinear resize of the short side and a centre crop (a face cropped at the model's size needs neither),
    then the model's colour rule and the normalisation in the same float32 steps as `EvalTransform`; a test holds
    the two equal, bit for bit.
    """
    batch = np.empty((len(images), 3, image_size, image_size), np.float32)
    table = _normalisation_table(tuple(mean), tuple(std))
    for i, pixels in enumerate(images):
        h, w = pixels.shape[:2]
        if (h, w) != (image_size, image_size):  # a face cropped at the model's size needs no resize (the demo's case)
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(image_size * long / short)
            new_w, new_h = (image_size, new_long) if w <= h else (new_long, image_size)
            image = Image.frombuffer("RGB", (w, h), np.ascontiguousarray(pixels), "raw", "RGB", 0, 1)
            pixels = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))  # per channel: any channel order
            top, left = int(round((new_h - image_size) / 2.0)), int(round((new_w - image_size) / 2.0))
            pixels = pixels[top:top + image_size, left:left + image_size]
        if colour == "grey":
            pixels = grey_uint8(pixels[:, :, ::-1] if bgr else pixels)  # the same grey in any channel order
        for channel in range(3):
            np.take(table[channel], pixels[:, :, 2 - channel if bgr else channel], out=batch[i, channel])
    return batch


@lru_cache(maxsize=8)
def _normalisation_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256): every 8-bit value through ToDtype(scale=True) + Normalize, in the same float32 steps."""
    values = np.arange(256, dtype=np.float32)[None, :] * np.float32(1.0 / 255)
    table = (values - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]
    table.flags.writeable = False
    return table

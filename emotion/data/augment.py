"""Augmentation and the input rules on whole uint8 batches, as tensor ops on the training device.

The loader hands over uint8 pixels (B, H, W, 3) and, for training, each sample's random parameters, drawn from
(seed, epoch, index) alone (`Augment.draw`). Everything else happens here, batched: one affine warp for crop, scale,
rotation, translation and mirror; brightness, contrast, saturation and gamma; blur and sensor noise;
then the colour rule of the model (grey: luma in all three channels), normalisation, and random erasing. Each sample
is transformed by its own parameters only, so a batch split over processes, a resumed epoch or another worker count
gives the same pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from emotion.config import AUGMENT_RECIPES

COLOURS = ("rgb", "grey")
# ITU-R 601 luma, in thousandths (PIL's "L" mode): integer weights make the eval path exact in numpy and torch alike.
LUMA = (299, 587, 114)
# Parameter columns of one sample, in the order `draw` writes them.
PARAMS = ("area", "log_ratio", "angle", "shift_x", "shift_y", "flip", "brightness", "contrast", "saturation", "gamma",
          "blur_sigma", "noise_std", "noise_seed", "erase", "erase_x0", "erase_y0", "erase_x1", "erase_y1")
COLUMN = {name: i for i, name in enumerate(PARAMS)}
UNIFORM_DRAWS = 23  # uniforms per sample: a fixed count, so the noise seed drawn after them never moves
BLUR_TAPS = 7  # kernel width: 3 sigma on each side for the largest blur a recipe draws at 64 px


@dataclass(frozen=True)
class AugmentRecipe:
    """The random steps of training and their ranges (config.AUGMENT_RECIPES names them)."""

    area: tuple[float, float] = (0.8, 1.0)  # share of the face the random crop keeps (above 1: zoomed out, edges mirrored)
    ratio: tuple[float, float] = (0.9, 1.1)  # width / height of the crop
    rotate: float = 0.0  # degrees, either way
    translate: float = 0.0  # share of the side, either way, beyond what the crop leaves free
    flip: bool = True  # contempt is one-sided either way, so a mirror keeps every label
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.2
    gamma: float = 0.0  # gamma drawn log-uniformly from [1 / (1 + g), 1 + g]
    blur_prob: float = 0.0
    blur_sigma: float = 1.0  # largest Gaussian sigma, in pixels of the training size
    noise_prob: float = 0.0
    noise_std: float = 0.0  # largest noise standard deviation, on the 0-1 pixel scale
    erase_prob: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.15)


def recipe_for(name: str) -> AugmentRecipe:
    """The training recipe `--augment` names."""
    return AugmentRecipe(**AUGMENT_RECIPES[name])


def grey_uint8(pixels: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 3) uint8 with the rounded luma in every channel (the grey colour rule, exact)."""
    weighted = pixels.astype(np.int32) @ np.asarray(LUMA, np.int32)
    return np.repeat(((weighted + 500) // 1000).astype(np.uint8)[..., None], 3, axis=-1)


def _grey_uint8_torch(pixels: torch.Tensor) -> torch.Tensor:
    weighted = (pixels.to(torch.int32) * torch.tensor(LUMA, dtype=torch.int32, device=pixels.device)).sum(dim=-1)
    return torch.div(weighted + 500, 1000, rounding_mode="floor").to(torch.uint8)[..., None].expand(pixels.shape)


class EvalTransform:
    """uint8 (B, H, W, 3) -> normalised float32 (B, 3, H, W), with the model's colour rule: the same float32 steps as
    `transforms.eval_preprocess`, so validation, eval, the demo and ONNX see equal numbers for equal crops."""

    random = False

    def __init__(self, mean: Sequence[float], std: Sequence[float], colour: str = "rgb", channels_last: bool = True) -> None:
        if colour not in COLOURS:
            raise ValueError(f"unknown input colour {colour!r}: choose {' or '.join(COLOURS)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.colour = colour
        self.channels_last = channels_last

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 on the 0-1 scale -> normalised; channels-last strides unless told otherwise."""
        out = (images - self.mean.to(images.device)) / self.std.to(images.device)
        return out.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def __call__(self, batch: dict) -> torch.Tensor:
        pixels = batch["pixels"]
        if self.colour == "grey":
            pixels = _grey_uint8_torch(pixels)
        scaled = pixels.permute(0, 3, 1, 2).to(torch.float32) * torch.tensor(1.0 / 255, dtype=torch.float32)
        return self.normalise(scaled)


class Augment(EvalTransform):
    """Training: each sample's drawn parameters applied to the whole batch at once, then the eval steps."""

    random = True

    def __init__(self, recipe: AugmentRecipe, mean: Sequence[float], std: Sequence[float], colour: str = "rgb",
                 channels_last: bool = True) -> None:
        super().__init__(mean, std, colour, channels_last)
        self.recipe = recipe

    def draw(self, seed: int, epoch: int, index: int) -> np.ndarray:
        """The random parameters of one sample (PARAMS order), from (seed, epoch, index) and nothing else."""
        r, rng = self.recipe, np.random.default_rng((seed, epoch, index))
        u = rng.random(UNIFORM_DRAWS)
        values = np.zeros(len(PARAMS), np.float64)
        values[COLUMN["area"]] = r.area[0] + (r.area[1] - r.area[0]) * u[0]
        values[COLUMN["log_ratio"]] = math.log(r.ratio[0]) + (math.log(r.ratio[1]) - math.log(r.ratio[0])) * u[1]
        values[COLUMN["angle"]] = math.radians(r.rotate) * (2 * u[2] - 1)
        values[COLUMN["shift_x"]], values[COLUMN["shift_y"]] = u[3], u[4]  # turned into offsets in `geometry`
        values[COLUMN["flip"]] = -1.0 if r.flip and u[5] < 0.5 else 1.0
        for i, (name, strength) in enumerate((("brightness", r.brightness), ("contrast", r.contrast),
                                              ("saturation", r.saturation)), start=6):
            values[COLUMN[name]] = 1 + strength * (2 * u[i] - 1)
        values[COLUMN["gamma"]] = math.exp(math.log1p(r.gamma) * (2 * u[9] - 1))
        values[COLUMN["blur_sigma"]] = r.blur_sigma * u[11] if u[10] < r.blur_prob else 0.0
        values[COLUMN["noise_std"]] = r.noise_std * u[13] if u[12] < r.noise_prob else 0.0
        values[COLUMN["noise_seed"]] = int(rng.integers(0, 2**24))  # exact in float32
        if u[14] < r.erase_prob:
            area = r.erase_area[0] + (r.erase_area[1] - r.erase_area[0]) * u[15]
            aspect = math.exp(math.log(3.0) * (2 * u[16] - 1))
            w, h = min(1.0, math.sqrt(area * aspect)), min(1.0, math.sqrt(area / aspect))
            x0, y0 = (1 - w) * u[17], (1 - h) * u[18]
            values[COLUMN["erase"]: COLUMN["erase_y1"] + 1] = (1.0, x0, y0, x0 + w, y0 + h)
        return values.astype(np.float32)

    def __call__(self, batch: dict) -> torch.Tensor:
        pixels, params = batch["pixels"], batch["augment"].to(torch.float32)
        images = pixels.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255)
        images = self.geometry(images, params)
        images = self.photometric(images, params)
        images = self.blur(images, params[:, COLUMN["blur_sigma"]])
        images = self.noise(images, params)
        if self.colour == "grey":
            images = _luma(images)
        images = self.normalise(images.clamp(0, 1))
        return self.erase(images, params)

    def geometry(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Crop (area, aspect), offset, rotation and mirror as one affine map per sample; edges mirrored."""
        area, ratio = params[:, COLUMN["area"]], params[:, COLUMN["log_ratio"]].exp()
        width, height = (area * ratio).sqrt(), (area / ratio).sqrt()  # crop sides as shares of the face's side
        offsets = []
        for side, column in ((width, "shift_x"), (height, "shift_y")):
            free = (1 - side).clamp_min(0) + 2 * self.recipe.translate  # room the crop leaves, plus the translation
            offsets.append((params[:, COLUMN[column]] - 0.5) * free * 2)  # in grid units (-1..1 spans the face)
        angle, flip = params[:, COLUMN["angle"]], params[:, COLUMN["flip"]]
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([torch.stack([width * cos * flip, -height * sin, offsets[0]], dim=1),
                             torch.stack([width * sin * flip, height * cos, offsets[1]], dim=1)], dim=1)
        grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def photometric(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        def factor(name: str) -> torch.Tensor:
            return params[:, COLUMN[name], None, None, None].to(images.device)

        images = (images * factor("brightness")).clamp(0, 1)
        mean = _luma(images).mean(dim=(1, 2, 3), keepdim=True)
        images = ((images - mean) * factor("contrast") + mean).clamp(0, 1)
        grey = _luma(images)
        images = ((images - grey) * factor("saturation") + grey).clamp(0, 1)
        return images.clamp_min(1e-6) ** factor("gamma")

    def blur(self, images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """A Gaussian blur per sample (sigma 0: unchanged), as one grouped separable convolution."""
        if not bool((sigma > 0).any()):
            return images
        b, c, h, w = images.shape
        taps = torch.arange(BLUR_TAPS, dtype=torch.float32) - BLUR_TAPS // 2
        sigma = sigma.clamp_min(1e-3)[:, None]
        kernel = torch.exp(-0.5 * (taps[None, :] / sigma) ** 2)
        kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0).to(images.device)
        flat = images.reshape(1, b * c, h, w)
        pad = BLUR_TAPS // 2
        flat = F.conv2d(F.pad(flat, (0, 0, pad, pad), mode="reflect"), kernel[:, None, :, None], groups=b * c)
        flat = F.conv2d(F.pad(flat, (pad, pad, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
        return flat.reshape(b, c, h, w)

    def noise(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Gaussian sensor noise per sample, from the sample's own generator (so not from the batch it sits in)."""
        std = params[:, COLUMN["noise_std"]]
        noisy = torch.nonzero(std > 0).flatten().tolist()
        if not noisy:
            return images
        out = images.clone()
        for i in noisy:
            generator = torch.Generator().manual_seed(int(params[i, COLUMN["noise_seed"]]))
            out[i] += float(std[i]) * torch.randn(images.shape[1:], generator=generator).to(images.device)
        return out

    def erase(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Random erasing: a rectangle per chosen sample set to 0, the data's mean after normalisation."""
        if not bool((params[:, COLUMN["erase"]] > 0).any()):
            return images
        _, _, h, w = images.shape
        box = params[:, COLUMN["erase_x0"]: COLUMN["erase_y1"] + 1].to(images.device)
        xs = (torch.arange(w, device=images.device) + 0.5) / w
        ys = (torch.arange(h, device=images.device) + 0.5) / h
        inside_x = (xs[None, :] >= box[:, 0:1]) & (xs[None, :] < box[:, 2:3])
        inside_y = (ys[None, :] >= box[:, 1:2]) & (ys[None, :] < box[:, 3:4])
        hidden = inside_y[:, :, None] & inside_x[:, None, :] & (params[:, COLUMN["erase"], None, None] > 0).to(images.device)
        return images.masked_fill(hidden[:, None], 0.0)


def _luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> the luma in all three channels."""
    weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1) / 1000
    return (images * weights).sum(dim=1, keepdim=True).expand_as(images)

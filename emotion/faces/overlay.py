"""Drawing the results on a frame: box, id, label and confidence, per-class bars, the attention heatmap and the phrase."""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from emotion.faces.predict import FaceResult

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_JET = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None, :], cv2.COLORMAP_JET)  # (1, 256, 3) lookup table


@lru_cache(maxsize=1024)
def _text_sprite(lines: tuple[str, ...], scale: float, colour: tuple[int, int, int], step: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Rendered text with a dark outline, one line per `step` pixels: (BGR patch, mask, ascent).

    Text is drawn once and copied through its mask thereafter: anti-aliased putText costs ~0.06 ms a call,
    and the overlay draws 11 of them per face, more than a small model's whole budget beyond its forward pass.
    """
    sizes = [cv2.getTextSize(line, _FONT, scale, 3) for line in lines]
    ascent = max(size[0][1] for size in sizes) + 2
    width = max(size[0][0] for size in sizes) + 4
    height = ascent + step * (len(lines) - 1) + max(size[1] for size in sizes) + 2
    patch = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.uint8)
    for i, line in enumerate(lines):
        org = (2, ascent + i * step)
        cv2.putText(patch, line, org, _FONT, scale, (0, 0, 0), 3, cv2.LINE_AA)  # dark outline: readable on any background
        cv2.putText(patch, line, org, _FONT, scale, colour, 1, cv2.LINE_AA)
        cv2.putText(mask, line, org, _FONT, scale, 255, 3, cv2.LINE_AA)
    return patch, (mask >= 64).astype(np.uint8), ascent


def _blit(img: np.ndarray, patch: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """Copy the `mask`ed pixels of `patch` into `img` with its top-left corner at (x, y), clipped to the image."""
    H, W = img.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + patch.shape[1], W), min(y + patch.shape[0], H)
    if x1 <= x0 or y1 <= y0:
        return
    if (x0, y0, x1, y1) != (x, y, x + patch.shape[1], y + patch.shape[0]):
        patch, mask = (np.ascontiguousarray(a[y0 - y:y1 - y, x0 - x:x1 - x]) for a in (patch, mask))
    cv2.copyTo(patch, mask, img[y0:y1, x0:x1])


def _text(img: np.ndarray, text: str | Sequence[str], org: tuple[int, int], scale: float, colour=(255, 255, 255),
          step: int = 0) -> None:
    """Text with its first baseline at `org` (as cv2.putText); several lines go `step` pixels apart."""
    lines = (text,) if isinstance(text, str) else tuple(text)
    patch, mask, ascent = _text_sprite(lines, round(scale, 3), tuple(int(c) for c in colour), step)
    _blit(img, patch, mask, org[0] - 2, org[1] - ascent)


def draw_attention(frame: np.ndarray, face: FaceResult, alpha: float = 0.45) -> None:
    """Blend the attention map (JET colours, red = most attended) over the crop the model saw, in place."""
    x, y, w, h = face.crop_box
    H, W = frame.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 <= x0 or y1 <= y0:
        return
    att = (face.attention * (255 / max(float(face.attention.max()), 1e-12))).astype(np.uint8)
    colours = cv2.LUT(cv2.cvtColor(att, cv2.COLOR_GRAY2BGR), _JET)  # JET at grid size, then smoothly enlarged
    # smooth (cubic) at 8x the grid, then linear to the crop: as smooth as cubic all the way, at a sixth of its cost
    smooth = cv2.resize(colours, (8 * att.shape[1], 8 * att.shape[0]), interpolation=cv2.INTER_CUBIC)
    heat = cv2.resize(smooth, (w, h), interpolation=cv2.INTER_LINEAR)[y0 - y:y1 - y, x0 - x:x1 - x]
    roi = frame[y0:y1, x0:x1]
    cv2.addWeighted(heat, alpha, roi, 1 - alpha, 0, dst=roi)


def draw_overlay(frame: np.ndarray, faces: Sequence[FaceResult], class_names: Sequence[str], show_attention: bool = True,
                 fps: float | None = None, in_place: bool = False) -> np.ndarray:
    """An annotated copy of a BGR frame (or the frame itself, `in_place`): per face its box, id, label + confidence,
    a bar per class of `class_names` (the model config's) and the phrase."""
    out = frame if in_place else frame.copy()
    H, W = out.shape[:2]
    scale = max(0.4, min(0.8, W / 1000))
    line = int(22 * scale / 0.5)
    for face in faces:
        if show_attention:
            draw_attention(out, face)
        x, y, w, h = face.box
        colour = (0, 200, 0) if face.explanation.supported else (0, 165, 255)
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, 2)
        tag = "" if face.track_id is None else f"#{face.track_id} "  # the face id every output file uses
        _text(out, f"{tag}{face.label} {face.confidence:.0%}", (x, max(line, y - 8)), scale * 1.2, colour)
        bar_x, step = (x + w + 8 if x + w + 8 + 140 < W else max(0, x - 148)), int(line * 0.8)
        for i, p in enumerate(face.probabilities):
            by = y + i * step
            cv2.rectangle(out, (bar_x + 62, by + 2), (bar_x + 62 + int(76 * float(p)), by + int(line * 0.6)), colour, -1)
        _text(out, [name[:8] for name in class_names], (bar_x, y + int(line * 0.6)), scale * 0.75, step=step)
        # below the box and the bars, which the phrase is often wider than
        _text(out, face.explanation.phrase, (x, min(H - 4, max(y + h, y + len(class_names) * step) + line)), scale)
    if fps is not None:
        _text(out, f"{fps:.0f} FPS", (8, line), scale * 1.2, (0, 255, 255))
    return out
